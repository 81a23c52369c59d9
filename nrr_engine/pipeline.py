"""The nightly job: fetch -> hierarchy -> ARR -> rollups -> NRR -> snapshots -> gates -> apply + ledger.

`compute` is side-effect free on the org; `apply` writes the plan's changes and records them. Only this
module sees sources, transforms, ledger and sinks together.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
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
from . import rules as rules_mod
from .hierarchy import Tree, build_tree, forest, partition
from .hierarchy import link as link_mod
from .hierarchy import match as match_mod
from .ledger import Ledger
from .metrics import arr as arr_mod
from .metrics import snapshot
from .metrics.nrr import FamilyTable, Movement, family_table, movements
from .model import INSERT, Accounts, Change, FieldChanges, FieldNeed, Finding
from .sinks import writeback
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


def _peak_rss_mb() -> int | None:
    """This process's peak resident memory so far (MiB), for the stage log; None where it cannot be read."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


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
            log.info("stage.end", stage=self.name, seconds=round(took, 3), peak_rss_mb=_peak_rss_mb())
            if self.ctx.progress is not None:
                self.ctx.progress.update(1)


@dataclass
class ViewResult:
    name: str
    tree: Tree
    families: int
    depth_max: int
    repair: link_mod.Repair | None = None


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
    duplicates: list[dict] = field(default_factory=list)
    rule_stats: dict = field(default_factory=dict)
    inserts: list[Change] = field(default_factory=list)   # records the run creates (placeholder parents)
    merged_away: list[str] = field(default_factory=list)
    api_calls: dict | None = None                         # Salesforce calls of this run, by kind

    @property
    def current_month(self) -> int:
        return months.of(self.ctx.as_of)

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
        ids = self.accounts.ids
        out: dict[str, list[dict]] = {}
        for v in settings.lookup_views:
            rep = self.views[v.name].repair
            if rep is None:
                continue
            parents = self.accounts.column(v.parent_field)
            items = [{"object": "Account", "id": ids[l.child], "field": v.parent_field, "old": parents[l.child] or None,
                      "new": ids[l.parent], "rule": l.rule, "confidence": l.confidence,
                      "evidence": match_mod.explain(l.evidence),
                      "reason": l.reason, "view": v.name, "child_id": ids[l.child], "parent_ref": ids[l.parent],
                      "parent_id": ids[l.parent]} for l in rep.review]
            for h in rep.placeholders:
                items.append({"object": "Account", "id": None, "field": v.parent_field, "old": None,
                              "new": f"placeholder:{h.key}", "rule": h.rule.name, "confidence": h.confidence,
                              "evidence": h.evidence, "reason": "no account holds this family key; approve to create "
                              f"the parent {h.name!r}", "view": v.name, "child_id": "", "parent_ref": f"placeholder:{h.key}",
                              "placeholder_name": h.name, "members": [ids[m] for m in h.members]})
            out[v.name] = items
        return out


# ---- fetch --------------------------------------------------------------------------------------

def open_org(settings: Settings) -> LocalOrg:
    if settings.salesforce is not None:
        from .sources.salesforce import SalesforceOrg  # only a Salesforce source loads the client
        return SalesforceOrg(settings.salesforce, settings.working_copy, settings.config_file)
    return LocalOrg(settings.org_path, settings.working_copy)


def require_columns(org: LocalOrg, obj: str, fields: list[str], what: str) -> None:
    if not org.has_table(obj):
        if org.remote:
            raise ConfigError(f"{what}: object {obj} does not exist in the org (or the integration user cannot see it)",
                              Location(org.where(obj)))
        raise DataError(f"no {obj}.csv in the org folder; expected a Data Loader export of {obj}",
                        Location(org.where(obj)))
    for f in fields:
        if f and not org.has_field(obj, f):
            where = f"a field of {obj} in Salesforce" if org.remote else f"a column of {obj}.csv"
            raise ConfigError(f"{what}: field {f} is not {where} (fields: {', '.join(org.columns(obj)[:12])})",
                              Location(org.where(obj), None if org.remote else 1, field=f))


_NUMBER = ("double", "currency", "int", "percent", "long")
_DATE = ("date", "datetime")


