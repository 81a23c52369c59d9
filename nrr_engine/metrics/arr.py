"""Monthly ARR per account as an int64 matrix (accounts x months) in exact money units.

A subscription counts toward ARR(a, m) when it is active at the close of month m (DESIGN §4).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import numpy as np

from .. import money, months
from ..config import SubscriptionSource
from ..errors import DataError, Location
from ..model import Finding

_ONE_DAY = dt.timedelta(days=1)


def _parse_date(text: str) -> dt.date:
    return dt.date.fromisoformat(text.strip()[:10])


def from_subscriptions(rows: Iterable[tuple], index: dict[str, int], cfg: SubscriptionSource, currency: str,
                       first: int, count: int, source: str) -> tuple[np.ndarray, list[Finding]]:
    """Rows of (Id, account, start, end, amount, currency) -> ARR matrix over months [first, first+count)."""
    n = len(index)
    acc, s_idx, e_idx, amt = [], [], [], []
    bad_amount, negative, bad_date, no_account, inverted = [], [], [], [], []
    currencies: dict[str, str] = {}
    factor = 12 if cfg.amount_period == "monthly" else 1
    get = index.get
    for rid, account, start, end, amount, cur in rows:
        a = get(account) if account else None
        if a is None:
            no_account.append(rid)
            continue
        try:
            units = money.parse_units(amount)
        except money.MoneyError:
            bad_amount.append(rid)
            continue
        if units is None:
            bad_amount.append(rid)
            continue
        if units < 0:
            negative.append(rid)
            continue
        if cur and cur.strip().upper() != currency:
            currencies.setdefault(cur.strip().upper(), rid)
            continue
        try:
            sd = _parse_date(start)
            if end:
                ed = _parse_date(end)
                last = months.of(ed) - 1 if cfg.end_exclusive else months.of(ed + _ONE_DAY) - 1
            else:
                last = 10**6
        except (ValueError, AttributeError):
            bad_date.append(rid)
            continue
        first_active = months.of(sd)
        if last < first_active:
            if end and (_parse_date(end) < sd):
                inverted.append(rid)
            continue
        acc.append(a)
        s_idx.append(first_active)
        e_idx.append(last)
        amt.append(units * factor)
    if currencies:
        code, rid = next(iter(currencies.items()))
        raise DataError(f"{cfg.object}.{cfg.currency}: amounts in {', '.join(sorted(currencies))} but the corporate currency "
                        f"is {currency} and no exchange rates are configured (first: record {rid}); convert the amounts "
                        f"or leave only {currency} records", Location(source, record=rid, field=cfg.currency))
    findings = []
    for kind, ids, what in (("arr_not_a_number", bad_amount, f"{cfg.amount} is blank or not a number"),
                            ("negative_arr", negative, f"{cfg.amount} is negative"),
                            ("bad_date", bad_date, f"{cfg.start}/{cfg.end} is not a date (YYYY-MM-DD)"),
                            ("orphan_subscription", no_account, f"{cfg.account} matches no account"),
                            ("ends_before_start", inverted, f"{cfg.end} is before {cfg.start}")):
        if ids:
            findings.append(Finding(kind, f"{len(ids)} {cfg.object} record(s): {what}; left out of ARR", tuple(ids)))
    matrix = np.zeros((n, count + 1), dtype=np.int64)
    if acc:
        a = np.asarray(acc, dtype=np.int64)
        v = np.asarray(amt, dtype=np.int64)
        lo = np.clip(np.asarray(s_idx, dtype=np.int64) - first, 0, count)
        hi = np.clip(np.asarray(e_idx, dtype=np.int64) + 1 - first, 0, count)
        np.add.at(matrix, (a, lo), v)
        np.add.at(matrix, (a, hi), -v)
        np.cumsum(matrix, axis=1, out=matrix)
    return matrix[:, :count], findings


def from_account_field(values: list, ids: list[str], field: str, source: str) -> tuple[np.ndarray, list[Finding]]:
    """Current ARR from an Account field -> one column of units; bad values become findings."""
    out = np.zeros(len(values), dtype=np.int64)
    bad, negative = [], []
    for i, text in enumerate(values):
        try:
            units = money.parse_units(text)
        except money.MoneyError:
            bad.append(ids[i])
            continue
        if units is None:
            continue
        if units < 0:
            negative.append(ids[i])
            continue
        out[i] = units
    findings = []
    if bad:
        findings.append(Finding("arr_not_a_number", f"{len(bad)} account(s): {field} is not a number; counted as 0",
                                tuple(bad)))
    if negative:
        findings.append(Finding("negative_arr", f"{len(negative)} account(s): {field} is negative; counted as 0",
                                tuple(negative)))
    return out, findings


def to_segments(matrix: np.ndarray, rows: np.ndarray, first: int) -> list[tuple[int, str, str, int]]:
    """Runs of equal non-zero ARR per row: (row, start 'YYYY-MM', end 'YYYY-MM', units)."""
    if len(rows) == 0 or matrix.shape[1] == 0:
        return []
    sub = matrix[rows]
    change = np.ones(sub.shape, dtype=bool)
    change[:, 1:] = sub[:, 1:] != sub[:, :-1]
    r, c = np.nonzero(change)
    # Each run ends where the next run of the same row starts, or at the last month.
    nxt_same = np.r_[r[1:] == r[:-1], False]
    ends = np.where(nxt_same, np.r_[c[1:], 0] - 1, sub.shape[1] - 1)
    vals = sub[r, c]
    keep = vals != 0
    labels = [months.fmt(first + k) for k in range(sub.shape[1])]
    rr, cc, ee, vv = rows[r[keep]].tolist(), c[keep].tolist(), ends[keep].tolist(), vals[keep].tolist()
    return [(rr[i], labels[cc[i]], labels[ee[i]], vv[i]) for i in range(len(rr))]


def from_segments(segments: Iterable[tuple[str, str, str, int]], index: dict[str, int], first: int,
                  count: int) -> np.ndarray:
    """Stored (account_id, start, end, units) runs -> matrix over [first, first+count); unknown Ids skipped."""
    acc, lo, hi, val = [], [], [], []
    get = index.get
    cache: dict[str, int] = {}
    for rid, start, end, units in segments:
        a = get(rid)
        if a is None:
            continue
        s = cache.get(start) or cache.setdefault(start, months.parse(start))
        e = cache.get(end) or cache.setdefault(end, months.parse(end))
        acc.append(a)
        lo.append(s - first)
        hi.append(e + 1 - first)
        val.append(units)
    matrix = np.zeros((len(index), count + 1), dtype=np.int64)
    if acc:
        a = np.asarray(acc, dtype=np.int64)
        v = np.asarray(val, dtype=np.int64)
        np.add.at(matrix, (a, np.clip(np.asarray(lo), 0, count)), v)
        np.add.at(matrix, (a, np.clip(np.asarray(hi), 0, count)), -v)
        np.cumsum(matrix, axis=1, out=matrix)
    return matrix[:, :count]
