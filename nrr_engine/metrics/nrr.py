"""NRR/GRR movements exactly as DESIGN §5, over int64 unit arrays (pure: arrays in, numbers out).

Families are arrays of family labels per account; the naive figures use each account as its own family.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from .. import money, months
from ..errors import DataError
from .monthly import MonthlyArr


@dataclass(frozen=True)
class Movement:
    """Retention movements of one window, in money units (exact ints)."""

    start: int = 0
    end: int = 0
    expansion: int = 0
    contraction: int = 0
    churn: int = 0
    internal_transfers: int = 0
    hierarchy_expansion: int = 0
    new_logo: int = 0
    reactivation: int = 0
    families: int = 0

    # Ratios are exact quotients (Decimal's 28 digits), rounded once where they are shown: the JSON carries 6
    # places, a table 0.1 %. (Rounding to 4 places first made 30,000 / 55,000 = 54.545 % print as 54.6 %.)
    @property
    def nrr(self):
        return _quotient(self.end, self.start)

    @property
    def grr(self):
        return _quotient(self.start - self.contraction - self.churn, self.start)

    def balanced(self) -> bool:
        """Movements add up: start + expansion - contraction - churn == end."""
        return self.start + self.expansion - self.contraction - self.churn == self.end

    def as_json(self, naive: bool = False) -> dict:
        d = {k: money.fmt(getattr(self, k)) for k in ("start", "end", "expansion", "contraction", "churn")}
        d["nrr"] = _ratio_text(self.nrr)
        d["grr"] = _ratio_text(self.grr)
        if not naive:
            d["internal_transfers"] = money.fmt(self.internal_transfers)
            d["hierarchy_expansion"] = money.fmt(self.hierarchy_expansion)
        d["new_logo"] = money.fmt(self.new_logo)
        d["reactivation"] = money.fmt(self.reactivation)
        d["families"] = self.families
        return d


def _quotient(numerator: int, denominator: int) -> Decimal | None:
    return None if denominator == 0 else Decimal(int(numerator)) / Decimal(int(denominator))


def _ratio_text(r) -> str | None:
    """The ratio rounded half-even to 6 places, trailing zeros dropped ("1.03", "0.545455")."""
    return None if r is None else format(r.quantize(Decimal("0.000001")).normalize(), "f")


@dataclass
class FamilyTable:
    """Per-family aggregates of one window; segment figures are masks over it."""

    f0: np.ndarray
    f1: np.ndarray
    had_before: np.ndarray
    decreases: np.ndarray
    increases: np.ndarray
    joined_growth: np.ndarray
    labels: np.ndarray  # family label (root account index) per row
    inv: np.ndarray     # row of each account's family


def family_table(arr0: np.ndarray, arr1: np.ndarray, prior: np.ndarray, family: np.ndarray | None,
                 joined: np.ndarray | None = None) -> FamilyTable:
    """Aggregate account ARR at m0/m1 into families. `prior`: account had ARR in some month before m0.
    `family` None: every account is its own family (the naive figures), with no sort to find that out."""
    if family is None:
        labels = inv = np.arange(len(arr0))
    else:
        labels, inv = np.unique(family, return_inverse=True)
    k = len(labels)

    def by_family(values: np.ndarray) -> np.ndarray:
        if family is None:
            return np.asarray(values, dtype=np.int64)
        out = np.zeros(k, dtype=np.int64)
        np.add.at(out, inv, np.asarray(values, dtype=np.int64))
        return out

    delta = arr1 - arr0
    up = np.maximum(delta, 0)
    had = np.zeros(k, dtype=bool)
    had[inv[prior]] = True
    joined_growth = by_family(np.where(joined, up, 0)) if joined is not None else np.zeros(k, dtype=np.int64)
    return FamilyTable(by_family(arr0), by_family(arr1), had, by_family(np.maximum(-delta, 0)), by_family(up),
                       joined_growth, labels, inv)


def movements(t: FamilyTable, mask: np.ndarray | None = None) -> Movement:
    """Start/end/expansion/contraction/churn over the cohort (F(m0) > 0), and new business outside it."""
    f0, f1 = t.f0, t.f1
    sel = np.ones(len(f0), dtype=bool) if mask is None else mask
    cohort = sel & (f0 > 0)
    diff = f1 - f0
    new = sel & (f0 == 0) & (f1 > 0)
    return Movement(
        start=int(f0[cohort].sum()),
        end=int(f1[cohort].sum()),
        expansion=int(diff[cohort & (diff > 0)].sum()),
        contraction=int(-diff[cohort & (f1 > 0) & (diff < 0)].sum()),
        churn=int(f0[cohort & (f1 == 0)].sum()),
        internal_transfers=int(np.minimum(t.decreases, t.increases)[sel].sum()),
        hierarchy_expansion=int(t.joined_growth[cohort].sum()),
        new_logo=int(f1[new & ~t.had_before].sum()),
        reactivation=int(f1[new & t.had_before].sum()),
        families=int(cohort.sum()),
    )


def window_figures(ids: list[str], column, matrix: MonthlyArr, first: int, labels_at, view: str, period: int,
                   window: int, as_of_start: bool = False, by: str | tuple[str, ...] | None = None,
                   first_arr: np.ndarray | None = None) -> dict:
    """Family and naive movements of window period-window -> period, plus segments by a root field or cohort
    (`by` one name, or several: report.segments, each field's values in turn).

    `labels_at(month)` gives every account's family in a month; `column(name)` an account field; `first_arr`
    every account's first month with ARR where it is known before the matrix (subscriptions), for cohorts."""
    m0, m1 = period - window, period
    if m0 < first or m1 - first >= matrix.shape[1]:
        raise DataError(f"no ARR history for {months.fmt(m0)}..{months.fmt(m1)} (history covers "
                        f"{months.fmt(first)}..{months.fmt(first + matrix.shape[1] - 1)}, arr.history_months); "
                        "raise arr.history_months or pick a later period")
    a0, a1 = matrix.column(m0 - first), matrix.column(m1 - first)
    prior = matrix.positive_before(m0 - first)
    fam1, fam0 = labels_at(m1), labels_at(m0)
    table = family_table(a0, a1, prior, fam0 if as_of_start else fam1, fam0 != fam1)
    del fam0, fam1
    naive = movements(family_table(a0, a1, prior, None, None))
    out = {"view": view, "period": months.fmt(period), "window": window, "family": movements(table),
           "naive": naive, "segments": []}
    for name in ((by,) if isinstance(by, str) else by or ()):
        out["segments"] += segment_figures(table, column, name, matrix, first, first_arr)
    if by == "cohort" and any(s["value"].startswith("<= ") for s in out["segments"]):
        out["cohort_note"] = (f"cohorts before {months.fmt(first)} are grouped as '<= {months.fmt(first)}': the "
                              f"ARR history kept starts at {months.fmt(first)} (arr.history_months), so a family "
                              "with ARR then may have started earlier")
    return out


def segment_figures(table: FamilyTable, column, by: str, matrix: MonthlyArr, first: int,
                    first_arr: np.ndarray | None = None) -> list[dict]:
    """Movements per value of a root account field, or per cohort (first month the family had ARR: from
    `first_arr` when given, else from the matrix, whose first month then stands for itself and all before it)."""
    if by == "cohort":
        end = first + matrix.shape[1]  # a first month after the matrix (only future ARR) is no cohort yet
        if first_arr is None:
            seen = matrix.first_positive()
            start = np.where(seen >= 0, first + seen, end)
        else:
            start = first_arr
        fam_start = np.full(len(table.labels), end, dtype=np.int64)
        np.minimum.at(fam_start, table.inv, start)
        grouped = first_arr is None
        values = np.array(["(none)" if s >= end else f"<= {months.fmt(s)}" if grouped and s == first else months.fmt(s)
                           for s in fam_start.tolist()], dtype=object)
    else:
        col = column(by)
        values = np.array([(col[lab] if lab >= 0 else None) or "(blank)" for lab in table.labels.tolist()],
                          dtype=object)
    return [{"by": by, "value": value, "family": movements(table, values == value)}
            for value in sorted(set(values.tolist()))]