def field_needs(settings: Settings, ruleset, extra_fields: tuple[str, ...] = ()) -> list[FieldNeed]:
    """Every field the run reads or writes, with the types it accepts (checked against describe at start)."""
    needs = [FieldNeed("Account", "Name", "accounts"), FieldNeed("Account", "ParentId", "views", optional=True)]
    repaired = {r.view for r in ruleset.match}
    for v in settings.views:
        where = f"views[{v.name}]"
        if v.parent_field:
            needs.append(FieldNeed("Account", v.parent_field, f"{where}.parent_field", ("reference",),
                                   write=v.name in repaired))
        if v.by:
            needs.append(FieldNeed("Account", v.by, f"{where}.by"))
        types = {"ultimate_parent": ("reference", "string"), "depth": _NUMBER, "child_count": _NUMBER,
                 "arr": ("currency", "double")}
        for kind, fname in v.fields.items():
            needs.append(FieldNeed("Account", fname, f"{where}.fields.{kind}", types.get(kind, ()), write=True))
    a = settings.arr
    if a.source == "account_field" and a.account_field:
        needs.append(FieldNeed("Account", a.account_field, "arr.account_field", _NUMBER))
    if a.source == "subscriptions" and a.subscriptions:
        sub = a.subscriptions
        for key, fname, types in (("account", sub.account, ("reference", "string")), ("start", sub.start, _DATE),
                                  ("end", sub.end, _DATE), ("amount", sub.amount, _NUMBER),
                                  ("product", sub.product, ()), ("currency", sub.currency, ())):
            if fname:
                needs.append(FieldNeed(sub.object, fname, f"arr.subscriptions.{key}", types))
    for f in (*settings.segments, *extra_fields):
        needs.append(FieldNeed("Account", f, "report.segments"))
    for rule in ruleset.match:
        for f in rule.fields():
            needs.append(FieldNeed("Account", f, f"rule {rule.name} ({rule.location.file}:{rule.location.line})",
                                   optional=rule.skip_when_missing))
    h = settings.hierarchy
    if h.locked_field:
        needs.append(FieldNeed("Account", h.locked_field, "hierarchy.locked_field", ("boolean",),
                               optional=not h.locked_field_required))
    if ruleset.match and h.missing_parents == "placeholder":
        needs.append(FieldNeed("Account", h.placeholder_key_field, "hierarchy.placeholder_key_field", ("string",),
                               create=True, external_id=True, optional=True))
    needs += [FieldNeed("Account", f, "hierarchy", optional=True) for f in ("Website", "BillingCountry", "CreatedDate")]
    if settings.snapshots_enabled:
        obj = settings.snapshot_object
        needs.append(FieldNeed(obj, SNAPSHOT_KEY, "snapshots.object", ("string",), write=True, create=True,
                               external_id=True))
        needs += [FieldNeed(obj, f, "snapshots.object", write=True, create=True) for f in SNAPSHOT_FIELDS]
    return needs


def fetch_accounts(settings: Settings, org: LocalOrg, extra_fields: tuple[str, ...] = ()) -> Accounts:
    require_columns(org, "Account", [v.parent_field for v in settings.lookup_views], "views.parent_field")
    require_columns(org, "Account", [v.by for v in settings.views if v.by], "views.by")
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
    duplicates: list[dict] = field(default_factory=list)
    rule_stats: dict = field(default_factory=dict)
    inserts: list[Change] = field(default_factory=list)
    merged_away: list[str] = field(default_factory=list)   # their stored history now lives under the survivor


