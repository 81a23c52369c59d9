"""The ARR history and the membership as Parquet files the ledger names (history_files.py): the same behaviour the
SQLite tables had (checked against those tables' own SQL), an older ledger's rows moved into files, a replacement
that fails leaving the old table, and a damaged or missing file a clear error."""
from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import Cli
from nrr_engine import history_files, ledger as ledger_mod, months
from nrr_engine.errors import SourceUnavailable
from nrr_engine.ledger import Ledger

AS_OF = ("--as-of", "2026-11-15")


# ---- the reference: the membership as the SQLite tables kept it (the ledger's code until 2026-12-03) --------

REFERENCE_SCHEMA = """
CREATE TABLE membership (view TEXT NOT NULL, account_id TEXT NOT NULL, start_month TEXT NOT NULL, end_month TEXT,
  root_id TEXT NOT NULL, run_id TEXT, PRIMARY KEY (view, account_id, start_month)) WITHOUT ROWID;
CREATE TABLE membership_log (run_id TEXT NOT NULL, op TEXT NOT NULL, view TEXT NOT NULL, account_id TEXT NOT NULL,
  start_month TEXT NOT NULL, end_month TEXT, root_id TEXT NOT NULL);
"""


def ref_commit(conn, run_id, view, month, prev_month, changed):
    conn.execute("CREATE TEMP TABLE changed_membership (account_id TEXT PRIMARY KEY, root_id TEXT NOT NULL)")
    conn.executemany("INSERT INTO temp.changed_membership VALUES (?, ?)", changed)
    log = ("INSERT INTO membership_log (run_id, op, view, account_id, start_month, end_month, root_id) "
           "SELECT ?, ?, view, account_id, start_month, end_month, root_id FROM membership "
           "WHERE view = ? AND end_month IS NULL AND account_id IN (SELECT account_id FROM temp.changed_membership) ")
    conn.execute(log + "AND start_month >= ?", [run_id, "deleted", view, month])
    conn.execute(log + "AND start_month < ?", [run_id, "closed", view, month])
    conn.execute("DELETE FROM membership WHERE view = ? AND end_month IS NULL AND start_month >= ? "
                 "AND account_id IN (SELECT account_id FROM temp.changed_membership)", [view, month])
    conn.execute("UPDATE membership SET end_month = ? WHERE view = ? AND end_month IS NULL "
                 "AND account_id IN (SELECT account_id FROM temp.changed_membership)", [prev_month, view])
    conn.execute("INSERT INTO membership SELECT ?, account_id, ?, NULL, root_id, ? FROM temp.changed_membership",
                 [view, month, run_id])
    conn.execute("DROP TABLE temp.changed_membership")


def ref_undo(conn, run_id):
    conn.execute("CREATE TEMP TABLE undo_membership AS SELECT view, account_id FROM membership "
                 "WHERE run_id = ? AND end_month IS NULL", [run_id])
    mine = "(view, account_id) IN (SELECT view, account_id FROM temp.undo_membership)"
    conn.execute(f"DELETE FROM membership WHERE run_id = ? AND end_month IS NULL AND {mine}", [run_id])
    conn.execute(f"UPDATE membership SET end_month = NULL WHERE {mine} AND (view, account_id, start_month) IN "
                 "(SELECT view, account_id, start_month FROM membership_log WHERE run_id = ? AND op = 'closed')", [run_id])
    conn.execute(f"INSERT OR REPLACE INTO membership (view, account_id, start_month, end_month, root_id) "
                 f"SELECT view, account_id, start_month, end_month, root_id FROM membership_log "
                 f"WHERE run_id = ? AND op = 'deleted' AND {mine}", [run_id])
    restored = conn.execute("SELECT count(*) FROM temp.undo_membership").fetchone()[0]
    left = conn.execute(f"SELECT count(DISTINCT view || ':' || account_id) FROM membership_log WHERE run_id = ? "
                        f"AND NOT {mine}", [run_id]).fetchone()[0]
    conn.execute("DROP TABLE temp.undo_membership")
    return {"restored": restored, "replaced_since": left}


ACCOUNTS = [f"001{i:015d}" for i in range(4)]
step = st.one_of(
    st.tuples(st.just("commit"), st.sampled_from(["legal", "region"]), st.integers(0, 2),
              st.lists(st.tuples(st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS + ["parked:1"])),
                       unique_by=lambda p: p[0], max_size=4)),
    st.tuples(st.just("undo"), st.integers(0, 20)))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=12))
