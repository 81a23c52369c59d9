"""Ledger against org: settle runs that died mid-way, and roll a run back. Both stream.

A first run at a million accounts records millions of changes; these work one (object, field) at a time
against a dict of that field's current values, so memory stays at one field's worth.
"""
from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from contextlib import nullcontext
from itertools import islice

from .ledger import Ledger
from .metrics import snapshot
from .metrics.snapshot import FIELDS as SNAPSHOT_FIELDS, KEY as SNAPSHOT_KEY
from .model import INSERT, UPSERT, FieldChanges, SnapshotChanges
from .sources import LocalOrg

_CHUNK = 50_000
SAMPLE = 1_000  # conflicts listed one by one; the rest are counted


def _field_values(org: LocalOrg, obj: str, field: str) -> dict[str, str | None]:
    if not org.has_field(obj, field):
        return {}
    return dict(org.read(obj, ["Id", field]))


def _snapshots_by_key(org: LocalOrg, obj: str) -> Iterator[tuple]:
    """(Id, key, *FIELDS) rows in key order, or nothing if the object has no snapshots yet."""
    if not org.has_field(obj, SNAPSHOT_KEY):
        return iter(())
    return org.read(obj, ["Id", SNAPSHOT_KEY, *SNAPSHOT_FIELDS], order_by=SNAPSHOT_KEY)


def _matches(row: tuple | None, record_json: str | None) -> bool:
    """The org row holds exactly the values of the snapshot record (up to number formatting)."""
    if row is None or record_json is None:
        return False
    rec = json.loads(record_json)
    return all(snapshot.same(v, rec.get(f)) for f, v in zip(SNAPSHOT_FIELDS, row[2:]))


def _joined(changes: Iterator[tuple], org_rows: Iterator[tuple]) -> Iterator[tuple[tuple, tuple | None]]:
    """Pair each upsert change (ordered by external id, as plans are) with the org row of that key."""
    row = next(org_rows, None)
    for ch in changes:
        key = ch[2]
        while row is not None and (row[1] or "") < key:
            row = next(org_rows, None)
        yield ch, (row if row is not None and row[1] == key else None)


def refresh(org: LocalOrg, ledger: Ledger, run_id: str, statuses: tuple[str, ...]) -> None:
    """Read afresh the objects and fields a run changed (a remote org selects the fields it reads)."""
    groups = ledger.change_groups(run_id, statuses)
    for obj, field in groups:
        org.want(obj, [SNAPSHOT_KEY, *SNAPSHOT_FIELDS] if field == UPSERT else [] if field == INSERT else [field])
    org.sync(sorted({obj for obj, _ in groups}))


def recover(org: LocalOrg, ledger: Ledger) -> list[str]:
    """Settle runs that died mid-way or whose write failed part-way: each pending (or not yet confirmed)
    change becomes applied, not_applied or conflict by reading the org, and the KPI snapshots it did write
    go into the state store (a later run sees them in the org and so would never record them there)."""
    settled = []
    for run in ledger.interrupted_runs():
        run_id = run["id"]
        open_statuses = ("pending", "applied")
        if org.remote:  # read what Salesforce holds now, not what the mirror held before the crash
            refresh(org, ledger, run_id, open_statuses)
        for obj, field in ledger.change_groups(run_id, open_statuses):
            changes = ledger.iter_changes(run_id, obj, field, open_statuses)
            if field == UPSERT:
                done = [(seq, key, new, row) for (seq, _, key, _, new), row in
                        _joined(changes, _snapshots_by_key(org, obj))]
                written = [(key, new) for _, key, new, row in done if _upsert_settled(row, new) == "applied"]
                ledger.upsert_snapshots(run_id, [k for k, _ in written], [d for _, d in written])
                statuses = iter([(seq, _upsert_settled(row, new), None, row[0] if row else None)
                                 for seq, _, new, row in done])
            elif field == INSERT:
                rows = list(changes)
                there = org.get(obj, [r[1] for r in rows], []) if org.has_table(obj) else {}
                statuses = iter([(seq, "applied" if rid in there else "not_applied", None, None)
                                 for seq, rid, _, _, _ in rows])
            else:
                current = _field_values(org, obj, field)
                statuses = ((seq, _settled(current.get(rid), old, new), None, None)
                            for seq, rid, _, old, new in changes)
            while part := list(islice(statuses, _CHUNK)):
                ledger.settle_changes(run_id, part)
        if run["status"] in ("running", "applying"):
            ledger.finish_run(run_id, status="interrupted", unsettled=None,
                              error=run["error"] or "the process stopped before the run finished")
        else:  # failed part-way: it keeps its status and error, its changes are settled now
            ledger.finish_run(run_id, unsettled=None)
        settled.append(run_id)
    return settled


def _upsert_settled(row: tuple | None, new: str | None) -> str:
    """An upsert is applied when the org holds its record; a delete (new None) when the org holds none."""
    if new is None:
        return "applied" if row is None else "not_applied"
    return "applied" if _matches(row, new) else "not_applied"


