"""The repair stage's work: each view's tree from the org, its parent links repaired by the view's rules and
the decisions already taken in review, partitions built, duplicates flagged. Pure: accounts, rules and
decisions in (as data), trees, links and findings out; nothing here reads or writes the ledger or the org."""
from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..model import TRUE_TEXT, Accounts, FieldChanges, Finding
from . import carry as carry_mod, link as link_mod
from . import match as match_mod
from .tree import Tree, build_tree, forest, partition


@dataclass(frozen=True)
class Decisions:
    """What people decided in review, per view: approved items (ledger rows) and rejected (child, parent) pairs.

    `placeholder_parents` maps an approved placeholder item's id to the account index of its parent
    (created by this run's plan when the org does not hold it yet). `held`: (child, parent) pairs a
    `rollback --hold` undid, which rules send to review instead of applying ({pair: rollback run id}).
    `away` and `blocked` are what the state sink records about approved items whose accounts left the input
    or came back changed: (review id, note) each."""

    approved: dict[str, list[dict]] = field(default_factory=dict)
    rejected: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    placeholder_parents: dict[int, int] = field(default_factory=dict)
    held: dict[str, dict[tuple[str, str], str]] = field(default_factory=dict)
    away: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    blocked: dict[str, list[tuple[int, str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class ViewResult:
    """One view after the repair stage: its tree, counts, and (for repaired lookup views) the repair."""

    name: str
    tree: Tree
    families: int
    depth_max: int
    repair: link_mod.Repair | None = None
    stats: dict | None = None


@contextlib.contextmanager
def cycles_uncollected() -> Iterator[None]:
    """Python's cycle collector paused: matching builds hundreds of thousands of small tuples (proposals, links,
    index entries) beside a million names, and each full collection walks them all (a third of the stage's
    time at 100,000 accounts). Nothing it builds is cyclic; plain reference counting still frees it. What it
    leaves (the accounts, the evidence kept: most of what the run holds) is frozen for the rest of the run
    (`gc.freeze`; `Engine.close` unfreezes it): handed to the oldest generation instead, it was walked once more
    by a full collection soon after (~1 s at 1,000,000 accounts), which the collector's count of old objects
    asked for."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.freeze()
            gc.enable()


def lookup_trees(settings, accounts: Accounts, ruleset, current: np.ndarray, decisions: Decisions,
                 repair: bool, findings: list[Finding], shared: dict | None = None,
                 carried=None) -> tuple[dict[str, ViewResult], list[dict]]:
    """Each lookup view's tree from the org, repaired by its rules when `repair`; duplicates flagged. `shared`:
    derived columns (name keys, sites, countries) computed once for every view and the duplicate check, which
    may come in seeded (match.refresh) and go out filled. `carried` (hierarchy.carry.Carried): the last run's
    proposals, taken for each rule whose inputs are unchanged."""
    with cycles_uncollected():
        return _lookup_trees(settings, accounts, ruleset, current, decisions, repair, findings, shared, carried)


def _lookup_trees(settings, accounts: Accounts, ruleset, current: np.ndarray, decisions: Decisions,
                  repair: bool, findings: list[Finding], shared: dict | None,
                  carried) -> tuple[dict[str, ViewResult], list[dict]]:
    views: dict[str, ViewResult] = {}
    duplicates: list[dict] = []
    shared = {} if shared is None else shared
    for v in settings.lookup_views:
        tree, fs = build_tree(accounts.ids, accounts.index, accounts.column(v.parent_field), v.parent_field)
        findings.extend(fs)
        rep, stats = None, None
        view_rules = ruleset.for_view(v.name)
        if repair and view_rules:
            rep, stats = repair_view(settings, accounts, tree, current, v.name, view_rules, decisions, findings, shared,
                                     carried)
            tree, fs = forest(rep.parent, accounts.ids, accounts.index, v.parent_field)
            findings.extend(fs)
            if rep.virtual:  # families grouped under virtual roots: NRR and membership only, nothing written
                tree = tree.with_virtual_roots([(f"virtual:{h.key}", list(h.members)) for h in rep.virtual])
        views[v.name] = ViewResult(v.name, tree, 0, 0, rep, stats)
    if repair and settings.hierarchy.duplicates:
        if carried is None:
            duplicates = find_duplicates(accounts, shared)
        else:   # the last run's groups while the columns they come from are the same
            read = [f for f in ("Name", "Website", "BillingCountry") if accounts.has(f)]
            inputs = carry_mod.columns_digest(shared, accounts.ids, accounts.column, read, carried.code)
            duplicates = carried.memo("duplicates", inputs, lambda: find_duplicates(accounts, shared))
        if duplicates:
            findings.append(Finding("duplicate", f"{len(duplicates)} group(s) of accounts share a normalised name, "
                                    "website domain and country: possible duplicates for a data steward (never "
                                    "merged)", tuple(rid for g in duplicates for rid in g["ids"])))
    return views, duplicates


def all_views(settings, accounts: Accounts, lookup: dict[str, ViewResult], findings: list[Finding]) -> dict[str, ViewResult]:
    """Every configured view: the lookup views, plus partitions of them by a field; depth checked on each."""
    views: dict[str, ViewResult] = {}
    for v in settings.views:
        if v.partition_of:
            base = views.get(v.partition_of) or lookup[v.partition_of]
            vr = ViewResult(v.name, partition(base.tree, accounts.column(v.by), accounts.ids, accounts.index), 0, 0)
        else:
            vr = lookup[v.name]
        tree = vr.tree
        deep = np.flatnonzero(tree.depth > settings.max_depth)
        if len(deep):
            findings.append(Finding("too_deep", f"view {v.name}: {len(deep)} account(s) deeper than "
                                    f"hierarchy.max_depth {settings.max_depth} (deepest {int(tree.depth.max())})",
                                    tuple(accounts.ids[i] for i in deep[:1000])))
        views[v.name] = ViewResult(v.name, tree, int((tree.parent < 0).sum()),
                                   int(tree.depth.max()) if len(tree.depth) else 0, vr.repair, vr.stats)
    return views


def repair_view(settings, accounts: Accounts, tree: Tree, current: np.ndarray, view: str, view_rules,
                decisions: Decisions, findings: list[Finding], shared: dict | None = None,
                carried=None) -> tuple[link_mod.Repair, dict]:
    """Propose links with the view's rules, then decide them through the guards and the review queue."""
    h = settings.hierarchy
    locked = np.zeros(len(accounts), dtype=bool)
    if h.locked_field and accounts.has(h.locked_field):
        locked = np.fromiter(((str(x).strip().lower() in TRUE_TEXT) if x else False
                              for x in accounts.column(h.locked_field)), dtype=bool, count=len(accounts))
    unlocked = ~locked
    pop = match_mod.Population(accounts.ids, accounts.column, tree.parent, current, tree.child_count(), tree.depth,
                               eligible=(tree.parent < 0) & unlocked, unlocked=unlocked,
                               _cache=shared if shared is not None else {})
    if carried is not None:
        proposals, holders, notes = carried.propose(pop, view, view_rules, h.missing_parents != "off")
    else:
        proposals, holders, notes = match_mod.propose(pop, view_rules, h.missing_parents != "off")
    # a placeholder a person rejected (or approved, awaiting its parent) is decided: not proposed, not counted
    decided = {ref for child, ref in decisions.rejected.get(view, set()) if not child}
    decided.update(it["parent_ref"] for it in decisions.approved.get(view, []) if it["parent_ref"].startswith("placeholder:"))
    holders = [ph for ph in holders if f"placeholder:{ph.key}" not in decided]
    refused = [n[len(match_mod.REFUSED):] for n in notes if n.startswith(match_mod.REFUSED)]
    notes = [n for n in notes if not n.startswith(match_mod.REFUSED)]
    if notes:
        findings.append(Finding("mapping_unresolved", f"view {view}: {len(notes)} mapping entr(ies) name no account, "
                                f"e.g. {notes[0]}", ()))
    for note in refused:   # each named: a person's row the engine would not apply
        findings.append(Finding("mapping_refused", f"view {view}: mapping row {note}", ()))
    approved, gone, index = [], [], accounts.index
    for item in decisions.approved.get(view, []):
        if item["parent_ref"].startswith("placeholder:"):
            p = decisions.placeholder_parents.get(item["id"])
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
    rep = link_mod.repair(view, pop, proposals, holders, guards, approved, decisions.rejected.get(view, set()),
                          decisions.held.get(view))
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
             "review_accounts": len({l.child for l in rep.review}),  # a tie puts one account in review per candidate
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
    for key, same_name in full.shared():   # only accounts that share a normalised name can be duplicates
        groups: dict[tuple, list[int]] = {}
        for i in same_name:
            country = countries[i] or (raw_countries[i] or "").strip().casefold()
            groups.setdefault((domains[i] or "", country), []).append(i)
        out.extend({"name": key, "domain": domain, "country": country, "ids": [accounts.ids[i] for i in members]}
                   for (domain, country), members in groups.items() if len(members) > 1)
    return out


def link_changes(parent_field: str, rep: link_mod.Repair, accounts: Accounts) -> FieldChanges:
    """The repaired parent links as one batch, each change with its rule, confidence and evidence."""
    ids, raw = accounts.ids, accounts.column(parent_field)
    links = sorted((l for l in rep.applied if l.parent != l.old_parent), key=lambda l: l.child)
    children = [l.child for l in links]   # ascending: a packed column decodes them as one span
    parents, at = np.unique(np.array([l.parent for l in links], dtype=np.int64), return_inverse=True)
    return FieldChanges("Account", parent_field, "repair",
                        ids=np.array(match_mod.take(ids, children), dtype=object),
                        old=np.array([v or None for v in match_mod.take(raw, children)], dtype=object),
                        new=np.array(match_mod.take(ids, parents.tolist()), dtype=object)[at.reshape(-1)],
                        rows=np.array(children, dtype=np.int64),
                        meta=[(l.rule, l.confidence, l.evidence) for l in links], explain=match_mod.explain,
                        to_json=match_mod.to_json)


def compact(views: dict[str, ViewResult], changes: list[FieldChanges]) -> None:
    """Once matching is over: the evidence the run keeps (link batches, review and blocked links) as JSON text,
    made now that matching's short-lived objects are freed (see match.EvidenceJson); a link batch's as columns
    (match.PackedMeta)."""
    for batch in changes:
        if batch.meta is not None:
            batch.meta = match_mod.PackedMeta(batch.meta)
    for vr in views.values():
        rep = vr.repair
        if rep is not None:
            for link in (*rep.applied, *rep.review, *rep.blocked):
                link.evidence = match_mod.compacted(link.evidence)


def review_items(settings, views: dict[str, ViewResult], accounts: Accounts) -> dict[str, list[dict]]:
    """Per view, the links (and placeholder parents) that need a person's decision, as plan.json shows them."""
    ids = accounts.ids
    out: dict[str, list[dict]] = {}
    for v in settings.lookup_views:
        rep = views[v.name].repair
        if rep is None:
            continue
        parents = accounts.column(v.parent_field)
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