def _rule_fields(settings: Settings, org: LocalOrg, ruleset, findings: list[Finding]) -> tuple[list, list[str]]:
    """The rules whose fields the org has, and the Account fields they (and the guards) read.

    A missing field stops the run with the rule's file:line, unless the rule says when_fields_missing: skip
    (then it is reported as not evaluated, never as "nothing found")."""
    usable, fields = [], []
    for rule in ruleset.match:
        if rule.extra.get("default_country_field") and not org.has_field("Account", rule.country_field):
            rule = dataclasses.replace(rule, country_field=None)  # no country to check qualifiers against
        wanted = rule.fields() + (["Name"] if rule.type == "mapping" and rule.match_by == "name" else [])
        missing = [f for f in wanted if not org.has_field("Account", f)]
        if missing and rule.skip_when_missing:
            findings.append(Finding("rule_not_evaluated", f"rule {rule.name} ({rule.location.file}:{rule.location.line}) "
                                    f"not evaluated: Account has no field {', '.join(missing)}", ()))
            continue
        if missing:
            raise ConfigError(f"field {missing[0]} is not a column of Account (the org's columns include: "
                              f"{', '.join(org.columns('Account')[:15])}); fix the rule or set when_fields_missing: skip",
                              rule.location)
        usable.append(rule)
        fields.extend(wanted)
        if any(t.kind == "oldest" for t in rule.tie_break) and org.has_field("Account", "CreatedDate"):
            fields.append("CreatedDate")
    h = settings.hierarchy
    if h.locked_field:
        if org.has_field("Account", h.locked_field):
            fields.append(h.locked_field)
        elif h.locked_field_required:
            raise ConfigError(f"hierarchy.locked_field: {h.locked_field} is not a column of Account",
                              Location(str(settings.config_file), field=h.locked_field))
    if h.duplicates:
        fields.extend(f for f in ("Name", "Website", "BillingCountry") if org.has_field("Account", f))
    if h.missing_parents == "placeholder" and org.has_field("Account", h.placeholder_key_field):
        fields.append(h.placeholder_key_field)
    return usable, fields


def _placeholder_parents(settings: Settings, org: LocalOrg, ledger: Ledger,
                         accounts: Accounts) -> tuple[dict[int, int], list[Change]]:
    """Approved placeholder parents: {review id: account index}, creating (in the plan) those not in the org yet.

    A placeholder is found again by its family key in `placeholder_key_field`, so it is created once."""
    h = settings.hierarchy
    items = [it for v in settings.lookup_views for it in ledger.review_items(status="approved", view=v.name)
             if it["parent_ref"].startswith("placeholder:")]
    if not items:
        return {}, []
    key_field = h.placeholder_key_field
    by_key = {str(k): i for i, k in enumerate(accounts.column(key_field)) if k} if accounts.has(key_field) else {}
    missing = list(dict.fromkeys(it["parent_ref"] for it in items if it["parent_ref"] not in by_key))
    inserts = []
    for rid, ref in zip(org.free_ids("Account", "001", len(missing)), missing):
        item = next(it for it in items if it["parent_ref"] == ref)
        record = {"Name": item["placeholder_name"], key_field: ref}
        by_key[ref] = accounts.append(rid, record)
        inserts.append(Change("Account", rid, INSERT, None, json.dumps(record, sort_keys=True),
                              f"placeholder:{item['rule']}", confidence=item["confidence"],
                              evidence={"review_id": item["id"], "members": item["members"]}))
    return {it["id"]: by_key[it["parent_ref"]] for it in items}, inserts


