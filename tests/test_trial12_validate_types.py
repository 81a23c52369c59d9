"""`validate` on Salesforce reports the field types the run refuses (trial 12, F6): the same problems, each at
the config line that names the field, all at once, through the double and the real simple-salesforce client."""
from __future__ import annotations

import shutil

from conftest import Cli, write_csv
from nrr_engine.demo import write_demo_config
from nrr_engine.testing.salesforce_double import SalesforceDouble
from test_salesforce import AS_OF, DEMO_ORG, ROOT, use_credentials
from test_validate import line_of


def _project(root, monkeypatch, types: str) -> tuple[Cli, SalesforceDouble]:
    """A small org seeded into the double with `types` (as `salesforce_double seed --types` does), and a
    project whose source is that double (auth: password, credentials in the environment)."""
    org = root / "org"
    org.mkdir(parents=True)
    shutil.copy(DEMO_ORG / "User.csv", org / "User.csv")
    write_csv(org / "Account.csv", [{"Id": "001000000000001AAA", "Name": "Zeta", "ParentId": "", "Region__c": "NA"},
                                    {"Id": "001000000000002AAA", "Name": "Zeta UK", "ParentId": "001000000000001AAA",
                                     "Region__c": "EMEA"}])
    write_csv(org / "Subscription__c.csv", [{"Id": "a0S000000000001AAA", "Account__c": "001000000000002AAA",
                                             "Product__c": "Core", "Start_Date__c": "2025-01-01", "End_Date__c": "",
                                             "Amount__c": "1000.00", "CurrencyIsoCode": "USD"}])
    cfg = write_demo_config(root)
    cfg.write_text(cfg.read_text().replace("source: {kind: local, path: ../org}",
                                           "source: {kind: salesforce, auth: password, poll_s: 0.001, "
                                           "backoff_s: 0.001, api_reserve: 100}"))
    SalesforceDouble.seed(root / "sf.db", org, types=types)
    double = SalesforceDouble(root / "sf.db", metadata=ROOT / "salesforce")
    use_credentials(monkeypatch, double)
    return Cli(cfg), double


def test_validate_reports_a_text_amount_the_run_refuses_at_its_line(tmp_path, monkeypatch):
    """Subscription__c.Amount__c seeded as string(255): validate exits 2 at the line of `amount:` with the run's
    own words (it said ok, then the run exited 2), and the run still refuses it the same way."""
    cli, double = _project(tmp_path, monkeypatch, "Subscription__c.Amount__c=string(255)")
    problem = ("arr.subscriptions.amount: Subscription__c.Amount__c is of type string; expected double or currency "
               "or int or percent or long")
    with double.serve():
        r = cli("validate", expect=2)
        run = cli("run", "--as-of", AS_OF, expect=2)
    line = line_of(cli.config, "amount: Amount__c")
    assert f"error: {cli.config}:{line}: {problem}" in r.stderr, r.stderr
    assert "1 problem(s) found" in r.stderr and "ok (" not in r.stdout
    assert problem in run.stderr


def test_validate_collects_every_type_problem_each_at_its_own_line(tmp_path, monkeypatch):
    """Three fields of the wrong type (text start and end dates, a text amount): validate names all three, each at
    the line of the setting that names the field, in one go."""
    cli, double = _project(tmp_path, monkeypatch, "Subscription__c.Amount__c=string(255),"
                                                  "Subscription__c.Start_Date__c=string(20),"
                                                  "Subscription__c.End_Date__c=string(20)")
    with double.serve():
        r = cli("validate", expect=2)
        run = cli("run", "--as-of", AS_OF, expect=2)
    wanted = {"arr.subscriptions.start: Subscription__c.Start_Date__c is of type string; expected date or datetime":
              line_of(cli.config, "start: Start_Date__c"),
              "arr.subscriptions.amount: Subscription__c.Amount__c is of type string; expected double or currency or "
              "int or percent or long": line_of(cli.config, "amount: Amount__c"),
              "arr.subscriptions.end: Subscription__c.End_Date__c is of type string; expected date or datetime":
              line_of(cli.config, "end: End_Date__c")}
    for problem, line in wanted.items():
        assert f"error: {cli.config}:{line}: {problem}" in r.stderr, r.stderr
        assert problem in run.stderr  # what the run stops on, validate said first
    assert "3 problem(s) found" in r.stderr


def test_validate_still_says_ok_when_every_type_fits(tmp_path, monkeypatch):
    """With the types the shipped metadata gives, validate on the double says ok (the type check refuses only
    what the run refuses) and the run succeeds."""
    cli, double = _project(tmp_path, monkeypatch, "Subscription__c.Amount__c=currency(16,2)")
    with double.serve():
        assert "fields checked against Salesforce's describe" in cli("validate").stdout
        cli("run", "--as-of", AS_OF)
