"""The local org sink: the plan written into the SQLite working copy in one transaction, which commits only
after the ledger has recorded the changes (a crash before that rolls the working copy back; a commit that
fails puts the changes back to pending, for the next run to settle)."""
from __future__ import annotations

import json

import numpy as np

from ..metrics import snapshot


class LocalOrgSink:
    def __init__(self, org, settings):
        self.org, self.settings = org, settings

    def write(self, ctx, plan, journal) -> dict[int, str]:
        recorded = False
        try:
            with self.org.transaction():  # commits after the ledger has
                with ctx.stage("write"):
                    failures = write_changes(self.org, plan, self.settings.snapshot_prefix)
                with ctx.stage("ledger"):
                    journal.record(plan.batches(), failures)
                    recorded = True
        except BaseException:
            if recorded:  # the ledger says applied but the working copy did not commit (a full disk)
                try:
                    journal.reopen()
                except Exception:
                    pass  # the run stays unsettled: the next run settles its changes by reading the org
            raise
        return failures


def write_changes(org, plan, snapshot_prefix: str) -> dict[int, str]:
    """Apply the plan's changes inside the caller's transaction; returns {seq: error} of records that failed."""
    failures: dict[int, str] = {}
    if plan.inserts:  # first, so the plan's updates of new records find them
        by_id = {c.id: n for n, c in enumerate(plan.inserts)}
        for rid, error in org.insert("Account", [{"Id": c.id, **json.loads(c.new)} for c in plan.inserts]):
            failures[by_id[rid]] = error
    starts, seq = [], len(plan.inserts)
    for batch in plan.changes:
        starts.append(seq)
        seq += len(batch)
    by_object: dict[str, list[int]] = {}
    for b, batch in enumerate(plan.changes):
        if len(batch):
            by_object.setdefault(batch.object, []).append(b)
    for obj, members in by_object.items():
        batches = [plan.changes[b] for b in members]
        # Group records by which batches change them: each group is one UPDATE setting all its fields at once
        # (4 fields in one statement cost what 1 field does; per-field updates would cost 4x).
        mask = np.zeros(len(plan.accounts), dtype=np.int64)
        for bit, batch in enumerate(batches):
            mask[batch.rows] |= 1 << bit
        for value in np.unique(mask[mask > 0]).tolist():
            rows = np.flatnonzero(mask == value)
            chosen = [bit for bit in range(len(batches)) if value >> bit & 1]
            # a batch whose every change is in the group (a first run's rollups) is taken whole, not copied
            positions = [slice(None) if len(rows) == len(batches[bit]) else np.searchsorted(batches[bit].rows, rows)
                         for bit in chosen]
            ids = batches[chosen[0]].ids[positions[0]]
            failed = dict(org.update_fields(obj, [batches[bit].field for bit in chosen], ids,
                                            [batches[bit].new[pos] for bit, pos in zip(chosen, positions)]))
            if failed:
                for bit, pos in zip(chosen, positions):
                    batch, start = batches[bit], starts[members[bit]]
                    at = range(len(batch)) if isinstance(pos, slice) else pos
                    failures.update({start + int(p): failed[batch.ids[p]] for p in at if batch.ids[p] in failed})
    sc = plan.snapshot_changes
    failed = sc.write(lambda ids: org.delete(sc.object, ids),
                      lambda rows: org.upsert_rows(sc.object, snapshot.KEY, snapshot.FIELDS, rows, snapshot_prefix),
                      (snapshot.KEY, *snapshot.FIELDS))
    failures.update({seq + pos: err for pos, err in failed.items()})
    return failures