def load_inputs(settings: Settings, org: LocalOrg, ledger: Ledger, ctx: RunContext,
                extra_fields: tuple[str, ...] = (), repair: bool = False) -> Inputs:
    """Fetch, compute monthly ARR, repair parent links (when `repair`), build each view's tree and stage its
    membership in the ledger."""
    findings: list[Finding] = []
    ruleset, rule_fields = rules_mod.RuleSet(), []
    with _Stage(ctx, "fetch"):
        objects, background = ["Account"], []
        if settings.arr.subscriptions and settings.arr.source == "subscriptions":
            # loaded by a second process while this one reads accounts and matches (its first read waits)
            background.append(settings.arr.subscriptions.object)
        objects += background
        if repair:  # a plan compares its snapshots with the org's; a report reads none (on Salesforce: API calls)
            objects.append(settings.snapshot_object)
        if repair:
            ruleset = rules_mod.load(settings.rule_files, [v.name for v in settings.lookup_views])
        org.prepare(field_needs(settings, ruleset, extra_fields))  # Salesforce: budget and describe checks
        org.sync(objects, background=background)
        require_columns(org, "Account", list(extra_fields), "--by")
        if repair:
            usable, rule_fields = _rule_fields(settings, org, ruleset, findings)
            ruleset = rules_mod.RuleSet(tuple(usable), ruleset.files)
        accounts = fetch_accounts(settings, org, (*extra_fields, *rule_fields))
    cur = months.of(ctx.as_of)

    placeholder_parents, inserts = {}, []
    if repair and settings.hierarchy.missing_parents == "placeholder":
        # placeholder parents approved in review join the accounts now; they have no ARR history
        placeholder_parents, inserts = _placeholder_parents(settings, org, ledger, accounts)

    merged = {loser: survivor for loser, survivor in org.merged().items()
              if survivor in accounts.index and loser not in accounts.index}
    if merged:
        findings.append(Finding("merged_accounts", f"{len(merged)} merged-away account(s) carry their ARR history to "
                                "the surviving account (MasterRecordId)", tuple(sorted(merged))))

    def arr_stage():
        with _Stage(ctx, "arr"):
            count = settings.arr.history_months
            first = cur - count + 1
            # merged-away accounts (queryAll's MasterRecordId) carry their stored history to the survivor
            index = accounts.index
            if merged:
                index = {**index, **{loser: index[survivor] for loser, survivor in merged.items()}}
            stored = arr_mod.from_segments(ledger.arr_segments(), index, first, count, size=len(accounts))
            matrix, fs = arr_matrix(settings, org, accounts, stored, first, count, cur)
            findings.extend(fs)
            changed = np.flatnonzero((matrix != stored).any(axis=1))
            if merged:  # stored again under the survivor, so the history outlives the recycle bin
                changed = np.union1d(changed, np.array(sorted({index[s] for s in merged.values()}), dtype=np.int64))
            return first, matrix, changed

    # Matching runs before the ARR matrix is built unless a rule reads ARR (largest_arr, $arr): its name keys
    # and indexes are freed before the matrix and subscription rows need the memory.
    needs_arr = any(t.kind == "largest_arr" for r in ruleset.match for t in r.tie_break) or any(
        c.field == "$arr" for r in ruleset.match for c in (*r.child, *r.candidate))
    if needs_arr:
        first, matrix, changed_rows = arr_stage()
        current = matrix[:, cur - first]
    else:
        current = np.zeros(len(accounts), dtype=np.int64)
    views, rule_stats, duplicates = _match_stage(settings, ledger, ctx, accounts, ruleset, current, findings,
                                                 placeholder_parents, extra_fields, repair)
    if not needs_arr:
        first, matrix, changed_rows = arr_stage()

    with _Stage(ctx, "hierarchy"):
        staged: dict[str, int] = {}
        for v in settings.views:
            if v.partition_of:
                tree = partition(views[v.partition_of].tree, accounts.column(v.by), accounts.ids, accounts.index)
                views[v.name] = ViewResult(v.name, tree, 0, 0)
            vr = views[v.name]
            tree = vr.tree
            deep = np.flatnonzero(tree.depth > settings.max_depth)
            if len(deep):
                findings.append(Finding("too_deep", f"view {v.name}: {len(deep)} account(s) deeper than "
                                        f"hierarchy.max_depth {settings.max_depth} (deepest {int(tree.depth.max())})",
                                        tuple(accounts.ids[i] for i in deep[:1000])))
            vr.families = int((tree.parent < 0).sum())
            vr.depth_max = int(tree.depth.max()) if len(tree.depth) else 0
            ids = accounts.ids
            staged[v.name] = ledger.stage_membership(
                v.name, zip(ids, (tree.family_id(ids, r) for r in tree.families().tolist())))
    return Inputs(accounts, views, first, matrix, changed_rows, staged, findings, duplicates, rule_stats, inserts,
                  sorted(merged))


