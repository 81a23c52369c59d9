"""Monthly ARR per account (accounts x months, exact money units), held as runs of equal value (MonthlyArr).

A subscription counts toward ARR(a, m) when it is active at the close of month m (DESIGN §4). Values that cannot
be read (money.NUMBER_FORMAT, DATE_FORMAT) leave their record out of ARR: each becomes a finding naming the
record, the field and the raw value, and the records are kept (`Excluded`) so every figure can say what they
take out of it.
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from .. import money, months
from ..config import SubscriptionSource
from ..errors import DataError, Location
from ..model import Finding
from .monthly import MonthlyArr

_CHUNK = 200_000
OPEN = 10**6  # last month of a subscription without an end date
EXAMPLES = 5  # records named in a finding's message (all of them are in its records)
DATE_FORMAT = ("YYYY-MM-DD; a date-time as Salesforce writes it, 2026-08-31T00:00:00.000Z, counts as its date; "
               "08/31/2026 and 31.08.2026 are not read")
# what may follow the date: the time of a date-time field
_TIME = re.compile(r"(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?")

Locate = Callable[[Sequence[str]], dict[str, int]]  # record Ids -> their line in the source CSV (where known)


@dataclass(frozen=True)
class Excluded:
    """Records left out of ARR and what each would have counted, where that is known.

    Per record: the ARR it would add (-1: its amount is unreadable or negative) and the first and last month it
    would be active (first -1: a date is unreadable or the end precedes the start; last OPEN: no end)."""

    units: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    first: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    last: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.units)

    @staticmethod
    def join(parts: Sequence["Excluded"]) -> "Excluded":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Excluded()
        return Excluded(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("units", "first", "last")))

    def arr_at(self, m: int) -> int:
        """ARR (units) of the records active at the close of month m whose amount and dates are known."""
        if not len(self):
            return 0
        on = (self.first >= 0) & (self.first <= m) & (m <= self.last) & (self.units >= 0)
        return int(self.units[on].sum())

    def impact(self, m0: int, m1: int) -> dict | None:
        """What the records take out of the figures of window m0 -> m1: at each end, the ARR of those active
        then (known amounts) and how many are active with an unknown amount; those with unknown dates apart."""
        if not len(self):
            return None
        dated, known = self.first >= 0, self.units >= 0

        def at(m: int) -> dict:
            on = dated & (self.first <= m) & (m <= self.last)
            return {"month": months.fmt(m), "arr": money.fmt(int(self.units[on & known].sum())),
                    "records": int(on.sum()), "amount_unknown": int((on & ~known).sum())}

        undated = ~dated
        return {"records": len(self), "start": at(m0), "end": at(m1),
                "dates_unknown": {"records": int(undated.sum()), "arr": money.fmt(int(self.units[undated & known].sum())),
                                  "amount_unknown": int((undated & ~known).sum())}}


class _Problems:
    """Records of one kind of problem: every Id, and the first few with the field and raw value."""

    def __init__(self):
        self.ids: list[str] = []
        self.examples: list[tuple[str, str, str | None]] = []

    def add(self, rids: Sequence[str], shown: Sequence[str], fields: Sequence[str], raws: Sequence[str | None]) -> None:
        """All the Ids of a chunk's records, and (shown) the lowest few with their field and raw value: the
        examples are the lowest Ids of all, whichever order the records are read in."""
        self.examples = sorted([*self.examples, *zip(shown, fields, raws)], key=lambda e: e[0])[:EXAMPLES]
        self.ids.extend(rids)


def _findings(problems: dict[str, _Problems], what: dict[str, tuple[str, str]], obj: str, source: str,
              locate: Locate | None) -> list[Finding]:
    """One finding per kind, naming its first records by CSV line (or Id), field and raw value.

    `what`: kind -> (the problem, what was expected or "")."""
    wanted = [rid for p in problems.values() for rid, _, _ in p.examples]
    lines = locate(wanted) if locate and wanted else {}
    out = []
    for kind, p in problems.items():
        if not p.ids:
            continue
        named = "; ".join(
            (f"{source}:{lines[rid]} (Id {rid})" if rid in lines else f"record {rid}")
            + f" {fname} {'blank' if raw is None or not str(raw).strip() else repr(str(raw)[:60])}"
            for rid, fname, raw in p.examples)
        more = f"; and {len(p.ids) - len(p.examples)} more" if len(p.ids) > len(p.examples) else ""
        problem, expected = what[kind]
        out.append(Finding(kind, f"{len(p.ids)} {obj} record(s) left out of ARR, {problem}: {named}{more}"
                           + (f" (expected {expected})" if expected else ""), tuple(sorted(p.ids))))
    return out


def from_subscriptions(rows: Iterable[tuple], index: dict[str, int], cfg: SubscriptionSource, currency: str,
                       first: int, count: int, source: str, locate: Locate | None = None,
                       first_active: np.ndarray | None = None,
                       batches: Iterable | None = None) -> tuple[MonthlyArr, list[Finding], Excluded]:
    """Rows of (Id, account, start, end, amount, currency) -> ARR over months [first, first+count), the
    findings, and the records left out of ARR. `first_active` (one per account, OPEN to start with) gets each
    account's first month with ARR, however long before `first` it lies (a report's cohorts).

    Rows are consumed in chunks, so a million subscriptions never sit in memory as Python objects at once.
    `batches` (instead of rows): the same columns, batch by batch (sources/columnar.py: a CSV read in C, named
    Id, account, start, end, amount, currency); a batch in another currency raises NotFast, and the caller reads
    the rows instead (whose error names the first such record in Id order)."""
    events: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []   # (account, month offset, change) per chunk
    problems: dict[str, _Problems] = {k: _Problems() for k in
                                      ("arr_not_a_number", "negative_arr", "bad_date", "orphan_subscription",
                                       "ends_before_start")}
    excluded: list[Excluded] = []
    if batches is not None:
        chunks = (_batch_chunk(b, cfg, currency) for b in batches)
    else:
        it = iter(rows)
        chunks = (_row_chunk(chunk, index, cfg, currency, source) for chunk in iter(lambda: list(islice(it, _CHUNK)), []))
    for ch in chunks:
        excluded.append(_add_chunk(events, ch, cfg, first, count, problems, first_active))
    matrix = MonthlyArr.from_events(len(index), count, events)
    what = {"arr_not_a_number": (f"amount unknown: {cfg.amount} is blank or not a number", money.NUMBER_FORMAT),
            "negative_arr": (f"{cfg.amount} is negative", "an amount >= 0"),
            "bad_date": (f"{cfg.start} or {cfg.end} is not a date", DATE_FORMAT),
            "orphan_subscription": (f"{cfg.account} matches no account", "the Id of an account in the org"),
            "ends_before_start": (f"{cfg.end} is before {cfg.start}", "")}
    return matrix, _findings(problems, what, cfg.object, source, locate), Excluded.join(excluded)


@dataclass
class Chunk:
    """A chunk of subscriptions as arrays (acc: account row or -1; units and bad_amount; start and end as
    (month, ok, day)), with `raw(column, positions)`: the texts of a few records, for findings (columns Id,
    account, start, end, amount)."""

    acc: np.ndarray
    units: np.ndarray
    bad_amount: np.ndarray
    start: tuple[np.ndarray, np.ndarray, np.ndarray]
    end: tuple[np.ndarray, np.ndarray, np.ndarray]
    raw: Callable[[str, list[int]], list]


def _row_chunk(chunk: list[tuple], index: dict[str, int], cfg: SubscriptionSource, currency: str,
               source: str) -> Chunk:
    rid, account, start, end, amount, cur = (list(c) for c in zip(*chunk))
    n = len(rid)
    foreign = [i for i, c in enumerate(cur) if c and c.strip().upper() != currency]
    if foreign:
        raise mixed_currencies(cfg, currency, sorted({cur[i].strip().upper() for i in foreign}), rid[foreign[0]], source)
    get = index.get
    acc = np.fromiter((get(a, -1) if a else -1 for a in account), dtype=np.int64, count=n)
    units, bad_amount = _parse_amounts(amount)
    columns = {"Id": rid, "account": account, "start": start, "end": end, "amount": amount}
    # Active at the close of month m while m <= last: for an inclusive end date that is the month before the
    # month of the next day; for an exclusive one (first day without service) the month before its month.
    return Chunk(acc, units, bad_amount, _months_of(start, shift_days=0),
                 _months_of(end, shift_days=0 if cfg.end_exclusive else 1),
                 lambda col, at: [columns[col][i] for i in at])


class NotFast(Exception):
    """A columnar batch holds what only the rows path reports exactly (amounts in another currency)."""


def _batch_chunk(b, cfg: SubscriptionSource, currency: str) -> Chunk:
    """A Chunk from a columnar batch: what is plainly well-formed parsed in C, every other value by the same
    policy as rows (so a file gives the same figures and findings either way)."""
    if any(c != currency for c in b.distinct_upper("currency")):
        raise NotFast("another currency")
    plain, units = b.plain_amounts("amount")
    bad_amount = ~plain
    rest = np.flatnonzero(~plain).tolist()
    if rest:
        units[rest], bad_amount[rest] = _parse_amounts(b.texts("amount", rest))

    def dates(name: str, shift: int):
        plain, days = b.plain_dates(name)
        ok = ~(plain & np.isnat(days))       # YYYY-MM-DD that is no date (2026-02-30): unreadable
        rest = np.flatnonzero(~plain & ~b.blank(name)).tolist()
        if rest:
            _, ok[rest], days[rest] = _months_of(b.texts(name, rest), 0)
        return _months_of_days(days, ok, shift)

    return Chunk(b.positions("account"), units, bad_amount, dates("start", 0),
                 dates("end", 0 if cfg.end_exclusive else 1), b.texts)


def mixed_currencies(cfg: SubscriptionSource, currency: str, codes: list[str], record: str, source: str) -> DataError:
    return DataError(f"mixed currencies: nrr-engine does not convert currencies yet; {cfg.object}.{cfg.currency} "
                     f"holds amounts in {', '.join(codes)} but the corporate currency is {currency} (first: record "
                     f"{record}): convert the amounts to {currency} in the export, or leave only {currency} "
                     "records", Location(source, record=record, field=cfg.currency))


def _parse_amounts(amount: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(units, unreadable) of amount texts by the reading policy; a blank is unreadable."""
    n = len(amount)
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
    return units, bad_amount


