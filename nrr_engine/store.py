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
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from .hierarchy.membership import OPEN, Membership, _UNKNOWN
from .hierarchy.tree import Tree
from .metrics.monthly import MonthlyArr
from .packed import Texts, pack, pack_column, unpack, unpack_column
from .safe_output import atomic_file

log = structlog.get_logger("nrr_engine")

VERSION = 2   # 2: monthly ARR as runs (MonthlyArr), not a dense matrix
NAME = "columns.npz"
STAMP = "columns.stamp"   # beside it: a later stamp for the same file, from a run that changed nothing in it


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


def remap(m: Membership, pos: np.ndarray, old_ids: list[str]) -> Membership:
    """A membership over `old_ids` (the accounts of the run that stored it) re-indexed for this run, `pos` holding
    each old account's position in it (-1: not in this run): accounts that left become -1, roots that left
    become named unknown roots (as `from_segments` reads them)."""
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


def pack_columns(accounts, names, derived: dict | None = None, same: "Columns | None" = None) -> dict:
    """Account columns packed for the store (fields the repair stage is about to let go); a column matching
    packed already as the raw values of a derived column shares that buffer (a million names are held once).
    `same`: a store whose account columns are provably these (fetch took them from it unchanged): its packed
    columns, read from its file only if the store is written again (a quiet night only stamps it)."""
    raw = {name: entry["raw"] for (kind, name), entry in (derived or {}).items()}
    out: dict = {}
    held = (same.meta.get("account_columns") or []) if same is not None else []
    for name in names:
        if name in held:
            k = held.index(name)
            out[name] = lambda k=k: (same._z[f"a{k}"], same._z[f"a{k}_none"])
            continue
        values = accounts.column(name)
        if name in raw:
            out[name] = (raw[name], np.packbits(np.fromiter((v is None for v in values), dtype=bool, count=len(values))))
            continue
        packed = pack_column(values)
        if packed is not None:
            out[name] = packed
    return out


def account_columns(plan_accounts, packed: dict, changes, fields: list[str]) -> dict | None:
    """Every column the run read (`fields`, Id first) as the working copy holds it after the run's writes: the
    packed columns the repair let go (never written) and the kept ones with the plan's Account changes applied;
    None when one cannot be packed."""
    out: dict = {}
    by_field: dict[str, list] = {}
    for batch in changes:
        if batch.object == "Account" and len(batch):
            by_field.setdefault(batch.field.lower(), []).append(batch)
    for name in fields[1:]:
        if name in packed:
            out[name] = lambda name=name: packed[name]() if callable(packed[name]) else packed[name]
            continue
        if not plan_accounts.has(name):
            return None
        out[name] = lambda name=name: _account_column(plan_accounts.column(name), by_field.get(name.lower(), []))
    return out


def _account_column(col, batches) -> tuple[np.ndarray, np.ndarray] | None:
    """A column with the plan's changes of it applied, packed (None for a NUL): made as the store writes it, so
    the columns are never all packed at once."""
    if batches:
        col = list(col)
        for batch in batches:
            for r, v in zip(np.asarray(batch.rows).tolist(), batch.new):
                col[r] = v
    return pack_column(col)


def seed(cols: "Columns | None", accounts) -> dict:
    """Matching's derived columns for this run, from a store's (any store of the same code: they are a function
    of the raw values alone) where an account's raw value is unchanged, the rest derived again: a dict to seed
    the Population caches with, empty without a store."""
    from .hierarchy import carry, match
    derived = cols.derived if cols is not None else {}
    if not derived:
        return {}
    n = len(accounts.ids)
    same = cols.same_ids(accounts.ids)
    if not same:  # other accounts, or another order: put the old values where this run has them
        get = accounts.index.get
        pos = np.fromiter((get(a, -1) for a in cols.ids), dtype=np.int64, count=len(cols.ids))
        have = pos >= 0
        dest = pos[have]

    def place(column, empty):
        if isinstance(column, np.ndarray):
            placed = np.zeros(n, dtype=column.dtype)
            placed[dest] = column[have]
            return placed
        placed = np.full(n, empty, dtype=object)
        placed[dest] = np.array(list(column), dtype=object)[have]
        return placed.tolist()

    out, kept = {}, {}
    for (kind, name), entry in derived.items():
        if not accounts.has(name):
            continue
        new_raw = accounts.column(name)
        m = len(cols.ids)
        # a site no account has is None, as derived
        parts = [Texts.from_packed(p, m, none_when_empty=kind == "sites" and j == 0) if is_list else p
                 for j, (p, is_list) in enumerate(zip(entry["parts"], entry["lists"]))]
        if any(p is None for p in parts):
            continue
        # the raw values compared by matching's column digest (which carry then reuses), or, in a store written
        # before it kept one, by the packed values' sha
        digest = carry.column_digest(new_raw) if same and entry.get("digest") else None
        if digest is not None:
            out[("digest", name)] = digest
            unchanged = digest == entry["digest"]
        else:
            packed = pack(new_raw) if same else None
            unchanged = packed is not None and entry.get("sha") == hashlib.sha256(packed).hexdigest()
        if unchanged:
            value, again = tuple(parts), 0   # every raw value as the store has it: nothing to derive
            kept[(kind, name)] = entry       # written again as it is (not packed again) by derived_of
        else:
            raw = unpack(entry["raw"], m)
            if raw is None:
                continue
            if not same:
                raw = place(raw, "")
                parts = [place(c, "" if kind == "keys" else None) for c in parts]
            value, again = match.refresh(kind, raw, tuple(parts), new_raw)
        out[(kind, name)] = match.seeded(kind, value)
        log.info("store.reused", run=cols.meta.get("run_id"), what=f"matching's {kind} of {name}",
                 derived_again=again)
    if kept:
        out[_KEPT] = kept
    return out


