"""The nightly job: fetch -> hierarchy -> ARR -> rollups -> NRR -> snapshots -> gates -> apply + ledger.

`compute` is side-effect free on the org; `apply` writes the plan's changes and records them. Only this
module sees sources, transforms, ledger and sinks together.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import numpy as np
import structlog

from . import money, months
from .config import Settings
from .errors import ConfigError, DataError, GateFailed, Interrupted, Location
from .hierarchy import Tree, build_tree
from .ledger import Ledger
from .metrics import arr as arr_mod
from .metrics import snapshot
from .metrics.nrr import FamilyTable, Movement, family_table, movements
from .model import Accounts, Change, FieldChanges, Finding
from .sources import LocalOrg

log = structlog.get_logger("nrr_engine")

UPSERT = snapshot.UPSERT
SNAPSHOT_KEY = snapshot.KEY
SNAPSHOT_FIELDS = snapshot.FIELDS


@dataclass
class RunContext:
    """Per-run state: identity, the date the run acts as of, and the injected clock."""

    run_id: str
    as_of: dt.date
    clock: Callable[[], dt.datetime]
    job: str = "nightly"
    dry_run: bool = False
    should_stop: Callable[[], bool] = lambda: False
    progress: Any = None  # a tqdm bar over the stages when stderr is a terminal
    stage_times: dict[str, float] = field(default_factory=dict)

    def check_stop(self, stage: str) -> None:
        if self.should_stop():
            raise Interrupted(f"stop requested; run stopped before stage {stage!r}, nothing half-written")

    @staticmethod
    def new(clock: Callable[[], dt.datetime], as_of: dt.date | None = None, **kw) -> "RunContext":
        now = clock()
        run_id = now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
        return RunContext(run_id=run_id, as_of=as_of or now.date(), clock=clock, **kw)


class _Stage:
    def __init__(self, ctx: RunContext, name: str):
        self.ctx, self.name = ctx, name

    def __enter__(self):
        self.ctx.check_stop(self.name)
        self.t0 = time.perf_counter()
        log.info("stage.start", stage=self.name)
        if self.ctx.progress is not None:
            self.ctx.progress.set_description(self.name)
        return self

    def __exit__(self, *exc):
        took = time.perf_counter() - self.t0
        self.ctx.stage_times[self.name] = round(self.ctx.stage_times.get(self.name, 0) + took, 3)
        if exc[0] is None:
            log.info("stage.end", stage=self.name, seconds=round(took, 3))
            if self.ctx.progress is not None:
                self.ctx.progress.update(1)


@dataclass
class ViewResult:
    name: str
    tree: Tree
    families: int
    depth_max: int


@dataclass
class Plan:
    """Everything a run computed; `changes` are what `apply` writes."""

    ctx: RunContext
    accounts: Accounts
    first_month: int
    matrix: np.ndarray
    views: dict[str, ViewResult]
    changes: list[FieldChanges]
    snapshot_changes: snapshot.SnapshotChanges
    findings: list[Finding]
    nrr: dict[str, dict]
    arr_rewrite: tuple[list[str], np.ndarray]     # accounts whose stored history changes, and their rows
    membership: dict[str, int]                    # view -> accounts whose family changed (staged in the ledger)
    snapshots: snapshot.SnapshotSet

    @property
    def current_month(self) -> int:
        return months.of(self.ctx.as_of)

    def batches(self) -> list:
        """The changes in plan order, as batches (one per field, then the snapshot upserts)."""
        return [*self.changes, self.snapshot_changes]

    def change_count(self) -> int:
        return sum(len(b) for b in self.batches())

    def all_changes(self) -> Iterator[Change]:
        for batch in self.batches():
            yield from batch


# ---- fetch --------------------------------------------------------------------------------------

def open_org(settings: Settings) -> LocalOrg:
    return LocalOrg(settings.org_path, settings.working_copy)


def require_columns(org: LocalOrg, obj: str, fields: list[str], what: str) -> None:
    if not org.has_table(obj):
        raise DataError(f"no {obj}.csv in the org folder; expected a Data Loader export of {obj}",
                        Location(str(org.folder / f"{obj}.csv")))
    for f in fields:
        if f and not org.has_field(obj, f):
            raise ConfigError(f"{what}: field {f} is not a column of {obj}.csv (columns: {', '.join(org.columns(obj)[:12])})",
                              Location(str(org.folder / f"{obj}.csv"), 1, field=f))


def fetch_accounts(settings: Settings, org: LocalOrg, extra_fields: tuple[str, ...] = ()) -> Accounts:
    require_columns(org, "Account", [v.parent_field for v in settings.views], "views.parent_field")
    if settings.arr.source == "account_field":
        require_columns(org, "Account", [settings.arr.account_field], "arr.account_field")
    fields = ["Id", *dict.fromkeys([*settings.account_fields_read(), *extra_fields])]
    cols = org.read_columns("Account", fields)
    return Accounts(ids=cols[0], fields={f: cols[i] for i, f in enumerate(fields) if i})


# ---- compute ------------------------------------------------------------------------------------

@dataclass
class Inputs:
    """What every computation starts from: accounts, a tree per view, monthly ARR, findings so far."""

    accounts: Accounts
    views: dict[str, ViewResult]
    first: int                  # month index of the matrix's first column
    matrix: np.ndarray          # accounts x months ARR units
    changed_rows: np.ndarray    # accounts whose stored ARR history differs from `matrix`
    staged: dict[str, int]      # view -> accounts whose family differs from the recorded one
    findings: list[Finding]


def load_inputs(settings: Settings, org: LocalOrg, ledger: Ledger, ctx: RunContext,
                extra_fields: tuple[str, ...] = ()) -> Inputs:
    """Fetch, build each view's tree (staging its membership in the ledger), and compute monthly ARR."""
    with _Stage(ctx, "fetch"):
        objects = ["Account"]
        if settings.arr.subscriptions and settings.arr.source == "subscriptions":
            objects.append(settings.arr.subscriptions.object)
        objects.append(settings.snapshot_object)
        org.sync(objects)
        require_columns(org, "Account", list(extra_fields), "--by")
        accounts = fetch_accounts(settings, org, extra_fields)
    findings: list[Finding] = []
    cur = months.of(ctx.as_of)

    with _Stage(ctx, "hierarchy"):
        views: dict[str, ViewResult] = {}
        staged: dict[str, int] = {}
        for v in settings.views:
            tree, fs = build_tree(accounts.ids, accounts.index, accounts.column(v.parent_field), v.parent_field)
            findings.extend(fs)
            deep = np.flatnonzero(tree.depth > settings.max_depth)
            if len(deep):
                findings.append(Finding("too_deep", f"view {v.name}: {len(deep)} account(s) deeper than "
                                        f"hierarchy.max_depth {settings.max_depth} (deepest {int(tree.depth.max())})",
                                        tuple(accounts.ids[i] for i in deep[:1000])))
            views[v.name] = ViewResult(v.name, tree, int((tree.parent < 0).sum()),
                                       int(tree.depth.max()) if len(tree.depth) else 0)
            ids = accounts.ids
            staged[v.name] = ledger.stage_membership(v.name, zip(ids, (ids[r] for r in tree.root.tolist())))

    with _Stage(ctx, "arr"):
        count = settings.arr.history_months
        first = cur - count + 1
        stored = arr_mod.from_segments(ledger.arr_segments(), accounts.index, first, count)
        matrix, fs = arr_matrix(settings, org, accounts, stored, first, count, cur)
        findings.extend(fs)
        changed_rows = np.flatnonzero((matrix != stored).any(axis=1))
    return Inputs(accounts, views, first, matrix, changed_rows, staged, findings)


