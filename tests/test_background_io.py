"""Work done beside the run on the second core: the accounts' first load into the working copy and SQLite's WAL
checkpoints."""
from __future__ import annotations

import multiprocessing
import shutil
import sqlite3
import threading

import pytest

from conftest import write_csv
from nrr_engine import wal
from nrr_engine.errors import DataError
from nrr_engine.ledger import Ledger
from nrr_engine.sources import local_org
from nrr_engine.sources.local_org import LocalOrg

AS_OF = ("--as-of", "2026-11-15")
ROWS = [{"Id": f"001{i:015d}", "Name": f"Account {i}", "ParentId": ""} for i in range(3_000)]


def _org(tmp_path, rows=ROWS):
    (tmp_path / "org").mkdir(exist_ok=True)
    write_csv(tmp_path / "org" / "Account.csv", rows)
    return LocalOrg(tmp_path / "org", tmp_path / "wc.db")


def test_a_first_load_in_the_background_is_read_from_the_csv_without_waiting(tmp_path):
    """While Account's first load runs in another process, its header and its columns come from the CSV (the
    table it will make is that file); once adopted, the working copy holds exactly those rows."""
    lo = _org(tmp_path)
    lo.sync(["Account"], background=["Account"])
    assert "Account" in lo._pending and len(multiprocessing.active_children()) == 1
    assert lo.columns("Account") == ["Id", "Name", "ParentId"] and lo.has_field("Account", "name")
    cols = lo.read_columns("Account", ["Id", "Name"])
    assert "Account" in lo._pending, "reading the columns waited for the load"
    assert cols[0] == [r["Id"] for r in ROWS] and cols[1][7] == "Account 7"
    lo.finish_sync()
    assert not lo._pending
    assert list(lo.read("Account", ["Id", "Name"])) == [(r["Id"], r["Name"]) for r in ROWS]
    lo.close()


def test_a_background_reload_of_a_table_the_engine_wrote_is_waited_for(tmp_path):
    """A reload of an object the working copy already holds (with the engine's writes) is a merge, not the file:
    its first read waits for it, and sees the engine's value kept."""
    lo = _org(tmp_path)
    lo.sync(["Account"])
    with lo.transaction():
        lo.update_fields("Account", ["Ultimate_Parent__c"], [ROWS[0]["Id"]], [["001X"]])
    write_csv(tmp_path / "org" / "Account.csv", [*ROWS, {"Id": "001999999999999999", "Name": "New", "ParentId": ""}])
    lo.sync(["Account"], background=["Account"])
    assert "Ultimate_Parent__c" in lo.columns("Account") and not lo._pending   # waited, then adopted
    assert lo.get("Account", [ROWS[0]["Id"]], ["Ultimate_Parent__c"]) == {ROWS[0]["Id"]: ("001X",)}
    lo.close()


def test_a_file_changed_during_its_background_load_is_not_read_as_the_load(tmp_path):
    """The CSV rewritten after the load started: reading it is no longer reading what the load makes, so the
    read waits for the load, which says the file changed while it was read (nothing of it loaded)."""
    rows = [{"Id": f"001{i:015d}", "Name": f"Account {i}" * 20, "ParentId": ""} for i in range(60_000)]
    lo = _org(tmp_path, rows)
    lo.sync(["Account"], background=["Account"])
    write_csv(tmp_path / "org" / "Account.csv", rows[:10])
    with pytest.raises(Exception, match="changed while it was being read|Account"):
        lo.read_columns("Account", ["Id"])
    lo.close()


def test_adopting_aside_leaves_this_thread_free_and_any_use_of_the_working_copy_waits(tmp_path):
    """adopt_aside returns at once, the load's table enters the working copy in another thread (this one holds a
    lock the adoption takes, and goes on meanwhile), and the next use of the working copy waits for it."""
    lo = _org(tmp_path)
    lo.sync(["Account"], background=["Account"])
    gate = threading.Lock()
    gate.acquire()
    real = lo._adopt

    def held_adopt(*args):
        with gate:   # the adoption cannot finish until this thread lets it
            real(*args)

    lo._adopt = held_adopt
    lo.adopt_aside()
    assert not lo._pending and lo._adopter is not None and lo._adopter.is_alive(), "the adoption is not aside"
    gate.release()   # (had adopt_aside waited for the adoption, this line would never run)
    assert list(lo.read("Account", ["Id", "Name"])) == [(r["Id"], r["Name"]) for r in ROWS]
    assert lo._adopter is None
    lo.close()


def test_a_load_that_fails_aside_raises_at_the_next_use_of_the_working_copy(tmp_path):
    """A CSV the load rejects (a duplicate Id) raises its error where the working copy is next used, once; no
    table is left half-made, and the next sync loads it again."""
    rows = [*ROWS, ROWS[5]]
    lo = _org(tmp_path, rows)
    lo.sync(["Account"], background=["Account"])
    lo.adopt_aside()
    with pytest.raises(DataError, match=r"Account.csv:3002: duplicate Id 001000000000000005 \(first on line 7; an exact copy of that line\)"):
        lo.columns("Account")
    assert lo._adopter is None and not lo.has_table("Account")
    write_csv(tmp_path / "org" / "Account.csv", ROWS)
    assert lo.sync(["Account"]) == ["Account"] and len(list(lo.read("Account", ["Id"]))) == len(ROWS)
    lo.close()