def _match_stage(settings: Settings, ledger: Ledger, ctx: RunContext, accounts: Accounts, ruleset, current: np.ndarray,
                 findings: list[Finding], placeholder_parents: dict, extra_fields: tuple, repair: bool):
    """Each lookup view's tree from the org, repaired by its rules when `repair`; duplicates flagged."""
    views: dict[str, ViewResult] = {}
    rule_stats: dict = {}
    duplicates: list[dict] = []
    shared: dict = {}  # name keys, sites and countries, computed once for every view and the duplicate check
    with _Stage(ctx, "match"):
        for v in settings.lookup_views:
            tree, fs = build_tree(accounts.ids, accounts.index, accounts.column(v.parent_field), v.parent_field)
            findings.extend(fs)
            rep = None
            view_rules = ruleset.for_view(v.name)
            if repair and view_rules:
                rep, stats = repair_view(settings, ledger, accounts, tree, current, v.name, view_rules, findings,
                                         shared, placeholder_parents)
                rule_stats[v.name] = stats
                repaired, fs = forest(rep.parent, accounts.ids, accounts.index, v.parent_field)
                findings.extend(fs)
                tree = repaired
                if rep.virtual:  # families grouped under virtual roots: NRR and membership only, nothing written
                    tree = tree.with_virtual_roots([(f"virtual:{h.key}", list(h.members)) for h in rep.virtual])
            views[v.name] = ViewResult(v.name, tree, 0, 0, rep)
        if repair and settings.hierarchy.duplicates:
            duplicates = find_duplicates(accounts, shared)
            if duplicates:
                findings.append(Finding("duplicate", f"{len(duplicates)} group(s) of accounts share a normalised name, "
                                        "website domain and country: possible duplicates for a data steward (never "
                                        "merged)", tuple(rid for g in duplicates for rid in g["ids"])))
        # Matching's name keys, indexes and columns are not needed by the later stages: let them go now.
        shared.clear()
        keep = {f.lower() for f in (*settings.account_fields_read(), *extra_fields)}
        for name in [f for f in accounts.fields if f.lower() not in keep]:
            del accounts.fields[name]
    return views, rule_stats, duplicates


def repair_view(settings: Settings, ledger: Ledger, accounts: Accounts, tree: Tree, current: np.ndarray, view: str,
                view_rules, findings: list[Finding], shared: dict | None = None,
                placeholder_parents: dict[int, int] | None = None) -> tuple[link_mod.Repair, dict]:
    """Propose links with the view's rules, then decide them through the guards and the review queue."""
    h = settings.hierarchy
    locked = np.zeros(len(accounts), dtype=bool)
    if h.locked_field and accounts.has(h.locked_field):
        truthy = rules_mod.model.TRUE_TEXT
        locked = np.fromiter(((str(x).strip().lower() in truthy) if x else False
                              for x in accounts.column(h.locked_field)), dtype=bool, count=len(accounts))
    unlocked = ~locked
    pop = match_mod.Population(accounts.ids, accounts.column, tree.parent, current, tree.child_count(), tree.depth,
                               eligible=(tree.parent < 0) & unlocked, unlocked=unlocked,
                               _cache=shared if shared is not None else {})
    proposals, holders, notes = match_mod.propose(pop, view_rules, h.missing_parents != "off")
    if notes:
        findings.append(Finding("mapping_unresolved", f"view {view}: {len(notes)} mapping entr(ies) name no account, "
                                f"e.g. {notes[0]}", ()))
    approved, gone, index = [], [], accounts.index
    for item in ledger.review_items(status="approved", view=view):
        if item["parent_ref"].startswith("placeholder:"):
            p = (placeholder_parents or {}).get(item["id"])
            for member in item["members"] or []:
                c = index.get(member)
                if c is not None and p is not None:
                    approved.append(link_mod.Approved(item["id"], c, p, f"placeholder:{item['rule']}",
                                                      item["confidence"], {"placeholder": item["parent_ref"]}))
            continue
        c, p = index.get(item["child_id"]), index.get(item["parent_id"] or "")
        if c is not None and p is not None:
            approved.append(link_mod.Approved(item["id"], c, p, item["rule"], item["confidence"], item["evidence"]))
        else:
            gone.append(item["id"])
    guards = link_mod.Guards(h.auto_apply, h.max_depth, h.child_limit, h.missing_parents)
    rep = link_mod.repair(view, pop, proposals, holders, guards, approved, ledger.rejected_pairs(view))
    rep.gone = gone
    blocked: dict[str, list[str]] = {}
    for b in rep.blocked:
        blocked.setdefault(b.reason or "blocked", []).append(accounts.ids[b.child])
    for reason, recs in blocked.items():
        findings.append(Finding(f"link_blocked_{reason}", f"view {view}: {len(recs)} proposed link(s) refused by the "
                                f"{reason} guard", tuple(recs)))
    if int(locked.sum()):
        findings.append(Finding("locked", f"view {view}: {int(locked.sum())} locked account(s) ({h.locked_field}) "
                                "left untouched", ()))
    stats = {"proposals": len(proposals), "applied": len(rep.applied), "review": len(rep.review),
             "blocked": len(rep.blocked), "kept_existing_parent": rep.kept_existing,
             "placeholders": len(rep.placeholders), "virtual_roots": len(rep.virtual),
             "by_rule": _count_by_rule(rep)}
    return rep, stats


