"""The ledger's two history tables, monthly ARR and family membership, kept as Parquet files beside it.

The ledger (SQLite) names each table's current file, with its SHA-256 and row count, in `history_files`; the
file holds the whole table. Replacing a table writes a new file (synced to disk before the ledger names it) and
switches the ledger's row in one transaction, so a kill at any point leaves the old table or the new one, never a
mix. The file it replaced stays until the next replacement (a report that read the old name a moment before still
opens it); files the ledger names nowhere (a write killed before its commit) go then too. The ledger's writers
replace these tables only under the run lock (a run, a rollback, a history import).

Why files and why Parquet: a first run at a million accounts records 1.2 M ARR runs and 1 M membership segments;
inserting them into SQLite's B-trees cost 10.5 s, writing them as Parquet (zstd) costs well under a second, and a
rerun reads them back as columns in a tenth of a second instead of as millions of Python tuples. They are the
tables an org that outgrows one machine loads into its warehouse as they are (`nrr_engine/sql/nrr.sql`): DuckDB,
Spark, BigQuery, Snowflake and pandas read Parquet directly. Months stay `YYYY-MM` text (dictionary-encoded: a
few bytes a row), so the files read the same in any of them.

Columns (one row per run of equal ARR, and one per recorded family segment):
  arr_history: account_id, start_month, end_month (inclusive), arr_units (int64, 1/10,000 of the currency)
  membership:  view, account_id, start_month, end_month (null: still open), root_id, run_id (the run that
               recorded it)
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import months
from .errors import Location, SourceUnavailable
from .safe_output import atomic_file, private_dir

ARR = "arr_history"
_MEMBERSHIP = "membership"
OPEN = 2**31 - 1   # an open segment's end month as an int (as hierarchy.membership.OPEN)
_MONTHS = ("start_month", "end_month")
_FILE = re.compile(r"(arr_history|membership)-[0-9]+\.parquet")

ARR_SCHEMA = pa.schema([("account_id", pa.string()), ("start_month", pa.dictionary(pa.int32(), pa.string())),
                        ("end_month", pa.dictionary(pa.int32(), pa.string())), ("arr_units", pa.int64())])
MEMBERSHIP_SCHEMA = pa.schema([("view", pa.dictionary(pa.int32(), pa.string())), ("account_id", pa.string()),
                               ("start_month", pa.dictionary(pa.int32(), pa.string())),
                               ("end_month", pa.dictionary(pa.int32(), pa.string())), ("root_id", pa.string()),
                               ("run_id", pa.dictionary(pa.int32(), pa.string()))])


def membership_name(view: str) -> str:
    """The ledger's name for a view's membership table."""
    return f"{_MEMBERSHIP}:{view}"


def folder_for(ledger_path: Path) -> Path:
    """`nrr-history/` beside `nrr.db`."""
    return Path(ledger_path).with_name(f"{Path(ledger_path).stem}-history")


# ---- columns -----------------------------------------------------------------------------------------

def month_column(values: np.ndarray) -> pa.DictionaryArray:
    """Month ints as dictionary-encoded 'YYYY-MM' text; OPEN is null."""
    values = np.asarray(values, dtype=np.int64)
    open_ = values == OPEN
    real = values[~open_]
    lo = int(real.min()) if len(real) else 0
    hi = int(real.max()) if len(real) else -1
    labels = pa.array([months.fmt(m) for m in range(lo, hi + 1)], type=pa.string())
    idx = pa.array((values - lo).astype(np.int32), mask=open_ if open_.any() else None)
    return pa.DictionaryArray.from_arrays(idx, labels)


def month_ints(column) -> np.ndarray:
    """A month column (dictionary or plain text, nulls allowed; chunked or not) as int32 month indexes; null is
    OPEN."""
    if isinstance(column, pa.ChunkedArray):
        parts = [month_ints(c) for c in column.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    col = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
    lookup = np.array([months.parse(t) for t in col.dictionary.to_pylist()] + [OPEN], dtype=np.int32)
    idx = col.indices.fill_null(len(lookup) - 1).to_numpy(zero_copy_only=False)
    return lookup[idx]


def _text(column) -> pa.Array:
    """A (chunked, dictionary or plain) text column as one plain string array."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    chunks = [c.cast(pa.string()) if pa.types.is_dictionary(c.type) else c for c in chunks]
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())


def constant(value: str, n: int) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value], pa.string()))


def strings(values) -> pa.Array:
    """Python strings (a list, a tuple) or an Arrow column as one plain Arrow string array."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return _text(values)
    return pa.array(values, type=pa.string())


def arr_table(account_ids, start: np.ndarray, end: np.ndarray, units: np.ndarray) -> pa.Table:
    return pa.Table.from_arrays([strings(account_ids), month_column(start), month_column(end),
                                 pa.array(np.asarray(units, dtype=np.int64))], schema=ARR_SCHEMA)


def arr_from_rows(rows) -> pa.Table:
    """(account_id, 'YYYY-MM', 'YYYY-MM', units) tuples as an arr_history table."""
    rows = list(rows)
    if not rows:
        return ARR_SCHEMA.empty_table()
    a, s, e, u = zip(*rows)
    return arr_table(a, _parsed(s), _parsed(e), np.array(u, dtype=np.int64))


def _parsed(texts) -> np.ndarray:
    """'YYYY-MM' texts (None: open) as month ints, each distinct text parsed once."""
    return month_ints(pa.array(texts, pa.string()))


def membership_from_rows(view: str, rows) -> pa.Table:
    """(account_id, 'YYYY-MM', 'YYYY-MM' or None, root_id, run_id or None) tuples as a membership table."""
    rows = list(rows)
    if not rows:
        return MEMBERSHIP_SCHEMA.empty_table()
    a, s, e, r, run = zip(*rows)
    return membership_table(view, a, _parsed(s), _parsed(e), r, pa.array(run, pa.string()))


def membership_table(view: str, account_ids, start: np.ndarray, end: np.ndarray, roots, run_ids) -> pa.Table:
    """A membership table; `run_ids` one run's id (every row) or a column of them."""
    n = len(start)
    run = constant(run_ids, n) if isinstance(run_ids, str) else pc.dictionary_encode(strings(run_ids))
    return pa.Table.from_arrays([constant(view, n), strings(account_ids), month_column(start), month_column(end),
                                 strings(roots), run.cast(MEMBERSHIP_SCHEMA.field("run_id").type)],
                                schema=MEMBERSHIP_SCHEMA)


