"""Rollups of every hierarchy view: ultimate parent, depth, child count and subtree ARR per account, as the
changes to write (only values that differ, Decimal-exact). Pure: tree and accounts in, change batches out."""
from __future__ import annotations

import numpy as np

from .. import money
from ..hierarchy.tree import Tree
from ..model import Accounts, FieldChanges

_SMALL = [str(i) for i in range(10_000)]  # depth and child counts: shared strings, not a million new ones


def _count_text(values: np.ndarray) -> list[str]:
    return [_SMALL[v] if v < 10_000 else str(v) for v in values.tolist()]


def rollup_changes(view, tree: Tree, current: np.ndarray, accounts: Accounts) -> list[FieldChanges]:
    """One batch per rollup field of `view`: the accounts whose stored value differs from the computed one."""
    f = view.fields
    ids = accounts.ids
    computed = {
        "ultimate_parent": lambda: [ids[r] for r in tree.root.tolist()],
        "depth": lambda: _count_text(tree.depth),
        "arr": lambda: money.fmt_many(tree.subtree_sum(current)),
        "child_count": lambda: _count_text(tree.child_count()),
    }
    out = []
    id_array = every = None
    for kind, make in computed.items():
        fname = f.get(kind)
        if not fname:
            continue
        new = np.array(make(), dtype=object)
        stored = accounts.column(fname)
        # a field no account has a value in yet (a first run) is one None seen len(ids) times, not 8 MB of them
        old = _nones(len(ids)) if stored.count(None) == len(stored) else np.array(stored, dtype=object)
        differ = np.flatnonzero(old != new)  # object comparison in C; formatting-only differences checked below
        rows = np.array([i for i in differ.tolist() if old[i] is None or not _same(kind, old[i], new[i])],
                        dtype=np.int64) if len(differ) else np.zeros(0, dtype=np.int64)
        if id_array is None:
            id_array = np.array(ids, dtype=object)
        whole = len(rows) == len(ids)   # every value changes (a first run): the arrays themselves, not copies
        if whole:
            every = rows if every is None else every   # the same rows for each field: one array
        out.append(FieldChanges("Account", fname, f"rollup:{view.name}", ids=id_array if whole else id_array[rows],
                                old=old if whole else old[rows], new=new if whole else new[rows],
                                rows=every if whole else rows))
    return out


def _nones(n: int) -> np.ndarray:
    """n Nones as a read-only object array that holds one (a view with stride 0)."""
    return np.broadcast_to(np.array(None, dtype=object), (n,))


def _same(kind: str, old: str, new: str) -> bool:
    """Equal up to formatting (Decimal-exact for numbers; an Id only up to surrounding spaces)."""
    return old.strip() == new if kind == "ultimate_parent" else money.same(old, new)
