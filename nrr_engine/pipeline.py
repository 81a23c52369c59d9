"""The nightly job, orchestrated: fetch -> repair -> rollup -> membership -> nrr -> snapshots -> gates -> sinks.

Every read happens in `fetch`; each stage after it is a pure `(RunContext, State) -> State` (settings bound
when the list is built); the sinks write the plan the last stage left. Only this module sees sources,
transforms, ledger and sinks together.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from . import months, store
from . import sinks as sinks_mod
from .config import Settings
from .fetch import fetch, fetch_arr, needs_arr, report_first
from .hierarchy import repair as repair_mod
from .ledger import Ledger
from .metrics import gates, snapshot
from .metrics.nrr import window_figures
from .metrics.rollup import rollup_changes
from .model import Change, Finding, SnapshotChanges
from .sources import LocalOrg
from .state import RunContext, State

Stage = Callable[[RunContext, State], State]

__all__ = ["RunContext", "State", "Plan", "Stage", "stages", "compute", "apply", "report", "file_hash"]


# ---- stages -------------------------------------------------------------------------------------

def _repair(settings: Settings) -> Stage:
    def repair(ctx: RunContext, state: State) -> State:
        """Trees of every view after this run's repair; the link changes it decided; duplicates flagged."""
        findings = list(state.findings)
        accounts = state.accounts
        # ARR for rules that read it (largest_arr, $arr); otherwise it is fetched after this stage
        current = (state.matrix.column(ctx.current_month - state.first) if state.matrix is not None
                   else np.zeros(len(accounts), dtype=np.int64))
        shared = store.seed(state.stored, accounts)  # name keys and sites of unchanged accounts: the last run's
        lookup, duplicates = repair_mod.lookup_trees(settings, accounts, state.ruleset, current, state.decisions,
                                                     state.repair, findings, shared, state.carried)
        views = repair_mod.all_views(settings, accounts, lookup, findings)
        changes = []
        for v in settings.lookup_views:
            rep = views[v.name].repair
            if rep is not None:
                changes.append(repair_mod.link_changes(v.parent_field, rep, accounts))
                # the batch carries what the applied links said; keep those a review approved (settled later)
                rep.applied = [l for l in rep.applied if l.review_id is not None]
        keep = {f.lower() for f in (*settings.account_fields_read(), *state.extra_fields)}  # later stages' columns
        slim = dataclasses.replace(accounts, fields={k: c for k, c in accounts.fields.items() if k.lower() in keep})
        derived = store.derived_of(shared, accounts) if state.repair else {}
        packed = store.pack_columns(accounts, [k for k in accounts.fields if k.lower() not in keep], derived,
                                    state.stored if state.unchanged else None) if state.repair else {}
        del shared, lookup   # matching's columns and indexes go before the evidence it keeps is compacted
        repair_mod.compact(views, changes)
        return dataclasses.replace(state, accounts=slim, views=views, duplicates=tuple(duplicates),
                                   changes=tuple(changes), findings=tuple(findings),
                                   derived=derived, stored=None, account_packed=packed)
    return repair


def _rollup(settings: Settings) -> Stage:
    def rollup(ctx: RunContext, state: State) -> State:
        """Ultimate parent, depth, child count and subtree ARR of every view, where they differ from the org."""
        current = state.matrix.column(ctx.current_month - state.first)
        batches = [b for v in settings.views for b in rollup_changes(v, state.views[v.name].tree, current, state.accounts)]
        return dataclasses.replace(state, changes=(*state.changes, *batches))
    return rollup


def _membership(settings: Settings) -> Stage:
    def membership(ctx: RunContext, state: State) -> State:
        """The families this run saw, recorded for its month where they differ from the open record."""
        findings, out = list(state.findings), {}
        for v in settings.views:
            latest = state.membership[v.name].latest_month()
            if latest is not None and latest > ctx.current_month:
                findings.append(Finding("as_of_in_past", f"view {v.name}: membership is recorded up to "
                                        f"{months.fmt(latest)}; "
                                        f"this run (as of {ctx.as_of}) does not record it", ()))
                continue
            out[v.name] = state.membership[v.name].changed(state.views[v.name].tree, state.accounts.ids)
        return dataclasses.replace(state, membership_changes=out, findings=tuple(findings))
    return membership


def _nrr(settings: Settings) -> Stage:
    def nrr(ctx: RunContext, state: State) -> State:
        """Monthly and trailing-twelve-month NRR/GRR of the last closed month, family and naive, per view."""
        cur = ctx.current_month
        out = {}
        for v in settings.views:
            out[v.name] = {w: figures(state, v.name, cur - 1, w, cur, by=settings.segments)
                           for w in (1, 12) if cur - 1 - w >= state.first}
        return dataclasses.replace(state, nrr=out)
    return nrr


