"""The columnar store: what the last run derived (monthly ARR, family membership, trees), as numpy arrays.

A cache next to the ledger, never its source of truth: a run that ends cleanly writes it (one `.npz` file,
atomically), stamped with the ledger's state version; `report nrr` and the next run read it instead of
re-deriving ARR from subscriptions and replaying millions of ledger rows, but only while the stamp, the config,
the month and (for a local org) the CSV files are still the ones it was written from. Anything else (a kill
before it was written, a rollback, a history import, an edited export, a new month) makes it stale, and the
caller computes from the org and the ledger as before.

Why numpy's `.npz` and not Parquet or DuckDB: every stage already computes on numpy arrays, so the store is
those arrays as they are (no conversion either way, no new dependency); an uncompressed `.npz` of a
million-account org loads in well under a second.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import structlog

from .hierarchy.membership import OPEN, Membership, _UNKNOWN
from .hierarchy.tree import Tree
from .safe_output import atomic_file

log = structlog.get_logger("nrr_engine")

VERSION = 1
NAME = "columns.npz"


def path_for(state: Path) -> Path:
    """Where the store of a ledger lives: beside it, in the state folder."""
    return Path(state).parent / NAME


def config_digest(config_file: Path) -> str:
    """The config's bytes, hashed: views, ARR source and months shape everything the store holds."""
    return hashlib.sha256(Path(config_file).read_bytes()).hexdigest()[:16]


def csv_signature(org) -> dict[str, list[int]] | None:
    """(size, mtime_ns) of each CSV file a local org holds; None for Salesforce (its store is read as the last run
    saw the org: a report makes no API call)."""
    if getattr(org, "remote", False):
        return None
    out = {}
    for p in sorted(Path(org.folder).glob("*.csv")):
        try:
            st = os.stat(p)
        except OSError:
            continue
        out[p.name] = [st.st_size, st.st_mtime_ns]
    return out


# ---- membership after a run ---------------------------------------------------------------------

def committed(m: Membership, changes: list[tuple[str, str]], index: dict[str, int], month: int) -> Membership:
    """The membership `Ledger.commit_membership` leaves after recording `changes` ((account Id, root Id)) for
    `month`, computed on the arrays: for each changed account, an open segment that began this month goes, an
    older one ends last month, and a new open segment starts this month."""
    if not changes:
        return m
    changed = np.fromiter((index[a] for a, _ in changes), dtype=np.int32, count=len(changes))
    names = {name: label for label, name in m.unknown.items()}
    unknown = dict(m.unknown)

    def root(r: str) -> int:
        j = index.get(r)
        if j is not None:
            return j
        if r not in names:
            label = _UNKNOWN - len(names)
            names[r] = label
            unknown[label] = r
        return names[r]

    roots = np.fromiter((root(r) for _, r in changes), dtype=np.int32, count=len(changes))
    hit = np.isin(m.account, changed) & (m.end == OPEN)
    keep = ~(hit & (m.start >= month))
    end = m.end.copy()
    end[hit & (m.start < month)] = month - 1
    n = len(changed)
    return Membership(m.view, np.concatenate([m.account[keep], changed]),
                      np.concatenate([m.start[keep], np.full(n, month, dtype=np.int32)]),
                      np.concatenate([end[keep], np.full(n, OPEN, dtype=np.int32)]),
                      np.concatenate([m.root[keep], roots]), unknown)


def remap(m: Membership, old_ids: list[str], index: dict[str, int]) -> Membership:
    """A membership over `old_ids` (the accounts of the run that stored it) re-indexed for this run's `index`:
    accounts that left become -1, roots that left become named unknown roots (as `from_segments` reads them)."""
    pos = np.fromiter((index.get(a, -1) for a in old_ids), dtype=np.int64, count=len(old_ids))
    account = np.where(m.account >= 0, pos[np.maximum(m.account, 0)], -1).astype(np.int32)
    names = {name: label for label, name in m.unknown.items()}
    unknown = dict(m.unknown)
    root = m.root.astype(np.int64)
    known = root >= 0
    new_root = np.where(known, pos[np.where(known, root, 0)], root)
    gone = np.flatnonzero(known & (new_root < 0))
    if len(gone):
        for k, old in zip(gone.tolist(), root[gone].tolist()):
            name = old_ids[old]
            if name not in names:
                label = _UNKNOWN - len(names)
                names[name] = label
                unknown[label] = name
            new_root[k] = names[name]
    return Membership(m.view, account, m.start, m.end, new_root.astype(np.int32), unknown)