def _add_chunk(events: list, ch: Chunk, cfg, first, count, problems, first_active=None) -> Excluded:
    acc, units, bad_amount = ch.acc, ch.units, ch.bad_amount
    start_m, start_ok, start_d = ch.start
    end_m, end_ok, end_d = ch.end
    has_end = ~np.isnat(end_d)
    last = np.where(has_end, end_m - 1, OPEN)
    no_account = acc < 0
    negative = ~bad_amount & (units < 0)
    start_bad = ~start_ok | np.isnat(start_d)
    bad_date = start_bad | ~end_ok
    excluded = no_account | bad_amount | negative | bad_date
    inverted = ~excluded & has_end & (end_d < start_d)

    def note(kind: str, mask: np.ndarray, column: str | Callable[[list[int]], list], raw) -> None:
        if mask.any():
            at = np.flatnonzero(mask).tolist()
            rids = ch.raw("Id", at)
            shown = sorted(range(len(at)), key=rids.__getitem__)[:EXAMPLES]   # the lowest Ids, as an Id-ordered read
            few = [at[k] for k in shown]
            fields = [column] * len(few) if isinstance(column, str) else column(few)
            problems[kind].add(rids, [rids[k] for k in shown], fields, raw(few))

    amount_field, start_field, end_field = cfg.amount, cfg.start, cfg.end
    note("arr_not_a_number", bad_amount & ~no_account, amount_field, lambda at: ch.raw("amount", at))
    note("negative_arr", negative & ~no_account, amount_field, lambda at: ch.raw("amount", at))
    note("bad_date", bad_date & ~no_account & ~bad_amount,
         lambda at: [start_field if start_bad[i] else end_field for i in at],
         lambda at: [s if start_bad[i] else e for i, s, e in zip(at, ch.raw("start", at), ch.raw("end", at))])
    note("orphan_subscription", no_account, cfg.account, lambda at: ch.raw("account", at))
    note("ends_before_start", inverted, end_field,
         lambda at: [f"{e} < {s}" for s, e in zip(ch.raw("start", at), ch.raw("end", at))])
    keep = ~excluded & (last >= start_m)
    factor = 12 if cfg.amount_period == "monthly" else 1
    a, v = acc[keep], units[keep] * factor
    # its amount from its first month in the window (or the window's start) to the month after its last one
    events.append(_events(a, start_m[keep] - first, last[keep] + 1 - first, v, count))
    if first_active is not None:  # active at the close of its start month, with an amount: ARR from then
        np.minimum.at(first_active, a[v > 0], start_m[keep][v > 0])
    out = np.flatnonzero(excluded | inverted)
    usable = ~bad_amount[out] & ~negative[out]
    dated = ~bad_date[out] & ~inverted[out]
    return Excluded(np.where(usable, units[out] * factor, -1), np.where(dated, start_m[out], -1),
                    np.where(dated, last[out], OPEN))