def compute(settings: Settings, org: LocalOrg, ledger: Ledger, ctx: RunContext) -> Plan:
    """Everything short of writing: changes, snapshots, NRR, findings. Raises GateFailed on a broken gate."""
    inputs = load_inputs(settings, org, ledger, ctx)
    accounts, views, first, matrix = inputs.accounts, inputs.views, inputs.first, inputs.matrix
    findings = inputs.findings
    cur = months.of(ctx.as_of)
    arr_rewrite = ([accounts.ids[r] for r in inputs.changed_rows.tolist()], inputs.changed_rows)

    with _Stage(ctx, "rollup"):
        changes = []
        current = matrix[:, cur - first]
        for v in settings.views:
            changes.extend(_rollup_changes(v, views[v.name].tree, current, accounts))

    with _Stage(ctx, "nrr"):
        membership = {}
        for v in settings.views:
            latest = ledger.latest_membership_month(v.name)
            if latest and latest > months.fmt(cur):
                findings.append(Finding("as_of_in_past", f"view {v.name}: membership is recorded up to {latest}; "
                                        f"this run (as of {ctx.as_of}) does not record it", ()))
                continue
            membership[v.name] = inputs.staged[v.name]
        nrr = {}
        for v in settings.views:
            nrr[v.name] = {w: window_figures(settings, ledger, accounts, matrix, first, views[v.name].tree, v.name,
                                             cur - 1, w, current_month=cur)
                           for w in (1, 12) if cur - 1 - w >= first}

    with _Stage(ctx, "snapshot"):
        snapshots, snapshot_changes = snapshot.SnapshotSet(cur - 1), snapshot.SnapshotChanges(settings.snapshot_object)
        if settings.snapshots_enabled:
            snapshots, snapshot_changes = _snapshots(settings, org, ledger, accounts, matrix, first, views, cur - 1)

    plan = Plan(ctx, accounts, first, matrix, views, changes, snapshot_changes, findings, nrr, arr_rewrite,
                membership, snapshots)
    with _Stage(ctx, "gates"):
        check_gates(plan)
    return plan


