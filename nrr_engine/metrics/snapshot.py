"""Monthly KPI snapshots: one record per (view, family root, month), column by column.

Values are kept as int arrays and formatted only when a record is compared or written, so half a
million families do not become half a million dicts.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .. import money, months
from ..model import UPSERT, SnapshotChanges
from .nrr import family_table

KEY = "External_Id__c"
FIELDS = ("View__c", "Family_Root__c", "Month__c", "Starting_ARR__c", "Ending_ARR__c", "Expansion_ARR__c",
          "Contraction_ARR__c", "Churn_ARR__c", "NRR__c", "GRR__c", "Account_Count__c")
__all__ = ["KEY", "FIELDS", "UPSERT", "SnapshotSet", "SnapshotChanges", "ExistingSnapshots", "diff", "month_snapshots"]


@dataclass
class SnapshotSet:
    """Snapshots of one month for every view: parallel arrays, one row per family with ARR."""

    month: int
    views: list[str] = field(default_factory=list)      # view of each row
    roots: list[str] = field(default_factory=list)      # root account Id of each row
    values: list[np.ndarray] = field(default_factory=list)  # per view: (rows, 6) int64: f0, f1, exp, con, churn, n

    def add(self, view: str, roots: list[str], f0: np.ndarray, f1: np.ndarray, members: np.ndarray) -> None:
        diff = f1 - f0
        active = f0 > 0
        churn = np.where(active & (f1 == 0), f0, 0)
        contraction = np.where(active & (f1 > 0) & (diff < 0), -diff, 0)
        expansion = np.where(active & (diff > 0), diff, 0)
        self.views.extend([view] * len(roots))
        self.roots.extend(roots)
        self.values.append(np.column_stack([f0, f1, expansion, contraction, churn, members]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.roots)

    def key(self, i: int) -> str:
        return f"{self.views[i]}:{self.roots[i]}:{months.fmt(self.month)}"

    def rows(self, chunk: int = 50_000) -> Iterator[tuple[str, tuple]]:
        """(external id, values in FIELDS order) for every snapshot, in external-id order.

        Formatting is vectorised a chunk at a time, so strings for half a million rows never coexist."""
        table = np.concatenate(self.values) if self.values else np.zeros((0, 6), dtype=np.int64)
        label = months.fmt(self.month)
        keys = [f"{v}:{r}:{label}" for v, r in zip(self.views, self.roots)]
        order = np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
        month_text = months.first_day(self.month).isoformat()
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            f0, f1, exp, con, churn, n = table[part].T
            cols = [money.fmt_many(c) for c in (f0, f1, exp, con, churn)]
            nrr, grr = money.ratio_many(f1, f0), money.ratio_many(f0 - con - churn, f0)
            for k, (i, count) in enumerate(zip(part.tolist(), n.tolist())):
                yield keys[i], (self.views[i], self.roots[i], month_text, cols[0][k], cols[1][k], cols[2][k],
                                cols[3][k], cols[4][k], nrr[k], grr[k], str(count))


def to_json(key: str, values: tuple) -> str:
    """One snapshot record as a JSON object (fields in a fixed order; values escaped only when needed)."""
    parts = [f'"{KEY}": {_js(key)}']
    parts.extend(f'"{f}": {_js(v)}' for f, v in zip(FIELDS, values))
    return "{" + ", ".join(parts) + "}"


def _js(value: str | None) -> str:
    if value is None:
        return "null"
    if value.isascii() and value.replace(".", "").replace(":", "").replace("-", "").replace("_", "").isalnum():
        return f'"{value}"'
    return json.dumps(value)


same = money.same
SEP = "\x1f"  # joins a stored record's values into one string (a third of the memory of a tuple of strings)


@dataclass(frozen=True)
class ExistingSnapshots:
    """The org's snapshot records of one month, in external-id order: Id, key, values joined by SEP."""

    month: int | None = None
    keys: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    values: tuple[str, ...] = ()

    @staticmethod
    def from_rows(month: int, rows) -> "ExistingSnapshots":
        """(Id, key, *FIELDS) rows, ordered by key."""
        keys, ids, values = [], [], []
        for row in rows:
            ids.append(row[0])
            keys.append(row[1] or "")
            values.append(SEP.join("" if v is None else str(v) for v in row[2:]))
        return ExistingSnapshots(month, tuple(keys), tuple(ids), tuple(values))

    def record(self, i: int) -> tuple[str | None, ...]:
        return tuple(v or None for v in self.values[i].split(SEP))


def _same_values(stored: str, values: tuple) -> bool:
    if stored == SEP.join("" if v is None else v for v in values):
        return True
    return all(same(o or None, v) for o, v in zip(stored.split(SEP), values))


def diff(snapshots: SnapshotSet, existing: ExistingSnapshots, obj: str) -> SnapshotChanges:
    """Merge-join with the existing records of the month: new and changed snapshots are upserted; a record of
    a view this set covers whose family no longer exists (absorbed into another) is deleted, so the month's
    records sum to the month's total."""
    out = SnapshotChanges(obj)
    covered = {f"{v}:" for v in set(snapshots.views)}
    keys, n, k = existing.keys, len(existing.keys), 0

    def drop_until(key: str | None) -> None:
        nonlocal k
        while k < n and (key is None or keys[k] < key):
            if keys[k][:keys[k].find(":") + 1] in covered:
                out.keys.append(keys[k])
                out.ids.append(existing.ids[k])
                out.old.append(to_json(keys[k], existing.record(k)))
                out.new.append(None)
            k += 1

    for key, values in snapshots.rows():
        drop_until(key)
        match = k if k < n and keys[k] == key else None
        if match is not None:
            k += 1
            if _same_values(existing.values[match], values):
                continue
        out.keys.append(key)
        out.ids.append(existing.ids[match] if match is not None else None)
        out.old.append(to_json(key, existing.record(match)) if match is not None else None)
        out.new.append(to_json(key, values))
    drop_until(None)
    return out


def month_snapshots(views: dict, accounts_ids: list[str], matrix: np.ndarray, first: int, period: int,
                    labels_at) -> SnapshotSet:
    """KPI snapshots of `period` (its monthly window) for every view: one row per family that exists.

    `labels_at(view, month)` gives each account's family in a month."""
    snaps = SnapshotSet(period)
    m0, m1 = period - 1, period
    if m0 < first:
        return snaps
    a0, a1 = matrix[:, m0 - first], matrix[:, m1 - first]
    for vname in views:
        fam = labels_at(vname, m1)
        table = family_table(a0, a1, np.zeros(len(a0), dtype=bool), fam, None)
        members = np.bincount(table.inv, minlength=len(table.labels))
        rows = np.flatnonzero(((table.f0 > 0) | (table.f1 > 0)) & (table.labels >= 0))
        snaps.add(vname, [accounts_ids[k] for k in table.labels[rows].tolist()], table.f0[rows], table.f1[rows],
                  members[rows])
    return snaps
