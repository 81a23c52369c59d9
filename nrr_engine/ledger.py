"""The state store (SQLite via sqlite-utils): run ledger, every change, ARR history, family membership.

Schema changes are numbered migrations recorded in the `migrations` table; the only module that imports
sqlite_utils.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sqlite_utils

from .errors import Location, SourceUnavailable
from .metrics.snapshot import UPSERT, SnapshotChanges
from .model import FieldChanges


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


def _ident(name: str) -> str:
    """A view name as part of an SQL identifier (config restricts views to [a-z][a-z0-9_]*)."""
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)


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


MIGRATIONS = [(1, "runs, changes, findings, arr_history, membership, snapshots", _m1),
              (2, "review queue", _m2)]

REVIEW_STATUSES = ("pending", "approved", "rejected", "applied", "expired", "blocked")


class Ledger:
    """Runs, changes and history; every write method commits its own transaction."""

    def __init__(self, path: Path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except (sqlite3.Error, OSError) as exc:
            raise SourceUnavailable(f"cannot open the state store: {exc}", Location(str(path))) from None
        self.path = path
        self.db = sqlite_utils.Database(conn)
        self._membership_cache: dict[tuple[str, str], dict[str, str]] = {}
        self.migrate()

    def migrate(self) -> list[int]:
        """Apply pending migrations in order; return the ids applied."""
        db = self.db
        if "migrations" not in db.table_names():
            db["migrations"].create({"id": int, "name": str, "applied_at": str}, pk="id")
        done = {r["id"] for r in db["migrations"].rows}
        applied = []
        for mid, name, fn in MIGRATIONS:
            if mid in done:
                continue
            with db.conn:
                db.execute("BEGIN")
                fn(db)
                db["migrations"].insert({"id": mid, "name": name,
                                         "applied_at": db.execute("SELECT datetime('now')").fetchone()[0]})
            applied.append(mid)
        return applied

    def close(self) -> None:
        self.db.conn.close()

    # ---- runs -----------------------------------------------------------------------------------
    def start_run(self, run: dict) -> None:
        self.db["runs"].insert({**run, "status": "running"})

    def finish_run(self, run_id: str, **fields) -> None:
        for k in ("counts", "api_usage", "summary"):
            if k in fields and not isinstance(fields[k], str):
                fields[k] = json.dumps(fields[k], sort_keys=True, default=str)
        self.db["runs"].update(run_id, fields)

    def run(self, run_id: str) -> dict | None:
        rows = list(self.db["runs"].rows_where("id = ? OR id LIKE ?", [run_id, f"{run_id}%"], limit=2))
        return rows[0] if len(rows) == 1 else None

    def runs(self, limit: int = 50) -> list[dict]:
        return list(self.db["runs"].rows_where(order_by="started DESC, id DESC", limit=limit))

    def last_run(self, job: str, statuses: Sequence[str] = ("succeeded", "failed_records")) -> dict | None:
        q = f"job = ? AND mode = 'run' AND status IN ({', '.join('?' * len(statuses))})"
        rows = list(self.db["runs"].rows_where(q, [job, *statuses], order_by="started DESC", limit=1))
        return rows[0] if rows else None

    def interrupted_runs(self) -> list[dict]:
        return list(self.db["runs"].rows_where("status IN ('running', 'applying')", order_by="started"))

    # ---- changes --------------------------------------------------------------------------------
    def record_changes(self, run_id: str, batches: Iterable[Iterable], status: str,
                       failures: dict[int, str] | None = None) -> tuple[int, int]:
        """Append every change of `batches` with `status` (failures: {seq: error} get 'failed');
        returns the run's rowid range (first, last)."""
        conn = self.db.conn
        sql = ("INSERT INTO changes (run_id, object, record_id, external_id, field, old, new, status, rule, confidence, "
               "evidence) VALUES (?,?,?,?,?,?,?,?,?,?,?)")
        conn.execute("BEGIN")
        try:
            first = (conn.execute("SELECT max(rowid) FROM changes").fetchone()[0] or 0) + 1
            for batch in batches:
                if isinstance(batch, FieldChanges) and batch.meta is not None:
                    # Links: rule, confidence and evidence per change (evidence explained one at a time)
                    consts = ", ".join(_literal(v) for v in (run_id, batch.object, batch.field, status))
                    to_json = batch.to_json or (lambda ev: json.dumps(ev, sort_keys=True) if ev else None)
                    conn.executemany(f"INSERT INTO changes (run_id, object, field, status, record_id, old, new, rule, "
                                     f"confidence, evidence) VALUES ({consts}, ?, ?, ?, ?, ?, ?)",
                                     ((rid, old, new, rule, conf, to_json(ev))
                                      for rid, old, new, (rule, conf, ev) in zip(batch.ids, batch.old, batch.new,
                                                                                 batch.meta)))
                    continue
                if isinstance(batch, FieldChanges):
                    # Columnar batch: the per-batch constants are SQL literals, so each row binds only 3 values
                    # (binding costs ~0.3 us a value; a first run records millions of rows).
                    consts = ", ".join(_literal(v) for v in (run_id, batch.object, batch.field, status, batch.rule))
                    conn.executemany(f"INSERT INTO changes (run_id, object, field, status, rule, record_id, old, new) "
                                     f"VALUES ({consts}, ?, ?, ?)", zip(batch.ids, batch.old, batch.new))
                    continue
                if isinstance(batch, SnapshotChanges):
                    consts = ", ".join(_literal(v) for v in (run_id, batch.object, UPSERT, status, batch.rule))
                    conn.executemany(f"INSERT INTO changes (run_id, object, field, status, rule, record_id, external_id, "
                                     f"old, new) VALUES ({consts}, ?, ?, ?, ?)",
                                     zip(batch.ids, batch.keys, batch.old, batch.new))
                    continue
                conn.executemany(sql, ((run_id, c.object, c.id, c.key, c.field, c.old, c.new, status, c.rule,
                                        c.confidence, json.dumps(c.evidence, sort_keys=True) if c.evidence else None)
                                       for c in batch))
            last = conn.execute("SELECT max(rowid) FROM changes").fetchone()[0] or 0
            if failures:
                conn.executemany("UPDATE changes SET status = 'failed', error = ? WHERE rowid = ?",
                                 ((err, first + seq) for seq, err in failures.items()))
            if last >= first:
                conn.execute("UPDATE runs SET change_first = ?, change_last = ? WHERE id = ?", (first, last, run_id))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return first, last

    def _range(self, run_id: str) -> tuple[int, int]:
        row = self.db.execute("SELECT change_first, change_last FROM runs WHERE id = ?", [run_id]).fetchone()
        return (row[0], row[1]) if row and row[0] is not None else (1, 0)

    def settle_changes(self, run_id: str, statuses: Iterable[tuple[int, str, str | None, str | None]]) -> None:
        """Set (seq, status, error, record_id) on changes of the run."""
        first, _ = self._range(run_id)
        conn = self.db.conn
        conn.execute("BEGIN")
        try:
            conn.executemany("UPDATE changes SET status = ?, error = ?, record_id = coalesce(?, record_id) WHERE rowid = ?",
                             ((st, err, rid, first + seq) for seq, st, err, rid in statuses))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def change_groups(self, run_id: str, statuses: Sequence[str]) -> list[tuple[str, str]]:
        """The distinct (object, field) pairs among a run's changes with one of `statuses`."""
        first, last = self._range(run_id)
        marks = ", ".join("?" * len(statuses))
        return [tuple(r) for r in self.db.conn.execute(
            f"SELECT DISTINCT object, field FROM changes WHERE rowid BETWEEN ? AND ? AND status IN ({marks}) "
            "ORDER BY object, field", [first, last, *statuses])]

    def iter_changes(self, run_id: str, obj: str, field: str,
                     statuses: Sequence[str]) -> Iterator[tuple[int, str | None, str | None, str | None, str | None]]:
        """(seq, record_id, external_id, old, new) of one (object, field) of a run, in plan order, streamed."""
        first, last = self._range(run_id)
        marks = ", ".join("?" * len(statuses))
        cur = self.db.conn.execute(
            f"SELECT rowid - ?, record_id, external_id, old, new FROM changes WHERE rowid BETWEEN ? AND ? "
            f"AND object = ? AND field = ? AND status IN ({marks}) ORDER BY rowid",
            [first, first, last, obj, field, *statuses])
        while rows := cur.fetchmany(20_000):
            yield from rows

    def changes(self, run_id: str, status: str | None = None) -> Iterator[dict]:
        """A run's changes in plan order, each with its `seq` (0-based position in the run)."""
        first, last = self._range(run_id)
        where, args = "rowid BETWEEN ? AND ?", [first, last]
        if status:
            where += " AND status = ?"
            args.append(status)
        cur = self.db.conn.execute(f"SELECT rowid - {int(first)} AS seq, * FROM changes WHERE {where} ORDER BY rowid", args)
        names = [d[0] for d in cur.description]
        while rows := cur.fetchmany(10_000):
            for row in rows:
                yield dict(zip(names, row))

    def change_counts(self, run_id: str) -> dict[str, int]:
        first, last = self._range(run_id)
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT status, count(*) FROM changes WHERE rowid BETWEEN ? AND ? GROUP BY status", [first, last])}

    def record_findings(self, run_id: str, findings: Iterable) -> None:
        self.db["findings"].insert_all(({"run_id": run_id, **{**f.as_dict(), "records": json.dumps(f.as_dict()["records"])}}
                                        for f in findings), batch_size=500)

    def findings(self, run_id: str) -> list[dict]:
        return list(self.db["findings"].rows_where("run_id = ?", [run_id]))

    # ---- ARR history ----------------------------------------------------------------------------
    def arr_segments(self) -> Iterator[tuple[str, str, str, int]]:
        cur = self.db.conn.execute("SELECT account_id, start_month, end_month, arr_units FROM arr_history")
        while rows := cur.fetchmany(50_000):
            yield from rows

    def replace_arr(self, account_ids: Sequence[str], segments: Iterable[tuple[str, str, str, int]]) -> None:
        """Replace the history of the given accounts by `segments`, atomically."""
        conn = self.db.conn
        conn.execute("BEGIN")
        try:
            if conn.execute("SELECT 1 FROM arr_history LIMIT 1").fetchone():
                conn.executemany("DELETE FROM arr_history WHERE account_id = ?", ((a,) for a in account_ids))
            conn.executemany("INSERT INTO arr_history VALUES (?, ?, ?, ?)", segments)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # ---- membership -----------------------------------------------------------------------------
    def stage_membership(self, view: str, pairs: Iterable[tuple[str, str]]) -> int:
        """Load this run's (account, root) pairs into a temp table; return how many differ from the record.

        Nothing is persisted until commit_membership; comparing in SQL keeps a million pairs out of Python dicts."""
        self._membership_cache.clear()
        conn = self.db.conn
        table = f"temp.stage_membership_{_ident(view)}"
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (account_id TEXT PRIMARY KEY, root_id TEXT NOT NULL) WITHOUT ROWID")
        with conn:
            conn.executemany(f"INSERT INTO {table} VALUES (?, ?)", pairs)
        return conn.execute(self._changed_membership_sql(view, "count(*)"), [view]).fetchone()[0]

    @staticmethod
    def _changed_membership_sql(view: str, what: str) -> str:
        return (f"SELECT {what} FROM temp.stage_membership_{_ident(view)} s LEFT JOIN membership m "
                "ON m.view = ? AND m.account_id = s.account_id AND m.end_month IS NULL "
                "WHERE m.root_id IS NULL OR m.root_id != s.root_id")

    def commit_membership(self, view: str, month: str, prev_month: str) -> int:
        """Persist the staged membership for `month`: close changed open segments, open new ones."""
        self._membership_cache.clear()
        conn = self.db.conn
        conn.execute("BEGIN")
        try:
            conn.execute(f"CREATE TEMP TABLE changed_membership AS "
                         f"{self._changed_membership_sql(view, 's.account_id, s.root_id')}", [view])
            # an open segment that began this month is replaced; an older one ends last month
            conn.execute("DELETE FROM membership WHERE view = ? AND end_month IS NULL AND start_month >= ? "
                         "AND account_id IN (SELECT account_id FROM temp.changed_membership)", [view, month])
            conn.execute("UPDATE membership SET end_month = ? WHERE view = ? AND end_month IS NULL "
                         "AND account_id IN (SELECT account_id FROM temp.changed_membership)", [prev_month, view])
            n = conn.execute("INSERT INTO membership (view, account_id, start_month, end_month, root_id) "
                             "SELECT ?, account_id, ?, NULL, root_id FROM temp.changed_membership",
                             [view, month]).rowcount
            conn.execute("DROP TABLE temp.changed_membership")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return n

    def membership_overrides(self, view: str, month: str) -> dict[str, str]:
        """account -> root recorded for `month`, only where it differs from the staged (current) root.

        An account first recorded after `month` keeps its earliest recorded root. Done in SQL, so a run asks
        for a handful of differences instead of a million pairs. Cached until membership is next recorded."""
        key = (view, month)
        if key not in self._membership_cache:
            stage = f"temp.stage_membership_{_ident(view)}"
            sql = (f"SELECT s.account_id, coalesce(cov.root_id, early.root_id) AS root FROM {stage} s "
                   "LEFT JOIN membership cov ON cov.view = ?1 AND cov.account_id = s.account_id "
                   "AND cov.start_month <= ?2 AND (cov.end_month IS NULL OR cov.end_month >= ?2) "
                   "LEFT JOIN membership early ON cov.root_id IS NULL AND early.view = ?1 "
                   "AND early.account_id = s.account_id AND early.start_month = (SELECT min(start_month) "
                   "FROM membership WHERE view = ?1 AND account_id = s.account_id) "
                   "WHERE root IS NOT NULL AND root != s.root_id")
            self._membership_cache[key] = dict(self.db.conn.execute(sql, [view, month]))
        return self._membership_cache[key]

    def latest_membership_month(self, view: str) -> str | None:
        return self.db.execute("SELECT max(start_month) FROM membership WHERE view = ?", [view]).fetchone()[0]

    # ---- snapshots ------------------------------------------------------------------------------
    def upsert_snapshots(self, run_id: str, keys: Sequence[str], data: Sequence[str]) -> None:
        """Latest value of each KPI snapshot (external id <view>:<root>:<YYYY-MM>) as JSON, with its run."""
        conn = self.db.conn
        conn.execute("BEGIN")
        try:
            conn.executemany(f"INSERT OR REPLACE INTO snapshots (external_id, view, root_id, month, data, run_id) "
                             f"VALUES (?1, substr(?1, 1, instr(?1, ':') - 1), "
                             f"substr(?1, instr(?1, ':') + 1, length(?1) - instr(?1, ':') - 8), substr(?1, -7), ?2, "
                             f"{_literal(run_id)})", zip(keys, data))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # ---- review queue ---------------------------------------------------------------------------
    def sync_review(self, run_id: str, view: str, items: Sequence[dict]) -> dict[str, int]:
        """Record this run's proposals for review: new ones pending, known ones refreshed; pending ones
        the run no longer proposes expire. Decided rows (approved, rejected, applied) keep their status."""
        conn = self.db.conn
        conn.execute("BEGIN")
        try:
            before = conn.execute("SELECT count(*) FROM review WHERE view = ?", (view,)).fetchone()[0]
            conn.executemany(
                "INSERT INTO review (view, child_id, parent_ref, parent_id, placeholder_name, members, rule, confidence, "
                "evidence, reason, status, first_run, last_run) VALUES (?,?,?,?,?,?,?,?,?,?,'pending',?,?) "
                "ON CONFLICT (view, child_id, parent_ref) DO UPDATE SET confidence = excluded.confidence, "
                "evidence = excluded.evidence, reason = excluded.reason, rule = excluded.rule, members = excluded.members, "
                "last_run = excluded.last_run, status = CASE WHEN status = 'expired' THEN 'pending' ELSE status END",
                ((view, it["child_id"], it["parent_ref"], it.get("parent_id"), it.get("placeholder_name"),
                  json.dumps(it.get("members")) if it.get("members") else None, it["rule"], it["confidence"],
                  json.dumps(it.get("evidence") or {}, sort_keys=True), it.get("reason"), run_id, run_id)
                 for it in items))
            new = conn.execute("SELECT count(*) FROM review WHERE view = ?", (view,)).fetchone()[0] - before
            # every row this run proposed carries last_run = run_id; older pending rows are no longer proposed
            expired = conn.execute("UPDATE review SET status = 'expired' WHERE view = ? AND status = 'pending' "
                                   "AND last_run != ?", (view, run_id)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return {"new": new, "expired": expired}

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
            out.append(r)
        return out

    def rejected_pairs(self, view: str) -> set[tuple[str, str]]:
        return {(c, p) for c, p in self.db.execute(
            "SELECT child_id, parent_ref FROM review WHERE view = ? AND status = 'rejected'", [view])}

    def decide_review(self, ids: Sequence[int], status: str, when: str, by: str | None = None,
                      note: str | None = None) -> list[dict]:
        """Approve or reject review items; only pending (or expired/blocked) items can be decided."""
        conn = self.db.conn
        conn.execute("BEGIN")
        try:
            for rid in ids:
                conn.execute("UPDATE review SET status = ?, decided_at = ?, decided_by = ?, note = ? WHERE id = ?",
                             (status, when, by, note, rid))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return self.review_items(ids=ids)

    def settle_review(self, run_id: str, applied: Sequence[int], blocked: Sequence[tuple[int, str]]) -> None:
        """Approved items the run applied become 'applied'; those a guard refused become 'blocked' (with why)."""
        conn = self.db.conn
        conn.execute("BEGIN")
        try:
            conn.executemany("UPDATE review SET status = 'applied', applied_run = ? WHERE id = ?",
                             ((run_id, i) for i in applied))
            conn.executemany("UPDATE review SET status = 'blocked', note = ? WHERE id = ?",
                             ((f"run {run_id}: {why}", i) for i, why in blocked))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