def arr_matrix(settings, org, accounts, stored, first, count, cur):
    a = settings.arr
    if a.source == "subscriptions":
        s = a.subscriptions
        require_columns(org, s.object, [s.account, s.start, s.end, s.amount, s.currency], "arr.subscriptions")
        rows = org.read(s.object, ["Id", s.account, s.start, s.end, s.amount, s.currency or "__none__"])
        matrix, fs = arr_mod.from_subscriptions(rows, accounts.index, s, settings.currency, first, count,
                                                str(org.folder / f"{s.object}.csv"))
        return matrix, fs
    matrix = stored.copy()
    fs = []
    if a.source == "account_field":
        column, fs = arr_mod.from_account_field(accounts.column(a.account_field), accounts.ids, a.account_field,
                                                str(org.folder / "Account.csv"))
        matrix[:, cur - first] = column
    return matrix, fs


_SMALL = [str(i) for i in range(10_000)]  # depth and child counts: shared strings, not a million new ones


def _count_text(values: np.ndarray) -> list[str]:
    return [_SMALL[v] if v < 10_000 else str(v) for v in values.tolist()]


def _rollup_changes(view, tree: Tree, current: np.ndarray, accounts: Accounts) -> list[FieldChanges]:
    """One batch per rollup field: the accounts whose stored value differs from the computed one."""
    f = view.fields
    ids = accounts.ids
    computed = {
        "ultimate_parent": lambda: [ids[r] for r in tree.root.tolist()],
        "depth": lambda: _count_text(tree.depth),
        "arr": lambda: money.fmt_many(tree.subtree_sum(current)),
        "child_count": lambda: _count_text(tree.child_count()),
    }
    out = []
    id_array = None
    for kind, make in computed.items():
        fname = f.get(kind)
        if not fname:
            continue
        new = np.array(make(), dtype=object)
        old = np.array(accounts.column(fname), dtype=object)
        differ = np.flatnonzero(old != new)  # object comparison in C; formatting-only differences checked below
        rows = np.array([i for i in differ.tolist() if old[i] is None or not _same(kind, old[i], new[i])],
                        dtype=np.int64) if len(differ) else np.zeros(0, dtype=np.int64)
        if id_array is None:
            id_array = np.array(ids, dtype=object)
        out.append(FieldChanges("Account", fname, f"rollup:{view.name}", ids=id_array[rows], old=old[rows],
                                new=new[rows], rows=rows))
    return out


def _same(kind: str, old: str, new: str) -> bool:
    """Equal up to formatting (Decimal-exact for numbers; an Id only up to surrounding spaces)."""
    return old.strip() == new if kind == "ultimate_parent" else money.same(old, new)


# ---- NRR ----------------------------------------------------------------------------------------

