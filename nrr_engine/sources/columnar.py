"""Columnar reads of a local org's CSV with Apache Arrow: a million subscriptions as arrays in well under a second.

The working copy (SQLite) stays the record of what a run read; where one of its tables holds exactly a CSV as it
is on disk (loaded from that file, never written by the engine: LocalOrg.csv_as_loaded), a stage that needs whole
columns reads the file with Arrow instead of turning a million SQLite rows into Python tuples. Arrow parses in C
only what is plainly well-formed (digits and a point, ISO dates); every other value comes back as its text, for
the caller's reading policy, so both reads give the same figures and findings.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

_BLOCK = 8 << 20      # bytes of CSV per block where the columns are kept (accounts)
_BATCH_BLOCK = 1 << 20   # per batch of records consumed as read (~12,000 subscriptions): the reader keeps blocks
                         # ahead, 8 MB ones ~130 MB at once
# the plain part of money.NUMBER_FORMAT, read exactly in C: an optional minus, up to 14 digits, up to 4 decimals
_PLAIN_AMOUNT = r"^(?P<sign>-?)(?P<whole>[0-9]{1,14})(?:\.(?P<frac>[0-9]{1,4}))?$"
_PLAIN_DATE = r"^[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}$"   # YYYY-MM-DD from year 1000 (strptime's and numpy's agree)


class Changed(Exception):
    """The CSV changed while it was read: the caller reads the working copy instead."""


@dataclass
class Batch:
    """One batch of a CSV's columns (texts; '' for a blank cell or a column the file lacks)."""

    columns: dict[str, pa.Array]
    n: int
    index: dict[str, int]   # {Id: row}, what `positions` looks values up in


    def texts(self, name: str, at: Sequence[int]) -> list[str | None]:
        """The raw values at positions `at`, None for blank (as the working copy holds them)."""
        if not len(at):
            return []
        values = pc.take(self.columns[name], pa.array(at, type=pa.int64())).to_pylist()
        if name == "Id":   # the working copy trims Ids
            values = [v.strip(" ") for v in values]
        return [v or None for v in values]

    def positions(self, name: str) -> np.ndarray:
        """For each value of column `name`, its row in `index` ({Id: row}), else -1 (a blank is -1)."""
        get = self.index.get
        values = self.columns[name].to_numpy(zero_copy_only=False)
        # a dict lookup per value: Arrow's index_in would hash the million Ids again for every batch
        return np.fromiter((get(v, -1) if v else -1 for v in values), dtype=np.int64, count=self.n)

    def plain_amounts(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(plain, units): which values are plain amounts, and their exact units of 1/10,000."""
        col = self.columns[name]
        plain = pc.match_substring_regex(col, _PLAIN_AMOUNT).to_numpy(zero_copy_only=False)
        units = np.zeros(self.n, dtype=np.int64)
        if plain.any():
            parts = pc.extract_regex(pc.filter(col, pa.array(plain)), _PLAIN_AMOUNT).flatten()  # sign, whole, frac
            whole = pc.cast(parts[1], pa.int64()).to_numpy(zero_copy_only=False)
            frac = pc.cast(pc.utf8_rpad(parts[2], 4, "0"), pa.int64()).to_numpy(zero_copy_only=False)
            v = whole * 10_000 + frac
            units[plain] = np.where(pc.equal(parts[0], "-").to_numpy(zero_copy_only=False), -v, v)
        return plain, units

    def plain_dates(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(plain, days): which values are YYYY-MM-DD, and the dates (NaT where the date does not exist)."""
        col = self.columns[name]
        plain = pc.match_substring_regex(col, _PLAIN_DATE).to_numpy(zero_copy_only=False)
        days = np.full(self.n, np.datetime64("NaT"), dtype="datetime64[D]")
        if plain.any():
            texts = pc.filter(col, pa.array(plain))
            parsed = pc.strptime(texts, format="%Y-%m-%d", unit="s", error_is_null=True)
            # strptime rolls 2026-02-30 over to 2026-03-02: a date is one whose month and day are its text's
            month = pc.cast(pc.utf8_slice_codeunits(texts, 5, 7), pa.int64())
            day = pc.cast(pc.utf8_slice_codeunits(texts, 8, 10), pa.int64())
            real = pc.fill_null(pc.and_(pc.equal(pc.month(parsed), month), pc.equal(pc.day(parsed), day)), False)
            parsed = pc.if_else(real, parsed, pa.scalar(None, type=parsed.type))
            days[plain] = pc.cast(parsed, pa.date32()).to_numpy(zero_copy_only=False).astype("datetime64[D]")
        return plain, days

    def blank(self, name: str) -> np.ndarray:
        return pc.equal(self.columns[name], "").to_numpy(zero_copy_only=False)

    def distinct_upper(self, name: str) -> list[str]:
        """The distinct non-blank values, trimmed and upper-cased."""
        col = pc.utf8_upper(pc.utf8_trim_whitespace(self.columns[name]))
        return [v for v in pc.unique(col).to_pylist() if v]


def read_columns(path: Path, fields: Sequence[str], signature: tuple[int, int]) -> list[list]:
    """The CSV's `fields` as the working copy's `read_columns` gives them: whole columns of text (None for a
    blank cell or a field the file lacks), rows ordered by Id (trimmed of spaces, as the working copy holds it).
    Read a batch at a time (Arrow holds one block, not the file); raises Changed or pyarrow's errors as
    read_batches does."""
    reader = _open(path)
    names = {n.strip().lower(): n for n in reader.schema.names}
    wanted = [names.get(f.strip().lower()) for f in fields]
    out: list[list] = [[] for _ in fields]
    shared: list[dict] = [{} for _ in fields]
    id_chunks = []
    for batch in reader:
        ids = pc.utf8_trim(batch.column(names["id"]), " ")
        id_chunks.append(ids)
        for col, actual, seen in zip(out, wanted, shared):
            if actual is None:
                col.extend([None] * batch.num_rows)
            elif actual == names["id"]:
                col.extend(v or None for v in ids.to_pylist())
            else:
                col.extend(_texts(batch.column(actual), seen))
    del reader
    order = pc.sort_indices(pa.chunked_array(id_chunks, type=pa.string())).to_numpy()
    del id_chunks
    _release()
    if len(order) and not (order[1:] > order[:-1]).all():   # an export in another order than by Id
        positions = order.tolist()
        for k, col in enumerate(out):
            out[k] = [col[i] for i in positions]
    _check(path, signature)
    return out


def _texts(values: pa.Array, seen: dict) -> list:
    """A column's cells as Python text (None for blank). A column with few distinct values (country, region,
    owner, a parent's Id) gives one object per distinct value, not one per row: at a million accounts that is
    ~50 MB a column; `seen` carries the distinct values across batches."""
    encoded = pc.dictionary_encode(values)
    if len(encoded.dictionary) * 2 > len(values):
        return [v or None for v in values.to_pylist()]
    distinct = np.array([seen.setdefault(v, v) if v else None for v in encoded.dictionary.to_pylist()],
                        dtype=object)
    return distinct[encoded.indices.to_numpy(zero_copy_only=False)].tolist()


def _release() -> None:
    """Hand the memory Arrow's pool keeps after a read back to the system (a million accounts' table is ~300 MB
    the later stages need more than Arrow does)."""
    pa.default_memory_pool().release_unused()


def _open(path: Path, block: int = _BLOCK):
    """A streaming reader of the CSV with every column as text ('' for blank), `block` bytes at a time."""
    read = pcsv.ReadOptions(block_size=block, use_threads=True)
    parse = pcsv.ParseOptions(newlines_in_values=True)
    reader = pcsv.open_csv(path, read_options=read, parse_options=parse,
                           convert_options=pcsv.ConvertOptions(strings_can_be_null=False, quoted_strings_can_be_null=False,
                                                               auto_dict_encode=False))
    if all(f.type == pa.string() for f in reader.schema):
        return reader
    # open_csv infers types from the first block: read every column as text
    return pcsv.open_csv(path, read_options=read, parse_options=parse, convert_options=pcsv.ConvertOptions(
        strings_can_be_null=False, quoted_strings_can_be_null=False,
        column_types={n: pa.string() for n in reader.schema.names}))


def _check(path: Path, signature: tuple[int, int]) -> None:
    st = os.stat(path)
    if (st.st_size, st.st_mtime_ns) != tuple(signature):
        raise Changed(str(path))


def read_batches(path: Path, fields: dict[str, str | None], signature: tuple[int, int],
                 index: dict[str, int]) -> Iterator[Batch]:
    """The CSV's `fields` ({name in the batch: field}, matched to the header ignoring case and surrounding spaces;
    a field the file lacks, or None, is blank), batch by batch; `index` ({Id: row}) is what Batch.positions
    looks values up in. Raises Changed when the file is not the one of `signature` (size, mtime) when the read
    ends, and pyarrow's errors for a file Arrow cannot read (the caller then reads the working copy)."""
    reader = _open(path, _BATCH_BLOCK)
    names = {n.strip().lower(): n for n in reader.schema.names}
    for batch in reader:
        n = batch.num_rows
        cols = {}
        for name, f in fields.items():
            actual = names.get(f.strip().lower()) if f else None
            cols[name] = batch.column(actual) if actual is not None else pa.array([""] * n, type=pa.string())
        yield Batch(cols, n, index)
    del reader
    _release()
    _check(path, signature)
