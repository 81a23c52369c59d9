"""Plain data passed between stages: accounts, findings, planned changes."""
from __future__ import annotations

import enum
import json
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple


TRUE_TEXT = frozenset({"true", "1", "yes", "y", "t"})   # checkbox values read as true (CSV and API text)
INSERT = "__insert__"   # the `field` of a change that creates a record (new = the record as JSON)
UPSERT = "(upsert)"     # the `field` of a change upserted by external id (new = the record as JSON, None = delete)


class Severity(enum.IntEnum):
    """How much a finding matters; `validate` and the summary sort by it."""

    INFO = 10
    WARNING = 20
    ERROR = 30


class CheckOutcome(str, enum.Enum):
    """What a check found: a problem, or nothing it could say (inputs missing): never read as "fine"."""

    FOUND = "found"
    NOT_EVALUATED = "not_evaluated"


# Every kind of finding the engine reports, with its severity (a blocked link names its guard after the
# prefix). Kinds are data: the summary, the ledger and `runs show` carry them as they are.
FINDING_KINDS: dict[str, Severity] = {
    "arr_not_a_number": Severity.ERROR, "negative_arr": Severity.ERROR, "bad_date": Severity.ERROR,
    "orphan_subscription": Severity.WARNING, "ends_before_start": Severity.ERROR,
    "cycle": Severity.ERROR, "self_parent": Severity.ERROR, "dangling_parent": Severity.WARNING,
    "too_deep": Severity.WARNING, "duplicate": Severity.INFO, "locked": Severity.INFO,
    "mapping_unresolved": Severity.WARNING, "mapping_refused": Severity.WARNING, "merged_accounts": Severity.INFO, "as_of_in_past": Severity.WARNING,
    "rule_not_evaluated": Severity.WARNING, "link_blocked": Severity.INFO, "reload_conflict": Severity.WARNING,
    "review_reopened": Severity.INFO, "input_shrank": Severity.WARNING, "config_warning": Severity.WARNING,
    "input_smaller": Severity.WARNING,
}


def severity_of(kind: str) -> Severity:
    base = "link_blocked" if kind.startswith("link_blocked") else kind
    if base not in FINDING_KINDS:
        raise ValueError(f"unknown finding kind {kind!r}; add it to model.FINDING_KINDS")
    return FINDING_KINDS[base]


