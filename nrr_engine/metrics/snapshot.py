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
from ..model import Change

KEY = "External_Id__c"
FIELDS = ("View__c", "Family_Root__c", "Month__c", "Starting_ARR__c", "Ending_ARR__c", "Expansion_ARR__c",
          "Contraction_ARR__c", "Churn_ARR__c", "NRR__c", "GRR__c", "Account_Count__c")
UPSERT = "(upsert)"


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


@dataclass
class SnapshotChanges:
    """The snapshots to upsert, as the ledger stores them: existing Id, old and new record as JSON."""

    object: str
    rule: str = "snapshot"
    keys: list[str] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)
    old: list[str | None] = field(default_factory=list)
    new: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Change]:
        obj = self.object
        for key, rid, old, new in zip(self.keys, self.ids, self.old, self.new):
            yield Change(obj, rid, UPSERT, old, new, self.rule, key=key)



def diff(snapshots: SnapshotSet, existing: Iterator[tuple], obj: str) -> SnapshotChanges:
    """Merge-join with existing records ((Id, key, *FIELDS) rows, in key order); keep new and changed ones."""
    out = SnapshotChanges(obj)
    old = next(existing, None)
    for key, values in snapshots.rows():
        while old is not None and (old[1] or "") < key:
            old = next(existing, None)
        match = old if old is not None and old[1] == key else None
        if match is not None and (match[2:] == values or all(same(o, v) for o, v in zip(match[2:], values))):
            continue
        out.keys.append(key)
        out.ids.append(match[0] if match else None)
        out.old.append(to_json(key, tuple(match[2:])) if match else None)
        out.new.append(to_json(key, values))
    return out
