"""The shipped demo org and the generator: reference stories come out right; orgs are deterministic."""
from __future__ import annotations

import filecmp
import sqlite3

import pytest

from conftest import Cli, read_csv
from nrr_engine.demo import generate


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`nrr-engine demo` run once into a temp dir: its folder and stdout."""
    root = tmp_path_factory.mktemp("demo") / "d"
    result = Cli(None)("demo", "--dir", str(root))
    return root, result.stdout


def snapshot(root, name: str) -> dict:
    db = sqlite3.connect(root / "state" / "local-org.db")
    rid = db.execute("SELECT Id FROM Account WHERE Name = ?", (name,)).fetchone()[0]
    row = db.execute("SELECT * FROM KPI_Snapshot__c WHERE External_Id__c = ?", (f"legal:{rid}:2026-10",)).fetchone()
    cols = [d[0] for d in db.execute("SELECT * FROM KPI_Snapshot__c LIMIT 0").description]
    return dict(zip(cols, row))


def test_demo_prints_the_run_summary(demo):
    """The summary shows accounts, families, changes and NRR/GRR family next to naive, month and T12M."""
    _, out = demo
    assert "accounts read: 1665" in out and "families: legal" in out and "applied" in out
    assert "2026-10 last month: NRR" in out and "2026-10 trailing 12 months: NRR" in out and "naive account level" in out


def test_disney_transfer_is_not_churn_and_the_repaired_hulu_deal_is_expansion(demo):
    """Hulu, LLC -> Fox (100k) is an internal transfer; Disney -20k plus the 60k deal on the unlinked Hulu
    record, which the mapping links under Disney, is a 40k family expansion (worked example 3), no churn."""
    s = snapshot(demo[0], "The Walt Disney Company")
    assert (s["Starting_ARR__c"], s["Ending_ARR__c"]) == ("400000.00", "440000.00")
    assert (s["Expansion_ARR__c"], s["Contraction_ARR__c"], s["Churn_ARR__c"], s["NRR__c"]) == \
        ("40000.00", "0.00", "0.00", "1.1000")


def test_enterprise_east_growth_offsets_west_churn(demo):
    """Enterprise East +50k while West churns 40k: the family expands by 10k."""
    s = snapshot(demo[0], "Enterprise Holdings")
    assert (s["Starting_ARR__c"], s["Ending_ARR__c"], s["Expansion_ARR__c"]) == ("200000.00", "210000.00", "10000.00")
    assert s["Account_Count__c"] == "3"


def test_repair_links_the_reference_subsidiaries(demo):
    """The demo run links Acme US / Acme eComm under Acme HQ, Hulu under Disney and UOG Singapore under Corp."""
    db = sqlite3.connect(demo[0] / "state" / "local-org.db")
    parent = dict(db.execute("SELECT a.Name, p.Name FROM Account a LEFT JOIN Account p ON p.Id = a.ParentId "
                             "WHERE a.Name IN ('Acme US', 'Acme eComm', 'Hulu', 'United Oil & Gas (Singapore)')"))
    assert parent == {"Acme US": "Acme HQ", "Acme eComm": "Acme HQ", "Hulu": "The Walt Disney Company",
                      "United Oil & Gas (Singapore)": "United Oil & Gas Corp."}
    acme = snapshot(demo[0], "Acme HQ")
    assert acme["Ending_ARR__c"] == "280000.00" and acme["Account_Count__c"] == "3"


def test_demo_rollups_reach_the_ultimate_parent(demo):
    """United Oil & Gas Corp. carries its UK and (repaired) Singapore subsidiaries' ARR."""
    db = sqlite3.connect(demo[0] / "state" / "local-org.db")
    rows = dict(db.execute("SELECT Name, Hierarchy_ARR__c FROM Account WHERE Name LIKE 'United Oil%'").fetchall())
    assert rows == {"United Oil & Gas Corp.": "420000.00", "United Oil & Gas, UK": "80000.00",
                    "United Oil & Gas (Singapore)": "40000.00"}


def test_generator_is_deterministic_and_keeps_the_truth(tmp_path):
    """Same seed, same files; the truth file names a true parent that the org sometimes lacks."""
    a = generate(tmp_path / "a" / "org", accounts=3000, seed=11)
    b = generate(tmp_path / "b" / "org", accounts=3000, seed=11)
    assert a == b and a["accounts"] == 3000
    for name in ("Account.csv", "Subscription__c.csv"):
        assert filecmp.cmp(tmp_path / "a" / "org" / name, tmp_path / "b" / "org" / name, shallow=False)
    truth = {r["Id"]: r["TrueParentId"] for r in read_csv(tmp_path / "a" / "truth.csv")}
    accounts = read_csv(tmp_path / "a" / "org" / "Account.csv")
    assert len(truth) == 3000
    missing = [r for r in accounts if truth[r["Id"]] and not r["ParentId"]]
    linked = [r for r in accounts if r["ParentId"]]
    assert missing and linked and all(truth[r["Id"]] == r["ParentId"] for r in linked)
    c = generate(tmp_path / "c" / "org", accounts=3000, seed=12)
    assert not filecmp.cmp(tmp_path / "a" / "org" / "Account.csv", tmp_path / "c" / "org" / "Account.csv", shallow=False)
    assert c["accounts"] == 3000


def test_synthetic_demo_via_cli(tmp_path):
    """`demo --accounts N` generates an org of N accounts and runs on it."""
    out = Cli(None)("demo", "--accounts", "800", "--dir", str(tmp_path / "s")).stdout
    assert "generated 800 accounts" in out and "accounts read: 800" in out


def test_rollback_of_the_demo_run_then_plan_shows_the_same_changes(tmp_path):
    """Bar: rollback of the demo run restores the org, and the next plan lists exactly the changes it had applied."""
    import json
    Cli(None)("demo", "--dir", str(tmp_path / "d"))
    cli = Cli(tmp_path / "d" / "config" / "nrr.yaml")
    run_id = cli.json("runs", "list", "--format", "json")[0]["id"]
    applied = cli.json("runs", "show", run_id, "--changes", "100000", "--format", "json")["changes"]
    cli("rollback", run_id)
    cli("plan", "--out", str(tmp_path / "plan.json"), "--as-of", "2026-11-15")
    planned = json.loads((tmp_path / "plan.json").read_text())["changes"]
    key = lambda c: (c["object"], c.get("external_id") or c.get("id") or c.get("record_id"), c["field"])  # noqa: E731
    assert len(applied) == len(planned) > 6000
    assert sorted(map(key, applied)) == sorted(map(key, planned))
    assert {key(c): c["new"] for c in planned if c["field"] != "(upsert)"} == \
           {key(c): c["new"] for c in applied if c["field"] != "(upsert)"}


def test_shipped_demo_org_is_the_generators_output(tmp_path):
    """The demo org in the package is exactly generate(families=500, seed=7): regenerate it after changing
    the generator (this test fails until then)."""
    from importlib import resources
    generate(tmp_path / "org", families=500, seed=7)
    shipped = resources.files("nrr_engine").joinpath("demo/org")
    for name in ("Account.csv", "Subscription__c.csv", "User.csv"):
        assert (tmp_path / "org" / name).read_bytes() == shipped.joinpath(name).read_bytes(), name
