"""Matching rules -> proposed (child, parent) links, each with its rule, confidence and evidence.

Blocking, never all pairs: key, domain, mapping and name-qualifier rules look candidates up in hash indexes
(O(n)); fuzzy name rules compare each child with its neighbours in the sorted list of names (O(n log n)).
"""
from __future__ import annotations

import bisect
import json
from array import array
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from rapidfuzz import fuzz, process

from .. import money
from ..ids import KEY_PREFIXES, id18, looks_like_id
from ..model import ListLike
from ..packed import Texts
from . import normalise

FUZZY_WINDOW = 8  # neighbours on each side of a child's name in the sorted candidate names


class NameEvidence(NamedTuple):
    """Why a name rule proposed a link. Evidence stays a small tuple until someone reads it (explain):
    a million-account run holds hundreds of thousands of proposals. The compared key and the qualifier
    are recomputed from the child's name then."""

    child_name: str
    qualifier_tokens: int   # how many trailing tokens of the child's normalised name are the qualifier
    kind: str               # country | code | region | division | head | unknown
    country: str | None
    grade: str              # which confidence of the rule applied
    fuzzy: tuple | None = None  # (similar_to, score) for fuzzy matches
    common: str | None = None   # the key is an everyday word where the child is ("sparkasse: Zipf 4.09 in de")

    def to_json(self) -> str:
        """The evidence as JSON, written directly (the ledger stores one per repaired link)."""
        tokens = normalise.name_key(self.child_name)
        n, dumps = self.qualifier_tokens, _text_json
        tokens = (*tokens, *([""] if not n else []))   # no qualifier (another legal form): the key is the name
        n = n or 1
        country = f', "country": "{self.country}"' if self.country else ""
        q = f'{{"words": {dumps(" ".join(tokens[-n:]))}, "kind": "{self.kind}"{country}}}'
        if self.fuzzy:
            return (f'{{"child_name": {dumps(_name(self.child_name))}, "stem": {dumps(" ".join(tokens[:-n]))}, '
                    f'"similar_to": {dumps(self.fuzzy[0])}, "score": {self.fuzzy[1]}, "qualifier": {q}, '
                    f'"grade": "{self.grade}"}}')
        common = f', "common_word": {dumps(self.common)}' if self.common else ""
        return (f'{{"child_name": {dumps(_name(self.child_name))}, "key": {dumps(" ".join(tokens[:-n]))}, '
                f'"qualifier": {q}, "grade": "{self.grade}"{common}}}')

    def as_dict(self) -> dict:
        tokens = normalise.name_key(self.child_name)
        n = self.qualifier_tokens
        tokens = (*tokens, *([""] if not n else []))   # as to_json
        n = n or 1
        q = {"words": " ".join(tokens[-n:]), "kind": self.kind, **({"country": self.country} if self.country else {})}
        name = _name(self.child_name)
        if self.fuzzy:
            return {"child_name": name, "stem": " ".join(tokens[:-n]), "similar_to": self.fuzzy[0],
                    "score": self.fuzzy[1], "qualifier": q, "grade": self.grade}
        out = {"child_name": name, "key": " ".join(tokens[:-n]), "qualifier": q, "grade": self.grade}
        if self.common:
            out["common_word"] = self.common
        return out


_quoted = json.encoder.encode_basestring_ascii   # what json.dumps(text) returns for a str, without the encoder's setup


def _text_json(value) -> str:
    """json.dumps(value), a str (nearly always) quoted in C directly."""
    return _quoted(value) if type(value) is str else json.dumps(value)


class KeyEvidence(NamedTuple):  # explained with _asdict()
    field: str
    value: str
    candidate_field: str

    def to_json(self) -> str:
        """json.dumps(self._asdict(), sort_keys=True), written directly."""
        return (f'{{"candidate_field": {_text_json(self.candidate_field)}, "field": {_text_json(self.field)}, '
                f'"value": {_text_json(self.value)}}}')


class DomainEvidence(NamedTuple):  # explained with _asdict()
    field: str
    domain: str
    child_site: str

    def to_json(self) -> str:
        """json.dumps(self._asdict(), sort_keys=True), written directly: about 100,000 a million-account run."""
        return (f'{{"child_site": {_text_json(self.child_site)}, "domain": {_text_json(self.domain)}, '
                f'"field": {_text_json(self.field)}}}')


class MappingEvidence(NamedTuple):  # explained with _asdict()
    table: str
    child: str
    parent: str

    def to_json(self) -> str:
        """json.dumps(self._asdict(), sort_keys=True), written directly."""
        return (f'{{"child": {_text_json(self.child)}, "parent": {_text_json(self.parent)}, '
                f'"table": {_text_json(self.table)}}}')


class EvidenceJson(str):
    """Evidence already written as its JSON: what a link keeps once matching is over. The evidence objects
    matching made sit among the millions of short-lived ones it freed, and keep their memory from being reused
    (~250 MB at a million accounts); the text is made after they are gone."""

    __slots__ = ()

    def to_json(self) -> str:
        return str.__str__(self)

    def as_dict(self) -> dict:
        return json.loads(self)


def compacted(evidence):
    """`evidence` as EvidenceJson (None stays None)."""
    if evidence is None or isinstance(evidence, EvidenceJson):
        return evidence
    return EvidenceJson(to_json(evidence))


