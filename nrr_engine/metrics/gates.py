"""Reconciliation gates before any write (DESIGN §7): one root per family, rollups equal the sum of their
members, movements add up. Pure: raises GateFailed saying which gate and why."""
from __future__ import annotations

import numpy as np

from .. import money
from ..errors import GateFailed
from .nrr import Movement


def check(views: dict, current: np.ndarray, nrr: dict, ids: list[str]) -> None:
    """`views`: name -> object with a `.tree`; `current`: this month's ARR per account; `nrr`: view -> window -> figures."""
    for name, vr in views.items():
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
            raise GateFailed(f"view {name}: rollup of family {ids[bad[0]]} is {money.fmt(sub[bad[0]])} "
                             f"but its members sum to {money.fmt(fam[bad[0]])}")
        for w, fig in nrr.get(name, {}).items():
            for level in ("family", "naive"):
                m: Movement = fig[level]
                if not m.balanced():
                    raise GateFailed(f"view {name}, window {w}, {level}: movements do not add up "
                                     f"(start {money.fmt(m.start)} + expansion - contraction - churn != end "
                                     f"{money.fmt(m.end)})")
