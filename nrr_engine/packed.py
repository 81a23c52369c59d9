"""Columns of strings packed for files: one UTF-8 buffer joined by NUL, plus the bits of the cells that are None.

A million short strings pack and unpack in a fraction of a second and load without one Python object per cell
until they are asked for; the columnar store and the ledger's change files both keep their text columns so.
"""
from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .model import ListLike


def pack(values) -> np.ndarray | None:
    """Strings (None as '') as one UTF-8 buffer joined by NUL; None when a value holds a NUL itself."""
    packed = _assembled(_as_list(values))
    return None if packed is None else packed[0]


def _assembled(cells: list, chunk: int = 100_000) -> tuple[np.ndarray, int] | None:
    """_packed(cells), a long column made a part at a time into its buffer: the joined text and its bytes are
    never made whole beside the buffer (at a million names, ~50 MB the end of matching does not need)."""
    if len(cells) <= chunk:
        return _packed(cells)
    got = _parts(cells, chunk, count_first=True)
    if got is None:
        return None
    parts, size, nones = got
    buf, at = np.empty(size, dtype=np.uint8), 0
    for k, part in enumerate(parts):
        if k:
            buf[at] = 0
            at += 1
        buf[at:at + len(part)] = part
        at += len(part)
    return buf, nones


def _as_list(values) -> list:
    return values.tolist() if isinstance(values, np.ndarray) else values if isinstance(values, list) else list(values)


def _joined(cells: list) -> tuple[str, int] | None:
    """(the cells joined by NUL, None as '', and how many are None), or None for a NUL in one. Text cells are
    joined as they are, in C; only a column with other values (numbers) takes str() a cell."""
    nones = cells.count(None)
    try:
        if nones == len(cells):
            blob = "\x00" * max(len(cells) - 1, 0)
        else:
            blob = "\x00".join(cells if not nones else ["" if v is None else v for v in cells])
    except TypeError:   # a cell that is not a string
        blob = "\x00".join(["" if v is None else str(v) for v in cells])
    if blob.count("\x00") != max(len(cells) - 1, 0):
        return None
    return blob, nones


def _packed(cells: list) -> tuple[np.ndarray, int] | None:
    """(buffer, how many cells are None) of a list of cells, or None for a NUL in one."""
    got = _joined(cells)
    return None if got is None else (np.frombuffer(got[0].encode("utf-8", "surrogatepass"), dtype=np.uint8), got[1])


def unpack(buf: np.ndarray, n: int) -> list[str] | None:
    """The `n` strings of a buffer `pack` made; None when it does not hold `n`."""
    out = buf.tobytes().decode("utf-8", "surrogatepass").split("\x00") if n else []
    return out if len(out) == n else None


def pack_column(values) -> tuple[np.ndarray, np.ndarray] | None:
    """A column as (UTF-8 buffer, bits of the cells that are None): None and '' stay apart; None for a NUL."""
    cells = _as_list(values)
    packed = _assembled(cells)
    if packed is None:
        return None
    buf, nones = packed
    return buf, _none_bits(cells, nones)


def _none_bits(cells: list, nones: int) -> np.ndarray:
    """The packed bits of the cells that are None (`nones` of them)."""
    if nones in (0, len(cells)):   # none or all: no cell to look at
        bits = np.full(len(cells), bool(nones), dtype=bool)
    else:
        bits = np.fromiter((v is None for v in cells), dtype=bool, count=len(cells))
    return np.packbits(bits)


def pack_column_parts(values, chunk: int = 20_000) -> tuple[Iterable[np.ndarray], int, np.ndarray] | None:
    """pack_column's buffer as consecutive parts (NUL-joined, none at their ends), its length, and the bits: a
    writer streams the parts, so a column is never held as text and as bytes at once. Values that know their
    packed size (snapshot.JsonRows once read) have each part made only as the writer takes it, so not even the
    bytes are held whole. None when a value holds a NUL (a part made later that finds one raises ValueError). A
    sequence that makes its values as they are read (JsonRows) is read a slice at a time."""
    cells = values if hasattr(values, "nones") else _as_list(values)
    got = _parts(cells, chunk)
    if got is None:
        return None
    parts, size, nones = got
    return parts, size, _none_bits(cells, nones)


def _parts(cells, chunk: int, count_first: bool = False) -> tuple[Iterable[np.ndarray], int, int] | None:
    """(the packed parts, the buffer's length, how many cells are None), or None for a NUL. The parts are a list
    made in one pass, unless the length is known (cells.packed_size()) or `count_first` asks for it to be
    counted: then they are made as they are taken (a second read of the values)."""
    known = getattr(cells, "packed_size", lambda: None)()
    if known is None and not count_first:
        try:
            made = list(_chunks(cells, chunk))
        except ValueError:
            return None
        return [p for p, _ in made], sum(len(p) for p, _ in made) + max(len(made) - 1, 0), sum(n for _, n in made)
    if known is not None:   # counted by an earlier read (a JsonRows holds no None and no NUL)
        size, nones = known, cells.nones
    else:
        size, nones = 0, 0
        for at in range(0, len(cells), chunk):
            got = _counted(list(cells[at:at + chunk]))
            if got is None:
                return None
            size += got[0] + (1 if at else 0)
            nones += got[1]
    return (p for p, _ in _chunks(cells, chunk)), size, nones


def _counted(cells: list) -> tuple[int, int] | None:
    """(bytes, how many cells are None) of the buffer _packed makes of `cells`, without encoding it when it is
    ASCII (one byte a character); None for a NUL in a value."""
    got = _joined(cells)
    if got is None:
        return None
    blob, nones = got
    return (len(blob) if blob.isascii() else len(blob.encode("utf-8", "surrogatepass"))), nones


