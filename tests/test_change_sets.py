"""`export`'s change sets are what Data Loader needs against the real org the CSVs came from: records the engine
created go by their external id (upsert, links, removal), records of the org's own CSVs by Id, in a load order."""
from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest

from conftest import read_csv, write_csv, zeta_family

AS_OF = ("--as-of", "2026-11-15")


def run_id(out: str) -> str:
    return out.split()[1]


def header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh))


def cells(folder: Path, pattern: str) -> set[str]:
    """Every cell of the change files matching `pattern` (headers included)."""
    out = set()
    for path in folder.glob(pattern):
        with open(path, newline="", encoding="utf-8") as fh:
            out.update(c for row in csv.reader(fh) for c in row)
    return out


@pytest.fixture
def zeta(org, cli):
    """"Zeta US" and "Zeta UK" under a placeholder parent "Zeta" the second run creates (approved in review);
    returns (the run that created it, the placeholder's working-copy Id)."""
    zeta_family(org)
    cli("run", *AS_OF)
    [item] = cli.json("review", "list", "--format", "json")
    cli("review", "approve", str(item["id"]))
    run = run_id(cli("run", *AS_OF).stdout)
    db = sqlite3.connect(org.root / "state" / "local-org.db")
    [(pid,)] = db.execute("SELECT Id FROM Account WHERE Name = 'Zeta'")
    return run, pid


def test_placeholder_parents_are_upserted_by_family_key_and_linked_by_it(zeta, cli, tmp_path):
    """The run that creates "Zeta": Account.upsert.csv creates it on Family_Key__c (no Id column); the children's
    update by Id links them with Parent:Family_Key__c, never the working copy's Id of "Zeta"; its own link to
    itself comes in a second upsert; the printed load order puts the placeholder first."""
    run, pid = zeta
    out = cli("export", "--out", str(tmp_path / "x"), "--run", run).stdout
    folder = tmp_path / "x" / "changes" / run
    assert header(folder / "Account.upsert.csv")[:2] == ["Family_Key__c", "Name"]
    assert "Id" not in header(folder / "Account.upsert.csv")
    assert read_csv(folder / "Account.upsert.csv")[0]["Family_Key__c"] == "placeholder:name:zeta"
    upd = read_csv(folder / "Account.update.csv")
    assert header(folder / "Account.update.csv")[:3] == ["Id", "Parent:Family_Key__c", "Ultimate_Parent__r:Family_Key__c"]
    assert {r["Id"]: r["Parent:Family_Key__c"] for r in upd} == {"001A": "placeholder:name:zeta",
                                                                  "001B": "placeholder:name:zeta"}
    assert read_csv(folder / "Account.upsert-links.csv") == [{"Family_Key__c": "placeholder:name:zeta",
                                                              "Ultimate_Parent__r:Family_Key__c": "placeholder:name:zeta"}]
    assert pid not in cells(folder, "Account.*.csv"), "the working copy's Id of the placeholder means nothing to the org"
    assert not list(folder.glob("*.insert.csv"))
    steps = [line for line in out.splitlines() if line.startswith("  1. ") or line.startswith("  3. ")]
    assert steps[0].startswith("  1. Upsert Account matching on Family_Key__c: Account.upsert.csv")
    assert steps[1].startswith("  3. Update Account by Id: Account.update.csv")
    assert (folder / "LOAD-ORDER.txt").read_text().splitlines()[1].startswith("1. Upsert Account matching on Family_Key__c")