def _months_of(texts: list, shift_days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(month index of each date + shift_days, ok, the dates); blanks are NaT and ok, unreadable dates not ok.

    A date is YYYY-MM-DD, optionally followed by the time of a date-time (DATE_FORMAT)."""
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
    # numpy and fromisoformat also read "2026-08", "2026" and "20260831": the text must be digits in YYYY-MM-DD
    ok &= _iso_shaped(clean)
    tails = {t.strip()[10:] for t in texts if t and len(t) > 10}
    bad_tails = {x for x in tails if not _TIME.fullmatch(x)}
    if bad_tails:
        ok &= np.array([not (t and t.strip()[10:] in bad_tails) for t in texts], dtype=bool)
    return _months_of_days(days, ok, shift_days)


def _months_of_days(days: np.ndarray, ok: np.ndarray, shift_days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(month index of each day + shift_days, ok, the days, NaT where not ok)."""
    days = np.where(ok, days, np.datetime64("NaT"))
    shifted = days + np.timedelta64(shift_days, "D")
    m = shifted.astype("datetime64[M]").astype(np.int64) + 1970 * 12
    return np.where(np.isnat(days), 0, m), ok, days


_ISO = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}|NaT")


def _iso_shaped(clean: list[str]) -> np.ndarray:
    """Which texts are ten ASCII characters shaped YYYY-MM-DD (or the NaT of a blank), checked as bytes."""
    try:
        b = np.array(clean, dtype="S10")
    except UnicodeEncodeError:  # non-ASCII somewhere: the slow way
        return np.array([bool(_ISO.fullmatch(t)) for t in clean], dtype=bool)
    u = b.view(np.uint8).reshape(-1, 10)
    d = u[:, [0, 1, 2, 3, 5, 6, 8, 9]]
    return ((d >= 48) & (d <= 57)).all(axis=1) & (u[:, 4] == 45) & (u[:, 7] == 45) | (b == b"NaT")