def _settled(now: str | None, old: str | None, new: str | None) -> str:
    if snapshot.same(now, new):
        return "applied"
    return "not_applied" if now == old else "conflict"


def rollback(org: LocalOrg, ledger: Ledger, run_id: str, rollback_id: str | None, snapshot_prefix: str,
             dry_run: bool = False, links: Collection[tuple[str, str]] = ()) -> dict:
    """Restore the old values of `run_id`'s applied changes, recorded as run `rollback_id`.

    A value edited since the run is left alone and reported (a sample of them, and how many). `dry_run`: the
    same counts and conflicts, nothing written to the org or the ledger. `links`: the (object, field) pairs
    whose restored record Ids the result lists under "links" (the parent links, for the review queue)."""
    conflicts: list[dict] = []
    n_conflicts = restored = deleted = recreated = snapshots_restored = 0
    batches: list = []

    def conflict(obj, rid, field, expected, found):
        nonlocal n_conflicts
        n_conflicts += 1
        if len(conflicts) < SAMPLE:
            conflicts.append({"object": obj, "id": rid, "field": field, "expected": expected, "found": found})

    restored_links: dict[str, list[str]] = {}
    with nullcontext() if dry_run else org.transaction():  # write-ahead as in a run: the ledger commits first
        for obj, field in ledger.change_groups(run_id, ("applied",)):
            changes = ledger.iter_changes(run_id, obj, field, ("applied",))
            if field == UPSERT:
                undo = SnapshotChanges(obj, rule=f"rollback:{run_id}")
                gone: list[str] = []
                for (_, _, key, old, new), row in _joined(changes, _snapshots_by_key(org, obj)):
                    if new is None:  # the run deleted this snapshot: put it back, unless a record of the key is there
                        if row is not None:
                            conflict(obj, row[0], UPSERT, None, json.dumps(row[2:]))
                            continue
                        undo.keys.append(key)
                        undo.ids.append(None)
                        undo.old.append(None)
                        undo.new.append(old)
                        continue
                    if not _matches(row, new):
                        conflict(obj, row[0] if row else key, UPSERT, new, json.dumps(row[2:]) if row else None)
                        continue
                    if old is None:
                        gone.append(row[0])
                    undo.keys.append(key)
                    undo.ids.append(row[0])
                    undo.old.append(new)
                    undo.new.append(old)
                if not dry_run:
                    org.delete(obj, gone)
                    org.upsert_json(obj, SNAPSHOT_KEY, SNAPSHOT_FIELDS, [n for n in undo.new if n is not None],
                                    snapshot_prefix)
                deleted += len(gone)
                recreated += sum(1 for rid, n in zip(undo.ids, undo.new) if rid is None and n is not None)
                snapshots_restored += sum(1 for rid, o, n in zip(undo.ids, undo.old, undo.new)
                                          if rid is not None and o is not None and n is not None)
                batches.append(undo)
                continue
            if field == INSERT:  # records the run created: deleted, unless already gone
                rows = list(changes)
                if dry_run:  # what a delete would find: the records still there
                    there = org.get(obj, [r[1] for r in rows], []) if org.has_table(obj) else {}
                    oks = [r[1] in there for r in rows]
                else:
                    oks = [res.ok for res in org.delete(obj, [r[1] for r in rows])]
                undo = FieldChanges(obj, INSERT, f"rollback:{run_id}", ids=[], old=[], new=[])
                for (_, rid, _, _, new), ok in zip(rows, oks):
                    if ok:
                        undo.ids.append(rid)
                        undo.old.append(new)
                        undo.new.append(None)
                    else:
                        conflict(obj, rid, INSERT, new, None)
                deleted += len(undo)
                batches.append(undo)
                continue
            current = _field_values(org, obj, field)
            undo = FieldChanges(obj, field, f"rollback:{run_id}", ids=[], old=[], new=[])
            for _, rid, _, old, new in changes:
                now = current.get(rid)
                if snapshot.same(now, new):
                    undo.ids.append(rid)
                    undo.old.append(now)
                    undo.new.append(old)
                else:
                    conflict(obj, rid, field, new, now)
            del current
            if (obj, field) in links:
                restored_links[field] = list(undo.ids)
            if not dry_run:
                org.update_fields(obj, [field], undo.ids, [undo.new])
            restored += len(undo)
            batches.append(undo)
        if not dry_run:
            ledger.record_changes(rollback_id, batches, "applied")
    # Every change the rollback records is one of these four, so they add up to its `applied` count.
    return {"run_id": rollback_id, "rolled_back": run_id, "restored_fields": restored,
            "restored_snapshots": snapshots_restored, "deleted_records": deleted, "restored_records": recreated,
            "changes": restored + snapshots_restored + deleted + recreated,
            "conflicts": conflicts, "conflict_count": n_conflicts, "links": restored_links}
