"""Monthly KPI snapshots: one record per (view, family root, month), column by column.

Values are kept as int arrays and formatted only when a record is compared or written, so half a
million families do not become half a million dicts.
"""
from __future__ import annotations

import hashlib
import heapq
import json
from pathlib import Path
from collections.abc import Iterator
from itertools import islice
from dataclasses import dataclass, field

import numpy as np

from .. import money, months
from .monthly import MonthlyArr
from ..model import UPSERT, ListLike, SnapshotChanges
from .nrr import family_table

KEY = "External_Id__c"
FIELDS = ("View__c", "Family_Root__c", "Month__c", "Starting_ARR__c", "Ending_ARR__c", "Expansion_ARR__c",
          "Contraction_ARR__c", "Churn_ARR__c", "NRR__c", "GRR__c", "Account_Count__c")
MONTH = FIELDS.index("Month__c")   # YYYY-MM, as the key ends: the shipped field is Text(7)
LEGACY_MONTH = "____-__-__"        # (a LIKE pattern) the first day of the month, which earlier releases wrote
# the code that makes records of the values (this module, money's formatting): an upgrade compares them again
_CODE = b"".join(Path(m).read_bytes() for m in (__file__, money.__file__))
__all__ = ["KEY", "FIELDS", "UPSERT", "SnapshotSet", "SnapshotChanges", "ExistingSnapshots", "diff", "month_snapshots",
           "read_existing"]


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

    def digest(self) -> str:
        """A hash of the month, every row's view, root and values, and of the code that turns them into records:
        equal digests are equal records."""
        h = hashlib.sha256(_CODE)
        h.update(f"{self.month}\x1e{len(self.roots)}\x1e".encode())
        h.update("\x1e".join(self.views).encode())
        h.update(b"\x1d")
        h.update("\x1e".join(self.roots).encode())
        for v in self.values:
            h.update(np.ascontiguousarray(v, dtype=np.int64).tobytes())
        return h.hexdigest()

    def key(self, i: int) -> str:
        return f"{self.views[i]}:{self.roots[i]}:{months.fmt(self.month)}"

    def rows(self, chunk: int = 50_000) -> Iterator[tuple[str, tuple]]:
        """(external id, values in FIELDS order) for every snapshot, in external-id order.

        Formatting is vectorised a chunk at a time, so strings for half a million rows never coexist."""
        for keys, columns in self._chunks(chunk):
            yield from zip(keys, zip(*columns))

    def _keys_and_order(self) -> tuple[list[str], list[int]]:
        """Every row's external id, and the rows in external-id order (made once: a rerun's diff asks twice)."""
        made = getattr(self, "_made", None)
        if made is None or made[0] != len(self.roots):
            label = months.fmt(self.month)
            keys = [f"{v}:{r}:{label}" for v, r in zip(self.views, self.roots)]
            made = self._made = (len(self.roots), keys, sorted(range(len(keys)), key=keys.__getitem__))
        return made[1], made[2]

    def sorted_keys(self) -> list[str]:
        keys, order = self._keys_and_order()
        return [keys[i] for i in order]

    def _chunks(self, chunk: int) -> Iterator[tuple[list[str], list]]:
        """The rows in external-id order, a chunk at a time: (keys, the FIELDS' columns, each a sequence)."""
        for start in range(0, len(self.roots), chunk):
            yield self._chunk(start, chunk)

    def _chunk(self, start: int, chunk: int) -> tuple[list[str], list]:
        """The rows start .. start + chunk of the external-id order, as `_chunks` gives them."""
        table = self._table()
        label = months.fmt(self.month)
        views, roots = self.views, self.roots
        keys, order = self._keys_and_order()
        part = order[start:start + chunk]
        f0, f1, exp, con, churn, n = table[np.array(part, dtype=np.int64)].T
        cols = [money.fmt_many(c) for c in (f0, f1, exp, con, churn)]
        nrr, grr = money.ratio_many(f1, f0), money.ratio_many(f0 - con - churn, f0)
        return [keys[i] for i in part], [[views[i] for i in part], [roots[i] for i in part], [label] * len(part),
                                         *cols, nrr, grr, [str(c) for c in n.tolist()]]

    def _table(self) -> np.ndarray:
        """Every view's values as one (rows, 6) table (made once)."""
        made = getattr(self, "_whole", None)
        if made is None or len(made) != len(self.roots):
            made = self._whole = np.concatenate(self.values) if self.values else np.zeros((0, 6), dtype=np.int64)
        return made