def _snapshots(settings: Settings) -> Stage:
    def snapshots(ctx: RunContext, state: State) -> State:
        """KPI snapshots of the last closed month, and what differs from the org's (upserts and deletes)."""
        period = ctx.current_month - 1
        snaps, changes = snapshot.SnapshotSet(period), SnapshotChanges(settings.snapshot_object)
        if settings.snapshots_enabled:
            snaps = snapshot.month_snapshots(state.views, state.accounts.ids, state.matrix, state.first, period,
                                             lambda view, m: state.labels_at(view, m, ctx.current_month))
            if state.snapshots_held is None or snaps.digest() != state.snapshots_held:   # (else: what the org holds)
                changes = snapshot.diff(snaps, state.existing_snapshots(), settings.snapshot_object)
        return dataclasses.replace(state, snapshots=snaps, snapshot_changes=changes)
    return snapshots


def _gates(settings: Settings) -> Stage:
    def gates_stage(ctx: RunContext, state: State) -> State:
        """Reconciliation gates: raise GateFailed (nothing is written) when one fails."""
        gates.check(state.views, state.matrix.column(ctx.current_month - state.first), state.nrr, state.accounts.ids)
        return state
    return gates_stage


def stages(settings: Settings) -> list[tuple[str, Stage]]:
    """The run's stages after fetch, in order, each bound to the settings."""
    return [("match", _repair(settings)), ("rollup", _rollup(settings)), ("hierarchy", _membership(settings)),
            ("nrr", _nrr(settings)), ("snapshot", _snapshots(settings)), ("gates", _gates(settings))]


def figures(state: State, view: str, period: int, window: int, current_month: int, as_of_start: bool = False,
            by: str | tuple[str, ...] | None = None) -> dict:
    """NRR figures of one view and window from a state whose trees are built (after the repair stage), with
    what the records left out of ARR take out of them (`excluded`, when there are any)."""
    out = window_figures(state.accounts.ids, state.accounts.column, state.matrix, state.first,
                         lambda m: state.labels_at(view, m, current_month), view, period, window, as_of_start, by,
                         state.first_arr)
    if state.excluded is not None and len(state.excluded):
        out["excluded"] = state.excluded.impact(period - window, period)
    return out


# ---- plan ---------------------------------------------------------------------------------------

class Plan:
    """Everything a run computed (the last stage's State) in the form the sinks and the summary read."""

    def __init__(self, ctx: RunContext, state: State):
        self.ctx, self.state = ctx, state
        self.accounts = state.accounts
        self.views = state.views
        self.findings = list(state.findings)
        self.nrr = state.nrr
        self.snapshots = state.snapshots
        self.snapshot_changes = state.snapshot_changes
        self.changes = list(state.changes)
        self.inserts: list[Change] = list(state.inserts)   # a remote sink swaps in the Ids Salesforce assigns
        self.duplicates = list(state.duplicates)
        self.rule_stats = {name: vr.stats for name, vr in state.views.items() if vr.stats is not None}
        self.membership = state.membership_changes
        self.merged_away = list(state.merged_away)
        self.first_month, self.matrix = state.first, state.matrix
        rows = state.arr_rows_changed
        self.arr_rewrite = ([state.accounts.ids[r] for r in rows.tolist()], rows)
        self.api_calls: dict | None = None

    @property
    def current_month(self) -> int:
        return self.ctx.current_month

    def batches(self) -> list:
        """The changes in plan order, as batches: inserts, one batch per field, then the snapshot upserts."""
        return [self.inserts, *self.changes, self.snapshot_changes]

    def change_count(self) -> int:
        return sum(len(b) for b in self.batches())

    def all_changes(self) -> Iterator[Change]:
        for batch in self.batches():
            yield from batch

    def review_queue(self, settings: Settings) -> dict[str, list[dict]]:
        """Per view, the links (and placeholder parents) that need a person's decision, as plan.json shows them."""
        return repair_mod.review_items(settings, self.views, self.accounts)


# ---- run ----------------------------------------------------------------------------------------

def compute(settings: Settings, org: LocalOrg, ledger: Ledger, ctx: RunContext) -> Plan:
    """Fetch, then every stage; nothing is written. Raises GateFailed on a broken gate."""
    state = run_stages(settings, org, ledger, ctx, fetch(settings, org, ledger, ctx, repair=True), stages(settings))
    with ctx.stage("load", stoppable=False):   # (apply stops next, if asked)
        org.finish_sync()   # the loads that ran beside the stages are in the working copy before it is written
    return Plan(ctx, state)


def run_stages(settings: Settings, org: LocalOrg, ledger: Ledger, ctx: RunContext, state: State,
               todo: list[tuple[str, Stage]]) -> State:
    """Run the stages in order, timed; ARR is read before them when a rule needs it, else right after matching."""
    early = needs_arr(state.ruleset)
    if early:
        state = fetch_arr(settings, org, ledger, ctx, state)
    for name, stage in todo:
        with ctx.stage(name):
            state = stage(ctx, state)
        if name == "match" and not early:
            state = fetch_arr(settings, org, ledger, ctx, state)
    return state


