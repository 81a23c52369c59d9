"""Family membership over time: the families each month's runs saw, as arrays, and what a run adds to them.

Pure: the recorded segments come in as data (read by the fetch stage); the changes go out as data (written
by the state sink). A run records the families it sees for its own month, replacing what an earlier run of the
same month recorded, so figures of past months use what was seen then and a run never lags behind its own repair.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from .. import months
from ..model import ListLike
from .tree import Tree

OPEN = 2**31 - 1         # the end month of a segment still open (columns are int32: 16 bytes a segment)
_UNKNOWN = -10_000_000  # labels of recorded roots that are not accounts of this run (counting down)


class FamilyChanges(ListLike):
    """(account Id, root Id) pairs a run records, held as two lists of the run's own Id strings: a first run's
    million pairs as tuples would cost ~60 MB more."""

    __slots__ = ("accounts", "roots")

    def __init__(self, accounts: list[str], roots: list[str]):
        self.accounts, self.roots = accounts, roots

    def __len__(self) -> int:
        return len(self.accounts)

    def __iter__(self):
        return zip(self.accounts, self.roots)

    def __getitem__(self, k: int) -> tuple[str, str]:
        return self.accounts[k], self.roots[k]

    def __repr__(self) -> str:
        return f"FamilyChanges({list(islice(self, 5))}{'...' if len(self) > 5 else ''})"


@dataclass(frozen=True)
class Membership:
    """Recorded segments of one view: account `account[k]` was in the family of `root[k]` from month
    `start[k]` to `end[k]` (inclusive). Accounts no longer in the org have account -1; roots that are not
    accounts of this run have negative labels, named in `unknown`."""

    view: str
    account: np.ndarray
    start: np.ndarray
    end: np.ndarray
    root: np.ndarray
    unknown: dict[int, str] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def from_segments(view: str, segments: Iterable[tuple[str, str, str | None, str]], index: dict[str, int],
                      size: int, chunk: int = 50_000) -> "Membership":
        """`size` (account Id, start YYYY-MM, end YYYY-MM or None, root Id) rows -> arrays, filled a chunk at a
        time (a million segments never become a million Python objects at once)."""
        month_of: dict[str | None, int] = {None: OPEN}
        names: dict[str, int] = {}
        get = index.get

        def month(text: str | None) -> int:
            m = month_of.get(text)
            if m is None:
                m = month_of[text] = months.parse(text)
            return m

        def root(r: str) -> int:
            j = get(r)
            if j is None:
                j = names.get(r)
                if j is None:
                    j = names[r] = _UNKNOWN - len(names)
            return j

        cols = [np.empty(size, dtype=np.int32) for _ in range(4)]
        it, at = iter(segments), 0
        while rows := list(islice(it, chunk)):
            n = len(rows)
            if at + n > size:
                raise ValueError(f"membership of view {view} holds more segments than the {size} counted")
            for col, values in zip(cols, ((get(r[0], -1) for r in rows), (month(r[1]) for r in rows),
                                          (month(r[2]) for r in rows), (root(r[3]) for r in rows))):
                col[at:at + n] = np.fromiter(values, dtype=np.int32, count=n)
            at += n
        return Membership(view, *(c[:at] for c in cols), {v: k for k, v in names.items()})

    @staticmethod
    def from_table(view: str, table, ids) -> "Membership":
        """A stored membership table (history_files.py) over the accounts `ids` (an Arrow string array or a
        list), in columns: Ids looked up by hash in C; roots that are not accounts of this run get unknown labels
        in the order they first appear (as `from_segments` gives them)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from .. import history_files
        if table is None or not table.num_rows:
            return Membership(view, *(np.zeros(0, dtype=np.int32) for _ in range(4)))
        keys = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string())
        account = history_files.positions(table["account_id"], keys)
        roots = history_files.strings(table["root_id"])
        root = history_files.positions(roots, keys)
        names: dict[int, str] = {}
        away = root < 0
        if away.any():
            enc = pc.dictionary_encode(roots.filter(pa.array(away)))
            root[away] = _UNKNOWN - enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            names = {_UNKNOWN - k: name for k, name in enumerate(enc.dictionary.to_pylist())}
        return Membership(view, account.astype(np.int32), history_files.month_ints(table["start_month"]),
                          history_files.month_ints(table["end_month"]), root.astype(np.int32), names)

    def __len__(self) -> int:
        return len(self.account)

    def latest_month(self) -> int | None:
        """The latest month any run recorded, or None when nothing is recorded."""
        return int(self.start.max()) if len(self) else None

    def _roots_in(self, tree: Tree) -> np.ndarray:
        """Root labels translated to `tree`'s labels (a recorded virtual root is the tree's virtual root of
        that name, when the tree still has it)."""
        if not self.unknown or not tree.virtual:
            return self.root
        by_name = {name: label for label, name in tree.virtual.items()}
        out = self.root.copy()
        for label, name in self.unknown.items():
            if name in by_name:
                out[out == label] = by_name[name]
        return out

    def labels_at(self, month: int, tree: Tree, current_month: int, own_month: bool = True) -> np.ndarray:
        """Family label of every account in `month`: what the runs of that month saw (or, for a month before
        an account was first recorded, what was first recorded of it); `tree` for the current month and later,
        and for accounts never recorded.

        A run (`own_month`) supersedes what earlier runs of its month recorded: its tree is what it records. A
        report (not own_month) reads the org without the rules, so the last run's record of the month stands."""
        labels = tree.families().copy()
        if month >= current_month or not len(self):
            return labels
        roots = self._roots_in(tree)
        through = current_month if own_month else current_month + 1
        valid = (self.account >= 0) & (self.start < through)
        cover = valid & (self.start <= month) & (self.end >= month)
        labels[self.account[cover]] = roots[cover]
        first = self._first_segments(through)
        later = first[self.start[first] > month]
        labels[self.account[later]] = roots[later]
        return labels

    def _first_segments(self, through: int) -> np.ndarray:
        """Per account, its earliest segment that starts before month `through` (positions into the arrays)."""
        key = ("first", through)
        if key not in self._cache:
            pos = np.flatnonzero((self.account >= 0) & (self.start < through))
            order = pos[np.lexsort((self.start[pos], self.account[pos]))]
            _, at = np.unique(self.account[order], return_index=True)
            self._cache[key] = order[at]
        return self._cache[key]

    def changed(self, tree: Tree, ids: list[str]) -> FamilyChanges:
        """(account Id, root Id) of the accounts whose family in `tree` differs from their open segment (or
        that have none): what recording `tree` for this month changes."""
        families = tree.families()
        recorded = np.full(len(families), np.iinfo(np.int64).min, dtype=np.int64)
        if len(self):
            roots = self._roots_in(tree)
            live = (self.account >= 0) & (self.end == OPEN)
            recorded[self.account[live]] = roots[live]
        rows = np.flatnonzero(recorded != families)
        labels = families[rows].tolist()
        rows = rows.tolist()
        return FamilyChanges([ids[a] for a in rows], [tree.family_id(ids, f) for f in labels])
