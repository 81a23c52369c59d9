"""Parent links -> a forest: ultimate parent, depth and subtree sums, in O(n log depth).

Self-parents, parents that point nowhere and cycles in the source data become findings; cycles are
broken deterministically (the member with the smallest Id becomes a root) for the run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model import Finding


@dataclass
class Tree:
    """A forest over account indexes; parent -1 marks a root."""

    parent: np.ndarray  # int64
    root: np.ndarray    # int64, index of the ultimate parent (self for roots)
    depth: np.ndarray   # int64, 0 for roots
    # Families for NRR when they differ from the roots: virtual roots (no record in the org) group several
    # trees; their labels are negative and `virtual` names them ("virtual:<family key>").
    family: np.ndarray | None = None
    virtual: dict[int, str] | None = None

    def families(self) -> np.ndarray:
        return self.root if self.family is None else self.family

    def family_id(self, ids: list[str], label: int) -> str:
        return ids[label] if label >= 0 else self.virtual[label]

    def with_virtual_roots(self, groups: list[tuple[str, list[int]]]) -> "Tree":
        """The same tree, its families merged under virtual roots: [(name, member accounts)]."""
        family = self.root.copy()
        virtual: dict[int, str] = {}
        for k, (name, members) in enumerate(groups):
            label = -2 - k   # -1 is "no parent" elsewhere; keep labels distinct from it
            virtual[label] = name
            roots = np.unique(self.root[np.asarray(members, dtype=np.int64)])
            family[np.isin(self.root, roots)] = label
        return Tree(self.parent, self.root, self.depth, family, virtual)

    def subtree_sum(self, values: np.ndarray) -> np.ndarray:
        """Sum of `values` over each node's subtree (itself and all descendants)."""
        total = values.astype(np.int64, copy=True)
        if len(total) == 0:
            return total
        order = np.argsort(-self.depth, kind="stable")
        depths = self.depth[order]
        # Walk levels deepest-first; each level adds into its parents, so sums climb one level per step.
        cuts = np.flatnonzero(np.diff(depths)) + 1
        for level in np.split(order, cuts):
            if self.depth[level[0]] == 0:
                break
            np.add.at(total, self.parent[level], total[level])
        return total

    def child_count(self) -> np.ndarray:
        has = self.parent >= 0
        return np.bincount(self.parent[has], minlength=len(self.parent)).astype(np.int64)


def build_tree(ids: list[str], index: dict[str, int], parent_ids: list[str | None],
               field: str = "ParentId") -> tuple[Tree, list[Finding]]:
    """Build the forest from each account's parent Id, reporting and neutralising bad links."""
    n = len(ids)
    parent = np.full(n, -1, dtype=np.int64)
    self_parents, dangling = [], []
    get = index.get
    for i, p in enumerate(parent_ids):
        if not p:
            continue
        j = get(p)
        if j is None:
            dangling.append(ids[i])
        elif j == i:
            self_parents.append(ids[i])
        else:
            parent[i] = j
    findings = []
    if self_parents:
        findings.append(Finding("self_parent", f"{len(self_parents)} account(s) name themselves in {field}; "
                                               "treated as roots", tuple(self_parents)))
    if dangling:
        findings.append(Finding("dangling_parent", f"{len(dangling)} account(s) have a {field} that matches no account; "
                                                   "treated as roots", tuple(dangling)))
    tree, more = forest(parent, ids, index, field)
    return tree, findings + more


def forest(parent: np.ndarray, ids: list[str], index: dict[str, int], field: str = "ParentId") -> tuple[Tree, list[Finding]]:
    """The forest of a parent-index array (-1 = root); cycles are reported and broken at the smallest Id."""
    parent = parent.copy()
    findings = []
    while True:
        root, depth, stuck = _jump(parent)
        if not stuck.any():
            break
        for cycle in _cycles(parent, np.flatnonzero(stuck)):
            members = sorted(ids[k] for k in cycle)
            cut = index[members[0]]
            parent[cut] = -1
            findings.append(Finding("cycle", f"{field} cycle {' -> '.join(ids[k] for k in cycle)} -> {ids[cycle[0]]}; "
                                             f"broken at {members[0]} for this run", tuple(members)))
    return Tree(parent, root, depth), findings


def _jump(parent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointer jumping: after k rounds each node knows its 2^k-th ancestor and the distance to it."""
    n = len(parent)
    idx = np.arange(n, dtype=np.int64)
    anc = np.where(parent >= 0, parent, idx)
    dist = (parent >= 0).astype(np.int64)
    for _ in range(max(1, int(n).bit_length() + 1)):
        nxt = anc[anc]
        if np.array_equal(nxt, anc):
            break
        dist = dist + dist[anc]
        anc = nxt
    # A node is resolved only when the ancestor it reached is a true root; in a cycle the jumps
    # settle on a member that still has a parent.
    stuck = parent[anc] >= 0
    return anc, dist, stuck


def _cycles(parent: np.ndarray, candidates: np.ndarray) -> list[list[int]]:
    """The distinct cycles reachable from `candidates` (nodes in or below a cycle)."""
    state: dict[int, int] = {}  # node -> walk number
    cycles = []
    for walk, start in enumerate(candidates.tolist()):
        node, path = start, []
        while node >= 0 and node not in state:
            state[node] = walk
            path.append(node)
            node = int(parent[node])
        if node >= 0 and state[node] == walk:
            cycles.append(path[path.index(node):])
    return cycles


def partition(base: Tree, values: list, ids: list[str], index: dict[str, int]) -> Tree:
    """Split each family of `base` by a field: an account's parent is its nearest ancestor with the same value;
    the shallowest account of each (family, value) heads the accounts that have none."""
    n = len(base.parent)
    if n == 0:
        return base
    _, code = np.unique(np.array(["" if v is None else str(v).strip() for v in values], dtype=object).astype(str),
                        return_inverse=True)
    anc = base.parent.copy()
    while True:
        climb = np.flatnonzero((anc >= 0) & (code[np.maximum(anc, 0)] != code))
        if not len(climb):
            break
        anc[climb] = base.parent[anc[climb]]
    top = np.flatnonzero(anc < 0)
    order = top[np.lexsort((top, base.depth[top], code[top], base.root[top]))]
    group_start = np.ones(len(order), dtype=bool)
    group_start[1:] = (base.root[order][1:] != base.root[order][:-1]) | (code[order][1:] != code[order][:-1])
    heads = order[np.maximum.accumulate(np.where(group_start, np.arange(len(order)), 0))]
    parent = anc
    parent[order] = np.where(heads == order, -1, heads)
    tree, _ = forest(parent, ids, index)
    return tree