def test_the_scan_for_new_ids_made_aside_gives_the_ids_a_scan_made_then_gives(tmp_path):
    """adopt_aside's scan for a key prefix (a dangling reference into the engine's range, in any column) leaves
    free_ids handing out exactly what it hands out when it scans itself: never an Id a record points at."""
    from nrr_engine.ids import sf_id
    dangling = sf_id("a0K", 41)
    rows = [*ROWS[:-1], {**ROWS[-1], "ParentId": dangling}]
    lo = _org(tmp_path, rows)
    lo.sync(["Account"], background=["Account"])
    lo.adopt_aside(["a0K"])
    lo.finish_sync()
    assert lo._referenced == {"a0K": 41}, "the thread did not scan"
    aside = lo.free_ids("KPI_Snapshot__c", "a0K", 3)
    lo._referenced.clear()
    assert lo.free_ids("KPI_Snapshot__c", "a0K", 3) == aside == [sf_id("a0K", n) for n in (42, 43, 44)]
    lo.adopt_aside(["a0K"])   # nothing pending, the prefix scanned: no thread
    assert lo._adopter is None
    lo.close()


def test_closing_while_adopting_aside_waits_and_keeps_nothing_half_made(tmp_path):
    lo = _org(tmp_path)
    lo.sync(["Account"], background=["Account"])
    lo.adopt_aside()
    lo.close()
    con = sqlite3.connect(tmp_path / "wc.db")
    assert con.execute("SELECT count(*) FROM Account").fetchone()[0] == len(ROWS)
    assert not [p for p in tmp_path.iterdir() if ".load-" in p.name], "a side file was left"


def test_only_a_big_account_file_loads_aside(tmp_path):
    """A small Account.csv loads inline (a process costs more than its load); one of ASIDE_MIN_BYTES or more
    loads in another process."""
    lo = _org(tmp_path)
    assert not lo.worth_loading_aside("Account") and not lo.worth_loading_aside("Missing")
    big = [{"Id": f"001{i:015d}", "Name": "x" * 200, "ParentId": ""} for i in range(local_org.ASIDE_MIN_BYTES // 200)]
    write_csv(tmp_path / "org" / "Account.csv", big)
    assert lo.worth_loading_aside("Account")
    lo.close()


def test_a_bad_row_found_by_the_background_load_stops_the_run_naming_the_line(org, cli, monkeypatch):
    """Accounts loading aside (any size, here) with a duplicate Id: the run stops with the file and line and
    no traceback, and the working copy holds no accounts (nothing written)."""
    monkeypatch.setattr(local_org, "ASIDE_MIN_BYTES", 0)
    a = org.account("001ACM", "Acme Inc")
    org.sub(a, "2025-01-01", "", "100000")
    org.account("001ACM", "Acme again")
    org.write()
    r = cli("run", *AS_OF, expect=2)
    assert "Account.csv:3" in r.stderr and "duplicate Id" in r.stderr and "Traceback" not in r.stderr
    assert not (org.root / "state" / "local-org.db").exists() or not sqlite3.connect(
        org.root / "state" / "local-org.db").execute("SELECT name FROM sqlite_master WHERE name = 'Account'").fetchone()


def test_a_big_commit_is_checkpointed_in_the_background(tmp_path):
    """The ledger leaves checkpoints to a thread: after a transaction bigger than the threshold and wal.wait(),
    the database file alone (without its WAL) holds the transaction."""
    led = Ledger(tmp_path / "nrr.db")
    assert led.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    keys = [f"legal:001{i:015d}:2026-10" for i in range(120_000)]
    led.upsert_snapshots("run1", keys, ['{"arr": 1}'] * len(keys))
    wal.wait(tmp_path / "nrr.db")
    shutil.copy(tmp_path / "nrr.db", tmp_path / "alone.db")   # the file, not its -wal
    n = sqlite3.connect(tmp_path / "alone.db").execute("SELECT count(*) FROM snapshots").fetchone()[0]
    assert n == len(keys)
    led.close()


def test_a_small_commit_starts_no_checkpoint(tmp_path):
    """Below the threshold nothing starts: the WAL keeps the pages until it grows (as SQLite's own would)."""
    led = Ledger(tmp_path / "nrr.db")
    led.upsert_snapshots("run1", ["legal:001000000000000001:2026-10"], ['{"arr": 1}'])
    assert not any(t.name == "nrr-checkpoint" and t.is_alive() for t in threading.enumerate())
    shutil.copy(tmp_path / "nrr.db", tmp_path / "alone.db")
    tables = {r[0] for r in sqlite3.connect(tmp_path / "alone.db").execute("SELECT name FROM sqlite_master")}
    assert "snapshots" not in tables, "the database file holds what only the WAL should"
    led.close()
