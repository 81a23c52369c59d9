"""An input no run should take stops a first run too (no accounts; most ARR on subscriptions whose account is
missing), and cohorts are dated from the subscriptions, not from the first month kept (a new user's trial,
findings 3 and 5)."""
from __future__ import annotations

import pytest

from conftest import write_csv

AS_OF = ("--as-of", "2026-11-15")
HEADER = "Id,Name,ParentId,Region__c\n"


@pytest.fixture
def orphaned(org):
    """A brand-new project whose Account.csv is a header only while Subscription__c.csv holds every subscription."""
    for i, (start, amount) in enumerate((("2024-01-01", "120000"), ("2023-01-01", "96000"), ("2022-01-01", "48000"))):
        org.sub(f"001X{i}", start, "", amount)
    org.write()
    (org.org / "Account.csv").write_text(HEADER, encoding="utf-8")
    return org


def test_a_first_run_on_a_header_only_account_csv_stops(orphaned, cli):
    """No run before, no accounts now: run and plan stop (exit 2) saying the input has no accounts and which
    subscriptions point nowhere; nothing is recorded as succeeded."""
    r = cli("run", *AS_OF, expect=2)
    assert "the input has no accounts" in r.stderr and "264000.00 of ARR at 2026-11" in r.stderr
    assert "Subscription__c record(s) left out of ARR, Account__c matches no account" in r.stderr
    assert "an empty input stops every run" in r.stderr and "--allow-shrink" in r.stderr
    assert "the input has no accounts" in cli("plan", *AS_OF, expect=2).stderr
    assert [r["status"] for r in cli.json("runs", "list", "--format", "json")] == ["failed", "failed"]


def test_an_empty_input_accepted_once_still_stops_the_next_run(orphaned, cli):
    """--allow-shrink takes the empty input (a finding); the next nightly run on it stops again: an empty input
    never becomes an ordinary night."""
    out = cli("run", *AS_OF, "--allow-shrink").stdout
    assert "[input_shrank]" in out and "accounts read: 0" in out
    assert "the input has no accounts" in cli("run", *AS_OF, expect=2).stderr


def test_validate_warns_that_account_csv_has_no_records(orphaned, cli):
    """validate still passes the fields, but warns that Account.csv is a header only and what a run will do."""
    out = cli("validate").stdout
    assert f"warning: {orphaned.org / 'Account.csv'} has no records (a header only)" in out
    assert "stop on an input without accounts" in out


def test_a_first_run_with_most_arr_on_missing_accounts_stops(org, cli):
    """Accounts exported filtered: 30 % of the subscription ARR points at accounts not in the input; a first run
    stops naming the share; accepted once, the same share passes; a further jump stops again."""
    org.sub(org.account("001A", "Alpha"), "2025-01-01", "", "70000")
    org.sub("001GONE", "2025-01-01", "", "30000")
    org.write()
    r = cli("run", *AS_OF, expect=2)
    assert ("subscriptions whose account is not in the input hold 30000.00 of the 100000.00 ARR active at 2026-11 "
            "(30.0 %): more than guards.max_shrink (20 %) allows") in r.stderr
    assert "[input_shrank]" in cli("run", *AS_OF, "--allow-shrink").stdout
    assert "[input_shrank]" not in cli("run", *AS_OF).stdout      # the accepted share is the baseline
    org.sub("001GONE2", "2025-01-01", "", "100000")
    org.write()
    assert "(65.0 %" in cli("run", *AS_OF, expect=2).stderr


def test_a_small_share_of_orphaned_subscriptions_does_not_stop_a_first_run(org, cli):
    """One stray subscription (10 % of the ARR) is a warning finding, as before, not a stop."""
    org.sub(org.account("001A", "Alpha"), "2025-01-01", "", "90000")
    org.sub("001GONE", "2025-01-01", "", "10000")
    org.write()
    out = cli("run", *AS_OF).stdout
    assert "[orphan_subscription]" in out and "[input_shrank]" not in out


def test_cohorts_come_from_subscription_start_dates_before_the_months_kept(org, cli):
    """history_months 24 keeps ARR from 2024-12, yet each family's cohort is the month its first subscription
    started: Fabrikam 2022-01, Contoso 2023-01, Northwind 2024-01 (no grouping into the first month kept)."""
    org.sub(org.account("001F", "Fabrikam Inc"), "2022-01-01", "2026-07-31", "48000")
    org.sub(org.account("001C", "Contoso Ltd"), "2023-01-01", "", "96000")
    org.sub(org.account("001N", "Northwind Traders"), "2024-01-01", "", "120000")
    org.extra = ""
    org.write()
    cfg = org.config.read_text().replace("  source: subscriptions\n", "  source: subscriptions\n  history_months: 24\n")
    org.config.write_text(cfg)
    r = cli.json("report", "nrr", "--period", "2026-10", "--window", "12", "--by", "cohort", "--format", "json", *AS_OF)
    cohorts = {s["value"]: s["family"]["start"] for s in r["segments"]}
    assert cohorts == {"2022-01": "48000.00", "2023-01": "96000.00", "2024-01": "120000.00"}
    assert "cohort_note" not in r


def test_cohorts_before_the_months_kept_say_they_are_grouped(org, cli, tmp_path):
    """ARR from imported history (no start dates to read): a family with ARR in the first month kept is labelled
    '<= YYYY-MM' and the report says cohorts before it are grouped there."""
    org.account("001F", "Fabrikam Inc")
    org.account("001N", "Northwind Traders")
    org.arr = "  source: history\n  history_months: 24"
    org.write()
    rows = [{"account_id": "001F", "month": f"{y}-{m:02d}", "arr": "48000"} for y in (2022, 2023, 2024, 2025, 2026)
            for m in range(1, 13) if f"{y}-{m:02d}" <= "2026-10"]
    rows += [{"account_id": "001N", "month": f"2025-{m:02d}", "arr": "120000"} for m in range(3, 13)]
    rows += [{"account_id": "001N", "month": f"2026-{m:02d}", "arr": "120000"} for m in range(1, 11)]
    write_csv(tmp_path / "h.csv", rows)
    cli("history", "import", str(tmp_path / "h.csv"))
    r = cli.json("report", "nrr", "--period", "2026-10", "--window", "12", "--by", "cohort", "--format", "json", *AS_OF)
    assert {s["value"] for s in r["segments"]} == {"<= 2024-12", "2025-03"}
    assert "cohorts before 2024-12 are grouped as '<= 2024-12'" in r["cohort_note"]
    table = cli("report", "nrr", "--period", "2026-10", "--window", "12", "--by", "cohort", *AS_OF).stdout
    assert "cohort=<= 2024-12" in table and "note: cohorts before 2024-12 are grouped" in table