_KEPT = ("store", "unchanged")   # a key of the seeded cache: the store's entries whose raw values are unchanged


def derived_of(shared: dict, accounts) -> dict:
    """The derived columns a repair computed, packed (one UTF-8 buffer each, not a million Python strings held to
    the end of the run) with the raw values they came from, for the store; a column holding a NUL is left out."""
    from .hierarchy import carry, match
    kept = shared.get(_KEPT, {})
    out = {}
    for key, value in shared.items():
        if key in kept:
            out[key] = kept[key]
            continue
        if len(key) == 2 and key[0] in match.DERIVED and accounts.has(key[1]):
            parts = value if isinstance(value, tuple) else (value,)
            packed = [pack(accounts.column(key[1])),
                      *(c.packed() if isinstance(c, Texts) else pack(c) if isinstance(c, list) else np.asarray(c)
                        for c in parts)]
            if all(p is not None for p in packed):
                digest = shared.get(("digest", key[1])) or carry.column_digest(accounts.column(key[1]))
                out[key] = {"raw": packed[0], "parts": packed[1:],
                            "lists": [isinstance(c, (list, Texts)) for c in parts],
                            "sha": hashlib.sha256(packed[0]).hexdigest(), "digest": digest}
    return out


# ---- the file ----------------------------------------------------------------------------------

def write(path: Path, meta: dict, ids: list[str], matrix: MonthlyArr, membership: dict[str, Membership],
          trees: dict[str, Tree], columns: dict[str, list], excluded, derived: dict | None = None,
          accounts: dict | None = None) -> None:
    """Write the store atomically (0600); a failure leaves no store rather than a stale one."""
    arrays: dict[str, Any] = {}   # arrays, or callables making {member: array} when they are written
    unpackable = []
    if accounts is not None:
        meta = {**meta, "account_columns": list(accounts)}

        def members(k: int, make) -> dict:
            got = None if unpackable else make()
            if got is None:   # a NUL in a value: no account columns in this store (the meta says so)
                unpackable.append(k)
                return {}
            return {f"a{k}": got[0], f"a{k}_none": got[1]}
        for k, make in enumerate(accounts.values()):
            arrays[f"a{k}"] = lambda k=k, make=make: members(k, make)
    else:
        meta = {**meta, "account_fields": None}
    kept = []
    for (kind, name), entry in (derived or {}).items():
        k = len(kept)
        kept.append({"kind": kind, "field": name, "lists": entry["lists"], "sha": entry["sha"],
                     "digest": entry.get("digest")})
        for j, part in enumerate([entry["raw"], *entry["parts"]]):
            arrays[f"d{k}_{j}"] = part
    meta = {**meta, "derived": kept, "code": _code_digest()}
    try:
        arrays["ids"] = np.array(ids, dtype="S")
        ascii_ids = True
    except UnicodeEncodeError:
        arrays["ids"] = np.array(ids, dtype="U")
        ascii_ids = False
    arrays["arr_shape"] = np.array(matrix.shape, dtype=np.int64)
    for part in ("row", "start", "end", "units"):
        arrays[f"arr_{part}"] = getattr(matrix, part)
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
        packed = pack(columns[name])
        arrays[f"c{k}"] = packed if packed is not None else np.array(["" if v is None else str(v) for v in columns[name]],
                                                                     dtype="U")
    if excluded is not None and len(excluded):
        arrays["x_units"], arrays["x_first"], arrays["x_last"] = excluded.units, excluded.first, excluded.last
    for stale in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):  # a write killed part-way (atomic_file's)
        discard(stale)
    full = {**meta, "version": VERSION, "views": views, "columns": cols, "ascii_ids": ascii_ids}

    def meta_array():   # last: whether the account columns could be packed is known by then
        if unpackable:
            full.pop("account_columns", None)
            full["account_fields"] = None
        return {"meta": np.array(json.dumps(full, sort_keys=True))}
    arrays["meta"] = meta_array
    if _saved(path, arrays):
        touch(path, full["stamp"], full.get("working_copy"))


