"""Proposed links -> the repaired hierarchy: one parent per child, guarded, the doubtful ones to review.

Guards (DESIGN §3): never a cycle, never deeper than max_depth, never more than child_limit children under
one parent, never a locked account, never an existing parent unless the rule says override. Links are
placed most confident first, so when two compete for the last slot under a parent the surer one wins.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np

from .match import Placeholder, Population, Proposal, _text_json, explain, to_json


@dataclass(frozen=True)
class Guards:
    auto_apply: float = 0.95
    max_depth: int = 100
    child_limit: int = 10_000
    missing_parents: str = "placeholder"     # placeholder | virtual_root | off


@dataclass(slots=True)
class Link:
    """One child's new parent: applied, queued for review, or blocked by a guard."""

    child: int
    parent: int                 # account index; -1 with `placeholder` set for a parent still to create
    rule: str
    confidence: float
    evidence: Any                # see match.explain
    old_parent: int = -1
    placeholder: str | None = None
    review_id: int | None = None  # the approved review item this link comes from
    reason: str | None = None     # why it is blocked or sent to review


@dataclass
class Approved:
    """A review item a person approved: applied on the next run, still through the guards."""

    review_id: int
    child: int
    parent: int
    rule: str
    confidence: float
    evidence: dict


@dataclass
class Repair:
    """What the repair of one view decided."""

    view: str
    parent: np.ndarray
    applied: list[Link] = field(default_factory=list)
    review: list[Link] = field(default_factory=list)
    blocked: list[Link] = field(default_factory=list)
    placeholders: list[Placeholder] = field(default_factory=list)
    virtual: list[Placeholder] = field(default_factory=list)
    kept_existing: int = 0      # proposals for accounts that already have another parent (no override)
    gone: list[int] = field(default_factory=list)  # approved review items whose accounts no longer exist


class LinkEvidence(NamedTuple):
    """The winning proposal's evidence plus how the decision went: agreeing rules, a less specific rival,
    other candidates. Compact until explained."""

    lead: Any
    agreeing: tuple | None          # proposals of other rule types for the same parent
    more_specific_than: tuple | None  # (parent Id, rule, confidence) of the rival this link is nested under
    others: tuple | None            # (parent Id, rule, confidence) of the other candidates

    def to_json(self) -> str:
        """Written directly: about 100,000 links a million-account run carry agreeing rules."""
        parts, text = [to_json(self.lead)[:-1]], _text_json
        if self.agreeing:
            parts.append('"agreeing_rules": {' + ", ".join(
                f'"{p.rule.type}": {{"rule": {text(p.rule.name)}, "confidence": {p.confidence}}}'
                for p in self.agreeing) + "}")
        if self.more_specific_than:
            pid, rule, conf = self.more_specific_than
            parts.append(f'"more_specific_than": {{"parent": "{pid}", "rule": {text(rule)}, "confidence": {conf}}}')
        if self.others:
            parts.append('"other_candidates": [' + ", ".join(
                f'{{"parent": "{pid}", "rule": {text(rule)}, "confidence": {conf}}}'
                for pid, rule, conf in self.others) + "]")
        return ", ".join(parts) + "}"

    def as_dict(self, lead: dict | None = None) -> dict:
        out = dict(explain(self.lead)) if lead is None else lead
        if self.agreeing:
            out["agreeing_rules"] = {p.rule.type: {"rule": p.rule.name, "confidence": p.confidence}
                                     for p in self.agreeing}
        if self.more_specific_than:
            pid, rule, conf = self.more_specific_than
            out["more_specific_than"] = {"parent": pid, "rule": rule, "confidence": conf}
        if self.others:
            out["other_candidates"] = [{"parent": pid, "rule": rule, "confidence": conf}
                                       for pid, rule, conf in self.others]
        return out


def _tied(p: Proposal) -> bool:
    return isinstance(p.evidence, dict) and "tie" in p.evidence


