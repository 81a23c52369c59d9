"""The plan-file sink: plan.json (DESIGN §8) for `nrr-engine plan --out`, streamed so a million changes never
need a million dicts at once, and written to a temporary file first (a reader never sees half a plan).

plan.json is for people (a run recomputes its changes, it never reads the file), so it is redacted as the logs
and the run summary are: a secret that occurs in the data (a record value, a finding quoting it) is
[redacted] there, change values included; the exact values are in the ledger and the change sets."""
from __future__ import annotations

import json
from pathlib import Path

from ..log import Redactor
from ..metrics import snapshot
from ..safe_output import atomic_file


class PlanFileSink:
    def __init__(self, out: Path, settings):
        self.out, self.settings = Path(out), settings

    def write(self, ctx, plan, summary: dict) -> Path:
        # a fresh 0600 temporary file (mkstemp: never a symlink someone planted), removed if the write fails
        # (a full disk: no half plan left beside the old one), renamed over the plan once complete
        with atomic_file(self.out, "w", encoding="utf-8") as fh:
            self._write(fh, ctx, plan, summary)
        return self.out

    def _write(self, fh, ctx, plan, summary: dict) -> None:
        dumps = Redactor().json   # the secrets gathered once: one substring search per line, not per value
        fh.write('{"run_id": %s, "as_of": %s,\n "changes": [' % (json.dumps(ctx.run_id),
                                                                json.dumps(ctx.as_of.isoformat())))
        for i, c in enumerate(plan.all_changes()):
            fh.write(("," if i else "") + "\n  " + dumps(c.as_dict(), sort_keys=True))
        fh.write('],\n "review": [')
        n = 0
        for items in plan.review_queue(self.settings).values():
            for item in items:
                shown = {k: v for k, v in item.items() if k not in ("child_id", "parent_ref", "parent_id")}
                fh.write(("," if n else "") + "\n  " + dumps(shown, sort_keys=True))
                n += 1
        fh.write('],\n "duplicates": %s,\n "flags": [],\n "snapshots": [' % dumps(plan.duplicates))
        for i, (key, values) in enumerate(plan.snapshots.rows()):
            s = dict(zip(snapshot.FIELDS, values))
            fh.write(("," if i else "") + "\n  " + dumps(
                {"external_id": key, "ending_arr": s["Ending_ARR__c"], "starting_arr": s["Starting_ARR__c"],
                 "nrr": s["NRR__c"], "grr": s["GRR__c"]}, sort_keys=True))
        fh.write('],\n "findings": %s,\n "summary": %s}\n' % (
            dumps([f.as_dict() for f in plan.findings]), dumps(summary)))
