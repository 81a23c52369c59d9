"""A person's review decision is an audit trail that outlives what happens to the org: notes accumulate, a
decision always names who took it, an approval survives an export that lost its accounts, a rollback can be
previewed and held, and the summary counts accounts to review (a new user's trial, findings 4, 12-15)."""
from __future__ import annotations

import pwd
import sqlite3

import pytest

from conftest import write_csv
from test_matching import AS_OF, parents, shipped_rules

NOTE = "UK sub of Northwind Traders Inc, confirmed by VP"


@pytest.fixture
def northwind(org):
    """Northwind Traders, Inc. and its unlinked "Northwind Traders Dental" (unknown words: a link for review
    only, 0.6), a customer of their own, and the shipped rules."""
    org.account("001N1", "Northwind Traders, Inc.", BillingCountry="United States")
    org.account("001N2", "Northwind Traders Dental", BillingCountry="United States")
    org.account("001C1", "Contoso Ltd", BillingCountry="United States")
    org.sub("001N1", "2024-01-01", "", "120000")
    org.sub("001N2", "2024-06-01", "", "60000")
    org.sub("001C1", "2023-01-01", "", "96000")
    org.rules = shipped_rules()
    return org.write()


def approve_and_apply(cli, note: str | None = NOTE) -> dict:
    """First run proposes the Dental link for review; approve it (with a note) and let the next run apply it."""
    cli("run", *AS_OF)
    [item] = cli.json("review", "list", "--format", "json")
    cli("review", "approve", str(item["id"]), *(["--note", note] if note else []), "--by", "alice")
    cli("run", *AS_OF)
    return item


def item_of(cli, rid: int) -> dict:
    return next(i for i in cli.json("review", "list", "--status", "all", "--format", "json") if i["id"] == rid)


def test_review_notes_accumulate_and_review_list_shows_them_all(northwind, cli):
    """A note given with approve stays when the run reopens the item (its link left the org): every note is kept,
    oldest first, with when and who, and `review list` shows them all."""
    item = approve_and_apply(cli)
    path = northwind.org / "Account.csv"
    northwind.accounts[1]["ParentId"] = "001C1"                    # RevOps moves it in the export ...
    northwind.write()
    cli("run", *AS_OF)
    northwind.accounts[1]["ParentId"] = ""                         # ... and back: the rule proposes the link again
    write_csv(path, northwind.accounts)
    cli("run", *AS_OF)
    got = item_of(cli, item["id"])
    assert got["status"] == "pending"
    texts = [n["text"] for n in got["notes"]]
    assert texts[0] == NOTE and got["notes"][0]["by"] == "alice" and got["notes"][0]["decision"] == "approved"
    assert any("proposed again by run" in (t or "") for t in texts[1:])
    assert got["note"] == texts[-1]                                # `note` is the latest, as before
    shown = cli("review", "list").stdout
    assert NOTE in shown and "alice approved" in shown and "proposed again by run" in shown
    assert shown.index(NOTE) < shown.index("proposed again by run")