def from_account_field(values: list, ids: list[str], field: str, source: str, month: int,
                       locate: Locate | None = None) -> tuple[np.ndarray, list[Finding], Excluded]:
    """Current ARR from an Account field -> one column of units (for `month`); unreadable and negative values
    count 0 there and become findings and exclusions (amount unknown)."""
    out = np.zeros(len(values), dtype=np.int64)
    problems = {"arr_not_a_number": _Problems(), "negative_arr": _Problems()}
    for i, text in enumerate(values):
        try:
            units = money.parse_units(text)
        except money.MoneyError:
            problems["arr_not_a_number"].add([ids[i]], [ids[i]], [field], [text])
            continue
        if units is None:
            continue
        if units < 0:
            problems["negative_arr"].add([ids[i]], [ids[i]], [field], [text])
            continue
        out[i] = units
    what = {"arr_not_a_number": (f"ARR unknown (counted as 0 this month): {field} is not a number", money.NUMBER_FORMAT),
            "negative_arr": (f"{field} is negative (counted as 0 this month)", "an amount >= 0")}
    n = sum(len(p.ids) for p in problems.values())
    excluded = Excluded(np.full(n, -1, dtype=np.int64), np.full(n, month, dtype=np.int64),
                        np.full(n, month, dtype=np.int64))
    return out, _findings(problems, what, "Account", source, locate), excluded