def test_snapshots_are_upserted_by_external_id_and_their_removals_listed_by_it(zeta, cli, tmp_path):
    """KPI_Snapshot__c.upsert.csv has External_Id__c first, the object's fields in order and no Id; the snapshot
    of the family that was absorbed (the engine made it) is in no delete file: remove-by-key.csv lists its
    External_Id__c and the .soql finds its Id, and the summary says how to delete it."""
    run, _ = zeta
    out = cli("export", "--out", str(tmp_path / "x"), "--run", run).stdout
    folder = tmp_path / "x" / "changes" / run
    assert header(folder / "KPI_Snapshot__c.upsert.csv")[:5] == ["External_Id__c", "View__c", "Family_Root__c",
                                                                 "Month__c", "Starting_ARR__c"]
    assert "Id" not in header(folder / "KPI_Snapshot__c.upsert.csv")
    assert not list(folder.glob("*.delete.csv"))
    assert read_csv(folder / "KPI_Snapshot__c.remove-by-key.csv") == [{"External_Id__c": "legal:001A:2026-10"}]
    assert (folder / "KPI_Snapshot__c.remove-by-key.soql").read_text() == (
        "SELECT Id, External_Id__c FROM KPI_Snapshot__c WHERE External_Id__c IN ('legal:001A:2026-10')\n")
    assert ("note: KPI_Snapshot__c.remove-by-key.csv: 1 KPI_Snapshot__c record(s) to delete that the org knows only "
            "by External_Id__c") in out
    assert "Data Loader deletes by Id: run the SOQL in KPI_Snapshot__c.remove-by-key.soql" in out


def test_a_rollback_removes_the_placeholder_by_its_key_and_updates_only_org_records(zeta, cli, tmp_path):
    """The rollback of that run: the children go back by Id (ParentId #N/A); "Zeta" is listed for removal by
    Family_Key__c, and none of its own field restores (it is deleted) nor any working-copy Id is in a file."""
    run, pid = zeta
    cli("rollback", run)
    rb = cli.json("runs", "list", "--format", "json")[0]["id"]
    cli("export", "--out", str(tmp_path / "x"), "--run", rb)
    folder = tmp_path / "x" / "changes" / rb
    assert {r["Id"]: r["ParentId"] for r in read_csv(folder / "Account.update.csv")} == {"001A": "#N/A", "001B": "#N/A"}
    assert read_csv(folder / "Account.remove-by-key.csv") == [{"Family_Key__c": "placeholder:name:zeta"}]
    assert not list(folder.glob("*.delete.csv")) and not list(folder.glob("Account.upsert*.csv"))
    assert pid not in cells(folder, "*.csv")
    assert read_csv(folder / "KPI_Snapshot__c.upsert.csv")[0]["External_Id__c"] == "legal:001A:2026-10"


def test_deletes_of_records_from_the_org_csvs_go_by_their_real_id(org, cli, tmp_path):
    """A KPI_Snapshot__c.csv exported from the org (BOM, CRLF, quoted, as Data Loader writes) holds a snapshot of a
    family that no longer exists: KPI_Snapshot__c.delete.csv deletes it by its real Id; Account updates use the
    Ids of Account.csv, with the key first and then the object's field order."""
    org.account("001A", "Acme")
    org.account("001B", "Acme UK", "001A")
    org.sub("001A", "2025-01-01", "", "1000")
    org.sub("001B", "2025-01-01", "", "500")
    org.write()
    snap = org.org / "KPI_Snapshot__c.csv"
    write_csv(snap, [{"Id": "a0K5g00000REAL1AAA", "External_Id__c": "legal:001B:2026-10", "View__c": "legal",
                      "Family_Root__c": "001B", "Month__c": "2026-10", "Ending_ARR__c": "500.00"}])
    snap.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(b",".join(b'"' + c + b'"' for c in line.split(b","))
                                                    for line in snap.read_bytes().splitlines()) + b"\r\n")
    run = run_id(cli("run", *AS_OF).stdout)
    out = cli("export", "--out", str(tmp_path / "x")).stdout
    folder = tmp_path / "x" / "changes" / run
    assert read_csv(folder / "KPI_Snapshot__c.delete.csv") == [{"Id": "a0K5g00000REAL1AAA"}]
    assert not (folder / "KPI_Snapshot__c.remove-by-key.csv").exists()
    assert header(folder / "Account.update.csv") == ["Id", "Ultimate_Parent__c", "Hierarchy_Depth__c",
                                                     "Hierarchy_ARR__c", "Child_Count__c"]
    assert "3. Delete KPI_Snapshot__c by Id: KPI_Snapshot__c.delete.csv (1 record(s)" in out