def test_membership_in_files_behaves_as_the_sql_tables_did(tmp_path_factory, steps):
    """Any sequence of runs recording families (same month again, or later months) and rollbacks of any of them
    leaves the segments, the log and the undo counts the SQLite tables' own statements left."""
    led = Ledger(tmp_path_factory.mktemp("h") / "nrr.db")
    ref = sqlite3.connect(":memory:", isolation_level=None)
    ref.executescript(REFERENCE_SCHEMA)
    month, runs = 24310, []
    for k, s in enumerate(steps):
        if s[0] == "commit":
            _, view, advance, changed = s
            month += advance
            run_id = f"run{k}"
            runs.append(run_id)
            m, prev = months.fmt(month), months.fmt(month - 1)
            assert led.commit_membership(run_id, view, m, prev, changed) == len(changed)
            ref_commit(ref, run_id, view, m, prev, changed)
        elif runs:
            run_id = runs[s[1] % len(runs)]
            preview = led.membership_undo_preview(run_id)
            assert led.undo_membership(run_id) == preview == ref_undo(ref, run_id)
        for view in ("legal", "region"):
            got = sorted(led.membership_segments(view))
            want = sorted(ref.execute("SELECT account_id, start_month, end_month, root_id FROM membership WHERE view = ?",
                                      [view]).fetchall())
            assert got == want
            assert led.membership_count(view) == len(want)
            runs_got = sorted(history_files.tuples(led.membership_table(view), ["account_id", "start_month", "run_id"]))
            assert runs_got == sorted(ref.execute("SELECT account_id, start_month, run_id FROM membership WHERE view = ?",
                                                  [view]).fetchall())
    assert sorted(led.db.execute("SELECT * FROM membership_log").fetchall()) == \
        sorted(ref.execute("SELECT * FROM membership_log").fetchall())
    led.close()


# ---- files ----------------------------------------------------------------------------------------------

def test_a_replaced_table_keeps_the_file_before_it_until_the_next_and_strays_go(tmp_path):
    led = Ledger(tmp_path / "nrr.db")
    folder = history_files.folder_for(tmp_path / "nrr.db")
    led.replace_arr([], [("001A", "2025-01", "2025-06", 10)])
    first = led.history_files()[history_files.ARR]
    (folder / "arr_history-999.parquet").write_bytes(b"a write killed before its commit")
    (folder / "notes.txt").write_text("not ours")
    led.replace_arr(["001A"], [("001A", "2025-01", "2025-03", 20), ("001B", "2025-02", "2025-02", 5)])
    second = led.history_files()[history_files.ARR]
    assert sorted(p.name for p in folder.iterdir()) == sorted([first.name, second.name, "notes.txt"])
    led.replace_arr(["001B"], [])
    assert not first.exists() and second.exists()
    assert sorted(led.arr_segments()) == [("001A", "2025-01", "2025-03", 20)]
    led.close()


def test_a_replacement_that_fails_leaves_the_old_table_and_no_file(tmp_path):
    led = Ledger(tmp_path / "nrr.db")
    led.replace_arr([], [("001A", "2025-01", "2025-06", 10)])
    before = set(history_files.folder_for(tmp_path / "nrr.db").iterdir())
    version = led.state_version()

    def boom(conn):
        raise RuntimeError("killed before the commit")
    with pytest.raises(RuntimeError):
        led._replace_tables({history_files.ARR: [history_files.arr_from_rows([])]}, boom)
    assert set(history_files.folder_for(tmp_path / "nrr.db").iterdir()) == before
    assert list(led.arr_segments()) == [("001A", "2025-01", "2025-06", 10)]
    assert led.state_version() == version
    led.close()


def test_a_damaged_or_missing_history_file_is_an_error_naming_it(tmp_path):
    led = Ledger(tmp_path / "nrr.db")
    led.replace_arr([], [("001A", "2025-01", "2025-06", 10)])
    path = led.history_files()[history_files.ARR]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SourceUnavailable, match="altered or damaged") as err:
        list(led.arr_segments())
    assert str(path) in str(err.value)
    path.unlink()
    with pytest.raises(SourceUnavailable, match="is missing") as err:
        list(led.arr_segments())
    assert str(path) in str(err.value)
    led.close()