def _count_by_rule(rep: link_mod.Repair) -> dict:
    out: dict[str, dict[str, int]] = {}
    for kind, links in (("applied", rep.applied), ("review", rep.review), ("blocked", rep.blocked)):
        for l in links:
            d = out.setdefault(l.rule, {})
            d[kind] = d.get(kind, 0) + 1
    return out


def find_duplicates(accounts: Accounts, shared: dict | None = None) -> list[dict]:
    """Accounts with the same normalised name + registrable domain + country (DESIGN §3): flagged, never merged."""
    if not accounts.has("Name"):
        return []
    n = len(accounts)
    pop = match_mod.Population(accounts.ids, accounts.column, np.full(n, -1), np.zeros(n, dtype=np.int64),
                               np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool),
                               np.ones(n, dtype=bool), _cache=shared if shared is not None else {})
    full, _ = pop.name_index("Name")
    domains = pop.sites("Website")[0] if accounts.has("Website") else [None] * n
    countries = pop.countries("BillingCountry") if accounts.has("BillingCountry") else [None] * n
    raw_countries = accounts.column("BillingCountry")
    out = []
    for key, same_name in full.items():
        if not isinstance(same_name, list):
            continue  # only accounts that share a normalised name can be duplicates
        groups: dict[tuple, list[int]] = {}
        for i in same_name:
            country = countries[i] or (raw_countries[i] or "").strip().casefold()
            groups.setdefault((domains[i] or "", country), []).append(i)
        out.extend({"name": key, "domain": domain, "country": country, "ids": [accounts.ids[i] for i in members]}
                   for (domain, country), members in groups.items() if len(members) > 1)
    return out


def compute(settings: Settings, org: LocalOrg, ledger: Ledger, ctx: RunContext) -> Plan:
    """Everything short of writing: changes, snapshots, NRR, findings. Raises GateFailed on a broken gate."""
    inputs = load_inputs(settings, org, ledger, ctx, repair=True)
    accounts, views, first, matrix = inputs.accounts, inputs.views, inputs.first, inputs.matrix
    findings = inputs.findings
    cur = months.of(ctx.as_of)
    arr_rewrite = ([accounts.ids[r] for r in inputs.changed_rows.tolist()], inputs.changed_rows)

    with _Stage(ctx, "rollup"):
        changes = []
        for v in settings.lookup_views:
            rep = views[v.name].repair
            if rep is not None:
                changes.append(_link_changes(v.parent_field, rep, accounts))
                # the batch now carries what the applied links said; keep only those a review approved
                # (their items are settled after the write): a million-account run frees ~250,000 objects
                rep.applied = [l for l in rep.applied if l.review_id is not None]
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
                membership, snapshots, inputs.duplicates, inputs.rule_stats, inputs.inserts, inputs.merged_away)
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
                                                org.where(s.object))
        return matrix, fs
    matrix = stored.copy()
    fs = []
    if a.source == "account_field":
        column, fs = arr_mod.from_account_field(accounts.column(a.account_field), accounts.ids, a.account_field,
                                                org.where("Account"))
        matrix[:, cur - first] = column
    return matrix, fs


