"""A run's long batches of changes kept as columnar files beside the ledger: every way the ledger is read (runs
show, export, rollback, settling a killed run, counts) gives what rows would, and a file lost or altered is an
error naming it."""
from __future__ import annotations

import csv
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from conftest import Cli
from nrr_engine import change_files
from nrr_engine.errors import SourceUnavailable
from nrr_engine.ledger import Ledger
from nrr_engine.model import Change, FieldChanges, SnapshotChanges

AS_OF = ("--as-of", "2026-11-15")


def _batches() -> list:
    """Every kind of batch a plan holds: inserts, links with evidence, long rollup columns, snapshots."""
    ids = np.array([f"001{k:015d}" for k in range(6)], dtype=object)
    return [
        [Change("Account", "001X", "__insert__", None, '{"Name": "Zeta"}', "placeholder:r", confidence=0.9)],
        FieldChanges("Account", "ParentId", "links", ids[:2], np.array([None, "001A"], dtype=object),
                     np.array(["001B", "001C"], dtype=object), meta=[("name", 0.97, {"why": "US"}), ("name", 0.96, None)]),
        FieldChanges("Account", "Hierarchy_Depth__c", "rollup", ids, np.array([None, "1", "", None, "2", "3"], dtype=object),
                     np.array(["0", "2", "1", "1", "é ü", None], dtype=object)),
        FieldChanges("Account", "Hierarchy_ARR__c", "rollup", ids[:3], np.array([None] * 3, dtype=object),
                     np.array(["1.00", "2.00", "3.00"], dtype=object)),
        SnapshotChanges("KPI_Snapshot__c", keys=["legal:001A:2026-10", "legal:001B:2026-10", "legal:001C:2026-10"],
                        ids=[None, "a0X1", None], old=[None, '{"a": 1}', None], new=['{"a": 2}', None, '{"a": 3}']),
    ]


def _ledger(path: Path, file_min_rows: int) -> Ledger:
    led = Ledger(path)
    led.file_min_rows = file_min_rows
    led.start_run({"id": "R1", "job": "nightly", "mode": "run", "as_of": "2026-11-15", "started": "2026-11-15T02:00"})
    return led


def _everything(led: Ledger) -> dict:
    groups = led.change_groups("R1", ("applied", "failed", "pending"))
    return {"changes": list(led.changes("R1")), "applied": list(led.changes("R1", status="applied")),
            "counts": led.change_counts("R1"), "groups": groups, "has_applied": led.has_applied("R1"),
            "iter": {g: list(led.iter_changes("R1", *g, ("applied", "pending"))) for g in groups},
            "links": led.link_details("R1", "Account", "ParentId", ["001000000000000000", "001000000000000001"]),
            "run_counts": led.run_counts(led.run("R1"))}


def test_a_run_kept_in_files_reads_back_exactly_as_rows(tmp_path):
    """Changes recorded with long batches as files (failures among them, then settled and marked) read back by
    every ledger method exactly as the same changes recorded as rows."""
    seen = []
    for name, minimum in (("rows", 10**9), ("files", 3)):
        led = _ledger(tmp_path / name / "nrr.db", minimum)
        led.record_changes("R1", _batches(), "pending", failures={4: "FIELD_INTEGRITY_EXCEPTION: bad", 12: "locked"})
        led.settle_changes("R1", [(5, "failed", "UNABLE_TO_LOCK_ROW", None), (14, "applied", None, "a0X9")])
        assert led.mark_changes("R1", "pending", "applied") == 11
        seen.append(_everything(led))
        files = list(change_files.folder_for(led.path).rglob("*.npz"))
        assert len(files) == (0 if name == "rows" else 3), files  # two rollup columns and the snapshots
        led.close()
    rows, files = seen
    for key in rows:   # rows carry confidence/evidence only for links, which stay rows in both
        assert files[key] == rows[key], key
    assert rows["counts"] == {"applied": 12, "failed": 3}   # 11 marked, 1 settled applied
    assert [c["seq"] for c in rows["changes"]] == list(range(15))
    assert rows["changes"][4]["status"] == "failed" and rows["changes"][4]["error"] == "FIELD_INTEGRITY_EXCEPTION: bad"
    assert rows["changes"][13]["record_id"] == "a0X1" and rows["changes"][14]["record_id"] == "a0X9"
    assert [c["seq"] for c in rows["applied"]] == [s for s in range(15) if s not in (4, 5, 12)]


def test_change_files_are_private_and_a_damaged_one_is_named(tmp_path):
    """Change files are 0600 in 0700 folders; one altered or removed since is an error naming the file and the
    run, never a silent gap in rollback or export."""
    led = _ledger(tmp_path / "nrr.db", 3)
    led.record_changes("R1", _batches(), "applied")
    folder = change_files.folder_for(led.path)
    files = sorted(folder.rglob("*.npz"))
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(files[0].parent.stat().st_mode) == 0o700
    data = bytearray(files[0].read_bytes())
    data[-40] ^= 0xFF
    files[0].write_bytes(bytes(data))
    with pytest.raises(SourceUnavailable, match=rf"change file {re.escape(str(files[0]))} of run R1 .*altered or damaged"):
        list(led.changes("R1"))
    files[0].unlink()
    with pytest.raises(SourceUnavailable, match=r"of run R1 \(\d+ change\(s\)\): it is missing"):
        led.change_counts("R1") and list(led.changes("R1"))


