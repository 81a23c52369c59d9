"""Parent-link repair end to end: shipped rules on the reference cases, evidence in plan.json, the review queue."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from conftest import Org

REPO = Path(__file__).resolve().parents[1]
AS_OF = ("--as-of", "2026-11-15")


def shipped_rules() -> dict[str, str]:
    """The rule files `init` copies (the repository's rules/ folder)."""
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((REPO / "rules").iterdir())
            if p.suffix in (".yaml", ".csv")}


def parents(org: Org) -> dict[str, str | None]:
    """Name -> parent's name in the working copy after a run."""
    db = sqlite3.connect(org.root / "state" / "local-org.db")
    return dict(db.execute("SELECT a.Name, p.Name FROM Account a LEFT JOIN Account p ON p.Id = a.ParentId"))


@pytest.fixture
def reference(org):
    """The DESIGN's reference accounts with names and billing countries only, and the shipped rules."""
    org.account("001ACM", "Acme HQ", BillingCountry="United States")
    org.account("001AUS", "Acme US", BillingCountry="United States")
    org.account("001AEC", "Acme eComm", BillingCountry="United States")
    org.account("001DIS", "The Walt Disney Company", BillingCountry="United States")
    org.account("001HUL", "Hulu, LLC", BillingCountry="United States")
    org.account("001UOG", "United Oil & Gas Corp.", BillingCountry="United States")
    org.account("001UUK", "United Oil & Gas, UK", BillingCountry="United Kingdom")
    org.account("001DAL", "Delta Air Lines, Inc.", BillingCountry="United States")
    org.account("001DDE", "Delta Dental", BillingCountry="United States")
    org.sub("001AUS", "2025-01-01", "", "50000")
    org.rules = shipped_rules()
    return org.write()


@pytest.fixture
def delta(org):
    """"Delta" and "Delta Dental" (no known qualifier: a link for review only), with the shipped rules."""
    org.account("001D", "Delta", BillingCountry="United States")
    org.account("001DDE", "Delta Dental", BillingCountry="United States")
    org.rules = shipped_rules()
    return org.write()


def test_shipped_rules_repair_the_reference_cases(reference, cli):
    """Acme US / Acme eComm -> Acme HQ, Hulu, LLC -> Disney (mapping), United Oil & Gas, UK -> Corp.; the
    two Deltas stay apart; names and billing countries are the only signals."""
    out = cli("run", *AS_OF).stdout
    p = parents(reference)
    assert p["Acme US"] == "Acme HQ" and p["Acme eComm"] == "Acme HQ"
    assert p["Hulu, LLC"] == "The Walt Disney Company"
    assert p["United Oil & Gas, UK"] == "United Oil & Gas Corp."
    assert p["Delta Air Lines, Inc."] is None and p["Delta Dental"] is None
    assert "legal repair: 4 link(s) applied" in out
    assert "rule website-domain" in out and "not evaluated: Account has no field Website" in out


def test_plan_json_explains_every_link(reference, cli, tmp_path):
    """Each proposed ParentId change carries its rule, confidence and evidence (fields compared, scores)."""
    cli("plan", *AS_OF, "--out", str(tmp_path / "plan.json"))
    plan = json.loads((tmp_path / "plan.json").read_text())
    links = {c["id"]: c for c in plan["changes"] if c["field"] == "ParentId"}
    uk = links["001UUK"]
    assert (uk["old"], uk["new"], uk["rule"], uk["confidence"]) == (None, "001UOG", "name-qualifier", 0.97)
    assert uk["evidence"]["qualifier"] == {"words": "uk", "kind": "country", "country": "GB"}
    assert uk["evidence"]["key"] == "united oil and gas" and uk["evidence"]["grade"] == "country"
    hulu = links["001HUL"]
    assert hulu["rule"] == "acquisitions" and hulu["confidence"] == 1.0
    assert hulu["evidence"]["table"].endswith("mappings.csv:2") and hulu["evidence"]["parent"] == "The Walt Disney Company"
    assert links["001AEC"]["evidence"]["grade"] == "unit_same_country"
    assert plan["review"] == [] and plan["duplicates"] == []


def test_unrelated_namesakes_go_to_review_never_applied(org, cli):
    """With an account named just "Delta", "Delta Dental" and "Delta Air Lines" are proposed under it only for
    review (the extra words are no known qualifier)."""
    for rid, name in (("001D", "Delta"), ("001DAL", "Delta Air Lines"), ("001DDE", "Delta Dental")):
        org.account(rid, name, BillingCountry="United States")
    org.rules = shipped_rules()
    org.write()
    cli("run", *AS_OF)
    assert set(parents(org).values()) == {None}
    items = cli.json("review", "list", "--format", "json")
    assert {(i["child_id"], i["parent_id"], i["confidence"]) for i in items} == {("001DAL", "001D", 0.6),
                                                                               ("001DDE", "001D", 0.6)}
    assert all(i["evidence"]["grade"] == "unknown" for i in items)


