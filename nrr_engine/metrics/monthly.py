"""Monthly ARR per account held as runs of equal value, not as a dense accounts x months matrix.

ARR changes a few times in an account's life: at a million accounts and 26 months the dense int64 matrix is
216 MB, its runs (1.2 M of them) under 20 MB. A month's column, the rows a run changed and the comparisons the
stages need are made from the runs, vectorised; nothing builds the whole matrix.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

_ROWS = 100_000   # accounts made dense at once (21 MB at 26 months)


class MonthlyArr:
    """ARR units of `n` accounts over `count` months as runs: run k is `units[k]` (never 0) for account `row[k]`
    in months `start[k]`..`end[k]` (column offsets, inclusive). Canonical: ordered by (row, start), runs never
    overlap, and two adjacent runs of a row never carry the same units; so equal ARR is equal runs. Immutable:
    every change returns a new one."""

    __slots__ = ("n", "count", "row", "start", "end", "units")

    def __init__(self, n: int, count: int, row=None, start=None, end=None, units=None):
        self.n, self.count = int(n), int(count)
        self.row = np.zeros(0, np.int64) if row is None else np.asarray(row, dtype=np.int64)
        self.start = np.zeros(0, np.int32) if start is None else np.asarray(start, dtype=np.int32)
        self.end = np.zeros(0, np.int32) if end is None else np.asarray(end, dtype=np.int32)
        self.units = np.zeros(0, np.int64) if units is None else np.asarray(units, dtype=np.int64)

    # ---- making one -------------------------------------------------------------------------------

    @classmethod
    def from_events(cls, n: int, count: int, parts) -> "MonthlyArr":
        """ARR from changes, given as parts (rows, cols, deltas): `deltas[k]` added to account `rows[k]` from month
        offset `cols[k]` on (0..count; `count` is after the last month). Made a block of accounts at a time, dense
        within the block (a few MB), so neither the matrix nor a sort of every change is ever held."""
        parts = [p for p in parts if len(p[0])]
        out = []
        for lo in range(0, n, _ROWS):
            hi = min(n, lo + _ROWS)
            block = np.zeros((hi - lo, count + 1), dtype=np.int64)
            for rows, cols, deltas in parts:
                sel = np.flatnonzero((rows >= lo) & (rows < hi))
                if len(sel):
                    np.add.at(block, (rows[sel] - lo, cols[sel]), deltas[sel])
            np.cumsum(block, axis=1, out=block)
            out.append(cls._runs_of(block[:, :count], lo))
        if not out:
            return cls(n, count)
        return cls(n, count, *(np.concatenate([o[k] for o in out]) for k in range(4)))

    @classmethod
    def from_dense(cls, matrix: np.ndarray) -> "MonthlyArr":
        """The runs of a dense (accounts x months) matrix."""
        n, count = matrix.shape
        parts = [cls._runs_of(matrix[at:at + _ROWS], at) for at in range(0, n, _ROWS)]
        if not parts:
            return cls(n, count)
        return cls(n, count, *(np.concatenate([p[k] for p in parts]) for k in range(4)))

    @staticmethod
    def _runs_of(block: np.ndarray, offset: int) -> tuple[np.ndarray, ...]:
        """(row, start, end, units) of the non-zero runs of a dense block whose first row is account `offset`."""
        if block.size == 0:
            z = np.zeros(0, np.int64)
            return z, z, z, z
        change = np.ones(block.shape, dtype=bool)
        change[:, 1:] = block[:, 1:] != block[:, :-1]
        r, c = np.nonzero(change)
        same_row = np.r_[r[1:] == r[:-1], False]
        ends = np.where(same_row, np.r_[c[1:], 0] - 1, block.shape[1] - 1)
        vals = block[r, c]
        keep = vals != 0
        return r[keep] + offset, c[keep], ends[keep], vals[keep]

    # ---- reading ----------------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, self.count

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.row, self.start, self.end, self.units))

    def __len__(self) -> int:
        return self.n

    def column(self, j: int) -> np.ndarray:
        """Every account's ARR in month offset j (a new int64 array)."""
        if not 0 <= j < self.count:
            raise IndexError(f"month offset {j} outside 0..{self.count - 1}")
        out = np.zeros(self.n, dtype=np.int64)
        on = (self.start <= j) & (self.end >= j)
        out[self.row[on]] = self.units[on]
        return out

    def total(self, j: int) -> int:
        """The sum of month offset j's ARR."""
        on = (self.start <= j) & (self.end >= j)
        return int(self.units[on].sum())

    def positive_before(self, j: int) -> np.ndarray:
        """Whether each account had ARR > 0 in some month before offset j."""
        out = np.zeros(self.n, dtype=bool)
        out[self.row[(self.start < j) & (self.units > 0)]] = True
        return out

    def first_positive(self) -> np.ndarray:
        """Each account's first month offset with ARR > 0 (-1: none)."""
        out = np.full(self.n, -1, dtype=np.int64)
        pos = np.flatnonzero(self.units > 0)
        if len(pos):
            rows = self.row[pos]
            first = np.r_[True, rows[1:] != rows[:-1]]   # runs are in (row, start) order: a row's first is lowest
            out[rows[first]] = self.start[pos[first]]
        return out

    def dense(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The dense (accounts x months) matrix, or that of the given accounts (distinct, in their order)."""
        if rows is None:
            rows = np.arange(self.n)
        rows = np.asarray(rows, dtype=np.int64)
        where = np.full(self.n, -1, dtype=np.int64)
        where[rows] = np.arange(len(rows))
        k = np.flatnonzero(where[self.row] >= 0)
        at = where[self.row[k]]
        steps = np.zeros((len(rows), self.count + 1), dtype=np.int64)   # each run: + at its start, - after its end
        np.add.at(steps, (at, self.start[k]), self.units[k])
        np.add.at(steps, (at, self.end[k] + 1), -self.units[k])
        return np.cumsum(steps, axis=1)[:, :self.count]

    def runs(self, rows: np.ndarray | None = None) -> Iterator[tuple[int, int, int, int]]:
        """(row, start, end, units) of each run, of every account or of the given ones, in row order, as ints."""
        cols = self.runs_arrays(rows)
        for at in range(0, len(cols[0]), _ROWS):
            yield from zip(*(c[at:at + _ROWS].tolist() for c in cols))

    def runs_arrays(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(row, start, end, units) arrays of the runs of every account or of the given ones, in row order."""
        if rows is None:
            return self.row, self.start, self.end, self.units
        k = np.flatnonzero(self._mask(rows)[self.row])
        return self.row[k], self.start[k], self.end[k], self.units[k]

    def _mask(self, rows) -> np.ndarray:
        m = np.zeros(self.n, dtype=bool)
        m[np.asarray(rows, dtype=np.int64)] = True
        return m

    def differs(self, other: "MonthlyArr | None") -> np.ndarray:
        """The accounts (ascending) whose ARR differs from `other`'s in some month (every account with ARR
        when `other` is None)."""
        if other is None:
            return np.unique(self.row)
        if other.shape != self.shape:
            raise ValueError(f"shapes differ: {self.shape} and {other.shape}")
        mine, theirs = np.bincount(self.row, minlength=self.n), np.bincount(other.row, minlength=self.n)
        out = mine != theirs
        alike = ~out
        a, b = np.flatnonzero(alike[self.row]), np.flatnonzero(alike[other.row])
        # the same number of runs in each of these rows, both in (row, start) order: run k is run k
        bad = (self.start[a] != other.start[b]) | (self.end[a] != other.end[b]) | (self.units[a] != other.units[b])
        out[self.row[a[bad]]] = True
        return np.flatnonzero(out)

    def __eq__(self, other) -> bool:
        return isinstance(other, MonthlyArr) and self.shape == other.shape and not len(self.differs(other))

    __hash__ = None

    def __repr__(self) -> str:
        return f"MonthlyArr({self.n} accounts x {self.count} months, {len(self.row)} runs)"

    # ---- changed copies ---------------------------------------------------------------------------

    def replace_rows(self, rows: np.ndarray, dense: np.ndarray) -> "MonthlyArr":
        """These accounts' ARR replaced by the rows of a dense (len(rows) x months) matrix."""
        rows = np.asarray(rows, dtype=np.int64)
        if dense.shape != (len(rows), self.count):
            raise ValueError(f"{dense.shape} rows for {len(rows)} accounts x {self.count} months")
        keep = ~self._mask(rows)[self.row]
        parts = [(self.row[keep], self.start[keep], self.end[keep], self.units[keep])]
        for at in range(0, len(rows), _ROWS):
            r, s, e, u = self._runs_of(dense[at:at + _ROWS], 0)
            parts.append((rows[at:at + _ROWS][r], s, e, u))
        row, start, end, units = (np.concatenate([p[k] for p in parts]) for k in range(4))
        order = np.lexsort((start, row))
        return MonthlyArr(self.n, self.count, row[order], start[order], end[order], units[order])

    def with_column(self, j: int, values: np.ndarray) -> "MonthlyArr":
        """Month offset j's ARR replaced by `values` (one per account)."""
        values = np.asarray(values, dtype=np.int64)
        rows = np.flatnonzero(self.column(j) != values)
        out = self
        for at in range(0, len(rows), _ROWS):
            part = rows[at:at + _ROWS]
            block = out.dense(part)
            block[:, j] = values[part]
            out = out.replace_rows(part, block)
        return out

    def placed(self, pos: np.ndarray, n: int | None = None) -> "MonthlyArr":
        """Account i's ARR moved to account pos[i] (of n accounts, by default as many)."""
        row = np.asarray(pos, dtype=np.int64)[self.row]
        order = np.lexsort((self.start, row))
        return MonthlyArr(self.n if n is None else n, self.count, row[order], self.start[order], self.end[order],
                          self.units[order])