def membership_kept(view: str, table: pa.Table, keep: np.ndarray, start: np.ndarray, end: np.ndarray) -> pa.Table:
    """The rows `keep` marks of a view's membership table, with the month ints `start` and `end` (of every row:
    an end changed by the caller) in place of its month columns."""
    mask = pa.array(keep)
    return membership_table(view, table["account_id"].filter(mask), start[keep], end[keep],
                            table["root_id"].filter(mask), strings(table["run_id"]).filter(mask))


def kind_of(name: str) -> str:
    """The file kind (and schema) of a history table name: 'arr_history' or 'membership:<view>'."""
    return ARR if name == ARR else _MEMBERSHIP


def schema_of(name: str) -> pa.Schema:
    return ARR_SCHEMA if name == ARR else MEMBERSHIP_SCHEMA


def positions(column, keys: pa.Array, values: np.ndarray | None = None) -> np.ndarray:
    """Each Id's position in `keys` (or `values` at that position), -1 where it is not there; by hash, in C."""
    pos = pc.index_in(strings(column), value_set=keys).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    if values is not None and len(values):
        pos = np.where(pos >= 0, values[np.maximum(pos, 0)], -1)
    return pos


ARR_COLUMNS = ("account_id", "start_month", "end_month", "arr_units")
MEMBERSHIP_COLUMNS = ("view", "account_id", "start_month", "end_month", "root_id")
SEGMENT_COLUMNS = MEMBERSHIP_COLUMNS[1:]   # a membership segment as Ledger.membership_segments yields it


def tuples(table: pa.Table | None, names=None):
    """The rows of a history table (of the columns `names`) as tuples, months as 'YYYY-MM' text, a batch at a
    time."""
    if table is None:
        return
    for batch in table.select(list(names or table.column_names)).to_batches(100_000):
        cols = [(c.cast(pa.string()) if pa.types.is_dictionary(c.type) else c).to_pylist() for c in batch.columns]
        yield from zip(*cols)


def named(ledger_path: Path) -> dict[str, pa.Table]:
    """Every history table a ledger names, read without opening it for writing ({name: table}): for checks and
    tools that must not change the state store."""
    import sqlite3
    con = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT name, file, sha256, rows FROM history_files").fetchall()
    finally:
        con.close()
    folder = folder_for(ledger_path)
    return {name: read(folder, file, sha, n, name) for name, file, sha, n in rows}


# ---- files -------------------------------------------------------------------------------------------

BATCH = 200_000   # rows made and written at a time: a first run's million never held twice over as Arrow arrays


def write(folder: Path, kind: str, gen: int, parts, schema: pa.Schema) -> tuple[str, str, int]:
    """Write the tables (or record batches) `parts` of `schema`, in order, as `<kind>-<gen>.parquet` in `folder`,
    a part at a time, synced to disk; returns (file name, SHA-256, rows)."""
    name, rows = f"{kind}-{gen}.parquet", 0
    target = private_dir(folder) / name
    with atomic_file(target, "wb") as fh:
        with pq.ParquetWriter(fh, schema, compression="zstd") as out:
            for part in parts:
                if part.num_rows:
                    out.write(part)
                    rows += part.num_rows
        fh.flush()
        os.fsync(fh.fileno())
    return name, _sha256(target), rows


def batches(table: pa.Table | None, keep: np.ndarray | None = None):
    """A table's rows (those `keep` marks) a batch at a time."""
    if table is None:
        return
    at = 0
    for batch in table.to_batches(BATCH):
        n = batch.num_rows
        yield batch if keep is None else batch.filter(pa.array(keep[at:at + n]))
        at += n


def read(folder: Path, file: str, sha256: str, rows: int, what: str) -> pa.Table:
    """The table of a history file, checked against the SHA-256 and row count the ledger recorded."""
    path = folder / file
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        if hashlib.sha256(data).hexdigest() != sha256:
            problem = "its content is not what the ledger recorded (altered or damaged since)"
        else:
            table = pq.read_table(pa.BufferReader(data), read_dictionary=[*_MONTHS, "view", "run_id"])
            if table.num_rows == rows:
                return table
            problem = f"it does not hold the {rows} row(s) the ledger recorded"
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as exc:
        problem = f"it cannot be read ({exc})"
    raise SourceUnavailable(f"the state store's {what} file {path}: {problem}; restore the state folder from a "
                            "backup", Location(str(path)))


def sweep(folder: Path, keep: set[str]) -> None:
    """Remove the history files the ledger no longer names (nor keeps for a reader of the previous one)."""
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError:
        return
    for name in names:
        if _FILE.fullmatch(name) and name not in keep:
            try:
                os.unlink(folder / name)
            except OSError:
                pass   # removed next time


def remove(folder: Path, names) -> None:
    for name in names:
        try:
            os.unlink(folder / name)
        except OSError:
            pass


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