class JsonRows(ListLike):
    """The JSON records of a set's snapshots in external-id order, made a chunk at a time as they are read:
    a first run upserts every snapshot, and 300,000 records held as text would be ~120 MB for the whole run
    when the values they are made from are 14 MB. Reading in order formats each chunk once."""

    nones = 0   # no record is None (a delete): SnapshotChanges need not read them all to find out

    def __init__(self, snaps: SnapshotSet, chunk: int = 10_000):
        self._snaps, self._chunk, self._n = snaps, chunk, len(snaps)
        self._at: tuple[int, list[str]] | None = None
        self._size: int | None = None   # bytes of the records NUL-joined, once a full read has counted them

    def packed_size(self) -> int | None:
        """The UTF-8 bytes of every record joined by NUL (what packed.pack_column_parts writes), when a read of
        them all has counted it; a change file then reads the records once, not twice."""
        return self._size

    def __len__(self) -> int:
        return self._n

    def _load(self, i: int, keep: bool = True) -> tuple[int, list[str]]:
        """(first position, records) of the chunk holding position i, formatted unless it is the one kept from
        the last read by position; `keep` keeps it (a read in full keeps none: it would outlive the read)."""
        start = i - i % self._chunk
        if self._at is not None and self._at[0] == start:
            return self._at
        made = (start, _json_rows(*self._snaps._chunk(start, self._chunk)))
        if keep:
            self._at = made
        return made

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(self._n)
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            out: list[str] = []
            while start < stop:   # a chunk's records at a time (a change file reads 100,000 at once)
                base, rows = self._load(start)
                out.extend(rows[start - base:stop - base])
                start = base + len(rows)
            return out
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        base, rows = self._load(i)
        return rows[i - base]

    def rows(self) -> Iterator[tuple]:
        """Every record as a row (external id, then the FIELDS' values), in order, made a chunk at a time. A read
        of them all counts the records' packed size as reading them as JSON would (packed_size), without the JSON."""
        size = 0
        for start in range(0, self._n, self._chunk):
            keys, columns = self._snaps._chunk(start, self._chunk)
            if self._size is None:
                size += _json_size(keys, columns)
            yield from zip(keys, *columns)
        if self._size is None:
            self._size = size + max(self._n - 1, 0)

    def __iter__(self) -> Iterator[str]:
        size = 0
        for start in range(0, self._n, self._chunk):
            rows = self._load(start, keep=False)[1]
            if self._size is None:   # JSON as written here is ASCII unless a view or root is not
                size += sum(map(len, rows)) if all(map(str.isascii, rows)) else \
                    sum(len(r.encode("utf-8", "surrogatepass")) for r in rows)
            yield from rows
        if self._size is None:
            self._size = size + max(self._n - 1, 0)