class PackedMeta(ListLike):
    """The (rule, confidence, evidence) of each change of a link batch once matching is over, held as columns:
    rule names by code, confidences as floats, the evidence's JSON texts joined a chunk at a time into one
    string each. A first run at a million accounts applies ~250,000 links: as tuples of small objects they are
    ~80 MB spread over the memory matching freed, kept to the end of the run; packed they are a few large
    strings. Read in order, each chunk is split once; items come back as (rule, confidence, EvidenceJson)."""

    _CHUNK = 10_000

    def __init__(self, meta: Sequence[tuple[str, float | None, Any]]):
        names: dict[str, int] = {}
        self._rules = np.array([names.setdefault(r, len(names)) for r, _, _ in meta], dtype=np.int32)
        self._names = list(names)
        conf = [c for _, c, _ in meta]
        # floats as an array (each comes back as the same float); anything else (None, an int) as it is
        self._conf = np.array(conf, dtype=np.float64) if all(type(c) is float for c in conf) else conf
        self._chunks: list[tuple[str, np.ndarray] | list] = []
        for at in range(0, len(meta), self._CHUNK):
            texts = [to_json(ev) for _, _, ev in meta[at:at + self._CHUNK]]
            none = np.array([t is None for t in texts], dtype=bool)
            joined = "\x00".join(["" if t is None else t for t in texts])
            # JSON escapes a NUL; a chunk whose text holds one anyway (JSON made by hand) stays as its texts
            self._chunks.append((joined, none) if joined.count("\x00") == len(texts) - 1 else texts)

    def __len__(self) -> int:
        return len(self._rules)

    def _raw(self, k: int) -> list[str | None]:
        """The evidence JSON texts of chunk k (None where a change has none)."""
        chunk = self._chunks[k]
        if isinstance(chunk, list):
            return chunk
        joined, none = chunk
        return [None if n else t for t, n in zip(joined.split("\x00"), none.tolist())]

    def json_rows(self) -> Iterator[tuple[str, float | None, str | None]]:
        """(rule, confidence, evidence JSON text) of each change, for the ledger: the texts as they are held."""
        names, rules = self._names, self._rules.tolist()
        confs = self._conf.tolist() if isinstance(self._conf, np.ndarray) else self._conf
        for k in range(len(self._chunks)):
            texts, at = self._raw(k), k * self._CHUNK
            yield from zip([names[r] for r in rules[at:at + len(texts)]], confs[at:at + len(texts)], texts)

    def __iter__(self) -> Iterator[tuple[str, float | None, Any]]:
        for rule, conf, text in self.json_rows():
            yield rule, conf, None if text is None else EvidenceJson(text)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        text, c = self._raw(i // self._CHUNK)[i % self._CHUNK], self._conf[i]
        return (self._names[self._rules[i]], c.item() if isinstance(c, np.floating) else c,
                None if text is None else EvidenceJson(text))

def to_json(evidence) -> str | None:
    """Evidence as JSON for the ledger; the common kinds write their JSON directly."""
    if evidence is None:
        return None
    if hasattr(evidence, "to_json"):
        return evidence.to_json()
    return json.dumps(explain(evidence), sort_keys=True)


def explain(evidence) -> dict:
    """Evidence as a plain dict (for plan.json, the ledger and the review queue)."""
    if evidence is None:
        return {}
    if isinstance(evidence, dict):
        return evidence
    return evidence.as_dict() if hasattr(evidence, "as_dict") else evidence._asdict()


def _name(value) -> str:
    text = str(value)
    return text if len(text) <= 200 else text[:200]


class Proposal(NamedTuple):
    child: int
    parent: int
    rule: Any            # the rules.MatchRule that proposed it (rules are handed in as data)
    confidence: float
    evidence: Any        # NameEvidence | KeyEvidence | DomainEvidence | MappingEvidence | dict (see explain)


class Placeholder(NamedTuple):
    """Accounts that share a family key no account holds: a parent to create (or a virtual root)."""

    key: str            # e.g. name:acme, domain:acme.com, Parent_DUNS__c:123456789
    name: str           # display name of the parent to create
    members: tuple[int, ...]
    rule: Any            # the rules.MatchRule that proposed it (rules are handed in as data)
    confidence: float
    evidence: Any
    qualifiers: tuple[str, ...] = ()   # name families: each member's qualifier ("us", "uk")


def family_holder(pop: "Population", rule, group: str, members: Sequence[int],
                  qualifiers: Sequence[str] = ()) -> Placeholder | None:
    """The parent to create for the accounts `members` (ascending) that share the family key `group` of `rule`'s
    kind (a key value, a domain, a name stem) and that no account holds; None when they make no family: fewer
    than two, or (names) one qualifier twice (a duplicate) or a stem too short to name a company."""
    if len(members) < 2:
        return None
    members = tuple(members)
    if rule.type == "key":
        name = f"{str(pop.col(rule.child_field)[members[0]]).strip()} (family)"
        return Placeholder(f"{rule.child_field}:{group}", name, members, rule, float(rule.confidence),
                           {"field": rule.child_field, "value": group})
    if rule.type == "domain":
        return Placeholder(f"domain:{group}", group, members, rule, float(rule.confidence), {"domain": group})
    if len(group) < 3 or len(set(qualifiers)) < 2:
        return None
    names = pop.col(rule.field)
    display = family_name([str(names[i]) for i in members], group)
    return Placeholder(f"name:{group}", display, members, rule, rule.confidence_for("unit"),
                       {"stem": group, "members": [str(names[i])[:100] for i in members[:10]]}, tuple(qualifiers))


def family_key(holder: Placeholder) -> str:
    """The family key `family_holder` was given for `holder` (its key without the kind's prefix)."""
    rule = holder.rule
    return holder.key[len(rule.child_field) + 1:] if rule.type == "key" else holder.key.split(":", 1)[1]


@dataclass
class Population:
    """The accounts of one view as matching sees them; derived columns are computed once per run."""

    ids: list[str]
    column: Callable[[str], list]
    parent: np.ndarray
    arr: np.ndarray
    child_count: np.ndarray
    depth: np.ndarray
    eligible: np.ndarray                 # may get a new parent (no parent yet, not locked)
    unlocked: np.ndarray                 # not locked (override rules may re-parent these)
    _cache: dict = field(default_factory=dict)

    def value(self, name: str, i: int) -> Any:
        if name == "$is_root":
            return "true" if self.parent[i] < 0 else "false"
        if name == "$arr":
            return money.fmt(int(self.arr[i]))
        if name == "$child_count":
            return str(int(self.child_count[i]))
        if name == "$depth":
            return str(int(self.depth[i]))
        return self.col(name)[i]

    def col(self, name: str) -> list:
        k = ("col", name)
        if k not in self._cache:
            self._cache[k] = self.column(name)
        return self._cache[k]

    def keys(self, name_field: str) -> list[str]:
        """Normalised names, tokens joined by single spaces ("" when a name has none)."""
        k = ("keys", name_field)
        if k not in self._cache:
            self._cache[k] = derive("keys", self.col(name_field))[0]
        return self._cache[k]

    def name_index(self, name_field: str) -> tuple["NameIndex", "NameIndex"]:
        """(full key -> account, key without head words such as HQ/Group -> account), as NameIndex: what a dict
        of the keys would give (a key several accounts share maps to their list), held as arrays."""
        k = ("index", name_field)
        if k not in self._cache:
            keys = self.keys(name_field)
            n = len(keys)
            rows = _nonempty(keys)
            full = NameIndex(keys, np.fromiter(map(hash, keys), dtype=np.int64, count=n)[rows], rows)
            markers = normalise.HEAD_MARKERS
            ends = tuple(" " + m for m in markers)   # a key ending in a head word, tested in one call
            at, cuts, hashes = array("q"), array("q"), array("q")
            for i, key in enumerate(keys):
                if not key.endswith(ends):
                    continue
                last = key.rfind(" ")
                if last > 0 and key[last + 1:] in markers:
                    cut = last
                    while True:
                        prev = key.rfind(" ", 0, cut)
                        if prev <= 0 or key[prev + 1:cut] not in markers:
                            break
                        cut = prev
                    at.append(i)
                    cuts.append(cut)
                    hashes.append(hash(key[:cut]))
            head = NameIndex(keys, np.frombuffer(hashes, dtype=np.int64), np.frombuffer(at, dtype=np.int64),
                             np.frombuffer(cuts, dtype=np.int64))
            self._cache[k] = (full, head)
        return self._cache[k]

    def sites(self, site_field: str) -> tuple[list[str | None], np.ndarray]:
        """Registrable domain of each account's website (None when it has none), and whether the site is the
        domain itself (acme.com, www.acme.com) rather than a subdomain."""
        k = ("sites", site_field)
        if k not in self._cache:
            self._cache[k] = derive("sites", self.col(site_field))
        return self._cache[k]

    def countries(self, country_field: str) -> list[str | None]:
        k = ("countries", country_field)
        if k not in self._cache:
            cache: dict = {}
            out = []
            for v in self.col(country_field):
                if v not in cache:
                    cache[v] = normalise.country_code(v)
                out.append(cache[v])
            self._cache[k] = out
        return self._cache[k]


# ---- derived columns carried from run to run ------------------------------------------------------

DERIVED = ("keys", "sites")   # the Population caches worth keeping: name keys and registrable domains


_BULK = 50_000   # values derived at once: only that many keys or domains are ever str objects before packing


def derive(kind: str, values: list) -> tuple:
    """A derived column of raw `values`: ("keys",) -> (keys,), ("sites",) -> (domains, apex), as Population
    computes them; the keys and domains held packed (Texts), derived a chunk at a time."""
    chunks = range(0, len(values), _BULK)
    if kind == "keys":
        keys = Texts.of_parts(normalise.name_keys(values[lo:lo + _BULK]) for lo in chunks)
        return (keys if keys is not None else normalise.name_keys(values),)
    apex: list[bool] = []

    def domains_of(lo: int) -> list:
        d, a = normalise.sites(values[lo:lo + _BULK])
        apex.extend(a)
        return d
    domains = Texts.of_parts(domains_of(lo) for lo in chunks)
    if domains is None:
        apex.clear()
        domains = [d for lo in chunks for d in domains_of(lo)]
    return domains, np.array(apex, dtype=bool)


def refresh(kind: str, old_raw: list, old: tuple, new_raw: list) -> tuple[tuple, int]:
    """The derived column of `new_raw` from that of `old_raw` (same accounts, same order), and how many values
    were derived again: only those that changed (a rerun derives nothing for an unchanged org)."""
    changed = [i for i, (a, b) in enumerate(zip(old_raw, new_raw)) if (a or "") != (b or "")]
    if not changed:
        return old, 0
    fresh = derive(kind, [new_raw[i] for i in changed])
    out = tuple(list(c) if isinstance(c, (list, Texts)) else c.copy() for c in old)
    for col, new in zip(out, fresh):
        for k, i in enumerate(changed):
            col[i] = new[k]
    # packed again where they were packed (a NUL in a changed value keeps the list)
    return tuple((Texts.of(c) or c) if isinstance(o, Texts) else c for c, o in zip(out, old)), len(changed)


def seeded(kind: str, value: tuple):
    """A derived column as Population's cache holds it."""
    return value[0] if kind == "keys" else value


def index_of(keys: list, at) -> dict:
    """{key: position} of the positions `at` (ascending) and their keys, as a dict built one at a time would hold them
    (a key several positions share maps to their list), the unique keys in C: most keys are."""
    at = list(at)
    index: dict[Any, Any] = dict(zip(keys, at))   # each key's last position, in the order keys first appear
    if len(index) < len(at):
        first = dict(zip(reversed(keys), reversed(at)))
        shared: dict[Any, list[int]] = {k: [] for k, j in index.items() if first[k] != j}
        for key, j in zip(keys, at):
            if key in shared:
                shared[key].append(j)
        index.update(shared)
    return index


def _nonempty(keys) -> np.ndarray:
    """The positions of the keys that are not empty."""
    if isinstance(keys, Texts):
        return keys.nonempty()
    return np.flatnonzero(np.fromiter(map(bool, keys), dtype=bool, count=len(keys)))


class NameIndex:
    """Normalised name -> the account (an int) or accounts (a list, ascending) holding it, as a dict of the names
    would give, held as the names' hashes sorted in an array beside their accounts: a million names are 16 MB,
    not a dict of a million strings. Entry k is the key of account rows[k] (with its hash hashes[k]), or when
    `cuts` is given its first cuts[k] characters. Many names are looked up at once (`find`); a hash that matches is
    checked against the text, so a collision never links."""

    def __init__(self, keys, hashes: np.ndarray, rows: np.ndarray, cuts: np.ndarray | None = None):
        order = np.argsort(hashes, kind="stable")   # within one hash, accounts stay ascending
        self._keys, self._h = keys, hashes[order]
        # array('q'): an entry read one at a time is a Python int at once (a numpy scalar costs 5x)
        self._pos = array("q", np.asarray(rows, dtype=np.int64)[order].tobytes())
        self._cut = None if cuts is None else array("q", np.asarray(cuts, dtype=np.int64)[order].tobytes())

    def __len__(self) -> int:
        return len(self._h)

    def _text(self, k: int) -> str:
        key = self._keys[self._pos[k]]
        return key if self._cut is None else key[:self._cut[k]]

    def find(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each hash, the span (lo, hi) of entries with it (lo == hi: none). The hashes are searched in sorted
        order: each search then starts where the last ended, in memory just read (in their own order a million
        searches of a million entries miss the cache at every step, ~4x slower)."""
        if len(hashes) < 2:
            return np.searchsorted(self._h, hashes, "left"), np.searchsorted(self._h, hashes, "right")
        order = np.argsort(hashes)
        ordered = hashes[order]
        lo, hi = np.empty(len(hashes), dtype=np.int64), np.empty(len(hashes), dtype=np.int64)
        lo[order] = np.searchsorted(self._h, ordered, "left")
        hi[order] = np.searchsorted(self._h, ordered, "right")
        return lo, hi

    def at(self, lo: int, hi: int, key: str):
        """The account(s) among entries lo..hi whose text is `key`: an int, a list, or None."""
        if hi - lo == 1:   # most names are one account's
            return self._pos[lo] if self._text(lo) == key else None
        found = [self._pos[k] for k in range(lo, hi) if self._text(k) == key]
        return None if not found else found[0] if len(found) == 1 else found

    def get(self, key: str):
        h = np.int64(hash(key))
        lo, hi = int(np.searchsorted(self._h, h, "left")), int(np.searchsorted(self._h, h, "right"))
        return self.at(lo, hi, key) if hi > lo else None

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def texts(self) -> set[str]:
        """Every name the index holds."""
        pos = np.frombuffer(self._pos, dtype=np.int64)
        if self._cut is None:
            return set(take(self._keys, np.sort(pos).tolist()))
        order = np.argsort(pos, kind="stable")
        rows, cuts = pos[order].tolist(), np.frombuffer(self._cut, dtype=np.int64)[order].tolist()
        return {key[:cut] for key, cut in zip(take(self._keys, rows), cuts)}

    def shared(self) -> list[tuple[str, list[int]]]:
        """(name, accounts) of each name two or more accounts hold, in the order the names first occur."""
        h = self._h
        starts = np.flatnonzero(np.r_[True, h[1:] != h[:-1]]) if len(h) else np.zeros(0, dtype=np.int64)
        sizes = np.diff(np.r_[starts, len(h)])
        out = []
        for lo, size in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
            groups: dict[str, list[int]] = {}
            for k in range(lo, lo + size):
                groups.setdefault(self._text(k), []).append(self._pos[k])
            out.extend((name, rows) for name, rows in groups.items() if len(rows) > 1)
        out.sort(key=lambda item: item[1][0])
        return out


def take(keys, rows: Sequence[int]) -> list:
    """keys[r] for each of `rows` (ascending): one decode for a packed column."""
    return keys.take(rows) if isinstance(keys, Texts) else [keys[r] for r in rows]


def blocks(keys, rows: Sequence[int], size: int = _BULK) -> Iterator[tuple[list[int], list]]:
    """(rows, their keys) a block of `size` rows at a time."""
    for at in range(0, len(rows), size):
        part = list(rows[at:at + size])
        yield part, take(keys, part)


def rows_and_keys(keys, rows: Sequence[int]) -> Iterator[tuple[int, Any]]:
    """(row, keys[row]) for each of `rows` (ascending), read a block at a time."""
    for part, got in blocks(keys, rows):
        yield from zip(part, got)


def longest_prefix_hits(keys, rows: Sequence[int], full: NameIndex,
                        head: NameIndex) -> Iterator[tuple[int, str, int, Any]]:
    """(account, key, cut, hit) for each account of `rows` (ascending) some proper prefix of whose key (cut at a
    space) is a key of `full` or else `head`: the longest such prefix, `hit` what the index gives for it. The
    prefixes of a block of accounts are looked up at once; a hash match is checked against the text."""
    for part, texts in blocks(keys, rows):
        at, cuts, hashes = array("q"), array("q"), array("q")
        for k, key in enumerate(texts):
            cut = key.rfind(" ")
            while cut > 0:  # every proper prefix of the name, longest first
                at.append(k)
                cuts.append(cut)
                hashes.append(hash(key[:cut]))
                cut = key.rfind(" ", 0, cut)
        if not at:
            continue
        h = np.frombuffer(hashes, dtype=np.int64)
        flo, fhi = full.find(h)
        hlo, hhi = head.find(h)
        some = np.flatnonzero((fhi > flo) | (hhi > hlo))
        last = -1
        for j, fl, fh, hl, hh in zip(some.tolist(), flo[some].tolist(), fhi[some].tolist(), hlo[some].tolist(),
                                     hhi[some].tolist()):
            k = at[j]
            if k == last:
                continue   # a longer prefix of this account already hit
            key, cut = texts[k], cuts[j]
            prefix = key[:cut]
            hit = full.at(fl, fh, prefix) if fh > fl else None
            if hit is None and hh > hl:
                hit = head.at(hl, hh, prefix)
            if hit is not None:   # else a hash collision: the account's next prefix is looked at
                last = k
                yield part[k], key, cut, hit


def as_list(hit) -> list[int]:
    """An index entry as a list of accounts."""
    return [] if hit is None else hit if isinstance(hit, list) else [hit]


# ---- choosing among candidates ------------------------------------------------------------------

def _passes(pop: Population, conditions, i: int) -> bool:
    return all(c.test(pop.value(c.field, i)) for c in conditions)


def choose(pop: Population, rule, child: int, candidates: list[int]) -> tuple[list[int], list[str]]:
    """Candidates left after conditions and tie-breakers (one = decided), and the tie-breakers used."""
    cands = [j for j in dict.fromkeys(candidates) if j != child and _passes(pop, rule.candidate, j)]
    used: list[str] = []
    for tb in rule.tie_break:
        if len(cands) < 2:
            break
        if tb.kind == "same_as_child":
            want = _text(pop.value(tb.field, child))
            same = [j for j in cands if want and _text(pop.value(tb.field, j)) == want]
            best = same or cands
        else:
            scores = [_score(pop, tb, j) for j in cands]
            top = max(scores)
            best = [j for j, s in zip(cands, scores) if s == top]
        if len(best) < len(cands):
            used.append(tb.describe())
        cands = best
    return cands, used


def _text(v) -> str:
    return str(v).strip().casefold() if v is not None else ""


def _score(pop: Population, tb, j: int):
    if tb.kind == "largest_arr":
        return int(pop.arr[j])
    if tb.kind == "most_children":
        return int(pop.child_count[j])
    if tb.kind == "oldest":
        created = pop.value("CreatedDate", j)  # blank when the org has no CreatedDate: then Id order
        return _Desc((created or "9999", pop.ids[j]))
    v = pop.value(tb.field, j)
    key = (1, _number(v)) if _number(v) is not None else (0, _text(v))
    return key if tb.descending else _Desc(key)


def _number(v):
    try:
        return float(str(v).strip()) if v not in (None, "") else None
    except ValueError:
        return None


class _Desc:
    """Inverts ordering so max() picks the smallest (oldest, or field order asc)."""

    __slots__ = ("v",)

    def __init__(self, v):
        self.v = v

    def __lt__(self, other):
        return self.v > other.v

    def __gt__(self, other):
        return self.v < other.v

    def __eq__(self, other):
        return self.v == other.v

    def __ge__(self, other):
        return self.v <= other.v

    def __le__(self, other):
        return self.v >= other.v


def _decide(pop: Population, rule, child: int, candidates: list[int], confidence: float,
            evidence) -> Iterator[Proposal]:
    """One proposal when the candidates narrow to one; a tie goes to review with every candidate listed."""
    if len(candidates) == 1 and not rule.child and not rule.candidate:  # the common case, kept cheap
        if candidates[0] != child:
            yield Proposal(child, candidates[0], rule, confidence, evidence)
        return
    if not _passes(pop, rule.child, child):
        return
    cands, used = choose(pop, rule, child, candidates)
    if not cands:
        return
    if len(cands) > 1 and rule.type in ("name", "mapping"):
        elected, why = elect(pop, cands, getattr(rule, "field", "Name"), getattr(rule, "site_field", None))
        if elected is not None:
            cands, used = [elected], [*used, f"family head ({why})"]
            if why == "a holding-style name":   # the name's form alone: a person confirms it
                confidence = min(confidence, ELECTED_BY_FORM)
    if used:
        evidence = {**explain(evidence), "tie_break": used}
    if len(cands) == 1:
        yield Proposal(child, cands[0], rule, confidence, evidence)
        return
    shown = cands[:10]
    for j in shown:  # ambiguous: every remaining candidate to review, none applied
        yield Proposal(child, j, rule, min(confidence, 0.5),
                       {**explain(evidence), "tie": [pop.ids[k] for k in shown], "tie_count": len(cands)})


# ---- family heads: accounts that share a name ---------------------------------------------------

ELECTED_BY_FORM = 0.9   # the most a link to a head elected by its name's form alone is worth (below auto_apply)
COMMON_CAP = 0.9        # the most a name link is worth whose key is an everyday word where the child is
WORD_LISTS_AT_ONCE = 50_000   # from this many accounts the gazetteer and word lists are read before matching (a
                              # smaller org reads each the first time it needs it, if ever)


def _form_rank(name, key: str) -> int:
    """How much a name's words beyond its normalised key say "the parent": 2 a holding word (Holdings, Group),
    1 a legal form a parent company takes (Corporation, Inc, plc, AG, SE), 0 any other (GmbH, K.K., SAS, Ltd)."""
    extra = set(normalise.fold(name)) - set(key.split())
    return 2 if extra & normalise.HOLDING_WORDS else 1 if extra & normalise.PARENT_FORMS else 0


def elect(pop: Population, cands: Sequence[int], field: str = "Name",
          site_field: str | None = None) -> tuple[int | None, str]:
    """The head of candidates that share one normalised name (one family under several legal forms: "Globex
    Corporation", "Globex GmbH"), by evidence: an account that already has children, then one that is a root,
    then a holding-style name (Holdings, Group; then Corporation, Inc, plc, AG). (None, "") when they do not
    share a name, when their websites name different companies (vibitexter4331.com, vibitexter5155.com: two
    companies, one name), or no such evidence singles one out (largest ARR alone does not elect a head)."""
    keys = pop.keys(field)
    key = keys[cands[0]]
    if not key or any(keys[j] != key for j in cands[1:]):
        return None, ""
    if site_field:
        domains = pop.sites(site_field)[0]
        if len({label for j in cands if (label := _site_label(domains[j]))}) > 1:
            return None, ""
    names = pop.col(field)
    for why, score in (("has children", lambda j: int(pop.child_count[j] > 0)),
                       ("a root", lambda j: int(pop.parent[j] < 0)),
                       ("a holding-style name", lambda j: _form_rank(names[j], key))):
        scores = [score(j) for j in cands]
        top = max(scores)
        best = [j for j, v in zip(cands, scores) if v == top]
        if len(best) == 1:
            return best[0], why
        cands = best
    return None, ""


def _site_label(domain: str | None) -> str | None:
    """A registrable domain's name without its public suffix: globex.co.uk and globex.de are both "globex"."""
    return domain.split(".", 1)[0] if domain else None


def same_name_links(pop: Population, rule, groups: list[tuple[str, list[int]]], countries, confidence: float,
                    allowed: np.ndarray) -> Iterator[Proposal]:
    """Accounts that share a normalised name under other legal forms, each under the family's elected head when
    that head already has children ("Globex GmbH" under "Globex Corporation", which heads Globex France). One in
    the head's own country goes to review ("unknown": perhaps a duplicate record, not a subsidiary); one whose
    website names another company (menrame409.com beside menrame35.com: two companies, one name) is not linked."""
    names = pop.col(rule.field)
    unknown = rule.confidence_for("unknown")
    domains = pop.sites(rule.site_field)[0] if groups and rule.site_field else None
    for _, members in groups:
        head, why = elect(pop, members, rule.field)   # (websites: each member against the head, below)
        if head is None or why != "has children":
            continue
        theirs = _site_label(domains[head]) if domains is not None else None
        for m in members:
            if m == head or not allowed[m]:
                continue
            mine = _site_label(domains[m]) if domains is not None else None
            if mine and theirs and mine != theirs:
                continue
            home = countries is not None and countries[m] is not None and countries[m] == countries[head]
            grade = "unknown" if home else "same_name"
            evidence = {**NameEvidence(names[m], 0, "same_name", None, grade).as_dict(),
                        "tie_break": [f"family head ({why})"]}
            if home:
                evidence["doubt"] = "in the head's own country: a subsidiary, or a duplicate record"
            yield Proposal(m, head, rule, unknown if home else confidence, evidence)


def heads_under_members(pop: Population, children: list[int], parents: list[int]) -> tuple[int, int] | None:
    """(head, member) when linking `children` under `parents` would put a family's elected head under an account
    that shares its name (one of its own subsidiaries), else None."""
    for c in children:
        for p in parents:
            head, _ = elect(pop, [c, p])
            if head == c:
                return c, p
    return None


# ---- the rule kinds -----------------------------------------------------------------------------

def _key_value(v) -> str:
    return str(v).strip().casefold() if v not in (None, "") else ""


def match_key(pop: Population, rule) -> tuple[list[Proposal], list[Placeholder]]:
    """child_field equals a candidate's candidate_field (Parent_DUNS__c = DunsNumber, global ultimate keys)."""
    index: dict[str, list[int]] = {}
    for j, v in enumerate(pop.col(rule.candidate_field)):
        k = _key_value(v)
        if k:
            index.setdefault(k, []).append(j)
    out, orphans = [], {}
    allowed = pop.unlocked if rule.override else pop.eligible
    for i, v in enumerate(pop.col(rule.child_field)):
        k = _key_value(v)
        if not k or not allowed[i]:
            continue
        cands = index.get(k)
        if cands is None:
            orphans.setdefault(k, []).append(i)
            continue
        out.extend(_decide(pop, rule, i, cands, float(rule.confidence),
                           KeyEvidence(rule.child_field, str(v).strip(), rule.candidate_field)))
    holders = [h for k, m in orphans.items() if (h := family_holder(pop, rule, k, m))]
    return out, holders


def match_domain(pop: Population, rule) -> tuple[list[Proposal], list[Placeholder]]:
    """A subdomain site (us.acme.com) belongs under the account whose site is the registrable domain itself."""
    domains, apex = pop.sites(rule.field)
    at = np.flatnonzero(apex).tolist()
    heads = index_of(take(domains, at), at)   # domain -> the account (or accounts) whose site it is
    for d in rule.ignore:
        heads.pop(d, None)
    out, orphans = [], {}
    allowed = pop.unlocked if rule.override else pop.eligible
    sites = pop.col(rule.field)
    confidence, field, ignore = float(rule.confidence), rule.field, rule.ignore
    simple = not rule.child and not rule.candidate   # one candidate then decides alone (as _decide would)
    append = out.append
    for i, d in rows_and_keys(domains, np.flatnonzero(allowed & ~apex).tolist()):
        if d is None or d in ignore:
            continue
        hit = heads.get(d)
        if hit is None:
            orphans.setdefault(d, []).append(i)
            continue
        evidence = DomainEvidence(field, d, _name(sites[i]))
        if simple and not isinstance(hit, list):
            if hit != i:
                append(Proposal(i, hit, rule, confidence, evidence))
        else:
            out.extend(_decide(pop, rule, i, as_list(hit), confidence, evidence))
    holders = [h for d, m in orphans.items() if (h := family_holder(pop, rule, d, m))]
    return out, holders


def _grade(q: normalise.Qualifier, mine: str | None, theirs: str | None) -> str:
    """Which confidence of a name rule applies: what the qualifier is, checked against the countries."""
    if q.kind in ("country", "code"):
        if mine is None:
            return "unconfirmed" if q.kind == "country" else "unknown"
        return q.kind if mine == q.country else "conflict"
    if q.kind == "place":
        # A city or province of the child's own country, under a parent elsewhere or of no known country:
        # "JinkoSolar (Chuxiong)" under the Cayman holding. Under a parent in the same country a town's name is as
        # often an independent local firm of a common name ("Volksbank Raiffeisenbank Dachau" beside "Volksbank
        # Raiffeisenbank eG"): a person looks, as for a place outside the child's country.
        home = mine is not None and mine in q.place_countries
        return "place" if home and theirs != mine else "unit"
    if q.kind in ("region", "division"):
        return "unit_same_country" if mine is not None and mine == theirs else "unit"
    if q.kind == "business":
        return "business"
    return "unknown"


def _qualifier_confidence(pop: Population, rule, child: int, parent: int | None,
                          q: normalise.Qualifier) -> tuple[float, str]:
    countries = pop.countries(rule.country_field) if rule.country_field else None
    mine = countries[child] if countries else None
    theirs = countries[parent] if countries and parent is not None else None
    grade = _grade(q, mine, theirs)
    return rule.confidence_for(grade), grade


def match_name(pop: Population, rule) -> tuple[list[Proposal], list[Placeholder]]:
    """Child = candidate's normalised name + a qualifier (country, region, division); the longest name wins."""
    keys = pop.keys(rule.field)
    full, head = pop.name_index(rule.field)
    allowed = pop.unlocked if rule.override else pop.eligible
    names = pop.col(rule.field)
    countries = pop.countries(rule.country_field) if rule.country_field else None
    confidence = {g: rule.confidence_for(g) for g in ("country", "code", "place", "unit_same_country", "unit",
                                                        "business", "unconfirmed", "unknown", "conflict")}
    simple = not rule.child and not rule.candidate and not rule.tie_break
    if countries is not None and len(pop.ids) >= WORD_LISTS_AT_ONCE:
        normalise.read_word_lists(countries)   # before the loop's proposals: a large org's peak memory stays lower
    words = normalise.classify_words
    out: list[Proposal] = []
    append = out.append
    for i, key, cut, hit in longest_prefix_hits(keys, np.flatnonzero(allowed).tolist(), full, head):
        if isinstance(hit, list):
            narrowed = [j for j in hit if j != i]
            if not narrowed:
                continue
        elif hit == i:
            continue
        else:
            narrowed = None
        q = words(key[cut + 1:])
        mine = countries[i] if countries else None
        if narrowed is None:
            grade = _grade(q, mine, countries[hit] if countries else None)
        else:
            grade = _grade(q, mine, None)
        conf, common = confidence[grade], None
        if conf > COMMON_CAP:   # an everyday word of the child's country is weak evidence of one family
            z, lang = normalise.commonness(key[:cut], mine)
            if z >= normalise.COMMON_ZIPF:
                conf, common = COMMON_CAP, f"{key[:cut]}: Zipf {z} in {lang}"
        evidence = NameEvidence(names[i], key.count(" ", cut), q.kind, q.country, grade, common=common)
        if narrowed is None and simple:
            append(Proposal(i, hit, rule, conf, evidence))
        else:
            out.extend(_decide(pop, rule, i, narrowed or [hit], conf, evidence))
    out.extend(same_name_links(pop, rule, full.shared(), countries, rule.confidence_for("same_name"), allowed))
    return out, []


def unmatched(pop: Population, name_field: str, allowed: np.ndarray) -> list[tuple[int, list[int]]]:
    """(account, qualifier lengths in tokens) of accounts whose name ends in a place (country, ISO code,
    region) but matches no candidate: the input of fuzzy matching and of placeholder parents. Division
    words are left out here: "Acme Software" is far more often a company of its own than a division."""
    k = ("unmatched", name_field, hash(allowed.tobytes()))
    if k in pop._cache:
        return pop._cache[k]
    keys = pop.keys(name_field)
    full, head = pop.name_index(name_field)
    out = []
    places = normalise.geo_last_tokens()
    ending = []   # (account, name) of the names ending in a place
    for i, key in rows_and_keys(keys, np.flatnonzero(allowed).tolist()):
        cut = key.rfind(" ")
        if cut > 0 and key[cut + 1:] in places:
            ending.append((i, key))
    # a candidate exists: the qualifier rule's case
    matched = {i for i, _, _, _ in longest_prefix_hits(keys, [i for i, _ in ending], full, head)}
    for i, key in ending:
        if i in matched:
            continue
        cuts = normalise.qualifier_cuts(tuple(key.split()), geographic=True)
        if cuts:
            out.append((i, cuts))
    pop._cache[k] = out
    return out


def match_fuzzy(pop: Population, rule) -> tuple[list[Proposal], list[Placeholder]]:
    """Child stem (name minus qualifier) within `threshold` of a candidate's name (sorted-neighbourhood blocking)."""
    keys = pop.keys(rule.field)
    full, head = pop.name_index(rule.field)
    allowed = pop.unlocked if rule.override else pop.eligible
    todo = unmatched(pop, rule.field, allowed)
    if not todo:
        return [], []
    # Sorted neighbourhood, twice: by the name and by the name reversed, so a typo near either end still
    # leaves the true name among the neighbours.
    # Candidate names: not those ending in a place ("acme uk" is a subsidiary, not a misspelt group)
    places = normalise.geo_last_tokens()
    texts = [k for k in full.texts() | head.texts() if len(k) >= 4 and k[k.rfind(" ") + 1:] not in places]
    texts.sort()
    backwards = [t[::-1] for t in texts]
    backwards.sort()
    names = pop.col(rule.field)
    cap = float(rule.confidence)
    out = []
    for i, cuts in todo:
        tokens = keys[i].split()
        best, best_n = None, 0
        for n in cuts:  # every way to read the name's end as a qualifier; the closest stem wins
            s = " ".join(tokens[:-n])
            if len(s) < 4:
                continue
            at = bisect.bisect_left(texts, s)
            window = texts[max(0, at - FUZZY_WINDOW): at + FUZZY_WINDOW]
            at = bisect.bisect_left(backwards, s[::-1])
            window += [t[::-1] for t in backwards[max(0, at - FUZZY_WINDOW): at + FUZZY_WINDOW]]
            hit = process.extractOne(s, window, scorer=fuzz.ratio, score_cutoff=rule.threshold)
            if hit is not None and (best is None or hit[1] > best[1]):
                best, best_n = hit, n
        if best is None:
            continue
        cands = as_list(full.get(best[0])) or as_list(head.get(best[0]))
        q = normalise.classify(tokens[-best_n:])
        conf, grade = _qualifier_confidence(pop, rule, i, cands[0] if len(cands) == 1 else None, q)
        out.extend(_decide(pop, rule, i, cands, min(cap, conf),
                           NameEvidence(names[i], best_n, q.kind, q.country, grade, (best[0], round(best[1], 1)))))
    return out, []


def name_placeholders(pop: Population, rule) -> list[Placeholder]:
    """Two or more accounts named stem + different qualifiers ("Acme US", "Acme UK") and no "Acme"."""
    allowed = pop.unlocked if rule.override else pop.eligible
    keys = pop.keys(rule.field)
    stems: dict[str, list[tuple[int, str]]] = {}
    for i, cuts in unmatched(pop, rule.field, allowed):
        tokens = keys[i].split()
        # the shortest qualifier: the most specific stem; a legal form before the qualifier is the member's, not
        # the family's ("Acme Ltd UK" and "Acme GmbH Germany" are both Acme), as a parent "Acme" would read
        stem = " ".join(normalise.strip_legal(tokens[:-cuts[0]]))
        stems.setdefault(stem, []).append((i, " ".join(tokens[-cuts[0]:])))
    return [h for stem, members in stems.items()
            if (h := family_holder(pop, rule, stem, [i for i, _ in members], [q for _, q in members]))]


_NAME_END = ".)]'’"  # a name may end in these ("Acme Inc.", "Acme (Holdings)"); other punctuation separates words


def _word_ends(text: str) -> Iterator[int]:
    """Where a word of `text` ends, shortest prefix first: before a space, a hyphen, an apostrophe or any other
    character that is no letter or digit, and at the end (as normalise.fold splits a name into tokens)."""
    for k in range(1, len(text) + 1):
        if not text[k - 1].isspace() and (k == len(text) or not (text[k].isalnum() or unicodedata.combining(text[k]))):
            yield k


def _stem_of(text: str) -> str:
    return " ".join(normalise.name_key(text))


def _tidy(text: str, stem: str) -> str:
    """A prefix of a name as a name: runs of spaces made one, a separator it ends in ("Acme -", "Acme,") left off."""
    t = " ".join(text.split())
    while t and not (t[-1].isalnum() or t[-1] in _NAME_END or unicodedata.combining(t[-1])):
        t = t[:-1].rstrip()
    return t if t and _stem_of(t) == stem else " ".join(text.split())


def _begins(name: str, prefix: str) -> bool:
    """`name` begins with the words of `prefix` as written (up to case and runs of spaces)."""
    a, b = _spelled(name), _spelled(prefix)
    return a.startswith(b) and (len(a) == len(b) or not (a[len(b)].isalnum() or unicodedata.combining(a[len(b)])))


def family_name(names: list[str], stem: str) -> str:
    """The name of the parent to create for accounts named stem + qualifier: the stem as the members write it,
    without their qualifiers ("Hewlett-Packard US", "Hewlett-Packard UK" -> "Hewlett-Packard"), with the legal form
    when every member writes it ("Acme Ltd UK", "Acme Ltd US" -> "Acme Ltd"; "Acme GmbH Germany" and "Acme Ltd UK"
    -> "Acme"). It normalises to `stem`, so it is never a member's name: each adds a qualifier to the stem."""
    for raw in names:
        text = raw[:normalise.MAX_CHARS]
        fits = [k for k in _word_ends(text) if _stem_of(text[:k]) == stem]
        if not fits:
            continue
        shortest, longest = _tidy(text[:fits[0]], stem), _tidy(text[:fits[-1]], stem)
        return longest if all(_begins(n, longest) for n in names) else shortest
    # no member spells the stem out as a prefix of its name (a trailing "&": "Smith & UK" has the stem "smith and")
    return " ".join(t.capitalize() for t in stem.split())


REFUSED = "refused: "   # a mapping note about a row refused (not one that names no account)


def _spelled(name) -> str:
    """A name as written, up to case and runs of spaces: what a person copying it into a table keeps."""
    return " ".join(str(name or "").split()).casefold()


def match_mapping(pop: Population, rule) -> tuple[list[Proposal], list[Placeholder], list[str]]:
    """RevOps' table of known links (acquisitions); entries name accounts by normalised name or by Id. Under
    match_by: name (the default) a cell that reads as an Account Id (15 or 18 characters, key prefix 001, a valid
    checksum) and is the Id of an account is taken as that Id, so a table of Ids works without match_by: id."""
    allowed = pop.unlocked if rule.override else pop.eligible
    index: dict[str, int] = {}

    def by_id(ref: str) -> list[int]:
        if not index:  # built on the first Id looked up: a table of names never needs it
            index.update((rid, i) for i, rid in enumerate(pop.ids))
        ref = ref.strip()
        i = index.get(id18(ref) if len(ref) == 15 else ref)
        return [i] if i is not None else []
    if rule.match_by == "id":
        find = by_id
    else:
        full, _ = pop.name_index("Name")

        def find(ref: str) -> list[int]:
            if looks_like_id(ref.strip(), KEY_PREFIXES["Account"]):
                found = by_id(ref)
                if found:
                    return found
            return as_list(full.get(" ".join(normalise.name_key(ref))))

    def exactly(found: list[int], ref: str) -> list[int]:
        names = pop.col("Name")
        return [i for i in found if _spelled(names[i]) == _spelled(ref)] or found
    out, unresolved = [], []
    for e in rule.entries:
        children, parents = find(e.child), find(e.parent)
        if not children or not parents:
            unresolved.append(f"{e.location.file}:{e.location.line} {e.child!r} -> {e.parent!r}: "
                              f"{'child' if not children else 'parent'} matches no account")
            continue
        if rule.match_by != "id":
            # A child cell names every account of its normalised name (the records of one company); a parent cell
            # that names several accounts that normalise alike ("Globex Corporation" and "Globex GmbH" both read
            # "globex") means the one whose name is exactly the cell's, when there is one. Both cells alike
            # ("Northwind Traders GmbH" -> "Northwind Traders, Inc."): each side is the account spelled so.
            if set(children) & set(parents):
                children = exactly(children, e.child)
            parents = exactly(parents, e.parent) if len(parents) > 1 else parents
        if set(children) & set(parents):
            # the same accounts on both sides: linking them either way could put a head under its subsidiary
            shown = ", ".join(pop.ids[i] for i in sorted(set(children) | set(parents))[:5])
            unresolved.append(f"{e.location.file}:{e.location.line} {e.child!r} -> {e.parent!r}: both names match "
                              f"the same accounts ({shown}); write each account's exact name or its Id")
            continue
        wrong_way = heads_under_members(pop, [i for i in children if allowed[i]], parents) \
            if rule.match_by != "id" else None
        if wrong_way is not None:
            names = pop.col("Name")
            h, m = wrong_way
            unresolved.append(f"{REFUSED}{e.location.file}:{e.location.line} {e.child!r} -> {e.parent!r}: would put "
                              f"{names[h]!r} ({pop.ids[h]}), the head of the family the two names share, under "
                              f"{names[m]!r} ({pop.ids[m]}), which bears its name under another legal form (a "
                              f"subsidiary); the row is not applied. If the cells are the wrong way round, swap them; "
                              f"if {names[m]!r} does head the family, name both accounts by Id (match_by: id)")
            continue
        for i in children:
            if allowed[i]:
                out.extend(_decide(pop, rule, i, parents, float(rule.confidence),
                                   MappingEvidence(f"{e.location.file}:{e.location.line}", e.child, e.parent)))
    return out, [], unresolved


def propose(pop: Population, rules, placeholders: bool) -> tuple[list[Proposal], list[Placeholder], list[str]]:
    """Run every rule of one view (each kind proposes in its own way, rules/kinds.py); returns proposals,
    placeholder parents and notes on unresolved entries."""
    proposals: list[Proposal] = []
    holders: list[Placeholder] = []
    notes: list[str] = []
    for rule in rules:
        p, h, unresolved = rule.propose(pop, placeholders)
        proposals.extend(p)
        notes.extend(unresolved)
        if placeholders:
            holders.extend(h)
    return proposals, holders, notes