def test_country_in_the_name_must_agree_with_billing_country(org, cli):
    """"Acme UK" billing in Germany is a conflict: review at 0.5, not applied."""
    org.account("001A", "Acme Inc.", BillingCountry="United States")
    org.account("001B", "Acme UK", BillingCountry="Germany")
    org.rules = shipped_rules()
    org.write()
    cli("run", *AS_OF)
    assert parents(org)["Acme UK"] is None
    [item] = cli.json("review", "list", "--format", "json")
    assert (item["confidence"], item["evidence"]["grade"]) == (0.5, "conflict")


def test_review_approve_applies_on_the_next_run_and_reject_is_final(org, cli):
    """Approved links are applied by the next run (rule and review id in the ledger); a rejected pair is
    never proposed again, even though the rule still finds it."""
    org.account("001D", "Delta", BillingCountry="United States")
    org.account("001DAL", "Delta Air Lines", BillingCountry="United States")
    org.account("001DDE", "Delta Dental", BillingCountry="United States")
    org.rules = shipped_rules()
    org.write()
    cli("run", *AS_OF)
    items = {i["child_id"]: i["id"] for i in cli.json("review", "list", "--format", "json")}
    assert "approved: applied on the next run" in cli("review", "approve", str(items["001DDE"]), "--note", "checked").stdout
    cli("review", "reject", str(items["001DAL"]))
    assert parents(org)["Delta Dental"] is None  # nothing happens before the next run
    out = cli("run", *AS_OF).stdout
    assert parents(org)["Delta Dental"] == "Delta" and parents(org)["Delta Air Lines"] is None
    assert "1 link(s) applied, 0 account(s) to review" in out
    status = {i["child_id"]: i["status"] for i in cli.json("review", "list", "--status", "all", "--format", "json")}
    assert status == {"001DDE": "applied", "001DAL": "rejected"}
    cli("run", *AS_OF)
    assert cli.json("review", "list", "--format", "json") == []


def test_review_decisions_refuse_unknown_and_final_items(delta, cli):
    """Approving an unknown id or re-deciding an applied item is a clear error (exit 2)."""
    cli("run", *AS_OF)
    err = cli("review", "approve", "999", expect=2).stderr
    assert "no review item 999" in err
    cli("review", "approve", "1")
    cli("run", *AS_OF)
    assert "already applied" in cli("review", "reject", "1", expect=2).stderr


def test_review_list_shows_names_and_reasons(delta, cli):
    """The table names child and proposed parent and says why the link waits for a person."""
    cli("run", *AS_OF)
    out = cli("review", "list").stdout
    assert "#1" in out and "001DDE Delta Dental  ->  001D Delta" in out and "below auto_apply 0.95" in out
    csv_out = cli("review", "list", "--format", "csv").stdout.splitlines()
    assert csv_out[0].startswith("id,status,confidence,rule") and len(csv_out) == 2


def test_plan_records_nothing_in_the_review_queue(delta, cli, tmp_path):
    """`plan` shows review items in plan.json but leaves the queue untouched."""
    cli("plan", *AS_OF, "--out", str(tmp_path / "p.json"))
    review = json.loads((tmp_path / "p.json").read_text())["review"]
    assert [(r["id"], r["new"], r["rule"]) for r in review] == [("001DDE", "001D", "name-qualifier")]
    assert cli("review", "list").stdout.strip() == "no pending review items"


def test_rollback_restores_repaired_parent_links(reference, cli):
    """Rolling back a repair run puts every ParentId back as it was."""
    cli("run", *AS_OF)
    run_id = cli.json("runs", "list", "--format", "json")[0]["id"]
    cli("rollback", run_id)
    assert set(parents(reference).values()) == {None}


def test_rerun_after_repair_writes_nothing(reference, cli):
    """Once links are repaired, the next run proposes nothing new and writes nothing."""
    cli("run", *AS_OF)
    out = cli("run", *AS_OF).stdout
    assert "planned 0" in out and "legal repair: 0 link(s) applied" in out


def test_duplicates_are_flagged_never_merged(org, cli, tmp_path):
    """Same normalised name + domain + country: a data-quality finding and plan.json duplicates; both stay."""
    org.account("001A", "Hulu, LLC", BillingCountry="United States", Website="https://hulu.com")
    org.account("001B", "HULU llc.", BillingCountry="USA", Website="www.hulu.com")
    org.account("001C", "Hulu", BillingCountry="Japan", Website="hulu.jp")
    org.rules = shipped_rules()
    org.write()
    cli("plan", *AS_OF, "--out", str(tmp_path / "p.json"))
    plan = json.loads((tmp_path / "p.json").read_text())
    assert plan["duplicates"] == [{"name": "hulu", "domain": "hulu.com", "country": "US", "ids": ["001A", "001B"]}]
    assert any(f["kind"] == "duplicate" and f["records"] == ["001A", "001B"] for f in plan["findings"])
    assert not [c for c in plan["changes"] if c["field"] == "ParentId"]


def test_an_approved_link_whose_account_is_gone_is_settled_as_blocked(delta, cli):
    """Approve, then the child disappears from the org before the next run: the item ends 'blocked' with why."""
    cli("run", *AS_OF)
    cli("review", "approve", "1")
    delta.accounts = [a for a in delta.accounts if a["Id"] != "001DDE"]
    delta.write()
    cli("run", *AS_OF)
    [item] = cli.json("review", "list", "--status", "all", "--format", "json")
    assert item["status"] == "blocked" and "no longer in the org" in item["note"]
