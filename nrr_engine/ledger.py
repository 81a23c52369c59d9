"""The state store (SQLite via sqlite-utils): run ledger, every change, review queue, snapshots; the ARR history and
the family membership are Parquet files it names (history_files.py).

Schema changes are numbered migrations recorded in the `migrations` table; the only module that imports
sqlite_utils.
"""
from __future__ import annotations

import bisect
import itertools
import json
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlite_utils

from . import change_files, history_files, months, wal
from .history_files import ARR, OPEN, membership_name
from .errors import Location, SourceUnavailable, disk_full, is_storage_error
from .log import redact_text
from .model import UPSERT, FieldChanges, SnapshotChanges, no_nones
from .safe_output import private_dir, private_file


def _m1(db: sqlite_utils.Database) -> None:
    db["runs"].create({"id": str, "job": str, "mode": str, "as_of": str, "started": str, "ended": str,
                       "status": str, "counts": str, "api_usage": str, "config_hash": str, "rules_hash": str,
                       "summary": str, "error": str, "change_first": int, "change_last": int}, pk="id")
    # Append-only, no secondary index: a run's changes are the rowid range [change_first, change_last]
    # kept on its runs row (millions of rows per first run; an index would double the write cost).
    db.execute("CREATE TABLE changes (run_id TEXT NOT NULL, object TEXT NOT NULL, record_id TEXT, external_id TEXT, "
               "field TEXT NOT NULL, old TEXT, new TEXT, status TEXT NOT NULL, error TEXT, rule TEXT, "
               "confidence REAL, evidence TEXT)")
    db["findings"].create({"run_id": str, "kind": str, "message": str, "records": str, "record_count": int})
    db["findings"].create_index(["run_id"])
    db.execute("CREATE TABLE arr_history (account_id TEXT NOT NULL, start_month TEXT NOT NULL, end_month TEXT NOT NULL, "
               "arr_units INTEGER NOT NULL, PRIMARY KEY (account_id, start_month)) WITHOUT ROWID")
    db.execute("CREATE TABLE membership (view TEXT NOT NULL, account_id TEXT NOT NULL, start_month TEXT NOT NULL, "
               "end_month TEXT, root_id TEXT NOT NULL, PRIMARY KEY (view, account_id, start_month)) WITHOUT ROWID")
    db["snapshots"].create({"external_id": str, "view": str, "root_id": str, "month": str, "data": str,
                            "run_id": str}, pk="external_id")


def _literal(value: str) -> str:
    """A string as an SQL literal (single quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def _m2(db: sqlite_utils.Database) -> None:
    # The review queue: one row per (view, child, proposed parent); a placeholder parent has child_id ''
    # and parent_ref 'placeholder:<key>'. Rejected rows stay, so the pair is never proposed again.
    db.execute("CREATE TABLE review (id INTEGER PRIMARY KEY AUTOINCREMENT, view TEXT NOT NULL, child_id TEXT NOT NULL, "
               "parent_ref TEXT NOT NULL, parent_id TEXT, placeholder_name TEXT, members TEXT, rule TEXT NOT NULL, "
               "confidence REAL NOT NULL, evidence TEXT, reason TEXT, status TEXT NOT NULL, first_run TEXT NOT NULL, "
               "last_run TEXT NOT NULL, decided_at TEXT, decided_by TEXT, note TEXT, applied_run TEXT, "
               "UNIQUE (view, child_id, parent_ref))")
    db.execute("CREATE INDEX review_status ON review (status)")


def _m3(db: sqlite_utils.Database) -> None:
    # Findings carry a severity and an outcome (found / not_evaluated). Membership segments name the run that
    # recorded them, and every segment a run deletes or closes is logged, so `rollback` restores the families as
    # they were recorded before the run.
    db.execute("ALTER TABLE findings ADD COLUMN severity TEXT")
    db.execute("ALTER TABLE findings ADD COLUMN outcome TEXT")
    db.execute("ALTER TABLE membership ADD COLUMN run_id TEXT")  # the run that recorded the segment
    db.execute("CREATE TABLE membership_log (run_id TEXT NOT NULL, op TEXT NOT NULL, view TEXT NOT NULL, "
               "account_id TEXT NOT NULL, start_month TEXT NOT NULL, end_month TEXT, root_id TEXT NOT NULL)")
    db.execute("CREATE INDEX membership_log_run ON membership_log (run_id)")


def _m4(db: sqlite_utils.Database) -> None:
    # A run whose write began and did not end cleanly (killed, or failed part-way) is `unsettled` until the
    # next run has settled its changes against the org and caught the state store up with what it wrote.
    db.execute("ALTER TABLE runs ADD COLUMN unsettled INTEGER")


def _m5(db: sqlite_utils.Database) -> None:
    # Review items keep every note (a JSON list of {at, by, run, text}; `note` stays the latest, for reading and
    # old scripts); `away_run`: the run that found an approved item's child or parent missing from its input
    # (re-applied when they come back); `held_run`: the rollback that undid the item's link (never applied
    # again by a rule until a person approves it).
    db.execute("ALTER TABLE review ADD COLUMN notes TEXT")
    db.execute("ALTER TABLE review ADD COLUMN away_run TEXT")
    db.execute("ALTER TABLE review ADD COLUMN held_run TEXT")
    # the one note kept so far starts the trail: a run's note names its run, anything else was a person's decision
    db.execute("UPDATE review SET notes = CASE WHEN note LIKE 'proposed again by run %' OR note LIKE 'not proposed by "
               "run %' OR note LIKE 'run %' THEN json_array(json_object('at', NULL, 'by', NULL, 'run', NULL, 'text', "
               "note)) ELSE json_array(json_object('at', decided_at, 'by', decided_by, 'run', NULL, 'text', note, "
               "'decision', CASE WHEN decided_at IS NULL THEN NULL WHEN status = 'rejected' THEN 'rejected' "
               "ELSE 'approved' END)) END WHERE note IS NOT NULL")


def _m6(db: sqlite_utils.Database) -> None:
    # state_version: counts every write that can change what a report computes (a run or rollback starting, the
    # ARR history or membership replaced); the columnar store (store.py) is current only at the version it names
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("INSERT INTO meta (key, value) VALUES ('state_version', 0)")


def _m7(db: sqlite_utils.Database) -> None:
    # A long batch of changes (a first run's rollups: a million rows a field) is one columnar file beside the
    # ledger (change_files.py). change_parts lists the parts of a run that has files, in plan order: rows of
    # `changes` (rowid_first) or a file (with its status); change_marks holds the status of single changes in a
    # file that differ from the file's (failed records, settled ones).
    db.execute("CREATE TABLE change_parts (run_id TEXT NOT NULL, seq_first INTEGER NOT NULL, count INTEGER NOT NULL, "
               "rowid_first INTEGER, object TEXT, field TEXT, rule TEXT, status TEXT, file TEXT, sha256 TEXT, "
               "PRIMARY KEY (run_id, seq_first)) WITHOUT ROWID")
    db.execute("CREATE TABLE change_marks (run_id TEXT NOT NULL, seq INTEGER NOT NULL, status TEXT NOT NULL, "
               "error TEXT, record_id TEXT, PRIMARY KEY (run_id, seq)) WITHOUT ROWID")
    db.execute("ALTER TABLE runs ADD COLUMN change_files INTEGER")


def _m8(db: sqlite_utils.Database) -> None:
    # The ARR history and the membership leave SQLite for Parquet files the ledger names (history_files.py): a
    # first run's 2.2 M rows cost 10.5 s in B-trees. The rows an older ledger holds move into the files.
    db.execute("CREATE TABLE history_files (name TEXT PRIMARY KEY, file TEXT NOT NULL, sha256 TEXT NOT NULL, "
               "rows INTEGER NOT NULL, replaced TEXT) WITHOUT ROWID")
    db.execute("INSERT INTO meta (key, value) VALUES ('history_gen', 0)")
    path = next(Path(f) for _, name, f in db.execute("PRAGMA database_list") if name == "main")
    folder, gen = history_files.folder_for(path), 0

    def chunks(sql: str, args=()) -> Iterator[list[tuple]]:
        cur = db.conn.execute(sql, args)
        while rows := cur.fetchmany(200_000):
            yield rows

    def store(name: str, parts) -> None:
        nonlocal gen
        gen += 1
        file, sha, rows = history_files.write(folder, history_files.kind_of(name), gen, parts,
                                              history_files.schema_of(name))
        db.execute("INSERT INTO history_files (name, file, sha256, rows) VALUES (?, ?, ?, ?)", [name, file, sha, rows])

    if db.execute("SELECT 1 FROM arr_history LIMIT 1").fetchone():
        store(ARR, (history_files.arr_from_rows(rows) for rows in
                    chunks("SELECT account_id, start_month, end_month, arr_units FROM arr_history")))
    for (view,) in db.execute("SELECT DISTINCT view FROM membership").fetchall():
        store(membership_name(view), (history_files.membership_from_rows(view, rows) for rows in chunks(
            "SELECT account_id, start_month, end_month, root_id, run_id FROM membership WHERE view = ?", [view])))
    db.execute("UPDATE meta SET value = ? WHERE key = 'history_gen'", [gen])
    db.execute("DROP TABLE arr_history")
    db.execute("DROP TABLE membership")


@dataclass(frozen=True)
class _Part:
    """Changes [seq_first, seq_first + count) of a run: rows of `changes` from rowid_first, or one file."""

    seq_first: int
    count: int
    rowid_first: int | None = None
    object: str | None = None
    field: str | None = None
    rule: str | None = None
    status: str | None = None
    file: str | None = None
    sha256: str | None = None


MIGRATIONS = [(1, "runs, changes, findings, arr_history, membership, snapshots", _m1),
              (2, "review queue", _m2),
              (3, "finding severity and outcome; membership log", _m3),
              (4, "runs.unsettled: runs whose write did not end cleanly", _m4),
              (5, "review notes trail, away and held markers", _m5),
              (6, "meta: state_version, which the columnar store is stamped with", _m6),
              (7, "change files: a run's long batches of changes as columnar files", _m7),
              (8, "history files: the ARR history and the membership as Parquet files", _m8)]

_BUMP = "UPDATE meta SET value = value + 1 WHERE key = 'state_version'"



def _add_note(text: str, decision: str | None = None) -> str:
    """SET clause: append a note (the SQL expression `text`) to a review item's trail and make it the latest
    `note`; named parameters :at, :by, :run. A decision's entry also says what was decided."""
    extra = f", 'decision', {_literal(decision)}" if decision else ""
    return (f"note = {text}, notes = json_insert(coalesce(notes, '[]'), '$[#]', json_object('at', :at, 'by', :by, "
            f"'run', :run, 'text', {text}{extra}))")


