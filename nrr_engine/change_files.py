"""A run's large batches of changes, each kept as one columnar file beside the ledger (the ledger owns them).

A first run at a million accounts sets four rollup fields on every account: 4 M change rows cost ~15 s to insert
into SQLite and as much again to commit, while the same columns packed (packed.py) and written as one `.npz` a
batch cost well under a second. The ledger records each file with its SHA-256 and reads it back for rollback,
export and `runs show`; a file missing or altered since is an error naming it, never a silent gap.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np

from .errors import Location, SourceUnavailable
from .packed import pack_column_parts, unpack_column
from .safe_output import atomic_file

MIN_ROWS = 20_000   # a batch this long without per-change evidence goes to a file; smaller ones stay rows
_RUN_ID = re.compile(r"[A-Za-z0-9._-]+")
_COLUMNS = ("ids", "keys", "old", "new")


def folder_for(ledger_path: Path) -> Path:
    """The folder of a ledger's change files: `nrr-changes/` beside `nrr.db`."""
    return Path(ledger_path).with_name(f"{Path(ledger_path).stem}-changes")


def _run_folder(folder: Path, run_id: str) -> Path:
    if not _RUN_ID.fullmatch(run_id) or run_id in (".", ".."):
        raise ValueError(f"run id {run_id!r} cannot name a folder")
    return folder / run_id


def write(folder: Path, run_id: str, seq: int, columns: dict) -> tuple[str, str] | None:
    """Write one batch's columns (ids, old, new and, for upserts, keys) as `<run>/<seq>.npz`, synced to disk
    before the ledger names it; returns (file name relative to `folder`, SHA-256), or None when a value cannot
    be packed (a NUL in it: the caller keeps the batch as rows)."""
    count = len(columns["ids"])
    names = [c for c in _COLUMNS if c in columns]
    target = _run_folder(folder, run_id) / f"{seq}.npz"
    try:
        _write(target, columns, names, count)
    except _Unpackable:
        return None   # atomic_file removed what was written of it
    return f"{run_id}/{seq}.npz", _sha256(target)


class _Unpackable(Exception):
    """A value holds a NUL: the batch cannot be packed."""


def _write(target: Path, columns: dict, names: list[str], count: int) -> None:
    with atomic_file(target, "wb") as fh:
        # an .npz written a column at a time: one packed column in memory, not all of them (~50 MB each at 1M)
        with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in names:
                packed = pack_column_parts(columns[name])
                if packed is None:
                    raise _Unpackable(name)
                parts, size, bits = packed
                with zf.open(f"{name}.npy", "w", force_zip64=True) as out:   # the .npy write_array would write
                    np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False,
                                                               "shape": (size,)})
                    try:
                        for k, part in enumerate(parts):
                            if k:
                                out.write(b"\x00")
                            out.write(part.data)
                    except ValueError:   # a value changed between counting and packing
                        raise _Unpackable(name) from None
                with zf.open(f"{name}_none.npy", "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, bits, allow_pickle=False)
                del packed, parts
            with zf.open("meta.npy", "w") as out:
                np.lib.format.write_array(out, np.array(json.dumps({"count": count, "columns": names})))
        fh.flush()
        os.fsync(fh.fileno())


def read(folder: Path, name: str, sha256: str, count: int, run_id: str) -> dict[str, list]:
    """The columns of a change file, checked against the SHA-256 and row count the ledger recorded."""
    path = folder / name
    problem = None
    try:
        if _sha256(path) != sha256:
            problem = "its content is not what the run recorded (altered or damaged since)"
        else:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"][()]))
                out = {c: unpack_column(z[c], z[f"{c}_none"], count) for c in meta["columns"]}
            if meta["count"] != count or any(v is None for v in out.values()):
                problem = f"it does not hold the {count} change(s) the run recorded"
            else:
                return out
    except FileNotFoundError:
        problem = "it is missing"
    except (OSError, ValueError, KeyError) as exc:
        problem = f"it cannot be read ({exc})"
    raise SourceUnavailable(f"the ledger's change file {path} of run {run_id} ({count} change(s)): {problem}; the "
                            "run's other records are intact, but its changes cannot be listed, exported or rolled "
                            "back without it: restore the state folder from a backup", Location(str(path)))


def discard(folder: Path, run_id: str) -> None:
    """Remove a run's change files (a write that never reached the ledger)."""
    shutil.rmtree(_run_folder(folder, run_id), ignore_errors=True)


def runs_with_files(folder: Path) -> list[str]:
    """The runs that have a folder of change files."""
    try:
        return [p.name for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