def _saved(path: Path, arrays: dict) -> bool:
    """_savez into `path` atomically (0600); a failure leaves no file and is logged, not raised."""
    try:
        with atomic_file(path, "wb") as fh:
            _savez(fh, arrays)
        return True
    except OSError as exc:
        discard(path)
        log.warning("store.unwritten", file=str(path), error=str(exc))
        return False


def _savez(fh, arrays: dict) -> None:
    """np.savez's file (an uncompressed zip of .npy members), a member at a time: a callable gives its members
    ({name: array}) only when they are written, and they are let go before the next."""
    with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            members = value() if callable(value) else {name: value}
            for member_name, array in members.items():
                with zf.open(member_name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
            del members


def _file_id(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def touch(path: Path, stamp: int, working_copy: str | None = None) -> None:
    """Stamp the store at `path` current at `stamp` (and at the working copy's write token) without writing it
    again (a run that changed nothing in it): the stamp file names the store file it is for, so a store written
    later is never taken for this one."""
    side = Path(path).parent / STAMP
    try:
        with atomic_file(side, "w", encoding="utf-8") as fh:
            json.dump({"stamp": stamp, "file": _file_id(path), "working_copy": working_copy}, fh)
    except OSError as exc:
        discard(side)
        log.warning("store.unwritten", file=str(side), error=str(exc))


def _stamped(path: Path, meta: dict) -> dict:
    """The store's stamp and working-copy token: the stamp file's when it names this very file, else the ones
    written inside it."""
    try:
        side = json.loads((Path(path).parent / STAMP).read_text(encoding="utf-8"))
        if isinstance(side, dict) and side.get("file") == _file_id(path):
            return {"stamp": side.get("stamp"), "working_copy": side.get("working_copy")}
    except (OSError, ValueError):
        pass
    return {"stamp": meta.get("stamp"), "working_copy": meta.get("working_copy")}


def discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
    if Path(path).name == NAME:
        with contextlib.suppress(OSError):
            os.unlink(Path(path).parent / STAMP)


def all_kept(derived: dict) -> bool:
    """Whether every derived column of a run is the store's own, unchanged (derived_of kept them as they were)."""
    return all(isinstance(entry, _Entry) for entry in derived.values())


class Columns:
    """A store, read lazily: each array is loaded from the file when first asked for (a run that reuses only
    matching's derived columns never loads the ARR matrix, a report never the derived columns)."""

    def __init__(self, z, meta: dict):
        self._z, self.meta, self._cache = z, meta, {}

    def _get(self, key, load):
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    @property
    def ids(self) -> list[str]:
        def load():
            raw = self._z["ids"]
            return raw.astype("U").tolist() if self.meta.get("ascii_ids") else raw.tolist()
        return self._get("ids", load)

    def same_ids(self, ids: list[str]) -> bool:
        """Whether the store holds exactly these accounts in this order (compared as bytes, no list built; once
        per list: fetch and the repair stage both ask of the run's accounts)."""
        last = self._cache.get("same_ids")
        if last is None or last[0] is not ids or last[1] != len(ids):
            last = self._cache["same_ids"] = (ids, len(ids), self._same_ids(ids))
        return last[2]

    def _same_ids(self, ids: list[str]) -> bool:
        raw = self._z["ids"]
        if len(raw) != len(ids):
            return False
        if self.meta.get("ascii_ids"):
            try:
                return bool(np.array_equal(np.array(ids, dtype="S"), raw))
            except UnicodeEncodeError:
                return False
        return raw.tolist() == ids

    @property
    def size(self) -> int:
        return int(self._z["ids"].shape[0])

    @property
    def matrix(self) -> MonthlyArr:
        def load():
            n, count = self._z["arr_shape"].tolist()
            return MonthlyArr(n, count, *(self._z[f"arr_{part}"] for part in ("row", "start", "end", "units")))
        return self._get("matrix", load)

    @property
    def membership(self) -> dict[str, Membership]:
        def load():
            return {v["name"]: Membership(v["name"], *(self._z[f"m{k}_{p}"] for p in ("account", "start", "end", "root")),
                                          {int(l): n for l, n in v["unknown"].items()})
                    for k, v in enumerate(self.meta["views"])}
        return self._get("membership", load)

    @property
    def families(self) -> dict[str, Tree]:
        def load():
            return {v["name"]: Tree(np.empty(0, dtype=np.int64), self._z[f"f{k}"], np.empty(0, dtype=np.int64), None,
                                    {int(l): n for l, n in v["virtual"].items()} or None)
                    for k, v in enumerate(self.meta["views"])}
        return self._get("families", load)

    @property
    def columns(self) -> dict[str, list]:
        def load():
            out = {}
            for k, name in enumerate(self.meta["columns"]):
                arr = self._z[f"c{k}"]
                out[name] = unpack(arr, self.size) if arr.dtype == np.uint8 else arr.tolist()
            return out
        return self._get("columns", load)

    def column(self, name: str):
        return self.columns[name]

    def accounts(self, fields: list[str]) -> list[list] | None:
        """The columns `fields` (Id first) as the working copy held them after the run, or None when the store
        does not hold exactly these."""
        if self.meta.get("account_fields") != fields or self.meta.get("account_columns") != fields[1:]:
            return None
        n = self.size
        out = [self.ids]
        for k in range(len(fields) - 1):
            col = unpack_column(self._z[f"a{k}"], self._z[f"a{k}_none"], n)
            if col is None:
                return None
            out.append(col)
        return out

    @property
    def excluded(self):
        return self._get("excluded", lambda: (self._z["x_units"], self._z["x_first"], self._z["x_last"])
                         if "x_units" in self._z.files else None)

    @property
    def derived(self) -> dict:
        """(kind, field) -> packed raw values and derived parts, when written by the same normalisation code."""
        def load():
            if self.meta.get("code") != _code_digest():
                return {}
            return {(d["kind"], d["field"]): _Entry(self._z, k, d) for k, d in enumerate(self.meta.get("derived", []))}
        return self._get("derived", load)


class _Entry(dict):
    """A derived column of the store: its raw values ("raw") and parts are read from the file only when used."""

    def __init__(self, z, k: int, d: dict):
        super().__init__(lists=d["lists"], sha=d.get("sha"), digest=d.get("digest"))
        self._z, self._k = z, k

    def __missing__(self, key):
        if key == "raw":
            self[key] = self._z[f"d{self._k}_0"]
        elif key == "parts":
            self[key] = [self._z[f"d{self._k}_{j + 1}"] for j in range(len(self["lists"]))]
        else:
            raise KeyError(key)
        return self[key]


def read(path: Path) -> Columns | None:
    """The store at `path`, or None when there is none or it cannot be read (it is then recomputed). Its arrays
    are loaded when first used, after every member passed its CRC check here."""
    try:
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        if not isinstance(meta, dict) or meta.get("version") != VERSION:
            z.close()
            return None
        if z.zip.testzip() is not None:   # every member's CRC, read in chunks: a damaged file is not trusted
            z.close()
            raise ValueError("a member fails its CRC check")
        meta.update(_stamped(path, meta))
        return Columns(z, meta)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # torn or foreign: never trusted
        log.warning("store.unreadable", file=str(path), error=str(exc))
        return None


# ---- matching's proposals (hierarchy.carry), a file of their own ---------------------------------

PROPOSALS = "proposals.npz"   # beside the store; addressed by content, so valid whatever the ledger did since
_ENTRY_PARTS = ("mask", "count", "child", "parent", "confidence", "kind", "evidence")


def proposals_path(state: Path) -> Path:
    return Path(state).parent / PROPOSALS


def read_proposals(path: Path):
    """The last run's matching proposals as a hierarchy.carry.Carried (empty when there is no file or it cannot be
    read: every rule then matches)."""
    from .hierarchy.carry import Carried
    try:
        if not Path(path).exists():
            return Carried()
        if not zipfile.is_zipfile(path):   # numpy's own message would suggest unpickling it
            raise ValueError("not a proposals file (not an .npz archive); every rule matches again and the run "
                             "writes it anew")
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        if not isinstance(meta, dict) or meta.get("version") != 1 or z.zip.testzip() is not None:
            z.close()
            return Carried()
        keys = meta["keys"]
        return Carried({key: entry for key, entry in zip(keys, meta["entries"])},
                       lambda key: {part: z[f"p{keys.index(key)}_{part}"] for part in _ENTRY_PARTS})
    except FileNotFoundError:
        return Carried()
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("store.unreadable", file=str(path), error=str(exc))
        return Carried()


def write_proposals(path: Path, carried) -> None:
    """Write this run's proposals (atomically, 0600) when they differ from the file's; a failure leaves no file
    (the next run matches every rule)."""
    if carried is None or not carried.changed():
        return
    keys = list(carried.entries)
    metas: list = []
    arrays: dict[str, Any] = {}
    for k, key in enumerate(keys):
        def members(k=k, key=key) -> dict:
            entry = carried.arrays(key)
            metas.append(entry["meta"])
            return {f"p{k}_{part}": entry[part] for part in _ENTRY_PARTS if part in entry}
        arrays[f"p{k}"] = members
    arrays["meta"] = lambda: {"meta": np.array(json.dumps({"version": 1, "keys": keys, "entries": metas}))}
    _saved(path, arrays)
