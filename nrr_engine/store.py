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


# ---- derived columns (matching's name keys and sites) ---------------------------------------------

def _code_digest() -> str:
    """The code that derives the columns: a new normalisation (an upgrade) derives everything again."""
    from .hierarchy import match, normalise
    h = hashlib.sha256()
    for mod in (normalise, match):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:16]


def _pack(values: list) -> np.ndarray | None:
    """Strings (None as '') as one UTF-8 buffer joined by NUL; None when a value holds a NUL itself."""
    texts = ["" if v is None else str(v) for v in values]
    blob = "\x00".join(texts)
    if blob.count("\x00") != max(len(texts) - 1, 0):
        return None
    return np.frombuffer(blob.encode("utf-8", "surrogatepass"), dtype=np.uint8)


def _unpack(buf: np.ndarray, n: int) -> list[str] | None:
    out = buf.tobytes().decode("utf-8", "surrogatepass").split("\x00") if n else []
    return out if len(out) == n else None


def seed(cols: "Columns | None", accounts) -> dict:
    """Matching's derived columns for this run, from a store's (any store of the same code: they are a function
    of the raw values alone) where an account's raw value is unchanged, the rest derived again: a dict to seed
    the Population caches with, empty without a store."""
    from .hierarchy import match
    if cols is None or not cols.derived:
        return {}
    n, pos = len(accounts.ids), None
    if cols.ids != accounts.ids:  # other accounts, or another order: put the old values where this run has them
        get = accounts.index.get
        pos = np.fromiter((get(a, -1) for a in cols.ids), dtype=np.int64, count=len(cols.ids))
        have = pos >= 0
        dest = pos[have]
    out = {}
    for (kind, name), (raw, value) in cols.derived.items():
        if not accounts.has(name):
            continue
        if pos is not None:
            def place(column, empty):
                if isinstance(column, np.ndarray):
                    placed = np.zeros(n, dtype=column.dtype)
                    placed[dest] = column[have]
                    return placed
                placed = np.full(n, empty, dtype=object)
                placed[dest] = np.array(column, dtype=object)[have]
                return placed.tolist()
            raw = place(raw, "")
            value = tuple(place(c, "" if kind == "keys" else None) for c in value)
        value, again = match.refresh(kind, raw, value, accounts.column(name))
        out[(kind, name)] = match.seeded(kind, value)
        log.info("store.reused", run=cols.meta.get("run_id"), what=f"matching's {kind} of {name}",
                 derived_again=again)
    return out


def derived_of(shared: dict, accounts) -> dict:
    """The derived columns a repair computed, with the raw values they came from, for the store."""
    from .hierarchy import match
    out = {}
    for key, value in shared.items():
        if len(key) == 2 and key[0] in match.DERIVED and accounts.has(key[1]):
            out[key] = (accounts.column(key[1]), value if isinstance(value, tuple) else (value,))
    return out


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
    derived: dict = dataclasses.field(default_factory=dict)  # (kind, field) -> (raw values, derived columns)

    def column(self, name: str):
        return self.columns[name]


def write(path: Path, meta: dict, ids: list[str], matrix: np.ndarray, membership: dict[str, Membership],
          trees: dict[str, Tree], columns: dict[str, list], excluded, derived: dict | None = None) -> None:
    """Write the store atomically (0600); a failure leaves no store rather than a stale one."""
    arrays: dict[str, np.ndarray] = {}
    kept = []
    for k, ((kind, name), (raw, value)) in enumerate((derived or {}).items()):
        packed = [_pack(raw), *(_pack(c) if isinstance(c, list) else np.asarray(c) for c in value)]
        if any(p is None for p in packed) or len(raw) != len(ids):
            continue
        kept.append({"kind": kind, "field": name, "parts": len(value),
                     "lists": [isinstance(c, list) for c in value]})
        for j, part in enumerate(packed):
            arrays[f"d{len(kept) - 1}_{j}"] = part
    meta = {**meta, "derived": kept, "code": _code_digest()}
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
            derived = {}
            if meta.get("code") == _code_digest():
                for k, d in enumerate(meta.get("derived", [])):
                    raw = _unpack(z[f"d{k}_0"], len(ids))
                    parts = [_unpack(z[f"d{k}_{j + 1}"], len(ids)) if is_list else z[f"d{k}_{j + 1}"]
                             for j, is_list in enumerate(d["lists"])]
                    if raw is None or any(p is None for p in parts):
                        continue
                    if d["kind"] == "sites":   # a site no account has is None, as derived
                        parts[0] = [v or None for v in parts[0]]
                    derived[(d["kind"], d["field"])] = (raw, tuple(parts))
            return Columns(meta, ids, z["matrix"], membership, trees, columns, excluded, derived)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # torn or foreign: never trusted
        log.warning("store.unreadable", file=str(path), error=str(exc))
        return None