def printable(text: str) -> str:
    """`text` with every character that is not printable (control characters, NUL, ESC, bidi overrides, line
    breaks) written as its escape (\\x00, \\x1b, \\u202e, \\n): a finding read in a terminal, a log or
    a report shows the data, never acts on it."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


@dataclass(frozen=True)
class Finding:
    """A data-quality problem reported in the run summary (not fatal), or a check that could not run."""

    kind: str
    message: str
    records: tuple[str, ...] = ()
    outcome: CheckOutcome = CheckOutcome.FOUND

    def __post_init__(self):
        severity_of(self.kind)  # a misspelt kind fails where it is made, not in a report
        if not self.message.isprintable():   # a record's Id or value with NUL, ESC or a bidi override: shown escaped
            object.__setattr__(self, "message", printable(self.message))

    @property
    def severity(self) -> Severity:
        return severity_of(self.kind)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "severity": self.severity.name.lower(), "outcome": self.outcome.value,
                "message": self.message, "records": list(self.records[:20]), "record_count": len(self.records)}


class ListLike(Sequence):
    """A sequence that stands in for a list to save memory (columns, or values made as they are read) and
    compares equal to a list of the same items."""

    __slots__ = ()

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, (list, tuple, ListLike)) else NotImplemented

    __hash__ = None


class Nones(ListLike):
    """n Nones: an Account column no account has a value in (a first run's rollup fields), without the 8 MB a
    list of a million of them takes."""

    __slots__ = ("_n",)

    def __init__(self, n: int):
        self._n = n

    @property
    def nones(self) -> int:
        return self._n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [None] * len(range(*i.indices(self._n)))
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return None

    def __iter__(self) -> Iterator[None]:
        return iter(itertools.repeat(None, self._n))

    def count(self, value) -> int:
        return self._n if value is None else 0


def no_nones(values) -> bool:
    """Whether `values` says it holds no None (snapshot.JsonRows: records made as they are read, none a delete),
    so a caller need not read them all to find out."""
    return getattr(values, "nones", None) == 0


@dataclass
class Accounts:
    """Accounts column by column (a million dicts would not fit the memory bar)."""

    ids: list[str]
    fields: dict[str, list[Any]]
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if not self.index:
            self.index = {rid: i for i, rid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def append(self, rid: str, values: dict[str, Any]) -> int:
        """Add a record (a placeholder parent the run creates); returns its index."""
        i = len(self.ids)
        self.ids.append(rid)
        self.index[rid] = i
        for name in values:
            if not self.has(name):
                self.fields[name] = [None] * i
        lower = {k.lower(): v for k, v in values.items()}
        for key, column in self.fields.items():
            if not isinstance(column, list):   # a compact column (Nones) takes values as a list from here on
                column = self.fields[key] = list(column)
            column.append(lower.get(key.lower()))
        return i

    def has(self, name: str) -> bool:
        return any(key.lower() == name.lower() for key in self.fields)

    def column(self, name: str) -> list[Any]:
        for key, values in self.fields.items():
            if key.lower() == name.lower():
                return values
        return [None] * len(self.ids)


class Change(NamedTuple):
    """One field of one record, from old to new, with why. (A NamedTuple: runs create millions.)"""

    object: str
    id: str | None          # None for an insert (Id assigned on write)
    field: str
    old: str | None
    new: str | None
    rule: str
    key: str | None = None  # external id for upserts
    confidence: float | None = None
    evidence: dict | None = None

    def as_dict(self) -> dict:
        d = {"object": self.object, "id": self.id, "field": self.field, "old": self.old, "new": self.new,
             "rule": self.rule, "confidence": self.confidence, "evidence": self.evidence or {}}
        if self.key is not None:
            d["external_id"] = self.key
        return d


@dataclass
class FieldChanges:
    """Changes of one field of one object, column by column: ids, old and new values, one rule.

    The columns are sequences (numpy object arrays in runs, lists in rollback); `rows` holds the account
    index of each change, ascending, so batches of one object can be merged per record."""

    object: str
    field: str
    rule: str
    ids: Sequence[str] = ()
    old: Sequence[str | None] = ()
    new: Sequence[str | None] = ()
    rows: Any = ()
    meta: Sequence[tuple[str, float, Any]] | None = None  # per change (rule, confidence, evidence), for links
    explain: Any = None   # evidence -> dict, applied one change at a time as they are read
    to_json: Any = None   # evidence -> JSON text, for the ledger

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Change]:
        obj, fname, rule = self.object, self.field, self.rule
        if self.meta is not None:
            explain = self.explain or (lambda ev: ev)
            for rid, old, new, (r, conf, ev) in zip(self.ids, self.old, self.new, self.meta):
                yield Change(obj, rid, fname, old, new, r, confidence=conf, evidence=explain(ev))
            return
        for rid, old, new in zip(self.ids, self.old, self.new):
            yield Change(obj, rid, fname, old, new, rule)


@dataclass(frozen=True)
class FieldNeed:
    """A field the run reads or writes, checked against the org's schema (Salesforce describe) at start."""

    object: str
    field: str
    why: str                          # where it is configured, e.g. "views[legal].fields.arr"
    types: tuple[str, ...] = ()       # accepted Salesforce field types (empty: any)
    write: bool = False               # the run updates it
    create: bool = False              # the run creates records that set it
    external_id: bool = False         # upserts match on it
    optional: bool = False            # absent is fine (the run skips what needs it)
    delete: bool = False              # the run deletes records of the object (checked against describe)


def json_row(text: str, fields: Sequence[str]) -> tuple:
    """A JSON object's values of `fields`, as SQLite's json_extract gives them: text, numbers and null as they are
    (a missing field null), an object or array as its JSON text."""
    rec = json.loads(text)
    return tuple(json.dumps(v, ensure_ascii=False, separators=(",", ":")) if isinstance(v, (dict, list)) else v
                 for v in map(rec.get, fields))


@dataclass
class SnapshotChanges:
    """KPI snapshot records to upsert (new JSON) or delete (new None), as the ledger stores them."""

    object: str
    rule: str = "snapshot"
    keys: list[str] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)
    old: list[str | None] = field(default_factory=list)
    new: Sequence[str | None] = field(default_factory=list)   # a list, or snapshot.JsonRows (made when read)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Change]:
        obj = self.object
        for key, rid, old, new in zip(self.keys, self.ids, self.old, self.new):
            yield Change(obj, rid, UPSERT, old, new, self.rule, key=key)

    def deletes(self) -> list[tuple[int, str]]:
        """(position, record Id) of the records to delete (snapshots of families that no longer exist)."""
        if no_nones(self.new):   # records made as they are read (a first run's)
            return []
        return [(i, rid) for i, (rid, n) in enumerate(zip(self.ids, self.new)) if n is None]

    def write(self, delete, upsert, fields: Sequence[str] | None = None) -> dict[int, str]:
        """Delete, then upsert, through an org's calls: `delete(ids)` -> results with .ok/.error in order,
        `upsert(records)` -> (index among the records, error) of failures. Returns {position: error}.
        With `fields` (the key field, then the others) `upsert` is given rows of those values, not JSON."""
        failures: dict[int, str] = {}
        gone = self.deletes()
        if gone:
            for (pos, _), result in zip(gone, delete([rid for _, rid in gone])):
                if not result.ok:
                    failures[pos] = result.error
        whole = not gone and no_nones(self.new)
        kept = range(len(self.new)) if whole else [i for i, n in enumerate(self.new) if n is not None]
        if kept:
            # the records in order, read as they are made (a chunk at a time), never all held at once
            if fields is None:
                records = iter(self.new) if whole else (self.new[i] for i in kept)
            elif whole and hasattr(self.new, "rows"):   # values as they are made, never as JSON
                records = self.new.rows()
            else:
                records = (json_row(self.new[i], fields) for i in kept)
            for k, error in upsert(records):
                failures[kept[k]] = error
        return failures
