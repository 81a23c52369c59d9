"""The state sink: what a run leaves in the state store besides its change records: the monthly ARR history,
the families it saw this month (membership), the KPI snapshots' latest values and the review queue."""
from __future__ import annotations

from .. import months
from ..metrics import arr as arr_mod


class StateSink:
    def __init__(self, ledger, settings):
        self.ledger, self.settings = ledger, settings

    def write(self, ctx, plan) -> None:
        ledger, run_id = self.ledger, ctx.run_id
        ids, rows = plan.arr_rewrite
        if ids or plan.merged_away:
            ledger.replace_arr([*ids, *plan.merged_away],
                               arr_mod.segment_parts(plan.matrix, rows, plan.first_month, plan.accounts.ids))
        cur = ctx.current_month
        for vname, changed in plan.membership.items():
            if changed:
                ledger.commit_membership(run_id, vname, months.fmt(cur), months.fmt(cur - 1), changed)
        sc = plan.snapshot_changes
        if len(sc):
            ledger.upsert_snapshots(run_id, sc.keys, sc.new)
        when = ctx.clock().isoformat()
        decisions = plan.state.decisions
        for vname, items in plan.review_queue(self.settings).items():
            ledger.sync_review(run_id, vname, items, when)
            rep = plan.views[vname].repair
            # an approval outlives accounts that leave the input: it is applied again when they are back
            ledger.settle_review(run_id, [l.review_id for l in rep.applied if l.review_id is not None],
                                 [(l.review_id, l.reason or "blocked") for l in rep.blocked if l.review_id is not None]
                                 + [(i, "the child or the parent is no longer in the org (the approval stands: it is "
                                     "applied when both are back)") for i in rep.gone]
                                 + decisions.blocked.get(vname, []),
                                 [(i, None) for i in rep.gone] + decisions.away.get(vname, []), when)
