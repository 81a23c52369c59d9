"""One run sees one world: on the hand-built Globex org (../shared/data/globex, figures computed by hand), a run's
figures, rollups and snapshots reflect the links it applies; rollback, absorbed families and reloads of the CSVs
leave nothing stale behind."""
from __future__ import annotations

import os
import shutil
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from conftest import Cli, links_to_review, read_csv, write_csv

GLOBEX = Path(__file__).resolve().parents[2] / "shared" / "data" / "globex"
AS_OF = ("--as-of", "2026-11-15")
CORP, UK, GMBH, INITECH, JAPAN = ("001000000000G01AAA", "001000000000G02AAA", "001000000000G03AAA",
                                  "001000000000G05AAA", "001000000000G06AAA")
# Links the org's README says are missing and these tests approve. Globex GmbH's (the same name under another legal
# form) is proposed too and left pending: its ARR is flat, so every figure is the same with or without it.
TRUE_PARENTS = {UK: CORP, INITECH: CORP, JAPAN: CORP}


@pytest.fixture
def globex(tmp_path) -> Cli:
    """`nrr-engine init` scaffolding with the Globex CSVs and mapping table in place of the sample org, every link
    to review (the first run applies none: these tests approve them)."""
    if not GLOBEX.is_dir():
        pytest.skip(f"the hand-built Globex org is not at {GLOBEX} (it ships in ../shared/data)")
    Cli()("init", str(tmp_path / "g"))
    root = tmp_path / "g"
    for p in (root / "org").iterdir():
        p.unlink()
    for name in ("Account.csv", "Subscription__c.csv"):
        shutil.copy(GLOBEX / name, root / "org" / name)
    shutil.copy(GLOBEX / "mappings.csv", root / "rules" / "mappings.csv")
    links_to_review(root)
    return Cli(root / "config" / "nrr.yaml")


def approve_true_links(cli: Cli) -> list[int]:
    """Approve, in the review queue, the pending links that are the org's true missing links."""
    items = cli.json("review", "list", "--format", "json")
    chosen = [i["id"] for i in items if TRUE_PARENTS.get(i["child_id"]) == i["parent_id"]]
    assert len(chosen) == 3, items
    cli("review", "approve", *map(str, chosen))
    return chosen


def summary(cli: Cli, *args: str) -> dict:
    """The ledger summary of the last run the CLI made (what the run printed)."""
    run_id = cli(*args).stdout.split()[1]
    return cli.json("runs", "show", run_id, "--format", "json")["summary"]


def t12m(cli: Cli) -> dict:
    """The T12M report's figures (without `from_run`: which run's store it was read from, if any)."""
    fig = cli.json("report", "nrr", "--period", "2026-10", "--window", "12", "--format", "json", *AS_OF)
    fig.pop("from_run", None)
    return fig


def snapshot_rows(cli: Cli, month: str = "2026-10") -> dict[str, Decimal]:
    """External id -> ending ARR of the month's KPI snapshot records in the working copy."""
    db = sqlite3.connect(cli.config.parent.parent / "state" / "local-org.db")
    return {k: Decimal(v) for k, v in db.execute(
        "SELECT External_Id__c, Ending_ARR__c FROM KPI_Snapshot__c WHERE External_Id__c LIKE ?", (f"%:{month}",))}


def parents(cli: Cli) -> dict[str, str | None]:
    db = sqlite3.connect(cli.config.parent.parent / "state" / "local-org.db")
    return dict(db.execute("SELECT Id, ParentId FROM Account"))


def test_the_run_that_applies_links_reports_the_repaired_families(globex):
    """The run applying approved links prints the hand-computed T12M NRR 89.5 % (not 79.0 %), and a rerun plans 0."""
    globex("run", *AS_OF)
    approve_true_links(globex)
    s = summary(globex, "run", *AS_OF)
    fam = s["nrr"]["legal"]["12"]["family"]
    assert (fam["start"], fam["end"], fam["nrr"], fam["grr"]) == ("475000.00", "425000.00", "0.894737", "0.873684")
    assert (fam["expansion"], fam["contraction"], fam["churn"]) == ("10000.00", "35000.00", "25000.00")
    assert (fam["internal_transfers"], fam["new_logo"]) == ("70000.00", "45000.00")
    naive = s["nrr"]["legal"]["12"]["naive"]
    assert (naive["end"], naive["nrr"], naive["churn"], naive["new_logo"]) == ("375000.00", "0.789474", "115000.00",
                                                                               "95000.00")
    assert s["families"]["legal"] == 7
    assert globex("run", *AS_OF).stdout.count("changes: planned 0") == 1
    assert t12m(globex)["family"]["nrr"] == "0.894737"


def test_absorbed_families_lose_their_snapshot(globex):
    """After Initech and Globex Japan join Globex Corporation, the 2026-10 snapshot rows sum to the month's 482,000."""
    globex("run", *AS_OF)
    before = snapshot_rows(globex)
    assert f"legal:{INITECH}:2026-10" in before and f"legal:{JAPAN}:2026-10" in before
    approve_true_links(globex)
    run_id = globex("run", *AS_OF).stdout.split()[1]
    rows = snapshot_rows(globex)
    assert sum(rows.values()) == 482_000 and len(rows) == 6
    assert f"legal:{INITECH}:2026-10" not in rows and f"legal:{JAPAN}:2026-10" not in rows
    assert rows[f"legal:{CORP}:2026-10"] == 120_000 + 60_000 + 50_000
    deleted = [c for c in globex.json("runs", "show", run_id, "--format", "json")["changes"] if c["field"] == "(upsert)" and c["new"] is None]
    assert {c["external_id"] for c in deleted} == {f"legal:{INITECH}:2026-10", f"legal:{JAPAN}:2026-10"}


