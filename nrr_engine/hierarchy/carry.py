"""Matching's proposals carried from one run to the next, so a rerun matches only where something changed.

A rule's proposals are a function of the matching code, the rule, the Account columns it reads (and the
hierarchy arrays its conditions and tie-breakers read) and which accounts may take a parent. Each rule's are
kept under a digest of all of that; a rerun whose rule reads the same columns takes the proposals of the children
still allowed (and the placeholder families still orphaned) instead of matching again. Being addressed by
content, an entry is never used for other inputs, whatever happened between the runs (edits, rollback, a kill).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..model import Nones
from ..packed import Texts
from . import match

# Evidence kinds a kept proposal may carry, by code (0: a dict, as ties and tie-breakers write it; 1: none)
_EVIDENCE: tuple[type, ...] = (dict, type(None), match.NameEvidence, match.KeyEvidence, match.DomainEvidence,
                               match.MappingEvidence)
_CODE = {kind: c for c, kind in enumerate(_EVIDENCE)}
_PSEUDO = {"$is_root": "parent", "$arr": "arr", "$child_count": "child_count", "$depth": "depth"}
_TIE_ARRAYS = {"largest_arr": "arr", "most_children": "child_count"}


def code_digest() -> str:
    """The code proposals come from (this package: the matchers, name and domain normalisation, duplicates; the
    rule kinds and conditions; the packed columns) and the libraries they call: an upgrade matches again."""
    from ..rules import kinds, model
    from .. import packed
    h = hashlib.sha256()
    for path in [*sorted(Path(__file__).parent.glob("*.py")), *(Path(m.__file__) for m in (kinds, model, packed))]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    for lib in ("rapidfuzz", "tldextract", "cleanco", "pycountry"):
        try:
            h.update(f"{lib}={metadata.version(lib)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}=-".encode())
    return h.hexdigest()[:32]


def _canonical(value: Any) -> Any:
    """A rule as plain JSON data, sets sorted: the same rule gives the same text in every process."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"$": type(value).__name__, **{f.name: _canonical(getattr(value, f.name))
                                              for f in dataclasses.fields(value) if f.compare}}
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    return value if value is None or isinstance(value, (str, int, float, bool)) else repr(value)