def _heights(parent: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Height of each node's subtree (0 for a leaf), level by level from the deepest."""
    height = np.zeros(len(parent), dtype=np.int64)
    if not len(parent):
        return height
    order = np.argsort(-depth, kind="stable")
    cuts = np.flatnonzero(np.diff(depth[order])) + 1
    for level in np.split(order, cuts):
        has = parent[level] >= 0
        if has.any():
            np.maximum.at(height, parent[level][has], height[level][has] + 1)
    return height


def consolidate(pop: Population, proposals: list[Proposal], guards: Guards,
                rejected: set[tuple[str, str]]) -> tuple[list[Link], list[Link], int]:
    """Per child: agreeing rules combine (noisy-or over rule types), the most confident parent wins.

    A tie inside one rule is settled when another rule backs one of the tied parents. A rival parent that
    is also confident sends the link to review, unless one parent lies under the other (a domain pointing at
    the group, a name at the subsidiary): then the deeper, more specific one wins.
    Returns (to apply, to review, kept existing)."""
    ids = pop.ids
    if rejected:
        proposals = [p for p in proposals if (ids[p.child], ids[p.parent]) not in rejected]
    if not proposals:
        return [], [], 0
    # Group by child without a dict per child (a million-account run has hundreds of thousands of children):
    # a stable sort by child, the groups' bounds found by numpy; a child with one proposal (most) keeps it alone.
    child_of = np.fromiter(map(itemgetter(0), proposals), dtype=np.int64, count=len(proposals))
    order = np.argsort(child_of, kind="stable")
    child_of = child_of[order]
    starts = np.flatnonzero(np.concatenate(([True], child_of[1:] != child_of[:-1])))
    sizes = np.diff(np.append(starts, len(child_of)))
    proposals = [proposals[i] for i in order.tolist()]
    children = child_of[starts].tolist()   # each child once, ascending: the order links are decided in
    alone = sizes == 1
    scored_by_child: dict[int, Proposal | list[tuple]] = dict(zip(child_of[starts[alone]].tolist(),
                                                                   [proposals[i] for i in starts[alone].tolist()]))
    for start, size in zip(starts[~alone].tolist(), sizes[~alone].tolist()):
        group = proposals[start:start + size]
        child = group[0].child
        by_parent: dict[int, dict[str, Proposal]] = {}
        for p in group:
            best = by_parent.setdefault(p.parent, {})
            if p.rule.type not in best or p.confidence > best[p.rule.type].confidence:
                best[p.rule.type] = p
        scored = []
        for parent, best_by_type in by_parent.items():
            ps = tuple(best_by_type.values())
            lead, miss, threshold, tied = ps[0], 1.0, 1.0, True
            for p in ps:  # plain loops: this runs for ~100,000 children at a million accounts
                if p.confidence > lead.confidence:
                    lead = p
                miss *= 1.0 - p.confidence
                t = p.rule.auto_apply if p.rule.auto_apply is not None else guards.auto_apply
                if t < threshold:
                    threshold = t
                tied = tied and _tied(p)
            scored.append((round(1.0 - miss, 4), parent, lead, ps, threshold, tied))
        if len(scored) > 1:
            scored.sort(key=lambda s: (-s[0], ids[s[1]]))
        scored_by_child[child] = scored

    current = pop.parent.tolist()  # list indexing: ~10x cheaper than numpy scalars in these loops

    def intended(node: int) -> int:
        cur = current[node]
        if cur >= 0:
            return cur
        top = scored_by_child.get(node)
        if top is None:
            return -1
        return top.parent if isinstance(top, Proposal) else top[0][1]

    def under(node: int, ancestor: int) -> bool:
        for _ in range(guards.max_depth):
            node = intended(node)
            if node < 0:
                return False
            if node == ancestor:
                return True
        return False

    apply, review, kept = [], [], 0
    rule_names: dict[tuple, str] = {}
    auto_apply = guards.auto_apply
    for child in children:
        got = scored_by_child[child]
        if isinstance(got, Proposal):  # one proposal: no rival, nothing agreeing, its own evidence (most children)
            old = current[child]
            if old == got.parent:
                continue
            rule = got.rule
            if old >= 0 and not rule.override:
                kept += 1
                continue
            conf, threshold = got.confidence, rule.auto_apply if rule.auto_apply is not None else auto_apply
            link = Link(child, got.parent, rule.name, conf, got.evidence, old_parent=old)
            if _tied(got):
                link.reason = "tie"
                review.append(link)
            elif conf < threshold:
                link.reason = f"confidence {conf} below auto_apply {threshold}"
                review.append(link)
            else:
                apply.append(link)
            continue
        scored = got
        conf, parent, lead, best, threshold, tie = scored[0]
        rivals = [s for s in scored[1:] if s[0] >= s[4] and not s[5]]
        nested = None
        if rivals and not tie and conf >= threshold and len(rivals) == 1:
            other = rivals[0]
            if under(other[1], parent):       # the rival lies under the winner: it is the more specific parent
                nested, (conf, parent, lead, best, threshold, tie) = scored[0], other
            elif under(parent, other[1]):
                nested = other
            if nested is not None:
                rivals = []
        old = current[child]
        if old == parent:
            continue  # already there
        if old >= 0 and not any(p.rule.override for p in best):
            kept += 1
            continue
        evidence = lead.evidence
        others = tuple((ids[s[1]], s[2].rule.name, s[0]) for s in scored[:6] if s[1] != parent)
        if len(best) > 1 or nested is not None or others:
            evidence = LinkEvidence(lead.evidence, best if len(best) > 1 else None,
                                    (ids[nested[1]], nested[2].rule.name, nested[0]) if nested is not None else None,
                                    others or None)
        if len(best) == 1:
            rule_name = lead.rule.name
        else:
            names = tuple(p.rule.name for p in sorted(best, key=lambda p: -p.confidence))
            rule_name = rule_names.get(names) or rule_names.setdefault(names, "+".join(names))
        link = Link(child, parent, rule_name, conf, evidence, old_parent=old)
        if tie:
            link.reason = "tie"
            for s in scored:  # every tied candidate is shown in review
                review.append(link if s[1] == parent else
                              Link(child, s[1], s[2].rule.name, s[0], s[2].evidence, old_parent=old, reason="tie"))
        elif conf < threshold:
            link.reason = f"confidence {conf} below auto_apply {threshold}"
            review.append(link)
        elif rivals:
            link.reason = "another parent is proposed with confidence above auto_apply"
            review.append(link)
        else:
            apply.append(link)
    return apply, review, kept


def repair(view: str, pop: Population, proposals: list[Proposal], placeholders: list[Placeholder],
           guards: Guards, approved: list[Approved], rejected: set[tuple[str, str]],
           held: dict[tuple[str, str], str] | None = None) -> Repair:
    """Decide every link of one view and return the repaired parent array. `held`: pairs a rollback took out
    of the org ({(child Id, parent Id): rollback run}): however confident, they go to review."""
    apply, review, kept = consolidate(pop, proposals, guards, rejected)
    if held:
        ids = pop.ids
        for link in [l for l in apply if (ids[l.child], ids[l.parent]) in held]:
            link.reason = (f"held: run {held[(ids[link.child], ids[link.parent])]} rolled back this link; approve it "
                           "to apply it again")
            review.append(link)
        apply = [l for l in apply if l.reason is None]
    result = Repair(view, pop.parent.copy(), kept_existing=kept)
    by_child = {l.child: l for l in apply}
    for a in approved:  # a person's decision outranks the rules'
        old = int(pop.parent[a.child])
        if not pop.unlocked[a.child]:
            result.blocked.append(Link(a.child, a.parent, a.rule, a.confidence, a.evidence, old, review_id=a.review_id,
                                       reason="locked"))
            continue
        by_child[a.child] = Link(a.child, a.parent, a.rule, a.confidence, {**explain(a.evidence), "approved": a.review_id},
                                 old_parent=old, review_id=a.review_id)
    review = [l for l in review if l.child not in by_child]

    # Python lists, not numpy, in the guard loop: it touches single elements hundreds of thousands of times.
    par = result.parent.tolist()
    children = (np.bincount(result.parent[result.parent >= 0], minlength=len(par)) if len(par)
                else np.zeros(0, np.int64)).tolist()
    height = _heights(pop.parent, pop.depth).tolist()
    ids = pop.ids

    def check(link: Link) -> str | None:
        node, steps = link.parent, 0
        while node >= 0:
            if node == link.child:
                return "cycle"
            steps += 1
            if steps > guards.max_depth:
                return "max_depth"
            node = par[node]
        if steps + height[link.child] > guards.max_depth:
            return "max_depth"
        if children[link.parent] + 1 > guards.child_limit:
            return "child_limit"
        return None

    ordered = sorted(by_child.values(), key=lambda l: (l.review_id is None, -l.confidence, ids[l.child]))
    for link in ordered:
        if par[link.child] == link.parent:
            result.applied.append(link)  # an approved link already in place: nothing to write, mark it applied
            continue
        problem = check(link)
        if problem:
            link.reason = problem
            result.blocked.append(link)
            continue
        old = par[link.child]
        if old >= 0:
            children[old] -= 1
        par[link.child] = link.parent
        children[link.parent] += 1
        h, node = height[link.child] + 1, link.parent
        while node >= 0 and height[node] < h:
            height[node] = h
            h, node = h + 1, par[node]
        result.applied.append(link)
    for link in review:
        problem = check(link)
        if problem:
            link.reason = problem
            result.blocked.append(link)
        else:
            result.review.append(link)

    result.parent = np.array(par, dtype=np.int64) if par else result.parent
    if guards.missing_parents != "off" and placeholders:
        linked = {l.child for l in result.applied} | {l.child for l in result.review}
        seen: set[str] = set()
        for h in placeholders:
            members = tuple(m for m in h.members if m not in linked and par[m] < 0)
            if len(members) < 2 or h.key in seen:
                continue
            seen.add(h.key)
            linked.update(members)
            target = result.placeholders if guards.missing_parents == "placeholder" else result.virtual
            target.append(h._replace(members=members))
    return result