def _json_rows(keys: list[str], columns: list) -> list[str]:
    """to_json of every row of a chunk (`_chunks`): one format string a row when no value needs escaping, which
    is checked a column at a time (the keys hold every view and root)."""
    views, roots, month, a, b, c, d, e, nrr, grr, count = columns
    label = month[0] if month else ""
    if not _plain(keys, columns):
        return [to_json(k, v) for k, v in zip(keys, zip(*columns))]
    quoted = ["null" if x is None else f'"{x}"' for x in (*nrr, *grr)]
    # the FIELDS in order (a test holds this to to_json); an f-string is twice as fast as % or str.format
    return [f'{{"External_Id__c": "{k}", "View__c": "{v}", "Family_Root__c": "{r}", "Month__c": "{label}", '
            f'"Starting_ARR__c": "{f0}", "Ending_ARR__c": "{f1}", "Expansion_ARR__c": "{ex}", '
            f'"Contraction_ARR__c": "{co}", "Churn_ARR__c": "{ch}", "NRR__c": {nr}, "GRR__c": {gr}, '
            f'"Account_Count__c": "{ac}"}}'
            for k, v, r, f0, f1, ex, co, ch, nr, gr, ac in zip(keys, views, roots, a, b, c, d, e, quoted[:len(keys)],
                                                                quoted[len(keys):], count)]


def _plain(keys: list[str], columns: list) -> bool:
    """Whether no value of a chunk (`_chunks`) needs escaping in JSON: each record is then one format string."""
    views, roots, month, a, b, c, d, e, nrr, grr, count = columns
    try:
        return all(_clean("".join(col)) for col in (keys, month[:1], a, b, c, d, e, count)) and \
            _clean("".join([x for x in (*nrr, *grr) if x is not None]))
    except TypeError:   # a value that is not text (None where text is expected): to_json says how it is written
        return False


def _json_size(keys: list[str], columns: list) -> int:
    """The UTF-8 bytes of the chunk's records (_json_rows) summed; counted from the values' lengths when none needs
    escaping (the records are then ASCII: the format's own characters plus the values'), else from the records."""
    if not _plain(keys, columns):
        return sum(len(r.encode("utf-8", "surrogatepass")) for r in _json_rows(keys, columns))
    nrr, grr = columns[8], columns[9]
    plain_text = [keys, *columns[:8], columns[10]]
    return (len(keys) * _FIXED + sum(sum(map(len, col)) for col in plain_text)
            + sum(2 if x is None else len(x) for x in nrr) + sum(2 if x is None else len(x) for x in grr))


def to_json(key: str, values: tuple) -> str:
    """One snapshot record as a JSON object (fields in a fixed order; values escaped only when needed)."""
    texts = (key, *values)
    if _clean("".join([v for v in texts if v is not None])):   # nothing to escape: quoted as they are
        return "{" + ", ".join([n + "null" if v is None else f'{n}"{v}"' for n, v in zip(_NAMES, texts)]) + "}"
    parts = [f'"{KEY}": {_js(key)}']
    parts.extend(f'"{f}": {_js(v)}' for f, v in zip(FIELDS, values))
    return "{" + ", ".join(parts) + "}"


_NAMES = tuple(f'"{f}": ' for f in (KEY, *FIELDS))