def apply(plan: Plan, org: LocalOrg, ledger: Ledger, settings: Settings) -> dict[str, int]:
    """Write the plan through the org's sink (which records the changes, write-ahead), then the state store."""
    ctx = plan.ctx
    ctx.check_stop("apply")
    ledger.finish_run(ctx.run_id, status="applying", unsettled=1)  # until the run ends cleanly
    failures = sinks_mod.org_sink(org, settings).write(ctx, plan, sinks_mod.Journal(ledger, ctx.run_id))
    with ctx.stage("history"):
        sinks_mod.StateSink(ledger, settings).write(ctx, plan)
    total = plan.change_count()
    counts = {"applied": total - len(failures), "failed": len(failures)}
    return {k: v for k, v in counts.items() if v}


def report(settings: Settings, org: LocalOrg, ledger: Ledger, ctx: RunContext, view: str, period: int, window: int,
           as_of_start: bool = False, by: str | None = None) -> dict:
    """NRR figures recomputed from the org as it is and the stored history (no rules, nothing written);
    segmented by `by`, else by the configured report.segments."""
    state = fetch(settings, org, ledger, ctx, extra_fields=(by,) if by and by != "cohort" else (), repair=False,
                  since=report_first(settings, ctx.current_month, period, window), cohorts=by == "cohort")
    state = run_stages(settings, org, ledger, ctx, state, [("match", _repair(settings))])
    return figures(state, view, period, window, ctx.current_month, as_of_start, by or settings.segments)


# ---- the columnar store ---------------------------------------------------------------------------

def write_store(settings: Settings, plan: Plan, org: LocalOrg, version: int) -> None:
    """Store what a clean run derived (ARR matrix, membership after it, families, segment columns) for reports and
    the next run, stamped with the ledger's state version after the run. A run that recorded no membership for
    some view (an as-of in the past) leaves no store: its figures are not what the ledger says."""
    path, state, ctx = store.path_for(settings.state), plan.state, plan.ctx
    if set(plan.membership) != {v.name for v in settings.views} or not plan.accounts.ids:
        store.discard(path)
        return
    token = org.state_token(make=True)
    if state.unchanged and not plan.change_count() and not any(plan.membership.values()) \
            and store.all_kept(state.derived):
        store.touch(path, version, token)   # the same content: only its stamps move on
        return
    membership = {v.name: store.committed(state.membership[v.name], plan.membership[v.name], plan.accounts.index,
                                          ctx.current_month) for v in settings.views}
    trees = {v.name: plan.views[v.name].tree for v in settings.views}
    columns = {f: plan.accounts.column(f) for f in settings.segments if plan.accounts.has(f)}
    meta = {"stamp": version, "run_id": ctx.run_id, "month": ctx.current_month, "first": plan.first_month,
            "config": store.config_digest(settings.config_file), "csv": state.csv_signature, "working_copy": token,
            "snapshots": {"object": settings.snapshot_object, "digest": plan.snapshots.digest()},
            "arr_findings": [{"kind": f.kind, "message": f.message, "records": list(f.records),
                              "outcome": f.outcome.value} for f in state.arr_findings]}
    accounts = None if plan.inserts or not state.account_fields else store.account_columns(
        plan.accounts, state.account_packed, plan.changes, list(state.account_fields))
    meta["account_fields"] = list(state.account_fields)
    store.write(path, meta, plan.accounts.ids, plan.matrix, membership, trees, columns, state.excluded, state.derived, accounts)


def report_from_store(settings: Settings, org: LocalOrg, ledger: Ledger, current_month: int, view: str, period: int,
                      window: int, as_of_start: bool = False, by: str | None = None) -> dict | None:
    """The report's figures from the last run's store, or None when it cannot give them exactly as recomputing
    would (no store, a later write to the ledger, another config or month, a CSV changed since, a window or
    segment it does not hold): the caller then recomputes."""
    if by == "cohort" or report_first(settings, current_month, period, window) is not None:
        return None
    cols = store.read(store.path_for(settings.state))
    if cols is None:
        return None
    meta = cols.meta
    wanted = (by,) if by else settings.segments
    if (meta.get("stamp") != ledger.state_version() or meta.get("month") != current_month
            or meta.get("config") != store.config_digest(settings.config_file)
            or meta.get("csv") != store.csv_signature(org) or view not in cols.membership
            or any(f not in cols.meta["columns"] for f in wanted)):
        return None
    first = meta["first"]
    m, tree = cols.membership[view], cols.families[view]
    out = window_figures([], cols.column, cols.matrix, first,
                         lambda month: m.labels_at(month, tree, current_month, own_month=False), view, period, window,
                         as_of_start, by or settings.segments)
    if cols.excluded is not None:
        from .metrics.arr import Excluded
        out["excluded"] = Excluded(*cols.excluded).impact(period - window, period)
    out["from_run"] = meta["run_id"]
    return out


def file_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]