def family_labels(ledger: Ledger, accounts: Accounts, tree: Tree, view: str, month: int,
                  current_month: int) -> np.ndarray:
    """Family (root account index, or a negative id for roots no longer present) of every account at `month`.

    The current tree, overridden where the recorded membership of `month` differs (needs stage_membership)."""
    labels = tree.root.copy()
    if month >= current_month:
        return labels
    index = accounts.index
    unknown: dict[str, int] = {}
    for rid, root in ledger.membership_overrides(view, months.fmt(month)).items():
        i = index.get(rid)
        if i is None:
            continue
        j = index.get(root)
        if j is None:
            j = unknown.setdefault(root, -1 - len(unknown))
        labels[i] = j
    return labels


def window_figures(settings: Settings, ledger: Ledger, accounts: Accounts, matrix: np.ndarray, first: int,
                   tree: Tree, view: str, period: int, window: int, current_month: int, as_of_start: bool = False,
                   by: str | None = None) -> dict:
    """Family and naive movements for window period-window -> period, plus optional segments."""
    m0, m1 = period - window, period
    if m0 < first or m1 - first >= matrix.shape[1]:
        raise DataError(f"no ARR history for {months.fmt(m0)}..{months.fmt(m1)} (history covers "
                        f"{months.fmt(first)}..{months.fmt(first + matrix.shape[1] - 1)}); import history with "
                        "`nrr-engine history import` or pick a later period")
    a0, a1 = matrix[:, m0 - first], matrix[:, m1 - first]
    prior = (matrix[:, : m0 - first] > 0).any(axis=1)
    fam1 = family_labels(ledger, accounts, tree, view, m1, current_month)
    fam0 = family_labels(ledger, accounts, tree, view, m0, current_month)
    family = fam0 if as_of_start else fam1
    joined = fam0 != fam1
    table = family_table(a0, a1, prior, family, joined)
    naive_table = family_table(a0, a1, prior, np.arange(len(a0)), None)
    fam_m, naive_m = movements(table), movements(naive_table)
    out = {"view": view, "period": months.fmt(period), "window": window, "family": fam_m, "naive": naive_m,
           "segments": []}
    if by:
        out["segments"] = segment_figures(table, accounts, by, matrix, first)
    return out


def segment_figures(table: FamilyTable, accounts: Accounts, by: str, matrix: np.ndarray, first: int) -> list[dict]:
    """Movements per value of a root account field, or per cohort (first month the family had ARR)."""
    if by == "cohort":
        has = matrix > 0
        start = np.where(has.any(axis=1), has.argmax(axis=1), matrix.shape[1])
        fam_start = np.full(len(table.labels), matrix.shape[1], dtype=np.int64)
        np.minimum.at(fam_start, table.inv, start)
        values = np.array([months.fmt(first + int(s)) if s < matrix.shape[1] else "(none)" for s in fam_start.tolist()],
                          dtype=object)
    else:
        column = accounts.column(by)
        values = np.array([(column[lab] if lab >= 0 else None) or "(blank)" for lab in table.labels.tolist()],
                          dtype=object)
    return [{"by": by, "value": value, "family": movements(table, values == value)}
            for value in sorted(set(values.tolist()))]


# ---- snapshots ----------------------------------------------------------------------------------

def _snapshots(settings: Settings, org: LocalOrg, ledger: Ledger, accounts: Accounts, matrix: np.ndarray,
               first: int, views: dict[str, ViewResult], period: int) -> tuple[snapshot.SnapshotSet, snapshot.SnapshotChanges]:
    """KPI snapshots of the period (monthly window) for every view, and those that differ from the org's."""
    obj = settings.snapshot_object
    snaps = snapshot.SnapshotSet(period)
    m0, m1 = period - 1, period
    if m0 >= first:
        a0, a1 = matrix[:, m0 - first], matrix[:, m1 - first]
        for vname, vr in views.items():
            fam = family_labels(ledger, accounts, vr.tree, vname, m1, period + 1)
            table = family_table(a0, a1, np.zeros(len(a0), dtype=bool), fam, None)
            members = np.bincount(table.inv, minlength=len(table.labels))
            rows = np.flatnonzero(((table.f0 > 0) | (table.f1 > 0)) & (table.labels >= 0))
            snaps.add(vname, [accounts.ids[k] for k in table.labels[rows].tolist()], table.f0[rows], table.f1[rows],
                      members[rows])
    existing: Iterator[tuple] = iter(())
    if org.has_field(obj, SNAPSHOT_KEY):
        existing = org.read(obj, ["Id", SNAPSHOT_KEY, *SNAPSHOT_FIELDS], order_by=SNAPSHOT_KEY)
    return snaps, snapshot.diff(snaps, existing, obj)