REVIEW_STATUSES = ("pending", "approved", "rejected", "applied", "expired", "blocked")


class Ledger:
    """Runs, changes and history; every write method commits its own transaction."""

    file_min_rows = change_files.MIN_ROWS   # a batch this long (without per-change evidence) is kept as a file

    def __init__(self, path: Path):
        self.path = path
        try:
            private_file(private_dir(path.parent) / path.name)  # customer data: 0600 in 0700, whatever the umask
            conn = sqlite3.connect(path, isolation_level=None, timeout=30)
            for attempt in range(100):  # two processes creating the store at once: switching to WAL can be busy
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == 99:
                        raise
                    time.sleep(0.05)
            conn.execute("PRAGMA synchronous=NORMAL")
            wal.configure(conn)
        except (sqlite3.Error, OSError) as exc:
            if is_storage_error(exc):
                raise disk_full(exc, [path], "the state store") from None
            raise SourceUnavailable(f"cannot open the state store: {exc}", Location(str(path))) from None
        self.db = sqlite_utils.Database(conn)
        self.migrate()

    @contextmanager
    def _tx(self, begin: str = "BEGIN"):
        """One transaction. A write the file system refuses (full device, file size limit) becomes DiskFull
        naming the file; SQLite may have rolled back already, so ROLLBACK only when one is still open."""
        conn = self.db.conn
        with self._storage():
            conn.execute(begin)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the cause is what is raised, not the failed rollback
                raise
        wal.after_commit(self.path)

    @contextmanager
    def _storage(self):
        try:
            yield
        except (sqlite3.OperationalError, OSError) as exc:
            if is_storage_error(exc):
                raise disk_full(exc, [self.path], "the state store (ledger)",
                                ". Nothing was lost: the next run settles this one") from None
            raise

    def migrate(self) -> list[int]:
        """Apply pending migrations in order, in one transaction that holds the write lock from the start
        (two processes opening a new store at once: one migrates, the other waits and finds it done)."""
        db = self.db
        applied = []
        if "migrations" in db.table_names() and \
                {r[0] for r in db.execute("SELECT id FROM migrations")} >= {m[0] for m in MIGRATIONS}:
            return applied  # nothing to do: no write lock taken (a read-only store can still be read)
        with self._tx("BEGIN IMMEDIATE"):
            if "migrations" not in db.table_names():
                db.execute("CREATE TABLE migrations (id INTEGER PRIMARY KEY, name TEXT, applied_at TEXT)")
            done = {r[0] for r in db.execute("SELECT id FROM migrations")}
            for mid, name, fn in MIGRATIONS:
                if mid in done:
                    continue
                fn(db)
                db.execute("INSERT INTO migrations (id, name, applied_at) VALUES (?, ?, datetime('now'))", [mid, name])
                applied.append(mid)
        return applied

    def close(self) -> None:
        wal.wait(self.path)   # (the last connection's close checkpoints what is left)
        self.db.conn.close()

    # ---- runs -----------------------------------------------------------------------------------
    def start_run(self, run: dict) -> None:
        row = {**run, "status": "running"}
        with self._tx() as conn:
            conn.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
            if run.get("mode") != "plan":  # a run or rollback may change the org and the history
                conn.execute(_BUMP)

    def state_version(self) -> int:
        """A number that changes whenever the ARR history, the membership or (through a run or a rollback) the
        org may have changed."""
        return self.db.execute("SELECT value FROM meta WHERE key = 'state_version'").fetchone()[0]

    def finish_run(self, run_id: str, **fields) -> None:
        for k in ("counts", "api_usage", "summary"):
            if k in fields and not isinstance(fields[k], str):
                fields[k] = json.dumps(fields[k], sort_keys=True, default=str)
        for k in ("error", "summary"):   # an error can quote what a server echoed: never a secret
            if isinstance(fields.get(k), str):
                fields[k] = redact_text(fields[k])
        with self._storage():
            self.db["runs"].update(run_id, fields)

    def run(self, run_id: str) -> dict | None:
        rows = list(self.db["runs"].rows_where("id = ? OR id LIKE ?", [run_id, f"{run_id}%"], limit=2))
        return rows[0] if len(rows) == 1 else None

    def runs_starting(self, prefix: str, limit: int = 20) -> list[dict]:
        """Runs whose id is `prefix` or starts with it (taken literally), newest first."""
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return list(self.db["runs"].rows_where("id LIKE ? ESCAPE '\\'", [like], order_by="started DESC, id DESC",
                                               limit=limit))

    def runs(self, limit: int = 50) -> list[dict]:
        return list(self.db["runs"].rows_where(order_by="started DESC, id DESC", limit=limit))

    def last_run(self, job: str, statuses: Sequence[str] = ("succeeded", "failed_records")) -> dict | None:
        q = f"job = ? AND mode = 'run' AND status IN ({', '.join('?' * len(statuses))})"
        rows = list(self.db["runs"].rows_where(q, [job, *statuses], order_by="started DESC", limit=1))
        return rows[0] if rows else None

    def interrupted_runs(self) -> list[dict]:
        """Runs to settle: those the process left running (killed) and those whose write did not end cleanly."""
        return list(self.db["runs"].rows_where("status IN ('running', 'applying') OR unsettled = 1", order_by="started"))

    # ---- changes --------------------------------------------------------------------------------
    # A run's changes are numbered in plan order (seq, from 0). Small batches are rows of `changes` (a run's rows
    # are the rowid range [change_first, change_last] on its runs row); a long batch without per-change evidence
    # is one columnar file (change_files.py). A run with files lists its parts in change_parts, which maps each
    # seq to a row or a file; a run without them has seq = rowid - change_first, as before files existed.

    def record_changes(self, run_id: str, batches: Iterable[Iterable], status: str,
                       failures: dict[int, str] | None = None) -> tuple[int, int]:
        """Append every change of `batches` with `status` (failures: {seq: error} get 'failed');
        returns the run's rowid range (first, last) of the changes kept as rows."""
        conn = self.db.conn
        folder = change_files.folder_for(self.path)
        self._discard_orphan_files(folder, run_id)
        parts: list[_Part] = []
        try:
            with self._tx():
                first = (conn.execute("SELECT max(rowid) FROM changes").fetchone()[0] or 0) + 1
                seq, rowid = 0, first
                for batch in batches:
                    n = len(batch)
                    if not n:
                        continue
                    part = self._file_part(folder, run_id, seq, batch, status)
                    if part is None:
                        self._insert_rows(conn, run_id, batch, status)
                        part = _Part(seq, n, rowid_first=rowid)
                        rowid += n
                    parts.append(part)
                    seq += n
                last = conn.execute("SELECT max(rowid) FROM changes").fetchone()[0] or 0
                files = [p for p in parts if p.file]
                if files:
                    conn.executemany("INSERT INTO change_parts (run_id, seq_first, count, rowid_first, object, field, "
                                     "rule, status, file, sha256) VALUES (?,?,?,?,?,?,?,?,?,?)",
                                     [(run_id, p.seq_first, p.count, p.rowid_first, p.object, p.field, p.rule,
                                       p.status, p.file, p.sha256) for p in parts])
                    conn.execute("UPDATE runs SET change_files = ? WHERE id = ?", (len(files), run_id))
                if failures:
                    self._set_status(conn, run_id, parts if files else self._parts(run_id, (first, last)),
                                     ((seq, "failed", err, None) for seq, err in failures.items()))
                if last >= first:
                    conn.execute("UPDATE runs SET change_first = ?, change_last = ? WHERE id = ?", (first, last, run_id))
        except BaseException:
            if any(p.file for p in parts):
                change_files.discard(folder, run_id)   # the ledger names none of them
            raise
        return first, last

    def _file_part(self, folder: Path, run_id: str, seq: int, batch, status: str) -> "_Part | None":
        """A long batch without per-change evidence written as one file, or None (kept as rows)."""
        if len(batch) < self.file_min_rows:
            return None
        if isinstance(batch, FieldChanges) and batch.meta is None:
            columns, field = {"ids": batch.ids, "old": batch.old, "new": batch.new}, batch.field
        elif isinstance(batch, SnapshotChanges):
            columns, field = {"ids": batch.ids, "keys": batch.keys, "old": batch.old, "new": batch.new}, UPSERT
        else:
            return None
        with self._storage():
            written = change_files.write(folder, run_id, seq, columns)
        if written is None:
            return None
        return _Part(seq, len(batch), None, batch.object, field, batch.rule, status, *written)

    @staticmethod
    def _insert_rows(conn, run_id: str, batch, status: str) -> None:
        if isinstance(batch, FieldChanges) and batch.meta is not None:
            # Links: rule, confidence and evidence per change (evidence explained one at a time)
            consts = ", ".join(_literal(v) for v in (run_id, batch.object, batch.field, status))
            to_json = batch.to_json or (lambda ev: json.dumps(ev, sort_keys=True) if ev else None)
            packed = getattr(batch.meta, "json_rows", None)   # evidence already held as its JSON (match.PackedMeta)
            rows = ((rid, old, new, rule, conf, text) for rid, old, new, (rule, conf, text)
                    in zip(batch.ids, batch.old, batch.new, packed())) if packed is not None else \
                ((rid, old, new, rule, conf, to_json(ev))
                 for rid, old, new, (rule, conf, ev) in zip(batch.ids, batch.old, batch.new, batch.meta))
            conn.executemany(f"INSERT INTO changes (run_id, object, field, status, record_id, old, new, rule, "
                             f"confidence, evidence) VALUES ({consts}, ?, ?, ?, ?, ?, ?)", rows)
        elif isinstance(batch, FieldChanges):
            # Columnar batch: the per-batch constants are SQL literals, so each row binds only 3 values
            # (binding costs ~0.3 us a value; a first run records millions of rows).
            consts = ", ".join(_literal(v) for v in (run_id, batch.object, batch.field, status, batch.rule))
            conn.executemany(f"INSERT INTO changes (run_id, object, field, status, rule, record_id, old, new) "
                             f"VALUES ({consts}, ?, ?, ?)", zip(batch.ids, batch.old, batch.new))
        elif isinstance(batch, SnapshotChanges):
            consts = ", ".join(_literal(v) for v in (run_id, batch.object, UPSERT, status, batch.rule))
            conn.executemany(f"INSERT INTO changes (run_id, object, field, status, rule, record_id, external_id, "
                             f"old, new) VALUES ({consts}, ?, ?, ?, ?)", zip(batch.ids, batch.keys, batch.old, batch.new))
        else:
            conn.executemany("INSERT INTO changes (run_id, object, record_id, external_id, field, old, new, status, "
                             "rule, confidence, evidence) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                             ((run_id, c.object, c.id, c.key, c.field, c.old, c.new, status, c.rule, c.confidence,
                               json.dumps(c.evidence, sort_keys=True) if c.evidence else None) for c in batch))

    def _discard_orphan_files(self, folder: Path, run_id: str) -> None:
        """Change files of runs the ledger names none of (a run killed between writing them and its commit)."""
        runs = change_files.runs_with_files(folder)
        if not runs:
            return
        named = {r[0] for r in self.db.conn.execute("SELECT DISTINCT run_id FROM change_parts")}
        for r in runs:
            if r not in named:
                change_files.discard(folder, r)

    def _range(self, run_id: str) -> tuple[int, int]:
        row = self.db.execute("SELECT change_first, change_last FROM runs WHERE id = ?", [run_id]).fetchone()
        return (row[0], row[1]) if row and row[0] is not None else (1, 0)

    def _parts(self, run_id: str, rows: tuple[int, int] | None = None) -> list["_Part"]:
        """The run's changes as parts in plan order: rows of `changes` or files."""
        parts = [_Part(*r) for r in self.db.conn.execute(
            "SELECT seq_first, count, rowid_first, object, field, rule, status, file, sha256 FROM change_parts "
            "WHERE run_id = ? ORDER BY seq_first", [run_id])]
        if parts:
            return parts
        first, last = rows or self._range(run_id)
        return [_Part(0, last - first + 1, first)] if last >= first else []

    def _file_rows(self, run_id: str, part: "_Part") -> Iterator[tuple[int, str | None, str | None, str | None,
                                                                      str | None, str, str | None]]:
        """(seq, record_id, external_id, old, new, status, error) of a file part, with any single-change status."""
        cols = change_files.read(change_files.folder_for(self.path), part.file, part.sha256, part.count, run_id)
        marks = {seq: (st, err, rid) for seq, st, err, rid in self.db.conn.execute(
            "SELECT seq, status, error, record_id FROM change_marks WHERE run_id = ? AND seq BETWEEN ? AND ?",
            [run_id, part.seq_first, part.seq_first + part.count - 1])}
        keys = cols.get("keys") or [None] * part.count
        for i, (rid, key, old, new) in enumerate(zip(cols["ids"], keys, cols["old"], cols["new"])):
            seq = part.seq_first + i
            st, err, mrid = marks.get(seq, (part.status, None, None))
            yield seq, mrid or rid, key, old, new, st, err

    def _set_status(self, conn, run_id: str, parts: list["_Part"],
                    statuses: Iterable[tuple[int, str, str | None, str | None]]) -> None:
        """Set (seq, status, error, record_id) of single changes, rows or in files, inside the caller's transaction."""
        starts = [p.seq_first for p in parts]
        rows, marks = [], []
        for seq, st, err, rid in statuses:
            k = bisect.bisect_right(starts, seq) - 1
            if k < 0 or seq >= parts[k].seq_first + parts[k].count:
                continue
            p = parts[k]
            if p.file:
                marks.append((run_id, seq, st, redact_text(err), rid))
            else:
                rows.append((st, redact_text(err), rid, p.rowid_first + seq - p.seq_first))
        if rows:
            conn.executemany("UPDATE changes SET status = ?, error = ?, record_id = coalesce(?, record_id) WHERE rowid = ?",
                             rows)
        if marks:
            conn.executemany("INSERT OR REPLACE INTO change_marks (run_id, seq, status, error, record_id) "
                             "VALUES (?, ?, ?, ?, ?)", marks)

    def settle_changes(self, run_id: str, statuses: Iterable[tuple[int, str, str | None, str | None]]) -> None:
        """Set (seq, status, error, record_id) on changes of the run."""
        parts = self._parts(run_id)
        with self._tx() as conn:
            self._set_status(conn, run_id, parts, statuses)

    def _file_statuses(self, run_id: str, part: "_Part") -> dict[str, int]:
        """Changes of a file part by status (its own, and that of single changes marked apart)."""
        counts = {st: n for st, n in self.db.conn.execute(
            "SELECT status, count(*) FROM change_marks WHERE run_id = ? AND seq BETWEEN ? AND ? GROUP BY status",
            [run_id, part.seq_first, part.seq_first + part.count - 1])}
        rest = part.count - sum(counts.values())
        if rest:
            counts[part.status] = counts.get(part.status, 0) + rest
        return counts

    def change_groups(self, run_id: str, statuses: Sequence[str]) -> list[tuple[str, str]]:
        """The distinct (object, field) pairs among a run's changes with one of `statuses`."""
        first, last = self._range(run_id)
        marks = ", ".join("?" * len(statuses))
        groups = {tuple(r) for r in self.db.conn.execute(
            f"SELECT DISTINCT object, field FROM changes WHERE rowid BETWEEN ? AND ? AND status IN ({marks})",
            [first, last, *statuses])}
        groups |= {(p.object, p.field) for p in self._parts(run_id)
                   if p.file and any(st in statuses for st in self._file_statuses(run_id, p))}
        return sorted(groups)

    def iter_changes(self, run_id: str, obj: str, field: str,
                     statuses: Sequence[str]) -> Iterator[tuple[int, str | None, str | None, str | None, str | None]]:
        """(seq, record_id, external_id, old, new) of one (object, field) of a run, in plan order, streamed."""
        marks = ", ".join("?" * len(statuses))
        for p in self._parts(run_id):
            if p.file:
                if (p.object, p.field) == (obj, field):
                    yield from ((seq, rid, key, old, new) for seq, rid, key, old, new, st, _ in self._file_rows(run_id, p)
                                if st in statuses)
                continue
            cur = self.db.conn.execute(
                f"SELECT rowid - ? + ?, record_id, external_id, old, new FROM changes WHERE rowid BETWEEN ? AND ? "
                f"AND object = ? AND field = ? AND status IN ({marks}) ORDER BY rowid",
                [p.rowid_first, p.seq_first, p.rowid_first, p.rowid_first + p.count - 1, obj, field, *statuses])
            while rows := cur.fetchmany(20_000):
                yield from rows

    def link_details(self, run_id: str, obj: str, field: str, ids: Collection[str]) -> list[dict]:
        """The applied changes of one (object, field) of a run whose record is in `ids`, with their rule,
        confidence and evidence (what a rollback hands the review queue about the links it undid)."""
        wanted = set(ids)

        def approved(ev: str | None) -> bool:  # a link a person approved carries its review item's id
            d = json.loads(ev) if ev else None
            return isinstance(d, dict) and "approved" in d

        first, last = self._range(run_id)
        cur = self.db.conn.execute(
            "SELECT record_id, new, rule, confidence, evidence FROM changes WHERE rowid BETWEEN ? AND ? AND object = ? "
            "AND field = ? AND status = 'applied' ORDER BY rowid", [first, last, obj, field])
        out = [{"child": rid, "parent": new, "rule": rule, "confidence": conf, "evidence": ev, "approved": approved(ev)}
               for rid, new, rule, conf, ev in cur if rid in wanted and new]
        for p in self._parts(run_id):
            if p.file and (p.object, p.field) == (obj, field):
                out.extend({"child": rid, "parent": new, "rule": p.rule, "confidence": None, "evidence": None,
                            "approved": False} for _, rid, _, _, new, st, _ in self._file_rows(run_id, p)
                           if st == "applied" and rid in wanted and new)
        return out

    def changes(self, run_id: str, status: str | None = None) -> Iterator[dict]:
        """A run's changes in plan order, each with its `seq` (0-based position in the run)."""
        for p in self._parts(run_id):
            if p.file:
                for seq, rid, key, old, new, st, err in self._file_rows(run_id, p):
                    if status is None or st == status:
                        yield {"seq": seq, "run_id": run_id, "object": p.object, "record_id": rid, "external_id": key,
                               "field": p.field, "old": old, "new": new, "status": st, "error": err, "rule": p.rule,
                               "confidence": None, "evidence": None}
                continue
            where, args = "rowid BETWEEN ? AND ?", [p.rowid_first, p.rowid_first + p.count - 1]
            if status:
                where += " AND status = ?"
                args.append(status)
            cur = self.db.conn.execute(f"SELECT rowid - {int(p.rowid_first)} + {int(p.seq_first)} AS seq, * "
                                       f"FROM changes WHERE {where} ORDER BY rowid", args)
            names = [d[0] for d in cur.description]
            while rows := cur.fetchmany(10_000):
                for row in rows:
                    yield dict(zip(names, row))

    def change_counts(self, run_id: str) -> dict[str, int]:
        first, last = self._range(run_id)
        counts = {r[0]: r[1] for r in self.db.execute(
            "SELECT status, count(*) FROM changes WHERE rowid BETWEEN ? AND ? GROUP BY status", [first, last])}
        for p in self._parts(run_id):
            if p.file:
                for st, n in self._file_statuses(run_id, p).items():
                    counts[st] = counts.get(st, 0) + n
        return counts

    def has_changes(self, run: dict) -> bool:
        """The run recorded at least one change (as rows or in files)."""
        return run.get("change_last") is not None or bool(run.get("change_files"))

    def has_applied(self, run_id: str) -> bool:
        """At least one of the run's changes is applied (reached the org)."""
        first, last = self._range(run_id)
        if self.db.execute("SELECT 1 FROM changes WHERE rowid BETWEEN ? AND ? AND status = 'applied' LIMIT 1",
                           [first, last]).fetchone() is not None:
            return True
        return any(p.file and "applied" in self._file_statuses(run_id, p) for p in self._parts(run_id))

    def run_counts(self, run: dict) -> dict | None:
        """A run's change counts as `runs list` shows them: those it recorded, or, for a run that stopped before
        writing them (killed, failed part-way), those of its changes in the ledger by status (as `runs show` has
        them), with `planned` the number of changes it recorded."""
        counts = json.loads(run["counts"]) if run.get("counts") else None
        if any(k != "stages" for k in counts or {}) or not self.has_changes(run):
            return counts
        by_status = self.change_counts(run["id"])
        return {**(counts or {}), **by_status, "planned": sum(by_status.values())} if by_status else counts

    def mark_changes(self, run_id: str, old: str, new: str) -> int:
        """Set every change of the run with status `old` to `new` (pending -> applied once a write is confirmed,
        applied -> pending when the write it was recorded ahead of failed); returns how many."""
        first, last = self._range(run_id)
        files = [p for p in self._parts(run_id) if p.file]
        moved = sum(self._file_statuses(run_id, p).get(old, 0) for p in files)
        with self._tx() as conn:
            if files:
                conn.execute("UPDATE change_parts SET status = ? WHERE run_id = ? AND file IS NOT NULL AND status = ?",
                             [new, run_id, old])
                conn.execute("UPDATE change_marks SET status = ? WHERE run_id = ? AND status = ?", [new, run_id, old])
            return moved + conn.execute("UPDATE changes SET status = ? WHERE rowid BETWEEN ? AND ? AND status = ?",
                                        [new, first, last, old]).rowcount

    def record_findings(self, run_id: str, findings: Iterable) -> None:
        with self._storage():
            self._record_findings(run_id, findings)

    def _record_findings(self, run_id: str, findings: Iterable) -> None:
        self.db["findings"].insert_all(({"run_id": run_id, **{**f.as_dict(), "records": json.dumps(f.as_dict()["records"])}}
                                        for f in findings), batch_size=500, alter=True)

    def error_findings(self, run_ids: Sequence[str]) -> dict[str, int]:
        """How many findings of severity error each of the runs recorded (runs with none are left out)."""
        if not run_ids:
            return {}
        marks = ", ".join("?" * len(run_ids))
        return dict(self.db.execute(f"SELECT run_id, count(*) FROM findings WHERE severity = 'error' AND run_id IN "
                                    f"({marks}) GROUP BY run_id", list(run_ids)).fetchall())

    def findings(self, run_id: str) -> list[dict]:
        return list(self.db["findings"].rows_where("run_id = ?", [run_id]))

    # ---- history tables (history_files.py) ------------------------------------------------------
    # The ARR history and each view's membership are whole Parquet files the ledger names; replacing one is a new
    # file and the ledger's row switched to it in one transaction.
    def _history_row(self, name: str) -> tuple | None:
        return self.db.conn.execute("SELECT file, sha256, rows FROM history_files WHERE name = ?", [name]).fetchone()

    def _table(self, name: str, what: str) -> pa.Table | None:
        """A history table as the ledger names it now, or None when nothing was recorded."""
        folder = history_files.folder_for(self.path)
        row = self._history_row(name)
        for _ in range(5):
            if row is None:
                return None
            try:
                return history_files.read(folder, *row, what)
            except FileNotFoundError:
                again = self._history_row(name)
                if again == row:
                    break
                row = again   # replaced (twice) since it was named: read the one named now
        self.check_history_files()
        raise SourceUnavailable(f"the state store's {what} file {folder / row[0]} is missing",
                                Location(str(folder / row[0])))

    def check_history_files(self) -> None:
        """Raise SourceUnavailable naming every history file the ledger names that is not there (a state folder
        restored in part); a stat each, nothing read."""
        folder = history_files.folder_for(self.path)
        named = [(name, folder / f) for name, f in self.db.conn.execute("SELECT name, file FROM history_files "
                                                                        "ORDER BY name")]
        missing = [(name, p) for name, p in named if not p.exists()]
        if missing:
            name, path = missing[0]
            raise SourceUnavailable(
                f"the state store's {name} file {path} is missing ({len(missing)} of the {len(named)} history "
                f"files {self.path.name} names are not in {folder}: {', '.join(p.name for _, p in missing)}); "
                f"restore {folder.name}/ from the backup {self.path.name} came from (the whole state folder, taken "
                "at once)", Location(str(path)))

    def _replace_tables(self, tables: dict[str, Iterable[pa.Table]], also=None) -> None:
        """Replace history tables ({name: its rows as tables or batches, in order}) in one transaction (with
        `also(conn)` in it); the files they replace stay until the next replacement, those no row names go."""
        folder = history_files.folder_for(self.path)
        written: list[str] = []
        try:
            with self._tx("BEGIN IMMEDIATE") as conn:
                gen = conn.execute("SELECT value FROM meta WHERE key = 'history_gen'").fetchone()[0]
                for name, parts in tables.items():
                    gen += 1
                    try:
                        file, sha, rows = history_files.write(folder, history_files.kind_of(name), gen, parts,
                                                              history_files.schema_of(name))
                    except OSError as exc:
                        if is_storage_error(exc):
                            raise disk_full(exc, [folder], "the state store's history files",
                                            ". Nothing was lost: the next run settles this one") from None
                        raise
                    written.append(file)
                    prev = conn.execute("SELECT file FROM history_files WHERE name = ?", [name]).fetchone()
                    conn.execute("INSERT OR REPLACE INTO history_files (name, file, sha256, rows, replaced) "
                                 "VALUES (?, ?, ?, ?, ?)", [name, file, sha, rows, prev[0] if prev else None])
                conn.execute("UPDATE meta SET value = ? WHERE key = 'history_gen'", [gen])
                if also is not None:
                    also(conn)
                conn.execute(_BUMP)
                keep = {f for row in conn.execute("SELECT file, replaced FROM history_files") for f in row if f}
        except BaseException:
            history_files.remove(folder, written)
            raise
        history_files.sweep(folder, keep)
        pa.default_memory_pool().release_unused()   # (Arrow's pool would keep the batches' memory from the stages after)

    def history_files(self) -> dict[str, Path]:
        """{table name: its current Parquet file}: 'arr_history' and 'membership:<view>'."""
        folder = history_files.folder_for(self.path)
        return {name: folder / file for name, file in self.db.conn.execute("SELECT name, file FROM history_files "
                                                                           "ORDER BY name")}

    # ---- ARR history ----------------------------------------------------------------------------
    def arr_history(self) -> pa.Table | None:
        """The ARR history (account_id, start_month, end_month, arr_units), or None when none was recorded."""
        return self._table(ARR, "ARR history")

    def arr_segments(self) -> Iterator[tuple[str, str, str, int]]:
        """(account, start 'YYYY-MM', end 'YYYY-MM', units) of every stored run of ARR."""
        yield from history_files.tuples(self.arr_history(), history_files.ARR_COLUMNS)

    def replace_arr(self, account_ids: Sequence[str], segments) -> None:
        """Replace the history of the given accounts by `segments` (arr_history tables, or (account, start, end,
        units) tuples), atomically."""
        segments = iter(segments)
        head = next(segments, None)
        if head is None:
            new = []
        elif isinstance(head, pa.Table):
            new = itertools.chain([head], segments)
        else:
            new = [history_files.arr_from_rows(itertools.chain([head], segments))]
        cur = self.arr_history()
        keep = None
        if cur is not None and cur.num_rows and len(account_ids):
            keep = pc.invert(pc.is_in(cur["account_id"], value_set=history_files.strings(account_ids))).to_numpy(
                zero_copy_only=False)
        self._replace_tables({ARR: itertools.chain(history_files.batches(cur, keep), new)})

    # ---- membership ----------------------------------------------------------------------------
    def membership_table(self, view: str) -> pa.Table | None:
        """Every recorded segment of a view (view, account_id, start_month, end_month, root_id, run_id), or None."""
        return self._table(membership_name(view), f"membership ({view})")

    def membership_segments(self, view: str) -> Iterator[tuple[str, str, str | None, str]]:
        """Every recorded (account, start month, end month or None, root) of a view."""
        yield from history_files.tuples(self.membership_table(view), history_files.SEGMENT_COLUMNS)

    def membership_count(self, view: str) -> int:
        row = self._history_row(membership_name(view))
        return row[2] if row else 0

    def _views(self) -> list[str]:
        prefix = membership_name("")
        return [n[len(prefix):] for (n,) in self.db.conn.execute(
            "SELECT name FROM history_files WHERE substr(name, 1, ?) = ? ORDER BY name", [len(prefix), prefix])]

    def commit_membership(self, run_id: str, view: str, month: str, prev_month: str,
                          changed: Iterable[tuple[str, str]]) -> int:
        """Record the families a run saw in `month` for the accounts whose family changed ((account, root)
        pairs): an open segment that began this month is replaced, an older one ends last month. New segments
        carry the run's id and every segment deleted or closed is logged under it, so `undo_membership` can
        restore them."""
        accounts, roots = (changed.accounts, changed.roots) if hasattr(changed, "accounts") else \
            (list(x) for x in zip(*changed)) if changed else ([], [])
        m, prev = months.parse(month), months.parse(prev_month)
        n = len(accounts)
        new = (history_files.membership_table(view, accounts[lo:lo + history_files.BATCH],
                                              np.full(min(n - lo, history_files.BATCH), m),
                                              np.full(min(n - lo, history_files.BATCH), OPEN),
                                              roots[lo:lo + history_files.BATCH], run_id)
               for lo in range(0, n, history_files.BATCH))
        cur = self.membership_table(view)
        logged: list[tuple] = []
        if cur is not None and cur.num_rows:
            start, end = history_files.month_ints(cur["start_month"]), history_files.month_ints(cur["end_month"])
            hit = pc.is_in(cur["account_id"], value_set=history_files.strings(accounts)).to_numpy(
                zero_copy_only=False) & (end == OPEN)
            deleted, closed = hit & (start >= m), hit & (start < m)
            for op, mask in (("deleted", deleted), ("closed", closed)):
                logged.extend((run_id, op, view, *r) for r in history_files.tuples(cur.filter(pa.array(mask)),
                                                                                  history_files.SEGMENT_COLUMNS))
            cur = history_files.membership_kept(view, cur, ~deleted, start, np.where(closed, prev, end))

        def log(conn) -> None:
            conn.executemany("INSERT INTO membership_log (run_id, op, view, account_id, start_month, end_month, "
                             "root_id) VALUES (?, ?, ?, ?, ?, ?, ?)", logged)
        self._replace_tables({membership_name(view): itertools.chain([cur] if cur is not None else [], new)}, log)
        return n

    def _undo_plan(self, run_id: str) -> tuple[dict[str, tuple[pa.Table, np.ndarray]], dict[str, list[tuple]], int, int]:
        """Per view, its table and which rows are the run's still-open segments; the run's log per view; how many
        segments an undo restores and how many accounts a later run replaced since."""
        log: dict[str, list[tuple]] = {}
        for row in self.db.conn.execute("SELECT view, op, account_id, start_month, end_month, root_id FROM "
                                        "membership_log WHERE run_id = ?", [run_id]):
            log.setdefault(row[0], []).append(row[1:])
        tables, restored, left = {}, 0, 0
        for view in sorted(set(self._views()) | set(log)):
            t = self.membership_table(view)
            mine = np.zeros(0, dtype=bool) if t is None else (
                pc.equal(history_files.strings(t["run_id"]), run_id).fill_null(False).to_numpy(
                    zero_copy_only=False) & (history_files.month_ints(t["end_month"]) == OPEN))
            ids = set(t["account_id"].filter(pa.array(mine)).to_pylist()) if mine.any() else set()
            restored += int(mine.sum())
            left += len({r[1] for r in log.get(view, ()) if r[1] not in ids})
            if t is not None:
                tables[view] = (t, mine, ids)
        return tables, log, restored, left

    def undo_membership(self, run_id: str) -> dict[str, int]:
        """Restore the membership a run replaced: its segments go, the ones it deleted come back and the ones it
        closed are open again. An account whose segment a later run replaced is left alone (counted)."""
        tables, log, restored, left = self._undo_plan(run_id)
        out = {}
        for view, (t, mine, ids) in tables.items():
            if not mine.any():
                continue
            entries = [r for r in log.get(view, ()) if r[1] in ids]
            reopen = {(a, s) for op, a, s, _, _ in entries if op == "closed"}
            back = [(a, s, e, r) for op, a, s, e, r in entries if op == "deleted"]
            replaced = {(a, s) for a, s, _, _ in back}
            keep = ~mine
            end = history_files.month_ints(t["end_month"])
            touched = {a for a, _ in reopen | replaced}
            if touched:
                cand = np.flatnonzero(keep & pc.is_in(t["account_id"], value_set=pa.array(sorted(touched))).to_numpy(
                    zero_copy_only=False))
                accs, starts = t["account_id"].take(pa.array(cand)).to_pylist(), history_files.strings(
                    t["start_month"].take(pa.array(cand))).to_pylist()
                for k, a, s in zip(cand.tolist(), accs, starts):
                    if (a, s) in replaced:
                        keep[k] = False
                    elif (a, s) in reopen:
                        end[k] = OPEN
            kept = history_files.membership_kept(view, t, keep, history_files.month_ints(t["start_month"]), end)
            # the segments it deleted come back without a run (as the SQLite tables' INSERT left them)
            out[membership_name(view)] = [kept, history_files.membership_from_rows(view, [(*b, None) for b in back])]
        if out:
            self._replace_tables(out)
        else:
            with self._tx() as conn:
                conn.execute(_BUMP)
        return {"restored": restored, "replaced_since": left}

    def membership_undo_preview(self, run_id: str) -> dict[str, int]:
        """What `undo_membership` would report, without changing anything."""
        _, _, restored, left = self._undo_plan(run_id)
        return {"restored": restored, "replaced_since": left}

    # ---- snapshots ------------------------------------------------------------------------------
    def upsert_snapshots(self, run_id: str, keys: Sequence[str], data: Sequence[str | None]) -> None:
        """Latest value of each KPI snapshot (external id <view>:<root>:<YYYY-MM>) as JSON, with its run;
        a key whose data is None is a snapshot the run deleted (its family no longer exists)."""
        conn = self.db.conn
        with self._tx():
            if not no_nones(data):   # (records made as they are read hold no delete)
                conn.executemany("DELETE FROM snapshots WHERE external_id = ?",
                                 ((k,) for k, d in zip(keys, data) if d is None))
            pairs = ((k, d) for k, d in zip(keys, data) if d is not None)
            conn.executemany(f"INSERT OR REPLACE INTO snapshots (external_id, view, root_id, month, data, run_id) "
                             f"VALUES (?1, substr(?1, 1, instr(?1, ':') - 1), "
                             f"substr(?1, instr(?1, ':') + 1, length(?1) - instr(?1, ':') - 8), substr(?1, -7), ?2, "
                             f"{_literal(run_id)})", pairs)

    # ---- review queue ---------------------------------------------------------------------------
    # Every change of an item's status that is not a person's decision carries its reason as a note; notes are
    # never overwritten: `notes` keeps them all, oldest first (`note` is the latest).
    def sync_review(self, run_id: str, view: str, items: Sequence[dict], when: str | None = None) -> dict[str, int]:
        """Record this run's proposals for review: new ones pending, known ones refreshed; pending ones
        the run no longer proposes expire (saying so in a note). Approved and rejected rows keep their status; an
        applied one proposed again (its link has left the org) is pending again, and an expired one proposed
        again is pending again, each with the reason in a note."""
        conn = self.db.conn
        at = {"at": when, "by": None, "run": run_id, "view": view}
        with self._tx():
            conn.execute("DROP TABLE IF EXISTS temp.proposed")
            conn.execute("CREATE TEMP TABLE proposed (child_id TEXT NOT NULL, parent_ref TEXT NOT NULL, "
                         "PRIMARY KEY (child_id, parent_ref)) WITHOUT ROWID")
            conn.executemany("INSERT OR IGNORE INTO temp.proposed VALUES (?, ?)",
                             ((it["child_id"], it["parent_ref"]) for it in items))
            mine = "view = :view AND (child_id, parent_ref) IN (SELECT child_id, parent_ref FROM temp.proposed)"
            # an applied link proposed again is no longer in the org: it comes back to review, saying why
            reopened = conn.execute(
                "UPDATE review SET status = 'pending', applied_run = NULL, " + _add_note(
                    "'proposed again by run ' || :run || ': the link applied by run ' || coalesce(applied_run, '?') "
                    "|| ' is no longer in the org'") + f" WHERE status = 'applied' AND {mine}", at).rowcount
            conn.execute("UPDATE review SET status = 'pending', " + _add_note("'proposed again by run ' || :run")
                         + f" WHERE status = 'expired' AND {mine}", at)
            before = conn.execute("SELECT count(*) FROM review WHERE view = ?", (view,)).fetchone()[0]
            conn.executemany(
                "INSERT INTO review (view, child_id, parent_ref, parent_id, placeholder_name, members, rule, confidence, "
                "evidence, reason, status, first_run, last_run) VALUES (?,?,?,?,?,?,?,?,?,?,'pending',?,?) "
                "ON CONFLICT (view, child_id, parent_ref) DO UPDATE SET confidence = excluded.confidence, "
                "evidence = excluded.evidence, reason = excluded.reason, rule = excluded.rule, members = excluded.members, "
                # a pending placeholder takes the name this run proposes (an older run may have named it wrongly)
                "placeholder_name = CASE WHEN review.status = 'pending' THEN excluded.placeholder_name "
                "ELSE review.placeholder_name END, last_run = excluded.last_run",
                ((view, it["child_id"], it["parent_ref"], it.get("parent_id"), it.get("placeholder_name"),
                  json.dumps(it.get("members")) if it.get("members") else None, it["rule"], it["confidence"],
                  json.dumps(it.get("evidence") or {}, sort_keys=True), it.get("reason"), run_id, run_id)
                 for it in items))
            new = conn.execute("SELECT count(*) FROM review WHERE view = ?", (view,)).fetchone()[0] - before
            # every row this run proposed carries last_run = run_id; older pending rows are no longer proposed
            expired = conn.execute(
                "UPDATE review SET status = 'expired', " + _add_note(
                    "'not proposed by run ' || :run || ' (the child has a parent now, or no rule proposes this link "
                    "any more)'") + " WHERE view = :view AND status = 'pending' AND last_run != :run", at).rowcount
            conn.execute("DROP TABLE temp.proposed")
        return {"new": new, "expired": expired, "reopened": reopened}

    def review_items(self, status: str | None = None, view: str | None = None, ids: Sequence[int] = ()) -> list[dict]:
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        if view:
            where.append("view = ?")
            args.append(view)
        if ids:
            where.append(f"id IN ({', '.join('?' * len(ids))})")
            args.extend(ids)
        rows = self.db["review"].rows_where(" AND ".join(where) or None, args, order_by="confidence DESC, id")
        out = []
        for r in rows:
            r["evidence"] = json.loads(r["evidence"]) if r["evidence"] else {}
            r["members"] = json.loads(r["members"]) if r["members"] else None
            r["notes"] = json.loads(r["notes"]) if r.get("notes") else []
            out.append(r)
        return out

    def rejected_pairs(self, view: str) -> set[tuple[str, str]]:
        return {(c, p) for c, p in self.db.execute(
            "SELECT child_id, parent_ref FROM review WHERE view = ? AND status = 'rejected'", [view])}

    def held_pairs(self, view: str) -> dict[tuple[str, str], str]:
        """(child, parent) pairs a `rollback --hold` took out of the org and no person has decided on since:
        rules do not apply them again (they go to review). Value: the rollback's run id."""
        return {(c, p): r for c, p, r in self.db.execute(
            "SELECT child_id, parent_ref, held_run FROM review WHERE view = ? AND held_run IS NOT NULL "
            "AND status IN ('pending', 'expired')", [view])}

    def decide_review(self, ids: Sequence[int], status: str, when: str, by: str | None = None,
                      note: str | None = None) -> list[dict]:
        """Approve or reject review items; only pending (or expired/blocked) items can be decided. The decision
        joins the item's notes (with who and when, even without a note) and ends any hold of a rollback."""
        conn = self.db.conn
        with self._tx():
            for rid in ids:
                conn.execute("UPDATE review SET status = :status, decided_at = :at, decided_by = :by, held_run = NULL, "
                             "away_run = NULL, note = :note, notes = json_insert(coalesce(notes, '[]'), '$[#]', "
                             "json_object('at', :at, 'by', :by, 'run', NULL, 'text', :note, 'decision', :status)) "
                             "WHERE id = :id", {"status": status, "at": when, "by": by, "note": note, "id": rid})
        return self.review_items(ids=ids)

    def settle_review(self, run_id: str, applied: Sequence[int], blocked: Sequence[tuple[int, str]],
                      away: Sequence[tuple[int, str | None]] = (), when: str | None = None) -> None:
        """Approved items the run applied become 'applied' (one whose accounts had left the input says it is
        back); those a guard refused become 'blocked' (with why). `away`: approved items whose child or parent
        is not in this run's input, with a note (None: the blocked note says it); they are re-applied when
        they come back, as a person decided."""
        conn = self.db.conn
        at = {"at": when, "by": None, "run": run_id}
        with self._tx():
            conn.executemany("UPDATE review SET " + _add_note(
                "'run ' || :run || ': the child and the parent are back in the input (they were not in that of run ' "
                "|| away_run || '); the approved link is applied again'") + ", away_run = NULL WHERE id = :id "
                "AND away_run IS NOT NULL", ({**at, "id": i} for i in applied))
            conn.executemany("UPDATE review SET status = 'applied', applied_run = :run WHERE id = :id",
                             ({**at, "id": i} for i in applied))
            conn.executemany("UPDATE review SET status = 'blocked', away_run = NULL, " + _add_note("'run ' || :run || ': ' || :why")
                             + " WHERE id = :id", ({**at, "id": i, "why": why} for i, why in blocked))
            conn.executemany("UPDATE review SET away_run = :run WHERE id = :id AND away_run IS NULL",
                             ({**at, "id": i} for i, _ in away))
            conn.executemany("UPDATE review SET " + _add_note("'run ' || :run || ': ' || :why") + " WHERE id = :id",
                             ({**at, "id": i, "why": why} for i, why in away if why))

    def reopen_after_rollback(self, rollback_id: str, run_id: str, view: str, links: Sequence[dict], hold: bool,
                              when: str | None = None, dry_run: bool = False) -> dict[str, int]:
        """The review side of a rollback of `run_id`: the approved items whose links it undid are pending again
        (a person decides again), saying why. With `hold`, every link it undid ({child, parent, rule,
        confidence, evidence}) is also held: rules do not apply it again until a person approves it (a rule-made
        link gets a pending item of its own). Returns how many items were reopened, held and created."""
        conn = self.db.conn
        at = {"at": when, "by": None, "run": rollback_id, "undone": run_id, "view": view,
              "held": rollback_id if hold else None}
        why = ("'run ' || :run || ' rolled back run ' || :undone || ': the link it applied is no longer in the org; "
               + ("it is held out of the org until a person approves it again (reject: never proposed again)'" if hold
                  else "approve it to apply it again'"))
        pairs = [(l["child"], l["parent"]) for l in links]
        with self._tx():
            conn.execute("DROP TABLE IF EXISTS temp.undone")
            conn.execute("CREATE TEMP TABLE undone (child_id TEXT NOT NULL, parent_ref TEXT NOT NULL, "
                         "PRIMARY KEY (child_id, parent_ref)) WITHOUT ROWID")
            conn.executemany("INSERT OR IGNORE INTO temp.undone VALUES (?, ?)", pairs)
            mine = "view = :view AND (child_id, parent_ref) IN (SELECT child_id, parent_ref FROM temp.undone)"
            count = (lambda where: conn.execute(f"SELECT count(*) FROM review WHERE {where}", at).fetchone()[0])
            reopened = count(f"status = 'applied' AND applied_run = :undone AND {mine}")
            held = count(f"status IN ('pending', 'expired', 'applied') AND {mine}") if hold else 0
            known = count(mine)
            if not dry_run:
                conn.execute("UPDATE review SET status = 'pending', applied_run = NULL, held_run = :held, "
                             + _add_note(why) + f" WHERE status = 'applied' AND applied_run = :undone AND {mine}", at)
                if hold:
                    conn.execute("UPDATE review SET status = 'pending', held_run = :held, " + _add_note(why)
                                 + f" WHERE status IN ('pending', 'expired', 'applied') AND held_run IS NOT :held "
                                 f"AND {mine}", at)
                    conn.executemany(
                        "INSERT OR IGNORE INTO review (view, child_id, parent_ref, parent_id, rule, confidence, evidence, "
                        "reason, status, first_run, last_run, held_run, note, notes) VALUES (:view, :child, :parent, "
                        ":parent, :rule, :confidence, :evidence, 'held: run ' || :run || ' rolled back this link', "
                        "'pending', :run, :run, :held, " + why + ", json_array(json_object('at', :at, 'by', NULL, "
                        "'run', :run, 'text', " + why + ")))",
                        ({**at, "child": l["child"], "parent": l["parent"], "rule": l.get("rule") or "rollback",
                          "confidence": l.get("confidence") if l.get("confidence") is not None else 1.0,
                          "evidence": l.get("evidence") or "{}"} for l in links))
            conn.execute("DROP TABLE temp.undone")
        created = len(set(pairs)) - known if hold else 0
        return {"reopened": reopened, "held": held + created, "created": created}

