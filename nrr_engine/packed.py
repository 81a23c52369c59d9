"""Columns of strings packed for files: one UTF-8 buffer joined by NUL, plus the bits of the cells that are None.

A million short strings pack and unpack in a fraction of a second and load without one Python object per cell
until they are asked for; the columnar store and the ledger's change files both keep their text columns so.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


def pack(values) -> np.ndarray | None:
    """Strings (None as '') as one UTF-8 buffer joined by NUL; None when a value holds a NUL itself."""
    packed = _assembled(_as_list(values))
    return None if packed is None else packed[0]


def _assembled(cells: list, chunk: int = 100_000) -> tuple[np.ndarray, int] | None:
    """_packed(cells), a long column made a part at a time into its buffer: the joined text and its bytes are
    never made whole beside the buffer (at a million names, ~50 MB the end of matching does not need)."""
    if len(cells) <= chunk:
        return _packed(cells)
    got = pack_column_parts(cells, chunk, count_first=True)
    if got is None:
        return None
    parts, size, _ = got
    buf, at, nones = np.empty(size, dtype=np.uint8), 0, cells.count(None)
    for k, part in enumerate(parts):
        if k:
            buf[at] = 0
            at += 1
        buf[at:at + len(part)] = part
        at += len(part)
    return buf, nones


def _as_list(values) -> list:
    return values.tolist() if isinstance(values, np.ndarray) else values if isinstance(values, list) else list(values)


def _packed(cells: list) -> tuple[np.ndarray, int] | None:
    """(buffer, how many cells are None) of a list of cells, or None for a NUL in one. Text cells are joined as
    they are, in C; only a column with other values (numbers) takes str() a cell."""
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
    return np.frombuffer(blob.encode("utf-8", "surrogatepass"), dtype=np.uint8), nones


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


def pack_column_parts(values, chunk: int = 100_000, count_first: bool = False
                      ) -> tuple[Iterable[np.ndarray], int, np.ndarray] | None:
    """pack_column's buffer as consecutive parts (NUL-joined, none at their ends), its length, and the bits: a
    writer streams the parts, so a column is never held as text and as bytes at once. With `count_first` (or
    values that know their packed size, snapshot.JsonRows once read) the length is counted first and each part
    made only as the writer takes it, so not even the bytes are held whole (at the cost of reading the values
    twice). None when a value holds a NUL (a part made later that finds one raises ValueError). A sequence that
    makes its values as they are read (JsonRows) is read a slice at a time."""
    cells = values if hasattr(values, "nones") else _as_list(values)
    known = getattr(cells, "packed_size", lambda: None)()
    if known is None and not count_first:
        made, nones, size = [], 0, 0
        for at in range(0, len(cells), chunk):
            got = _packed(list(cells[at:at + chunk]))
            if got is None:
                return None
            made.append(got[0])
            nones += got[1]
            size += len(got[0]) + (1 if at else 0)
        return made, size, _none_bits(cells, nones)
    if known is not None:   # counted by an earlier read (a JsonRows holds no None and no NUL)
        size, nones = known, cells.nones
    else:
        nones, size = 0, 0
        for at in range(0, len(cells), chunk):
            got = _counted(list(cells[at:at + chunk]))
            if got is None:
                return None
            size += got[0] + (1 if at else 0)
            nones += got[1]

    def parts() -> Iterator[np.ndarray]:
        for at in range(0, len(cells), chunk):
            got = _packed(list(cells[at:at + chunk]))
            if got is None:
                raise ValueError("a value holds a NUL")
            yield got[0]
    return parts(), size, _none_bits(cells, nones)


def _counted(cells: list) -> tuple[int, int] | None:
    """(bytes, how many cells are None) of the buffer _packed makes of `cells`, without encoding it when it is
    ASCII (one byte a character); None for a NUL in a value."""
    nones = cells.count(None)
    try:
        blob = "\x00".join(cells if not nones else ["" if v is None else v for v in cells])
    except TypeError:   # a cell that is not a string: _packed says how it is written
        got = _packed(cells)
        return None if got is None else (len(got[0]), got[1])
    if blob.count("\x00") != max(len(cells) - 1, 0):
        return None
    return (len(blob) if blob.isascii() else len(blob.encode("utf-8", "surrogatepass"))), nones


def unpack_column(buf: np.ndarray, nones: np.ndarray, n: int) -> list | None:
    """The `n` cells of a column `pack_column` made, None where they were None."""
    out = unpack(buf, n)
    if out is None:
        return None
    for i in np.flatnonzero(np.unpackbits(nones, count=n)).tolist():
        out[i] = None
    return out