def _clean(text: str) -> bool:
    """No character of `text` is one json.dumps escapes (quote, backslash, control, non-ASCII): it only quotes it.
    Checked on many values joined at once: the joined text is clean exactly when every value is."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


_FIXED = len(_json_rows([""], [[""]] * len(FIELDS))[0])   # (NRR and GRR quoted: "" where null is 2 characters more)


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
    """The org's snapshot records of one month, in external-id order: Id, key and values (joined by SEP).

    Held as three UTF-8 buffers with offsets (`Packed`), not as Python strings: a million-account org has
    ~300,000 snapshots a month, which as strings cost ~110 MB for the whole run."""

    month: int | None = None
    _ids: tuple[bytes, np.ndarray] = (b"", np.zeros(1, dtype=np.int64))
    _keys: tuple[bytes, np.ndarray] = (b"", np.zeros(1, dtype=np.int64))
    _values: tuple[bytes, np.ndarray] = (b"", np.zeros(1, dtype=np.int64))
    # records of any month whose Month__c still holds a date (LEGACY_MONTH), in key order: rewritten in place
    legacy: "ExistingSnapshots | None" = None

    @staticmethod
    def from_rows(month: int | None, rows, legacy: "ExistingSnapshots | None" = None) -> "ExistingSnapshots":
        """(Id, key, *FIELDS) rows, ordered by key (small sets and tests; runs read packed buffers)."""
        rows = list(rows)
        cols = [[r[0] or "" for r in rows], [r[1] or "" for r in rows],
                [SEP.join("" if v is None else str(v) for v in r[2:]) for r in rows]]
        return ExistingSnapshots(month, *(_pack(c) for c in cols), legacy=legacy)

    def __len__(self) -> int:
        return len(self._ids[1]) - 1

    @staticmethod
    def _at(packed: tuple[bytes, np.ndarray], i: int) -> str:
        blob, at = packed
        return blob[at[i]:at[i + 1] - 1].decode()

    def id(self, i: int) -> str:
        return self._at(self._ids, i)

    def key(self, i: int) -> str:
        return self._at(self._keys, i)

    def stored(self, i: int) -> str:
        return self._at(self._values, i)

    def record(self, i: int) -> tuple[str | None, ...]:
        return tuple(v or None for v in self.stored(i).split(SEP))


def _pack(texts: list[str]) -> tuple[bytes, np.ndarray]:
    """Texts -> (buffer of the texts each followed by \\x1e, offsets of each start and one past the end)."""
    parts = [t.encode() for t in texts]
    at = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) + 1 for p in parts], out=at[1:])
    return b"".join(p + b"\x1e" for p in parts), at


def _same_values(stored: str, values: tuple) -> bool:
    if stored == SEP.join("" if v is None else v for v in values):
        return True
    return all(same(o or None, v) for o, v in zip(stored.split(SEP), values))


def read_existing(org, obj: str, month: int) -> ExistingSnapshots:
    """The org's snapshot records of `month`, and those of any month whose Month__c still holds a date
    (LEGACY_MONTH: earlier releases wrote the month's first day, which the shipped Text(7) field rejects)."""
    columns = [["Id"], [KEY], FIELDS]
    current = org.read_packed(obj, columns, order_by=KEY, like=(KEY, f"%:{months.fmt(month)}"))
    legacy = None
    if org.has_field(obj, FIELDS[MONTH]):
        old = org.read_packed(obj, columns, order_by=KEY, like=(FIELDS[MONTH], LEGACY_MONTH))
        if len(old[0][1]) > 1:
            legacy = ExistingSnapshots(None, *old)
    return ExistingSnapshots(month, *current, legacy=legacy)


def _month_fixes(existing: ExistingSnapshots, obj: str) -> SnapshotChanges:
    """Records of other months whose Month__c holds a date, rewritten in place (same Id, same key) with the
    key's YYYY-MM: an org or ledger written by an older engine converges, no record duplicated. The current
    month's records are compared (and so rewritten) by diff itself."""
    out = SnapshotChanges(obj)
    old = existing.legacy
    label = months.fmt(existing.month) if existing.month is not None else None
    for i in range(len(old) if old is not None else 0):
        key = old.key(i)
        if key.endswith(f":{label}"):
            continue
        record = old.record(i)
        month = key[key.rfind(":") + 1:]
        fixed = record[:MONTH] + (month if _is_month(month) else (record[MONTH] or "")[:7],) + record[MONTH + 1:]
        out.keys.append(key)
        out.ids.append(old.id(i))
        out.old.append(to_json(key, record))
        out.new.append(to_json(key, fixed))
    return out


def _is_month(text: str) -> bool:
    try:
        months.parse(text)
    except ValueError:
        return False
    return True


def _merged(a: SnapshotChanges, b: SnapshotChanges) -> SnapshotChanges:
    """Two key-ordered change sets as one, in key order (the ledger's changes are settled in that order)."""
    if not len(b):
        return a
    rows = heapq.merge(zip(a.keys, a.ids, a.old, a.new), zip(b.keys, b.ids, b.old, b.new), key=lambda r: r[0])
    out = SnapshotChanges(a.object, a.rule)
    for key, rid, old, new in rows:
        out.keys.append(key)
        out.ids.append(rid)
        out.old.append(old)
        out.new.append(new)
    return out


def diff(snapshots: SnapshotSet, existing: ExistingSnapshots, obj: str) -> SnapshotChanges:
    """Merge-join with the existing records of the month: new and changed snapshots are upserted; a record of
    a view this set covers whose family no longer exists (absorbed into another) is deleted, so the month's
    records sum to the month's total. Records of other months still holding a date in Month__c are
    rewritten with their YYYY-MM (see _month_fixes)."""
    return _merged(_diff_month(snapshots, existing, obj), _month_fixes(existing, obj))


def _diff_month(snapshots: SnapshotSet, existing: ExistingSnapshots, obj: str) -> SnapshotChanges:
    if not len(existing):   # a first run: every snapshot is new, none to delete (the JSON made a chunk at a time, when read)
        out = SnapshotChanges(obj)
        out.keys = snapshots.sorted_keys()
        out.ids = [None] * len(out.keys)
        out.old = [None] * len(out.keys)
        out.new = JsonRows(snapshots)
        return out
    aligned = _diff_aligned(snapshots, existing, obj)
    if aligned is not None:
        return aligned
    joined = _diff_joined(snapshots, existing, obj)
    if joined is not None:
        return joined
    return _diff_merged(snapshots, existing, obj)


def _diff_merged(snapshots: SnapshotSet, existing: ExistingSnapshots, obj: str) -> SnapshotChanges:
    """_diff_month as a record-by-record merge join of the two key orders (what the faster forms must equal)."""
    out = SnapshotChanges(obj)
    covered = {f"{v}:" for v in set(snapshots.views)}
    n, k = len(existing), 0
    have = existing.key(0) if n else None

    def advance() -> None:
        nonlocal k, have
        k += 1
        last, have = have, existing.key(k) if k < n else None
        if have is not None and have < last:
            raise RuntimeError(f"the org's snapshot records are not in key order ({last!r} before {have!r})")

    def drop_until(key: str | None) -> None:
        while have is not None and (key is None or have < key):
            if have[:have.find(":") + 1] in covered:
                out.keys.append(have)
                out.ids.append(existing.id(k))
                out.old.append(to_json(have, existing.record(k)))
                out.new.append(None)
            advance()

    for key, values in snapshots.rows():
        drop_until(key)
        match = None
        if have == key:
            match = k
            advance()
            if _same_values(existing.stored(match), values):
                continue
        out.keys.append(key)
        out.ids.append(existing.id(match) if match is not None else None)
        out.old.append(to_json(key, existing.record(match)) if match is not None else None)
        out.new.append(to_json(key, values))
    drop_until(None)
    return out


def _chunk_texts(columns: list) -> list[str]:
    """Each row's values of a chunk joined as the org's are read (None as ''), column by column: map(join) runs in C."""
    return list(map(SEP.join, zip(*([("" if v is None else v) for v in col] if None in col else col
                                   for col in columns))))


def _diff_joined(snapshots: SnapshotSet, existing: ExistingSnapshots, obj: str) -> SnapshotChanges | None:
    """_diff_month for a rerun whose records of the month are not exactly the snapshots' keys (families came or
    went): each snapshot's record is found by its key, the value texts compared as strings, and only a row that
    differs is compared field by field; records of covered views that no snapshot has are deleted. The same
    changes in the same (key) order as the merge join; None when a stored key holds the separator."""
    n = len(existing)
    kblob, kat = existing._keys
    theirs = kblob[:kat[n] - 1].decode().split("\x1e") if n else []
    if len(theirs) != n:
        return None
    for a, b in zip(theirs, islice(theirs, 1, None)):
        if b < a:
            raise RuntimeError(f"the org's snapshot records are not in key order ({a!r} before {b!r})")
    where: dict[str, int] = {}
    for i, key in enumerate(theirs):
        where.setdefault(key, i)   # a key held twice: the first is the snapshot's record, the other is deleted
    vblob, vat = existing._values
    stored = vblob[:vat[n] - 1].decode().split("\x1e") if n else []
    if len(stored) != n:   # a value holding the separator (records made by from_rows)
        stored = None
    upserts, deletes = SnapshotChanges(obj), SnapshotChanges(obj)
    matched = np.zeros(n, dtype=bool)
    for keys, columns in snapshots._chunks(50_000):
        texts = _chunk_texts(columns)
        for j, key in enumerate(keys):
            i = where.get(key)
            if i is not None:
                matched[i] = True
                text = stored[i] if stored is not None else existing.stored(i)
                if text == texts[j]:
                    continue
            row = tuple(col[j] for col in columns)   # (only for a row that differs)
            if i is not None and _same_values(text, row):
                continue
            upserts.keys.append(key)
            upserts.ids.append(existing.id(i) if i is not None else None)
            upserts.old.append(to_json(key, existing.record(i)) if i is not None else None)
            upserts.new.append(to_json(key, row))
    covered = {f"{v}:" for v in set(snapshots.views)}
    for i in np.flatnonzero(~matched).tolist():
        key = theirs[i]
        if key[:key.find(":") + 1] in covered:
            deletes.keys.append(key)
            deletes.ids.append(existing.id(i))
            deletes.old.append(to_json(key, existing.record(i)))
            deletes.new.append(None)
    return _merged(upserts, deletes)


def _diff_aligned(snapshots: SnapshotSet, existing: ExistingSnapshots, obj: str) -> SnapshotChanges | None:
    """_diff_month for a rerun, whose records of the month are exactly the snapshots' keys in the same order:
    the value texts are compared a chunk at a time as buffers, and only the rows of a chunk that differs are
    compared one by one as _diff_month does (same changes, same order). None when the keys differ."""
    n = len(existing)
    kblob, kat = existing._keys
    if "\x1e".join(snapshots.sorted_keys()).encode() != kblob[:kat[n] - 1]:
        return None
    out = SnapshotChanges(obj)
    vblob, vat = existing._values
    pos = 0
    for keys, columns in snapshots._chunks(50_000):
        texts = _chunk_texts(columns)
        m = len(keys)
        theirs = vblob[vat[pos]:vat[pos + m] - 1]
        if "\x1e".join(texts).encode() != theirs:
            rows = list(zip(*columns))   # (only for a chunk that differs)
            stored_texts = theirs.decode().split("\x1e")
            if len(stored_texts) != m:   # a value holding the separator (records made by from_rows)
                stored_texts = [existing.stored(pos + j) for j in range(m)]
            for j in [j for j, (a, b) in enumerate(zip(texts, stored_texts)) if a != b]:
                key, row, stored = keys[j], rows[j], stored_texts[j]
                if _same_values(stored, row):
                    continue
                out.keys.append(key)
                out.ids.append(existing.id(pos + j))
                out.old.append(to_json(key, existing.record(pos + j)))
                out.new.append(to_json(key, row))
        pos += m
    return out


def month_snapshots(views: dict, accounts_ids: list[str], matrix: MonthlyArr, first: int, period: int,
                    labels_at) -> SnapshotSet:
    """KPI snapshots of `period` (its monthly window) for every view: one row per family that exists.

    `labels_at(view, month)` gives each account's family in a month."""
    snaps = SnapshotSet(period)
    m0, m1 = period - 1, period
    if m0 < first:
        return snaps
    a0, a1 = matrix.column(m0 - first), matrix.column(m1 - first)
    for vname in views:
        fam = labels_at(vname, m1)
        table = family_table(a0, a1, np.zeros(len(a0), dtype=bool), fam, None)
        members = np.bincount(table.inv, minlength=len(table.labels))
        rows = np.flatnonzero(((table.f0 > 0) | (table.f1 > 0)) & (table.labels >= 0))
        snaps.add(vname, [accounts_ids[k] for k in table.labels[rows].tolist()], table.f0[rows], table.f1[rows],
                  members[rows])
    return snaps
