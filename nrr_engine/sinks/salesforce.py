"""The Salesforce sink: no transaction to hold back, so the changes are recorded first as pending (the run stays
'applying' until it ends), then written, then failures marked and the rest confirmed applied. A write that
stops part-way (a crash, retries spent) leaves them pending and the next run settles them against the org.
Placeholder parents are created first, so the links that point at them carry the Ids Salesforce gave them."""
from __future__ import annotations

import numpy as np

from ..metrics import snapshot
from . import writeback


class SalesforceSink:
    def __init__(self, org, settings):
        self.org, self.settings = org, settings

    def write(self, ctx, plan, journal) -> dict[int, str]:
        org, settings = self.org, self.settings
        failures: dict[int, str] = {}
        if plan.inserts:  # phase 1: create placeholder parents and learn their Ids before anything points at them
            with ctx.stage("write"):
                mapping, failures = writeback.create_records(org, "Account", settings.hierarchy.placeholder_key_field,
                                                             plan.inserts)
                plan.inserts = [c._replace(id=mapping.get(c.id, c.id)) for c in plan.inserts]
                writeback.remap(plan.changes, mapping)
        with ctx.stage("ledger"):
            journal.record(plan.batches(), failures, status="pending")
        with ctx.stage("write"):
            starts, seq = [], len(plan.inserts)
            for batch in plan.changes:
                starts.append(seq)
                seq += len(batch)
            lookup = settings.lookup_views
            parent_of, root_of = {}, {}
            if lookup:  # each account's parent and root once this run's links are written: what its update locks
                tree = plan.views[lookup[0].name].tree
                ids = np.array(plan.accounts.ids, dtype=object)
                parent_of["Account"] = np.where(tree.parent >= 0, ids[np.maximum(tree.parent, 0)], "")
                root_of["Account"] = ids[tree.root]
            failed = writeback.write_changes(org, plan.changes, starts, {v.parent_field for v in lookup}, parent_of,
                                             root_of)
            sc = plan.snapshot_changes
            done = sc.write(lambda ids: org.delete(sc.object, ids), lambda recs: writeback.upsert_snapshots(
                org, sc.object, snapshot.KEY, snapshot.FIELDS, recs, 0).items())
            failed.update({seq + pos: err for pos, err in done.items()})
        with ctx.stage("ledger"):
            journal.settle_failed(failed)
            journal.confirm()
        return {**failures, **failed}