def _chunks(cells, chunk: int) -> Iterator[tuple[np.ndarray, int]]:
    """_packed of each `chunk` cells in turn; ValueError for a NUL."""
    for at in range(0, len(cells), chunk):
        got = _packed(list(cells[at:at + chunk]))
        if got is None:
            raise ValueError("a value holds a NUL")
        yield got


def unpack_column(buf: np.ndarray, nones: np.ndarray, n: int) -> list | None:
    """The `n` cells of a column `pack_column` made, None where they were None."""
    out = unpack(buf, n)
    if out is None:
        return None
    for i in np.flatnonzero(np.unpackbits(nones, count=n)).tolist():
        out[i] = None
    return out


class Texts(ListLike):
    """A column of strings held packed: one UTF-8 buffer joined by NUL (as `pack` makes it, None as '') and each
    cell's start, a cell made a str only when read. A million name keys are ~25 MB so, ~80 MB as a list of str,
    and the store takes the buffer as it is. Cells marked None read as None."""

    __slots__ = ("_buf", "_starts", "_none", "nones")
    _CHUNK = 50_000

    def __init__(self, buf: bytes, starts: array, none: bytearray | None):
        self._buf, self._starts, self._none = buf, starts, none
        self.nones = 0 if none is None else none.count(1)

    @classmethod
    def of(cls, values: Sequence[str | None]) -> "Texts | None":
        """The cells of `values` packed, a chunk at a time; None when a cell holds a NUL."""
        return cls.of_parts(list(values[lo:lo + cls._CHUNK]) for lo in range(0, len(values), cls._CHUNK))

    @classmethod
    def of_parts(cls, chunks: Iterable[list]) -> "Texts | None":
        """The cells of consecutive chunks (lists) packed, each chunk freed once packed: a derived column is never
        held whole as str objects. None when a cell holds a NUL."""
        parts, starts, base, n, none_at = [], [], 0, 0, []
        for cells in chunks:
            if not cells:
                continue
            got = _packed(cells)
            if got is None:
                return None
            buf, nones = got
            if nones:
                none_at.extend(n + k for k, v in enumerate(cells) if v is None)
            starts.append(base + np.r_[0, np.flatnonzero(buf == 0) + 1])
            base += len(buf) + 1      # and the NUL that joins it to the next chunk
            n += len(cells)
            parts.append(buf.tobytes())
        starts.append(np.array([base], dtype=np.int64))   # the end of the last cell, + 1
        return cls(b"\x00".join(parts), _starts(np.concatenate(starts)), _marks(n, none_at))

    @classmethod
    def from_packed(cls, buf: np.ndarray, n: int, none_when_empty: bool = False) -> "Texts | None":
        """The `n` cells of a buffer `pack` made (the store's), '' read as None when `none_when_empty`; None when
        it does not hold `n` cells."""
        raw = np.asarray(buf, dtype=np.uint8)
        ends = np.flatnonzero(raw == 0)
        if n == 0:
            return cls(b"", array("q", [0]), None) if not len(raw) else None
        if len(ends) != n - 1:
            return None
        merged = np.concatenate([[0], ends + 1, [len(raw) + 1]])
        empty = np.flatnonzero(np.diff(merged) == 1).tolist() if none_when_empty else []
        return cls(raw.tobytes(), _starts(merged), _marks(n, empty))

    def __len__(self) -> int:
        return len(self._starts) - 1

    def __getitem__(self, i):
        s = self._starts
        if type(i) is int and 0 <= i < len(s) - 1:   # the common case first: matching reads millions
            if self._none is not None and self._none[i]:
                return None
            return self._buf[s[i]:s[i + 1] - 1].decode("utf-8", "surrogatepass")
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self[i]

    def take(self, rows: Sequence[int]) -> list[str | None]:
        """The cells of `rows` (ascending), decoded as one span: a block of rows costs one decode, not one each."""
        if not len(rows):
            return []
        lo, hi = rows[0], rows[-1] + 1
        if not 0 <= lo < hi <= len(self):
            return [self[r] for r in rows]
        cells = self._span(lo, hi)
        return [cells[r - lo] for r in rows]

    def _span(self, lo: int, hi: int) -> list[str | None]:
        """Cells lo .. hi-1, decoded at once."""
        s, none = self._starts, self._none
        cells = self._buf[s[lo]:s[hi] - 1].decode("utf-8", "surrogatepass").split("\x00")
        if none is not None:
            cells = [None if none[lo + k] else c for k, c in enumerate(cells)]
        return cells

    def __iter__(self) -> Iterator[str | None]:
        n = len(self)
        for lo in range(0, n, self._CHUNK):
            yield from self._span(lo, min(n, lo + self._CHUNK))

    def nonempty(self) -> np.ndarray:
        """The positions of the cells that are neither '' nor None."""
        return np.flatnonzero(np.diff(np.frombuffer(self._starts, dtype=np.int64)) > 1)

    def packed(self) -> np.ndarray:
        """The buffer, as `pack` of the cells makes it."""
        return np.frombuffer(self._buf, dtype=np.uint8)

    def none_marks(self) -> bytes:
        """A byte per cell, 1 where the cell is None (empty when none is)."""
        return bytes(self._none) if self._none is not None else b""


def _starts(values: np.ndarray) -> array:
    """Cell starts as array('q'): one read is a Python int at once."""
    out = array("q")
    out.frombytes(np.asarray(values, dtype=np.int64).tobytes())
    return out


def _marks(n: int, positions: list[int]) -> bytearray | None:
    """A byte per cell, 1 at `positions` (None when there are none)."""
    if not positions:
        return None
    marks = bytearray(n)
    for i in positions:
        marks[i] = 1
    return marks