# ---- the file ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Columns:
    """The store's content: the arrays of one run, and what it was written from."""

    meta: dict
    ids: list[str]
    matrix: np.ndarray                       # accounts x months ARR units, from meta["first"]
    membership: dict[str, Membership]        # view -> membership after the run
    families: dict[str, Tree]                # view -> the run's families (a tree with families and virtual only)
    columns: dict[str, np.ndarray]           # Account field -> values ('' for none), for segments
    excluded: tuple[np.ndarray, np.ndarray, np.ndarray] | None

    def column(self, name: str):
        return self.columns[name]


def write(path: Path, meta: dict, ids: list[str], matrix: np.ndarray, membership: dict[str, Membership],
          trees: dict[str, Tree], columns: dict[str, list], excluded) -> None:
    """Write the store atomically (0600); a failure leaves no store rather than a stale one."""
    arrays: dict[str, np.ndarray] = {}
    try:
        arrays["ids"] = np.array(ids, dtype="S")
        ascii_ids = True
    except UnicodeEncodeError:
        arrays["ids"] = np.array(ids, dtype="U")
        ascii_ids = False
    arrays["matrix"] = np.ascontiguousarray(matrix, dtype=np.int64)
    views = []
    for k, (name, m) in enumerate(membership.items()):
        tree = trees[name]
        views.append({"name": name, "unknown": {str(l): n for l, n in m.unknown.items()},
                      "virtual": {str(l): n for l, n in (tree.virtual or {}).items()}})
        for part in ("account", "start", "end", "root"):
            arrays[f"m{k}_{part}"] = getattr(m, part)
        arrays[f"f{k}"] = np.asarray(tree.families(), dtype=np.int64)
    cols = list(columns)
    for k, name in enumerate(cols):
        arrays[f"c{k}"] = np.array(["" if v is None else str(v) for v in columns[name]], dtype="U")
    if excluded is not None and len(excluded):
        arrays["x_units"], arrays["x_first"], arrays["x_last"] = excluded.units, excluded.first, excluded.last
    for stale in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):  # a write killed part-way (atomic_file's)
        discard(stale)
    full = {**meta, "version": VERSION, "views": views, "columns": cols, "ascii_ids": ascii_ids}
    arrays["meta"] = np.array(json.dumps(full, sort_keys=True))
    try:
        with atomic_file(path, "wb") as fh:
            np.savez(fh, **arrays)
    except OSError as exc:
        discard(path)
        log.warning("store.unwritten", file=str(path), error=str(exc))


def discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def read(path: Path) -> Columns | None:
    """The store at `path`, or None when there is none or it cannot be read (it is then recomputed)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("version") != VERSION:
                return None
            raw = z["ids"]
            ids = raw.astype("U").tolist() if meta.get("ascii_ids") else raw.tolist()
            membership, trees = {}, {}
            for k, v in enumerate(meta["views"]):
                membership[v["name"]] = Membership(v["name"], *(z[f"m{k}_{p}"] for p in ("account", "start", "end", "root")),
                                                   {int(l): n for l, n in v["unknown"].items()})
                fam = z[f"f{k}"]
                trees[v["name"]] = Tree(np.empty(0, dtype=np.int64), fam, np.empty(0, dtype=np.int64), None,
                                        {int(l): n for l, n in v["virtual"].items()} or None)
            columns = {name: z[f"c{k}"].tolist() for k, name in enumerate(meta["columns"])}
            excluded = (z["x_units"], z["x_first"], z["x_last"]) if "x_units" in z.files else None
            return Columns(meta, ids, z["matrix"], membership, trees, columns, excluded)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # torn or foreign: never trusted
        log.warning("store.unreadable", file=str(path), error=str(exc))
        return None
