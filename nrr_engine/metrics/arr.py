"""Monthly ARR per account as an int64 matrix (accounts x months) in exact money units.

A subscription counts toward ARR(a, m) when it is active at the close of month m (DESIGN §4).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np

from .. import money, months
from ..config import SubscriptionSource
from ..errors import DataError, Location
from ..model import Finding

_CHUNK = 200_000


def from_subscriptions(rows: Iterable[tuple], index: dict[str, int], cfg: SubscriptionSource, currency: str,
                       first: int, count: int, source: str) -> tuple[np.ndarray, list[Finding]]:
    """Rows of (Id, account, start, end, amount, currency) -> ARR matrix over months [first, first+count).

    Rows are consumed in chunks, so a million subscriptions never sit in memory as Python objects at once."""
    matrix = np.zeros((len(index), count + 1), dtype=np.int64)
    problems: dict[str, list[str]] = {}
    it = iter(rows)
    while chunk := list(islice(it, _CHUNK)):
        _add_chunk(matrix, chunk, index, cfg, currency, first, count, source, problems)
    np.cumsum(matrix, axis=1, out=matrix)
    what = {"arr_not_a_number": f"{cfg.amount} is blank or not a number", "negative_arr": f"{cfg.amount} is negative",
            "bad_date": f"{cfg.start}/{cfg.end} is not a date (YYYY-MM-DD)",
            "orphan_subscription": f"{cfg.account} matches no account", "ends_before_start": f"{cfg.end} is before {cfg.start}"}
    findings = [Finding(kind, f"{len(ids)} {cfg.object} record(s): {what[kind]}; left out of ARR", tuple(ids))
                for kind, ids in problems.items() if ids]
    return matrix[:, :count], findings


def _add_chunk(matrix, chunk, index, cfg, currency, first, count, source, problems) -> None:
    rid, account, start, end, amount, cur = (list(c) for c in zip(*chunk))
    n = len(rid)
    foreign = [i for i, c in enumerate(cur) if c and c.strip().upper() != currency]
    if foreign:
        codes = sorted({cur[i].strip().upper() for i in foreign})
        raise DataError(f"{cfg.object}.{cfg.currency}: amounts in {', '.join(codes)} but the corporate currency "
                        f"is {currency} and no exchange rates are configured (first: record {rid[foreign[0]]}); convert "
                        f"the amounts or leave only {currency} records", Location(source, record=rid[foreign[0]],
                                                                                   field=cfg.currency))
    get = index.get
    acc = np.fromiter((get(a, -1) if a else -1 for a in account), dtype=np.int64, count=n)
    units = np.zeros(n, dtype=np.int64)
    bad_amount = np.zeros(n, dtype=bool)
    fast = money.parse_units_fast
    for i, text in enumerate(amount):
        try:
            u = fast(text)
        except money.MoneyError:
            u = None
        if u is None:
            bad_amount[i] = True
        else:
            units[i] = u
    start_m, start_ok, start_d = _months_of(start, shift_days=0)
    # Active at the close of month m while m <= last: for an inclusive end date that is the month before the
    # month of the next day; for an exclusive one (first day without service) the month before its month.
    end_m, end_ok, end_d = _months_of(end, shift_days=0 if cfg.end_exclusive else 1)
    has_end = ~np.isnat(end_d)
    last = np.where(has_end, end_m - 1, 10**6)
    no_account = acc < 0
    negative = ~bad_amount & (units < 0)
    bad_date = ~(start_ok & end_ok) | np.isnat(start_d)
    excluded = no_account | bad_amount | negative | bad_date
    inverted = ~excluded & has_end & (end_d < start_d)
    for kind, mask in (("arr_not_a_number", bad_amount & ~no_account), ("negative_arr", negative & ~no_account),
                       ("bad_date", bad_date & ~no_account & ~bad_amount), ("orphan_subscription", no_account),
                       ("ends_before_start", inverted)):
        if mask.any():
            problems.setdefault(kind, []).extend(rid[i] for i in np.flatnonzero(mask))
    keep = ~excluded & (last >= start_m)
    factor = 12 if cfg.amount_period == "monthly" else 1
    a, v = acc[keep], units[keep] * factor
    np.add.at(matrix, (a, np.clip(start_m[keep] - first, 0, count)), v)
    np.add.at(matrix, (a, np.clip(last[keep] + 1 - first, 0, count)), -v)


def _months_of(texts: list, shift_days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(month index of each ISO date + shift_days, ok, the dates); blanks are NaT and ok, bad dates not ok."""
    clean = [t.strip()[:10] if t and t.strip() else "NaT" for t in texts]
    try:
        days = np.array(clean, dtype="datetime64[D]")
        ok = np.ones(len(clean), dtype=bool)
    except ValueError:  # at least one bad date: parse one by one to find which
        days = np.empty(len(clean), dtype="datetime64[D]")
        ok = np.ones(len(clean), dtype=bool)
        for i, t in enumerate(clean):
            try:
                days[i] = np.datetime64(dt.date.fromisoformat(t)) if t != "NaT" else np.datetime64("NaT")
            except ValueError:
                days[i] = np.datetime64("NaT")
                ok[i] = False
    shifted = days + np.timedelta64(shift_days, "D")
    m = shifted.astype("datetime64[M]").astype(np.int64) + 1970 * 12
    return np.where(np.isnat(days), 0, m), ok, days


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


def iter_segments(matrix: np.ndarray, rows: np.ndarray, first: int, ids: list[str],
                  chunk: int = 100_000) -> Iterator[tuple[str, str, str, int]]:
    """(account Id, start, end, units) runs of the given rows, computed a chunk of rows at a time."""
    for i in range(0, len(rows), chunk):
        for r, start, end, units in to_segments(matrix, rows[i:i + chunk], first):
            yield ids[r], start, end, units


def from_segments(segments: Iterable[tuple[str, str, str, int]], index: dict[str, int], first: int,
                  count: int, size: int | None = None) -> np.ndarray:
    """Stored (account_id, start, end, units) runs -> matrix over [first, first+count); unknown Ids skipped.

    Consumed a chunk at a time into numpy, so millions of stored runs never become Python int lists."""
    matrix = np.zeros((len(index) if size is None else size, count + 1), dtype=np.int64)
    get = index.get
    month_index: dict[str, int] = {}

    def m(text: str) -> int:
        v = month_index.get(text)
        if v is None:
            v = month_index[text] = months.parse(text)
        return v

    it = iter(segments)
    while chunk := list(islice(it, _CHUNK)):
        rid, start, end, units = zip(*chunk)
        acc = np.fromiter((get(r, -1) for r in rid), dtype=np.int64, count=len(rid))
        lo = np.fromiter((m(s) for s in start), dtype=np.int64, count=len(rid)) - first
        hi = np.fromiter((m(e) for e in end), dtype=np.int64, count=len(rid)) + 1 - first
        v = np.fromiter(units, dtype=np.int64, count=len(rid))
        known = acc >= 0
        np.add.at(matrix, (acc[known], np.clip(lo[known], 0, count)), v[known])
        np.add.at(matrix, (acc[known], np.clip(hi[known], 0, count)), -v[known])
    np.cumsum(matrix, axis=1, out=matrix)
    return matrix[:, :count]