def test_decided_by_falls_back_to_the_os_account_and_says_so(northwind, cli, monkeypatch):
    """Under cron or Docker $USER is unset: the decision records the OS account (never null) and says so."""
    cli("run", *AS_OF)
    for var in ("USER", "LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.delenv(var, raising=False)
    [item] = cli.json("review", "list", "--format", "json")
    r = cli("review", "approve", str(item["id"]))
    me = pwd.getpwuid(__import__("os").getuid()).pw_name
    assert item_of(cli, item["id"])["decided_by"] == me
    assert "$USER is not set" in r.stderr and repr(me) in r.stderr and "--by" in r.stderr


def test_decided_by_is_the_uid_when_the_account_has_no_name(org, cli, monkeypatch):
    """A container user without a passwd entry (docker run --user 12345) is recorded as `uid N`."""
    org.account("001D", "Delta", BillingCountry="United States")
    org.account("001DDE", "Delta Dental", BillingCountry="United States")
    org.rules = shipped_rules()
    org.write()
    cli("run", *AS_OF)
    for var in ("USER", "LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.delenv(var, raising=False)

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    cli("review", "reject", "1")
    assert item_of(cli, 1)["decided_by"] == f"uid {__import__('os').getuid()}"


def test_an_approved_link_survives_an_empty_export_accepted_with_allow_shrink(northwind, cli):
    """Header-only Account.csv accepted with --allow-shrink, then the real export back: the person's approved
    link is applied again by that run (not queued as pending), the trail says why, the note is kept."""
    item = approve_and_apply(cli)
    assert parents(northwind)["Northwind Traders Dental"] == "Northwind Traders, Inc."
    path = northwind.org / "Account.csv"
    full = path.read_text(encoding="utf-8")
    path.write_text(full.splitlines()[0] + "\n", encoding="utf-8")
    err = cli("run", *AS_OF, expect=2).stderr
    assert "forgets what the engine wrote to the records that left" in err
    out = cli("run", *AS_OF, "--allow-shrink").stdout
    assert "[input_shrank]" in out and "forgets what the engine wrote" in out
    path.write_text(full, encoding="utf-8")
    cli("run", *AS_OF, "--allow-shrink")           # the real export is back (ARR grew from 0: not a shrink)
    assert parents(northwind)["Northwind Traders Dental"] == "Northwind Traders, Inc."
    got = item_of(cli, item["id"])
    assert got["status"] == "applied" and got["away_run"] is None
    texts = [n["text"] for n in got["notes"]]
    assert texts[0] == NOTE
    assert any("are not in the input" in t for t in texts) and any("back in the input" in t for t in texts)
    assert cli.json("review", "list", "--format", "json") == []
    assert "forgets what the engine wrote" in " ".join(cli("run", "--help").stdout.split())


def test_an_approval_is_not_applied_over_a_parent_the_org_gave_meanwhile(northwind, cli):
    """The child comes back with another parent in the export: the approved link is not forced over it; the item
    is blocked saying why (a person can approve it again)."""
    item = approve_and_apply(cli)
    path = northwind.org / "Account.csv"
    full = path.read_text(encoding="utf-8")
    path.write_text(full.splitlines()[0] + "\n", encoding="utf-8")
    cli("run", *AS_OF, "--allow-shrink")
    northwind.accounts[1]["ParentId"] = "001C1"
    northwind.write()
    cli("run", *AS_OF, "--allow-shrink")
    assert parents(northwind)["Northwind Traders Dental"] == "Contoso Ltd"
    got = item_of(cli, item["id"])
    assert got["status"] == "blocked" and "back with another parent" in got["note"]


@pytest.fixture
def mapped(org):
    """A mapping-table link (confidence 1.0, applied by the rule): Hulu, LLC under The Walt Disney Company."""
    org.account("001DIS", "The Walt Disney Company", BillingCountry="United States")
    org.account("001HUL", "Hulu, LLC", BillingCountry="United States")
    org.sub("001DIS", "2024-01-01", "", "500000")
    org.sub("001HUL", "2024-01-01", "", "100000")
    org.rules = shipped_rules()
    return org.write()


def ledger_rows(org) -> dict:
    db = sqlite3.connect(org.root / "state" / "nrr.db")
    out = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("runs", "changes", "review",
                                                                            "membership_log")}
    out["history files"] = sorted(db.execute("SELECT name, file, sha256, rows FROM history_files"))   # (what they hold)
    return out


def test_rollback_dry_run_shows_what_it_would_do_and_writes_nothing(mapped, cli):
    """`rollback --dry-run` prints the fields it would restore and says the rule-made link would come back with
    the next run; the working copy, the ledger and the run's status are untouched."""
    run_id = cli("run", *AS_OF).stdout.split()[1]
    before, rows = parents(mapped), ledger_rows(mapped)
    out = cli("rollback", "--dry-run", run_id).stdout
    assert out.startswith(f"dry run, nothing written: rolling back {run_id} would make ")
    assert "1 of the links it undoes were made by rules" in out
    assert "--hold" in out
    assert parents(mapped) == before and ledger_rows(mapped) == rows
    assert cli.json("runs", "list", "--format", "json")[0]["status"] == "succeeded"
    db = sqlite3.connect(mapped.root / "state" / "local-org.db")   # the org's value edited since the run
    db.execute("UPDATE Account SET ParentId = NULL WHERE Id = '001HUL'")
    db.commit()
    shown = cli("rollback", "--dry-run", run_id).stdout
    assert "left alone (edited since): Account 001HUL ParentId: expected '001DIS', found None" in shown


def test_rollback_hold_keeps_a_rule_made_link_out_until_a_person_approves(mapped, cli):
    """Without --hold the next run applies the mapping link again (said by the rollback); with --hold it goes
    to review instead, held, until approved."""
    run_id = cli("run", *AS_OF).stdout.split()[1]
    out = cli("rollback", run_id).stdout
    assert "the next run applies them again while the rules still propose them" in out
    cli("run", *AS_OF)
    assert parents(mapped)["Hulu, LLC"] == "The Walt Disney Company"   # documented: the rule still proposes it
    run_id = next(r["id"] for r in cli.json("runs", "list", "--format", "json") if r["mode"] == "run"
                  and r["status"] == "succeeded")
    out = cli("rollback", "--hold", run_id).stdout
    assert "held: 1 link(s) are kept out of the org" in out
    s = cli("run", *AS_OF).stdout
    assert parents(mapped)["Hulu, LLC"] is None and "1 account(s) (1 candidate link(s)) to review" in s
    [item] = cli.json("review", "list", "--format", "json")
    assert (item["child_id"], item["parent_id"], item["confidence"]) == ("001HUL", "001DIS", 1.0)
    assert item["held_run"] and item["reason"].startswith("held: run ")
    cli("run", *AS_OF)                                                 # still held night after night
    assert parents(mapped)["Hulu, LLC"] is None
    cli("review", "approve", str(item["id"]), "--by", "bob")
    cli("run", *AS_OF)
    assert parents(mapped)["Hulu, LLC"] == "The Walt Disney Company"
    assert item_of(cli, item["id"])["status"] == "applied"


def test_a_tie_is_explained_and_the_summary_counts_accounts(org, cli):
    """One account tied between two parents: the summary says 1 account (2 candidate links) to review and the
    review list says a tie scores at most 0.5 whatever its evidence grade."""
    org.account("001A", "Acme GmbH", BillingCountry="Germany")   # neither has children nor a parent's name form
    org.account("001B", "ACME LLC", BillingCountry="Canada")
    org.account("001C", "Acme UK", BillingCountry="United Kingdom")
    org.rules = shipped_rules()
    org.write()
    out = cli("run", *AS_OF).stdout
    assert "1 account(s) (2 candidate link(s)) to review" in out
    shown = cli("review", "list").stdout
    assert shown.count("tie: 2 candidates left after the tie-breakers (name evidence grade: country); a tie scores "
                       "at most 0.5") == 2


def test_rollback_dry_run_against_salesforce_sends_no_write(tmp_path, monkeypatch):
    """On the Globex org served by the double: `rollback --dry-run` of the repair run makes no write call and
    leaves every record as it is; its counts are those the real rollback then reports."""
    from test_salesforce import globex_project
    p = globex_project(tmp_path, monkeypatch)
    with p.double.serve():
        p.cli("run", *AS_OF)
        items = p.cli.json("review", "list", "--format", "json")
        true = {"001000000000G02AAA", "001000000000G05AAA", "001000000000G06AAA"}
        p.cli("review", "approve", *[str(i["id"]) for i in items
                                     if i["child_id"] in true and i["parent_id"] == "001000000000G01AAA"])
        run_id = p.cli("run", *AS_OF).stdout.split()[1]

        def records() -> dict:
            return {o: p.double.records(o, f) for o, f in (("Account", ["ParentId", "Hierarchy_ARR__c"]),
                                                           ("KPI_Snapshot__c", ["External_Id__c", "Ending_ARR__c"]))}

        def writes() -> list:  # every call that could change a record (logins and queries aside)
            return [c for c in p.double.calls if c[0] in ("POST", "PATCH", "PUT", "DELETE")
                    and not any(k in c[1] for k in ("query", "oauth2", "/Soap/"))]
        before, sent = records(), writes()
        dry = p.cli("rollback", "--dry-run", run_id).stdout
        assert writes() == sent and records() == before
        assert "3 approved link(s) it undoes would be pending again" in dry
        real = p.cli("rollback", run_id).stdout
        would = dry.split(" would make ", 1)[1].split("; family membership", 1)[0]
        did = real.split(": ", 1)[1].split("; family membership", 1)[0]
        assert would == did and "3 approved link(s) it undoes are pending again" in real