def _link_changes(parent_field: str, rep: link_mod.Repair, accounts: Accounts) -> FieldChanges:
    """The repaired parent links as one batch, each change with its rule, confidence and evidence."""
    ids, raw = accounts.ids, accounts.column(parent_field)
    links = sorted((l for l in rep.applied if l.parent != l.old_parent), key=lambda l: l.child)
    return FieldChanges("Account", parent_field, "repair",
                        ids=np.array([ids[l.child] for l in links], dtype=object),
                        old=np.array([raw[l.child] or None for l in links], dtype=object),
                        new=np.array([ids[l.parent] for l in links], dtype=object),
                        rows=np.array([l.child for l in links], dtype=np.int64),
                        meta=[(l.rule, l.confidence, l.evidence) for l in links], explain=match_mod.explain,
                        to_json=match_mod.to_json)


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
    labels = tree.families().copy()
    if month >= current_month:
        return labels
    index = accounts.index
    unknown: dict[str, int] = {name: label for label, name in (tree.virtual or {}).items()}
    for rid, root in ledger.membership_overrides(view, months.fmt(month)).items():
        i = index.get(rid)
        if i is None:
            continue
        j = index.get(root)
        if j is None:
            j = unknown.setdefault(root, -10_000_000 - len(unknown))
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
    if org.remote:
        failures = _write_remote(plan, org, ledger, settings)
    else:
        with org.transaction():  # commits after the ledger has
            with _Stage(ctx, "write"):
                failures = write_changes(org, plan, settings)
            with _Stage(ctx, "ledger"):
                ledger.record_changes(run_id, plan.batches(), "applied", failures)
    with _Stage(ctx, "history"):
        ids, rows = plan.arr_rewrite
        if ids or plan.merged_away:
            ledger.replace_arr([*ids, *plan.merged_away],
                               arr_mod.iter_segments(plan.matrix, rows, plan.first_month, plan.accounts.ids))
        cur = plan.current_month
        for vname in plan.membership:
            ledger.commit_membership(vname, months.fmt(cur), months.fmt(cur - 1))
        if len(plan.snapshot_changes):
            ledger.upsert_snapshots(run_id, plan.snapshot_changes.keys, plan.snapshot_changes.new)
        for vname, items in plan.review_queue(settings).items():
            ledger.sync_review(run_id, vname, items)
            rep = plan.views[vname].repair
            ledger.settle_review(run_id, [l.review_id for l in rep.applied if l.review_id is not None],
                                 [(l.review_id, l.reason or "blocked") for l in rep.blocked if l.review_id is not None]
                                 + [(i, "the child or the parent is no longer in the org") for i in rep.gone])
    total = plan.change_count()
    counts = {"applied": total - len(failures), "failed": len(failures)}
    return {k: v for k, v in counts.items() if v}


def _write_remote(plan: Plan, org, ledger: Ledger, settings: Settings) -> dict[int, str]:
    """Salesforce has no transaction to hold back: record the changes first (the run stays 'applying' until
    it ends, so a crash is settled against the org by `recover`), write, then mark what failed."""
    ctx = plan.ctx
    failures: dict[int, str] = {}
    if plan.inserts:  # phase 1: create placeholder parents and learn their Ids before anything points at them
        with _Stage(ctx, "write"):
            mapping, failures = writeback.create_records(org, "Account", settings.hierarchy.placeholder_key_field,
                                                         plan.inserts)
            plan.inserts = [c._replace(id=mapping.get(c.id, c.id)) for c in plan.inserts]
            writeback.remap(plan.changes, mapping)
    with _Stage(ctx, "ledger"):
        ledger.record_changes(ctx.run_id, plan.batches(), "applied", failures)
    with _Stage(ctx, "write"):
        starts, seq = [], len(plan.inserts)
        for batch in plan.changes:
            starts.append(seq)
            seq += len(batch)
        lookup = settings.lookup_views
        parent_of = {}
        if lookup:  # each account's parent once this run's links are written: the record its update locks
            up = plan.views[lookup[0].name].tree.parent
            ids = np.array(plan.accounts.ids, dtype=object)
            parent_of["Account"] = np.where(up >= 0, ids[np.maximum(up, 0)], "")
        failed = writeback.write_changes(org, plan.changes, starts, {v.parent_field for v in lookup}, parent_of)
        sc = plan.snapshot_changes
        failed.update(writeback.upsert_snapshots(org, sc.object, SNAPSHOT_KEY, SNAPSHOT_FIELDS, sc.new, seq))
    with _Stage(ctx, "ledger"):
        ledger.settle_changes(ctx.run_id, [(s, "failed", err, None) for s, err in sorted(failed.items())])
    return {**failures, **failed}


def write_changes(org: LocalOrg, plan: Plan, settings: Settings) -> dict[int, str]:
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