def test_a_run_on_a_damaged_history_file_says_which_and_writes_nothing_more(tmp_path):
    """From the CLI: the demo after its run, its membership file damaged and the columnar store gone (so the
    run reads the ledger's): a clear error naming the file, no traceback."""
    root = tmp_path / "d"
    Cli(None)("demo", "--dir", str(root))
    led = Ledger(root / "state" / "nrr.db")
    path = led.history_files()[history_files.membership_name("legal")]
    led.close()
    path.write_bytes(path.read_bytes()[:-40] + b"\0" * 40)
    (root / "state" / "columns.npz").unlink()
    r = Cli(root / "config" / "nrr.yaml")("run", *AS_OF, expect=None)
    assert r.exit_code == 3, r.stdout + r.stderr
    assert str(path) in r.stderr and "restore the state folder from a backup" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_an_older_ledgers_history_rows_move_into_files(tmp_path, monkeypatch):
    """A ledger made before the files (migration 7) keeps its ARR history and membership, run ids included
    (a rollback of an old run still restores its families)."""
    monkeypatch.setattr(ledger_mod, "MIGRATIONS", ledger_mod.MIGRATIONS[:7])
    old = Ledger(tmp_path / "nrr.db")
    arr = [("001A", "2025-01", "2025-06", 10), ("001A", "2025-07", "2026-10", 12), ("001B", "2026-01", "2026-10", 7)]
    old.db.conn.executemany("INSERT INTO arr_history VALUES (?, ?, ?, ?)", arr)
    mem = [("legal", "001A", "2026-09", "2026-09", "001A", "run1"), ("legal", "001A", "2026-10", None, "001B", "run2"),
           ("legal", "001B", "2026-09", None, "001B", "run1"), ("region", "001A", "2026-10", None, "001A", None)]
    old.db.conn.executemany("INSERT INTO membership VALUES (?, ?, ?, ?, ?, ?)", mem)
    old.db.conn.execute("INSERT INTO membership_log VALUES ('run2', 'closed', 'legal', '001A', '2026-09', NULL, '001A')")
    old.close()
    monkeypatch.undo()
    led = Ledger(tmp_path / "nrr.db")
    tables = {r[0] for r in led.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "arr_history" not in tables and "membership" not in tables
    assert sorted(led.arr_segments()) == arr
    assert sorted(led.membership_segments("legal")) == sorted((a, s, e, r) for v, a, s, e, r, _ in mem if v == "legal")
    assert list(led.membership_segments("region")) == [("001A", "2026-10", None, "001A")]
    assert led.undo_membership("run2") == {"restored": 1, "replaced_since": 0}
    assert sorted(led.membership_segments("legal")) == [("001A", "2026-09", None, "001A"),
                                                         ("001B", "2026-09", None, "001B")]
    led.close()


def test_a_run_stopped_by_a_missing_history_file_ends_its_side_loads_without_a_word_of_a_signal(tmp_path):
    """The state folder restored without nrr-history/ (only nrr.db): the run stops at once, exit 3, naming the
    file; the loads it had started beside it are ended quietly (before, each printed the run's own "SIGTERM:
    stopping after the current stage" although nobody sent a signal)."""
    root = tmp_path / "d"
    Cli(None)("demo", "--dir", str(root))
    for p in (root / "state").iterdir():
        if p.name != "nrr.db":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    # (a process of its own: the side loads write to the real stderr, which an in-process runner does not see)
    r = subprocess.run([sys.executable, "-m", "nrr_engine", "--config", str(root / "config" / "nrr.yaml"), "run",
                        *AS_OF], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    assert "nrr-history" in r.stderr and "is missing" in r.stderr and "2 of the 2 history files" in r.stderr
    assert "SIGTERM" not in r.stderr and "stopping after the current stage" not in r.stderr


def test_a_state_folder_restored_without_its_history_stops_the_run_even_with_a_current_store(tmp_path):
    """nrr.db and the columnar store are there, nrr-history/ is not: the run (which could take the history from the
    store and would fail only when it next writes it) stops before anything, exit 3, listing the missing files."""
    root = tmp_path / "d"
    Cli(None)("demo", "--dir", str(root))
    shutil.rmtree(root / "state" / "nrr-history")
    r = Cli(root / "config" / "nrr.yaml")("run", *AS_OF, expect=3)
    assert "2 of the 2 history files nrr.db names are not in" in r.stderr
    assert "arr_history-" in r.stderr and "membership-" in r.stderr
    assert "Traceback" not in r.stderr