def test_rollback_then_report_equals_the_report_before_the_run(globex):
    """Rolling back the repair run restores the families: the report equals the pre-run one, the next run's
    snapshots are right at once, and the links' review items come back as pending, saying why."""
    globex("run", *AS_OF)
    chosen = approve_true_links(globex)
    before_report, before_rows = t12m(globex), snapshot_rows(globex)
    run_id = globex("run", *AS_OF).stdout.split()[1]
    assert t12m(globex) != before_report
    globex("rollback", run_id)
    assert t12m(globex) == before_report
    assert snapshot_rows(globex) == before_rows
    s = summary(globex, "run", *AS_OF)
    assert s["changes"] == {"planned": 0}
    assert snapshot_rows(globex) == before_rows
    assert s["nrr"]["legal"]["12"]["family"]["nrr"] == before_report["family"]["nrr"] == "0.789474"
    items = {i["id"]: i for i in globex.json("review", "list", "--format", "json")}
    assert set(chosen) <= set(items)
    assert all("is no longer in the org" in items[i]["note"] for i in chosen)
    assert s["repair"]["legal"]["review"] == len(items)


def test_touching_or_copying_the_csvs_changes_nothing(globex, tmp_path):
    """`touch Account.csv` or `cp -r` of the org keeps every repaired link; a rerun plans 0 and NRR holds."""
    globex("run", *AS_OF)
    approve_true_links(globex)
    globex("run", *AS_OF)
    repaired = parents(globex)
    assert all(repaired[c] == p for c, p in TRUE_PARENTS.items())
    root = globex.config.parent.parent
    os.utime(root / "org" / "Account.csv")
    assert "changes: planned 0" in globex("run", *AS_OF).stdout
    assert parents(globex) == repaired
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)                      # new mtimes everywhere, as `cp -r` gives
    for p in (copy / "org").iterdir():
        os.utime(p)
    other = Cli(copy / "config" / "nrr.yaml")
    assert "changes: planned 0" in other("run", *AS_OF).stdout
    assert parents(other) == repaired and t12m(other)["family"]["nrr"] == "0.894737"
    pending = other.json("review", "list", "--format", "json")   # the copy's queue: the GmbH link left pending
    assert [(i["child_id"], i["parent_id"], i["status"]) for i in pending] == [(GMBH, CORP, "pending")]


def test_a_csv_edit_merges_with_the_engines_writes(globex):
    """Editing another field keeps the engine's links; editing a field the engine wrote: the CSV wins, reported."""
    globex("run", *AS_OF)
    approve_true_links(globex)
    globex("run", *AS_OF)
    path = globex.config.parent.parent / "org" / "Account.csv"
    rows = read_csv(path)
    next(r for r in rows if r["Id"] == "001000000000H01AAA")["Region__c"] = "APAC"
    write_csv(path, rows)
    assert "changes: planned 0" in globex("run", *AS_OF).stdout
    assert all(parents(globex)[c] == p for c, p in TRUE_PARENTS.items())
    next(r for r in rows if r["Id"] == UK)["ParentId"] = GMBH          # RevOps disagrees with the engine
    write_csv(path, rows)
    s = summary(globex, "run", *AS_OF)
    assert parents(globex)[UK] == GMBH
    conflict = [f for f in s["findings"] if f["kind"] == "reload_conflict"]
    assert len(conflict) == 1 and conflict[0]["records"] == [UK] and conflict[0]["severity"] == "warning"
    assert parents(globex)[JAPAN] == CORP and parents(globex)[INITECH] == CORP


def test_export_lists_the_deleted_snapshots_by_external_id(globex, tmp_path):
    """The repair run's change set lists the absorbed families' snapshots in KPI_Snapshot__c.remove-by-key.csv by
    External_Id__c (the engine created them: the org knows them by no working-copy Id), never in a delete file
    by Id; a no-op run after it does not hide it from `export`."""
    globex("run", *AS_OF)
    approve_true_links(globex)
    run_id = globex("run", *AS_OF).stdout.split()[1]
    deleted = {c["external_id"] for c in globex.json("runs", "show", run_id, "--format", "json")["changes"]
               if c["field"] == "(upsert)" and c["new"] is None}
    globex("run", *AS_OF)                                  # writes nothing
    globex("export", "--out", str(tmp_path / "out"))
    folder = tmp_path / "out" / "changes" / run_id
    rows = read_csv(folder / "KPI_Snapshot__c.remove-by-key.csv")
    assert {r["External_Id__c"] for r in rows} == deleted and len(deleted) == 2
    assert not (folder / "KPI_Snapshot__c.delete.csv").exists()


def test_review_list_shows_why_an_item_came_back(globex):
    """After a rollback, the reopened items say why in the table view too."""
    globex("run", *AS_OF)
    approve_true_links(globex)
    run_id = globex("run", *AS_OF).stdout.split()[1]
    out = globex("rollback", run_id).stdout
    assert ("14 change(s): restored 11 field(s) and 1 snapshot(s) to their old values, deleted 0 record(s) the run "
            "created, re-created 2 record(s) it deleted; no conflict") in out
    assert "family membership of 3 account(s) restored" in out
    globex("run", *AS_OF)
    shown = globex("review", "list").stdout
    assert shown.count("is no longer in the org") == 3
    assert all(i["applied_run"] is None for i in globex.json("review", "list", "--format", "json"))
