"""A CSV as it was last loaded, kept as an Arrow file, so a reload applies only the records that changed.

A reload of a million-row export after a day's edits used to load every row into a fresh table and merge it
three ways with the old one (~10 s). With the last load kept beside the working copy, a reload reads the file
with Arrow (in C), compares it column by column with the last load, and hands the working copy only the records
that are new or differ and the Ids that left. Arrow is more forgiving than the strict `csv` reader of the full
load (it reads an unclosed quote as a value that swallows the rows after it), so the same file is first read by
that strict reader, in C, counting records: anything the full load would stop on, a file whose records Arrow
counts otherwise, or one that changed too much is "not a delta", and the caller loads it in full, which names
the problem if there is one.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from ..safe_output import private_file
from .child import as_child

# A reload that touches more than this share of the records loads in full (per-row SQL would cost more).
MAX_SHARE = 0.25
_META = b"nrr-engine-load"


class NotDelta(Exception):
    """The file cannot be applied as a delta: load it in full (which names the problem if there is one)."""


@dataclass
class Delta:
    """What a reload changes: the new or changed records (cells as read, in header order) and the Ids that left."""

    rows: list[list[str]]
    removed: list[str]
    table: pa.Table     # the file as read now: the next reload's last load
    before: list[list[str]]   # the last load's records that changed or left, as they were (header order)


class Reloaded(NamedTuple):
    """What a delta reload did to an object, for the stages that can follow it record by record."""

    since: tuple[int, int]        # size and mtime of the load it started from
    touched: list[str]            # Ids it wrote (new or changed records)
    removed: list[str]            # Ids that left the CSV
    header: list[str]
    rows: list[list[str]]         # the touched records as the CSV has them now (header order)
    before: list[list[str]]       # the records that changed or left, as the last load had them


def id_name(header: list[str]) -> str:
    """The header's Id column, as spelt there (API names are case-insensitive)."""
    return header[[h.lower() for h in header].index("id")]


def path_for(working_copy: Path, obj: str) -> Path:
    return working_copy.with_name(f"{working_copy.name}.loaded-{obj}.arrow")


def strict_records(path: Path, width: int) -> int:
    """How many records the full load would take from the file (blank lines skipped), read by the same strict
    csv reader in C; NotDelta where it would stop or take the careful path (a row of another width)."""
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="strict") as fh:
            reader = csv.reader(fh, strict=True)
            next(reader, None)
            widths = np.fromiter(map(len, reader), dtype=np.int64)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise NotDelta(str(exc)) from None
    if ((widths != width) & (widths != 0)).any():
        raise NotDelta("a row of another width")
    return int((widths == width).sum())


class StrictCheck:
    """`strict_records` in a forked process (the csv reader holds the interpreter; the parent reads the file with
    Arrow meanwhile), or inline where forking is unsafe (other Python threads running)."""

    def __init__(self, path: Path, width: int, fork: bool):
        self.pid = self.fd = None
        self.inline = (path, width)
        if not fork:
            return
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:   # the child: one number (or -1: not a delta) and out, whatever happens
            try:
                as_child()
                os.close(r)
                try:
                    msg = str(strict_records(path, width))
                except BaseException:
                    msg = "-1"
                os.write(w, msg.encode())
            finally:
                os._exit(0)
        os.close(w)
        self.pid, self.fd = pid, r

    def result(self) -> int:
        """The record count; NotDelta when the strict reader would stop."""
        if self.pid is None:
            return strict_records(*self.inline)
        chunks = []
        while chunk := os.read(self.fd, 64):
            chunks.append(chunk)
        self._reap()
        text = b"".join(chunks).decode() or "-1"
        if int(text) < 0:
            raise NotDelta("the strict reader stops on the file")
        return int(text)

    def cancel(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass
            self._reap()

    def _reap(self) -> None:
        os.close(self.fd)
        os.waitpid(self.pid, 0)
        self.pid = None


def read_table(path: Path, header: list[str], records: int | None) -> pa.Table:
    """The whole file as text columns (Id trimmed of spaces, as the working copy holds it); NotDelta when Arrow
    reads another header or another number of records than the strict reader."""
    from .columnar import _open
    try:
        reader = _open(path)
        table = reader.read_all()
    except (pa.ArrowException, OSError) as exc:
        raise NotDelta(str(exc)) from None
    if [n.strip() for n in table.column_names] != header or (records is not None and table.num_rows != records):
        raise NotDelta("Arrow reads the file otherwise")
    table = table.rename_columns(header)
    name = id_name(header)
    ids = pc.utf8_trim(table.column(name), " ")
    return table.set_column(table.column_names.index(name), name, ids)


def write(path: Path, table: pa.Table, size: int, sha256: str) -> None:
    """Keep `table` as the last load of the file (size, SHA-256), atomically and 0600."""
    meta = json.dumps({"size": size, "sha256": sha256, "header": table.column_names}).encode()
    table = table.replace_schema_metadata({_META: meta})
    tmp = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(private_file(tmp)), "wb") as sink, ipc.new_file(sink, table.schema) as w:
        w.write_table(table, max_chunksize=1 << 17)
    os.replace(tmp, path)