def rule_digest(view: str, rule) -> str:
    """Which rule of which view an entry belongs to: its kind and every setting (mapping entries included, with
    where each is written, which their evidence quotes); not where the rule itself is written, which no proposal
    says, so a project copied or moved elsewhere keeps its entries."""
    settings = _canonical(rule)
    settings.pop("location", None)
    text = json.dumps([view, rule.type, settings], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def column_digest(values) -> str:
    """The values of one column, None told apart from '' and text from numbers."""
    h = hashlib.sha256()
    if isinstance(values, Nones):
        h.update(f"nones:{len(values)}".encode())
    elif isinstance(values, Texts):
        h.update(b"packed")
        h.update(values.packed().tobytes())
        h.update(values.none_marks())
    else:
        cells = values.tolist() if isinstance(values, np.ndarray) else list(values)
        blob = None
        if set(map(type, cells)) <= {str, type(None)}:
            # NUL between cells, \x01 for None: unambiguous while no value holds either
            nones = cells.count(None)
            blob = "\x00".join(cells if not nones else ["\x01" if v is None else v for v in cells])
            if blob.count("\x00") != max(len(cells) - 1, 0) or blob.count("\x01") != nones:
                blob = None
        if blob is not None:
            h.update(b"texts")
            h.update(blob.encode("utf-8", "surrogatepass"))
        else:   # numbers, or a NUL in a value: cell by cell
            for v in cells:
                h.update(f"{type(v).__name__}:{v!r}\x00".encode("utf-8", "surrogatepass"))
    h.update(str(len(values)).encode())
    return h.hexdigest()


def columns_digest(cache: dict, ids, column: Callable[[str], Any], fields: list[str], code: str) -> str:
    """The Ids and the columns `fields`, each digested once per run (kept in `cache`, matching's shared one)."""
    h = hashlib.sha256(code.encode())
    for name in ["$ids", *fields]:
        key = ("digest", name)
        if key not in cache:
            try:
                cache[key] = column_digest(ids if name == "$ids" else column(name))
            except KeyError:   # a field the org does not have (CreatedDate for oldest): read as blank
                cache[key] = "absent"
        h.update(f"{name}={cache[key]}\n".encode())
    return h.hexdigest()


def inputs_digest(pop, rule, code: str) -> str:
    """Everything `rule`'s proposals depend on besides which accounts may take a parent."""
    fields = list(rule.fields())
    if any(t.kind == "oldest" for t in rule.tie_break):
        fields.append("CreatedDate")
    h = hashlib.sha256(columns_digest(pop._cache, pop.ids, pop.col, fields, code).encode())
    arrays = {_PSEUDO[c.field] for c in (*rule.child, *rule.candidate) if c.field in _PSEUDO}
    arrays |= {_TIE_ARRAYS[t.kind] for t in rule.tie_break if t.kind in _TIE_ARRAYS}
    for name in sorted(arrays):   # this view's hierarchy: what $is_root, $arr, most_children... read
        h.update(name.encode())
        h.update(np.ascontiguousarray(getattr(pop, name), dtype=np.int64).tobytes())
    return h.hexdigest()


# ---- an entry: one rule's proposals as arrays ---------------------------------------------------------

_CHUNK = 20_000   # proposals whose evidence is one JSON line: made, compressed and read a line at a time


def pack(inputs: str, allowed: np.ndarray, placeholders: bool, proposals, holders, notes) -> dict | None:
    """One rule's output as arrays and JSON; the evidence as JSON lines, one per chunk of proposals (each the
    chunk's evidence of every kind), zlib-compressed. None when some evidence is of a kind that cannot be carried
    (the rule then matches again next run)."""
    n = len(proposals)
    codes = np.zeros(n, dtype=np.uint8)
    squeeze = zlib.compressobj(1)
    parts = []
    for lo in range(0, n, _CHUNK):
        by_kind: list[list] = [[] for _ in _EVIDENCE]
        chunk = [_CODE.get(type(p.evidence), -1) for p in proposals[lo:lo + _CHUNK]]
        if -1 in chunk:
            return None
        codes[lo:lo + len(chunk)] = chunk
        for c, p in zip(chunk, proposals[lo:lo + _CHUNK]):
            by_kind[c].append(p.evidence)   # a NamedTuple is written as a JSON array
        try:
            line = json.dumps(by_kind, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):
            return None
        parts.append(squeeze.compress((line + "\n").encode()))
    parts.append(squeeze.flush())
    meta = {"inputs": inputs, "placeholders": placeholders, "notes": list(notes),
            "holders": [[match.family_key(h), list(map(int, h.members)), list(h.qualifiers)] for h in holders]}
    return {"meta": meta, "mask": np.packbits(allowed), "count": np.array([len(allowed)], dtype=np.int64),
            "child": np.fromiter((p.child for p in proposals), dtype=np.int32, count=n),
            "parent": np.fromiter((p.parent for p in proposals), dtype=np.int32, count=n),
            "confidence": np.fromiter((p.confidence for p in proposals), dtype=np.float64, count=n),
            "kind": codes, "evidence": np.frombuffer(b"".join(parts), dtype=np.uint8)}


def _evidence(c: int, raw):
    if c == 0:
        return raw
    if c == 1:
        return None
    return _EVIDENCE[c](*(tuple(v) if isinstance(v, list) else v for v in raw))


def unpack(entry: Mapping[str, Any], pop, rule, allowed: np.ndarray) -> tuple[list, list, list[str]] | None:
    """The rule's (proposals, placeholders, notes) for the children `allowed` now, from an entry made when at least
    those were allowed; None when some child allowed now was not then (it was never matched)."""
    n = int(entry["count"][0])
    if n != len(allowed):
        return None
    mask = np.unpackbits(entry["mask"], count=n).astype(bool)
    if (allowed & ~mask).any():
        return None
    child, codes = entry["child"], entry["kind"]
    keep = np.flatnonzero(allowed[child.astype(np.int64)]) if len(child) else np.zeros(0, dtype=np.int64)
    lines = zlib.decompress(entry["evidence"].tobytes()).split(b"\n") if len(keep) else []
    parents, confidences = entry["parent"][keep].tolist(), entry["confidence"][keep].tolist()
    proposals, chunk, by_kind, place = [], -1, None, None
    for k, i, p, conf in zip(keep.tolist(), child[keep].tolist(), parents, confidences):
        if k // _CHUNK != chunk:   # the chunk's evidence, and each proposal's place among that of its kind
            chunk = k // _CHUNK
            by_kind = json.loads(lines[chunk])
            cs = codes[chunk * _CHUNK:(chunk + 1) * _CHUNK]
            place = np.zeros(len(cs), dtype=np.int64)
            for c in range(len(_EVIDENCE)):
                at = np.flatnonzero(cs == c)
                place[at] = np.arange(len(at))
        c = int(codes[k])
        proposals.append(match.Proposal(i, p, rule, conf, _evidence(c, by_kind[c][place[k - chunk * _CHUNK]])))
    meta = entry["meta"]
    holders = []
    for group, members, quals in meta["holders"]:
        kept = [(m, q) for m, q in zip(members, quals or [None] * len(members)) if allowed[m]]
        h = match.family_holder(pop, rule, group, [m for m, _ in kept], [q for _, q in kept] if quals else ())
        if h is not None:
            holders.append(h)
    holders.sort(key=lambda h: h.members[0])   # as matching again would order them: by their first member
    return proposals, holders, list(meta["notes"])


_KEPT = "kept"   # an entry of the last run, used again as it is


class Carried:
    """The entries of the last run (loaded when first asked for) and those of this one, for the next."""

    def __init__(self, previous: Mapping[str, dict] | None = None,
                 load: Callable[[str], Mapping[str, Any]] | None = None):
        self.previous = dict(previous or {})   # key -> meta
        self._load = load
        self.entries: dict[str, dict | str] = {}   # key -> a fresh entry, or _KEPT: the last run's, as it is
        self.code = code_digest()
        self.reused: dict[str, int] = {}
        self.matched: list[str] = []      # rules (and checks) computed again this run

    def propose(self, pop, view: str, rules, placeholders: bool) -> tuple[list, list, list[str]]:
        """match.propose, each rule's output taken from the last run's where its inputs are the same."""
        proposals: list = []
        holders: list = []
        notes: list[str] = []
        for rule in rules:
            key = rule_digest(view, rule)
            inputs = inputs_digest(pop, rule, self.code)
            allowed = pop.unlocked if rule.override else pop.eligible
            got = self._reuse(key, inputs, allowed, placeholders, pop, rule)
            if got is None:
                self.matched.append(rule.name)
                got = rule.propose(pop, placeholders)
                entry = pack(inputs, allowed, placeholders, *got)
                if entry is not None:
                    self.entries[key] = entry
            else:
                self.entries[key] = _KEPT
                self.reused[rule.name] = len(got[0])
            proposals.extend(got[0])
            notes.extend(got[2])
            if placeholders:
                holders.extend(got[1])
        return proposals, holders, notes

    def memo(self, name: str, inputs: str, compute: Callable[[], Any]) -> Any:
        """`compute()` (a JSON value), or the last run's for the same `inputs` (a digest made with self.code)."""
        key = f"memo:{name}"
        meta = self.previous.get(key)
        if meta is not None and meta.get("inputs") == inputs:
            self.entries[key] = _KEPT
            self.reused[name] = len(meta["value"]) if isinstance(meta["value"], list) else 1
            return meta["value"]
        self.matched.append(name)
        value = compute()
        self.entries[key] = {"meta": {"inputs": inputs, "value": value}}
        return value

    def _reuse(self, key: str, inputs: str, allowed: np.ndarray, placeholders: bool, pop, rule):
        meta = self.previous.get(key)
        if meta is None or meta["inputs"] != inputs or (placeholders and not meta["placeholders"]) \
                or self._load is None:
            return None
        return unpack({**self._load(key), "meta": meta}, pop, rule, allowed)

    def changed(self) -> bool:
        """Whether the next run would find other entries than the last run left."""
        return any(e is not _KEPT for e in self.entries.values()) or set(self.entries) != set(self.previous)

    def arrays(self, key: str) -> dict:
        """The entry `key` for writing: this run's, or the last run's as it was."""
        entry = self.entries[key]
        if entry is not _KEPT:
            return entry
        return {"meta": self.previous[key]} if key.startswith("memo:") else {**self._load(key), "meta": self.previous[key]}