def test_a_value_that_cannot_be_packed_keeps_its_batch_as_rows(tmp_path):
    """A NUL inside a value (files join values by NUL) keeps that batch as rows, read back unchanged."""
    led = _ledger(tmp_path / "nrr.db", 2)
    ids = np.array(["001A", "001B", "001C"], dtype=object)
    batch = FieldChanges("Account", "Description", "rollup", ids, np.array([None] * 3, dtype=object),
                         np.array(["a\x00b", "c", None], dtype=object))
    led.record_changes("R1", [batch], "applied")
    assert not list(change_files.folder_for(led.path).rglob("*.npz"))
    assert [c["new"] for c in led.changes("R1")] == ["a\x00b", "c", None]


def test_files_of_a_run_that_never_reached_the_ledger_are_removed(tmp_path):
    """A record that fails after writing its files (the ledger refuses the commit) leaves no files; files a
    killed run left without ledger rows are removed by the next record."""
    led = _ledger(tmp_path / "nrr.db", 3)
    folder = change_files.folder_for(led.path)
    change_files.write(folder, "KILLED", 0, {"ids": ["001A"], "old": [None], "new": ["1"]})
    led.db.conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON change_parts BEGIN SELECT RAISE(ABORT, 'no'); END")
    with pytest.raises(Exception, match="no"):
        led.record_changes("R1", _batches(), "applied")
    assert not (folder / "R1").exists() and not (folder / "KILLED").exists()
    assert led.change_counts("R1") == {}
    led.db.conn.execute("DROP TRIGGER refuse")
    led.record_changes("R1", _batches(), "applied")
    assert led.change_counts("R1") == {"applied": 15}


def test_a_large_run_writes_its_rollups_as_files_and_rolls_back_and_exports_from_them(tmp_path):
    """At 25,000 accounts the rollup fields of a first run are change files: `runs show` lists them, `export`
    writes the same change set as their rows would, and `rollback` restores every record they changed."""
    Cli(None)("demo", "--accounts", "25000", "--dir", str(tmp_path / "d"))
    cfg = tmp_path / "d" / "config" / "nrr.yaml"
    cli = Cli(cfg)
    folder = tmp_path / "d" / "state" / "nrr-changes"
    run_id = cli.json("runs", "list", "--format", "json")[0]["id"]
    files = sorted((folder / run_id).glob("*.npz"))
    assert len(files) >= 4, files                  # ultimate parent, depth, subtree ARR, child count
    shown = cli.json("runs", "show", run_id, "--format", "json", "--changes", "5")
    assert shown["change_status"]["applied"] > 100_000 and len(shown["changes"]) == 5
    led = Ledger(tmp_path / "d" / "state" / "nrr.db")
    by_field: dict[str, int] = {}
    for c in led.changes(run_id):
        by_field[c["field"]] = by_field.get(c["field"], 0) + 1
    assert by_field["Hierarchy_Depth__c"] >= change_files.MIN_ROWS
    led.close()
    cli("export", "--out", str(tmp_path / "x"))
    exported = {}
    for p in (tmp_path / "x" / "changes" / run_id).glob("Account.update.*.csv"):
        with open(p, newline="", encoding="utf-8-sig") as fh:
            for r in csv.DictReader(fh):
                exported.setdefault(r["Id"], {}).update({k: v for k, v in r.items() if k != "Id"})
    depth = [r["Hierarchy_Depth__c"] for r in exported.values() if "Hierarchy_Depth__c" in r]
    assert len(depth) == by_field["Hierarchy_Depth__c"] and all(d.isdigit() for d in depth)
    assert "serial mode (Settings | Settings: Use Bulk API and Enable serial mode for Bulk API)" in \
        (tmp_path / "x" / "changes" / run_id / "LOAD-ORDER.txt").read_text()
    cli("rollback", run_id)
    cli("export", "--out", str(tmp_path / "y"))
    (order,) = (tmp_path / "y" / "changes").glob("*/LOAD-ORDER.txt")
    soql = next(order.parent.glob("KPI_Snapshot__c.remove-by-key.soql")).read_text().splitlines()
    assert len(soql) > 1 and f"run each of the {len(soql)} SOQL statements (one a line" in order.read_text()
    with open(tmp_path / "d" / "org" / "Account.csv", newline="", encoding="utf-8-sig") as fh:
        original = {r["Id"]: r for r in csv.DictReader(fh)}
    with open(tmp_path / "y" / "full" / "Account.csv", newline="", encoding="utf-8-sig") as fh:
        restored = {r["Id"]: r for r in csv.DictReader(fh)}
    assert restored.keys() == original.keys()
    for rid, row in restored.items():   # every field as the org had it; the rollup fields the run added, empty
        assert {k: v for k, v in row.items() if k in original[rid]} == original[rid], rid
        assert not any(v for k, v in row.items() if k not in original[rid]), rid
    assert os.stat(folder).st_mode & 0o077 == 0