def keep(path: Path, target: Path, header: list[str], records: int, size: int, mtime_ns: int, sha256: str) -> None:
    """Keep the CSV just loaded (`records` records; the load's size, mtime and SHA-256) as its last load at
    `target`; nothing kept when Arrow reads it otherwise, it changed since the load, or the disk is full (the
    next reload is then a full one)."""
    try:
        table = read_table(path, header, records)
        st = os.stat(path)
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            return   # the file changed since its load: nothing to compare the next one with
        write(target, table, size, sha256)
    except (NotDelta, OSError):
        discard(target)


def read(path: Path, size: int, sha256: str, header: list[str]) -> pa.Table | None:
    """The last load kept for the file recorded as (size, sha256, header), memory-mapped; None when there is none,
    it is unreadable or it is of another load."""
    try:
        table = ipc.open_file(pa.memory_map(str(path))).read_all()
        meta = json.loads((table.schema.metadata or {}).get(_META, b"{}"))
    except (pa.ArrowException, OSError, ValueError):
        return None
    if (meta.get("size"), meta.get("sha256"), meta.get("header")) != (size, sha256, header) \
            or table.column_names != header or not all(f.type == pa.string() for f in table.schema):
        return None
    return table


def diff(old: pa.Table, new: pa.Table, id_column: str) -> Delta:
    """The records of `new` that are not in `old` or differ from it, and the Ids of `old` not in `new`;
    NotDelta for an empty or duplicate Id (the full load says which line) or too many changes."""
    new_ids, old_ids = new.column(id_column), old.column(id_column)
    n = new.num_rows
    aligned = n == old.num_rows and new_ids.equals(old_ids)   # the last load's Ids (unique, none blank), in order
    if n and not aligned and (pc.any(pc.equal(new_ids, "")).as_py() or pc.count_distinct(new_ids).as_py() != n):
        raise NotDelta("empty or duplicate Id")
    if not old.num_rows:
        touched, removed, was = np.arange(n), [], np.zeros(0, dtype=np.int64)
    elif aligned:
        changed = None
        for name in new.column_names:
            ne = pc.not_equal(new.column(name), old.column(name))
            changed = ne if changed is None else pc.or_(changed, ne)
        touched = np.flatnonzero(changed.to_numpy(zero_copy_only=False)) if changed is not None else np.zeros(0, int)
        removed: list[str] = []
        was = touched
    else:
        pos = pc.index_in(new_ids, value_set=old_ids)
        found = pc.is_valid(pos)
        at = pc.fill_null(pos, 0)
        changed = pc.invert(found)
        for name in new.column_names:
            changed = pc.or_(changed, pc.and_(found, pc.not_equal(new.column(name), pc.take(old.column(name), at))))
        touched = np.flatnonzero(changed.to_numpy(zero_copy_only=False))
        gone = pc.invert(pc.is_in(old_ids, value_set=new_ids))
        removed = pc.filter(old_ids, gone).to_pylist()
        was = np.concatenate([pos.to_numpy(zero_copy_only=False)[touched][found.to_numpy(zero_copy_only=False)[touched]]
                              .astype(np.int64) if len(touched) else np.zeros(0, dtype=np.int64),
                              np.flatnonzero(gone.to_numpy(zero_copy_only=False))])
    limit = max(1000, int(MAX_SHARE * max(old.num_rows, 1)))
    if len(touched) + len(removed) > limit:
        raise NotDelta("too many changes")
    return Delta(_rows(new, touched), removed, new, _rows(old, was))


def _rows(table: pa.Table, at: np.ndarray) -> list[list[str]]:
    part = table.take(pa.array(at, type=pa.int64()))
    return [list(r) for r in zip(*(part.column(name).to_pylist() for name in table.column_names))]


def discard(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
