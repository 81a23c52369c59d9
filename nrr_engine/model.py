"""Plain data passed between stages: accounts, findings, planned changes."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple


INSERT = "__insert__"   # the `field` of a change that creates a record (new = the record as JSON)


@dataclass(frozen=True)
class Finding:
    """A data-quality problem reported in the run summary (not fatal)."""

    kind: str
    message: str
    records: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message, "records": list(self.records[:20]),
                "record_count": len(self.records)}


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