def _events(acc: np.ndarray, start: np.ndarray, stop: np.ndarray, units: np.ndarray, count: int) -> tuple:
    """MonthlyArr.from_events' part of amounts `units` of accounts `acc` from month offset `start` up to (not
    including) `stop`, months outside 0..count clipped to them; compact (a million subscriptions: 32 MB)."""
    rows = np.concatenate([acc, acc]).astype(np.int32)
    cols = np.clip(np.concatenate([start, stop]), 0, count).astype(np.int32)
    return rows, cols, np.concatenate([units, -units])


def segment_parts(matrix: MonthlyArr, rows: np.ndarray, first: int, ids: list[str]) -> Iterator:
    """The runs of the given rows as arr_history tables (history_files.py), a batch of runs at a time."""
    from .. import history_files
    row, start, end, units = matrix.runs_arrays(rows)
    step = history_files.BATCH
    for lo in range(0, len(row), step):
        part = slice(lo, lo + step)
        yield history_files.arr_table([ids[r] for r in row[part].tolist()], start[part].astype(np.int64) + first,
                                      end[part].astype(np.int64) + first, units[part])


def from_table(table, index: dict[str, int], first: int, count: int, size: int | None = None) -> MonthlyArr:
    """A stored arr_history table -> ARR over [first, first+count); Ids not in `index` skipped. Columns all the way
    (the Ids looked up by hash in C): a million stored runs never become Python tuples."""
    n = len(index) if size is None else size
    if table is None or not table.num_rows:
        return MonthlyArr(n, count)
    import pyarrow as pa

    from .. import history_files
    keys = pa.array(list(index), pa.string())
    acc = history_files.positions(table["account_id"], keys, np.fromiter(index.values(), np.int64, len(index)))
    lo = history_files.month_ints(table["start_month"]).astype(np.int64) - first
    hi = history_files.month_ints(table["end_month"]).astype(np.int64) + 1 - first
    v = table["arr_units"].to_numpy()
    known = acc >= 0
    return MonthlyArr.from_events(n, count, [_events(acc[known], lo[known], hi[known], v[known], count)])


def from_segments(segments: Iterable[tuple[str, str, str, int]], index: dict[str, int], first: int,
                  count: int, size: int | None = None) -> MonthlyArr:
    """Stored (account_id, start, end, units) runs -> ARR over [first, first+count); unknown Ids skipped.

    Consumed a chunk at a time into numpy, so millions of stored runs never become Python int lists."""
    get = index.get
    month_index: dict[str, int] = {}

    def m(text: str) -> int:
        v = month_index.get(text)
        if v is None:
            v = month_index[text] = months.parse(text)
        return v

    it = iter(segments)
    events = []
    while chunk := list(islice(it, _CHUNK)):
        rid, start, end, units = zip(*chunk)
        acc = np.fromiter((get(r, -1) for r in rid), dtype=np.int64, count=len(rid))
        lo = np.fromiter((m(s) for s in start), dtype=np.int64, count=len(rid)) - first
        hi = np.fromiter((m(e) for e in end), dtype=np.int64, count=len(rid)) + 1 - first
        v = np.fromiter(units, dtype=np.int64, count=len(rid))
        known = acc >= 0
        events.append(_events(acc[known], lo[known], hi[known], v[known], count))
    return MonthlyArr.from_events(len(index) if size is None else size, count, events)