# ---- gates --------------------------------------------------------------------------------------

def check_gates(plan: Plan) -> None:
    """Reconciliation gates before any write (DESIGN §7); raise GateFailed saying which and why."""
    cur = plan.current_month - plan.first_month
    current = plan.matrix[:, cur]
    for name, vr in plan.views.items():
        t = vr.tree
        if (t.parent[t.root] != -1).any():
            raise GateFailed(f"view {name}: some families have no single root")
        if (t.root[t.root] != t.root).any():
            raise GateFailed(f"view {name}: a family's root has another root")
        sub = t.subtree_sum(current)
        fam = np.zeros(len(current), dtype=np.int64)
        np.add.at(fam, t.root, current)
        roots = np.flatnonzero(t.parent < 0)
        bad = roots[sub[roots] != fam[roots]]
        if len(bad):
            raise GateFailed(f"view {name}: rollup of family {plan.accounts.ids[bad[0]]} is {money.fmt(sub[bad[0]])} "
                             f"but its members sum to {money.fmt(fam[bad[0]])}")
        for w, fig in plan.nrr.get(name, {}).items():
            for level in ("family", "naive"):
                m: Movement = fig[level]
                if not m.balanced():
                    raise GateFailed(f"view {name}, window {w}, {level}: movements do not add up "
                                     f"(start {money.fmt(m.start)} + expansion - contraction - churn != end {money.fmt(m.end)})")


# ---- apply --------------------------------------------------------------------------------------

def apply(plan: Plan, org: LocalOrg, ledger: Ledger, settings: Settings) -> dict[str, int]:
    """Write the plan and record it, write-ahead: the org's transaction commits only after the ledger's.

    A crash before the ledger commit rolls the org back; a crash between the two commits leaves a run in
    status 'applying' whose changes `recover` checks against the org one by one."""
    ctx = plan.ctx
    ctx.check_stop("apply")
    run_id = ctx.run_id
    ledger.finish_run(run_id, status="applying")
    with org.transaction():  # commits after the ledger has
        with _Stage(ctx, "write"):
            failures = write_changes(org, plan, settings)
        with _Stage(ctx, "ledger"):
            ledger.record_changes(run_id, plan.batches(), "applied", failures)
    with _Stage(ctx, "history"):
        ids, rows = plan.arr_rewrite
        if ids:
            ledger.replace_arr(ids, arr_mod.iter_segments(plan.matrix, rows, plan.first_month, plan.accounts.ids))
        cur = plan.current_month
        for vname in plan.membership:
            ledger.commit_membership(vname, months.fmt(cur), months.fmt(cur - 1))
        if len(plan.snapshot_changes):
            ledger.upsert_snapshots(run_id, plan.snapshot_changes.keys, plan.snapshot_changes.new)
    total = plan.change_count()
    counts = {"applied": total - len(failures), "failed": len(failures)}
    return {k: v for k, v in counts.items() if v}


def write_changes(org: LocalOrg, plan: Plan, settings: Settings) -> dict[int, str]:
    """Apply the plan's changes inside the caller's transaction; returns {seq: error} of records that failed."""
    failures: dict[int, str] = {}
    starts, seq = [], 0
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
            positions = [np.searchsorted(batches[bit].rows, rows) for bit in chosen]
            ids = batches[chosen[0]].ids[positions[0]]
            failed = dict(org.update_fields(obj, [batches[bit].field for bit in chosen], ids,
                                            [batches[bit].new[pos] for bit, pos in zip(chosen, positions)]))
            if failed:
                for bit, pos in zip(chosen, positions):
                    batch, start = batches[bit], starts[members[bit]]
                    failures.update({start + int(p): failed[batch.ids[p]] for p in pos if batch.ids[p] in failed})
    sc = plan.snapshot_changes
    if len(sc):
        for pos, error in org.upsert_json(sc.object, SNAPSHOT_KEY, SNAPSHOT_FIELDS, sc.new, settings.snapshot_prefix):
            failures[seq + pos] = error
    return failures


def file_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]
