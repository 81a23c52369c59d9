"""Reconciliation gates before any write (DESIGN §7): one root per family, rollups equal the sum of their
members, movements add up. Pure: raises GateFailed saying which gate and why. Also the input guard (`shrink`):
an input that lost a large share of the accounts or ARR since the last run, and (`unusable`) one that no run
should take, first runs included: no accounts at all, or most of its ARR on records whose account is missing."""
from __future__ import annotations

from decimal import Decimal

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


def shrink(before: dict | None, accounts: int, arr: int, max_share: float) -> str | None:
    """What the input lost since the last run, when it lost more than `max_share` of its accounts (and more than
    one account, or all of them) or of its ARR (`before`: {"run_id", "as_of", "accounts", "arr" (units or None)};
    `arr` in units); else None."""
    if before is None:
        return None
    limit = Decimal(str(max_share))

    def lost(old: int, new: int) -> Decimal:
        return Decimal(old - new) / Decimal(old) if old > 0 else Decimal(0)

    def change(old: int, new: int) -> str:
        if old == new:
            return "no change"
        if not old:
            return "from none"
        return f"{(Decimal(new - old) / Decimal(old) * 100).quantize(Decimal('0.1')):+} %"

    old_n, old_arr = before["accounts"], before.get("arr")
    # one account going away is an ordinary night even in a tiny org; an empty input never is
    fewer = accounts == 0 < old_n or (old_n - accounts > 1 and lost(old_n, accounts) > limit)
    if not fewer and (old_arr is None or lost(old_arr, arr) <= limit):
        return None
    parts = [f"accounts {old_n} -> {accounts} ({change(old_n, accounts)})"]
    if old_arr is not None:
        parts.append(f"ARR {money.fmt(old_arr)} -> {money.fmt(arr)} ({change(old_arr, arr)})")
    return (f"the input shrank since the last run {before['run_id']} (as of {before['as_of']}): "
            + ", ".join(parts))


def unusable(accounts: int, arr: int, left_out: int, month: str, max_share: float,
             before: dict | None = None) -> str | None:
    """Why an input is unusable whatever the last run saw (a first run too), or None: it has no accounts, or the
    records left out of ARR (subscriptions whose account is not in the input) hold more than `max_share` of the
    ARR active at the close of `month` (`arr` kept + `left_out`, units): more than the share the last run that
    wrote left out (`before["arr_left_out"]`, `before["arr"]`), so a share once accepted does not stop every run."""
    if accounts == 0:
        return ("the input has no accounts (Account has no records: a header-only Account.csv, an empty export or "
                "query)" + (f"; {money.fmt(left_out)} of ARR at {month} is on records whose account is not in it"
                            if left_out > 0 else ""))
    total = arr + left_out
    if left_out <= 0 or total <= 0:
        return None
    share = Decimal(left_out) / Decimal(total)
    base = Decimal(0)
    if before and before.get("arr_left_out"):
        b_total = (before.get("arr") or 0) + before["arr_left_out"]
        base = Decimal(before["arr_left_out"]) / Decimal(b_total) if b_total > 0 else Decimal(0)
    if share - base <= Decimal(str(max_share)):
        return None
    pct = (share * 100).quantize(Decimal("0.1"))
    # only a record whose account is missing has an amount and dates the engine could read: the rest are unknown
    return (f"subscriptions whose account is not in the input hold {money.fmt(left_out)} of the "
            f"{money.fmt(total)} ARR active at {month} ({pct} %)"
            + (f" ({(base * 100).quantize(Decimal('0.1'))} % at the last run {before['run_id']})" if base else ""))
