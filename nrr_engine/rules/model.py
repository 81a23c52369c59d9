"""Typed, frozen rules: what a YAML rule says, and nothing that can run code or reach the network."""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from decimal import Decimal, InvalidOperation
from typing import Any

from ..errors import Location

PSEUDO_FIELDS = ("$is_root", "$arr", "$child_count", "$depth")
TRUE_TEXT = {"true", "1", "yes", "y", "t"}

# Confidence of a name match by what the child's extra words are (DESIGN §3: names with a qualifier).
NAME_CONFIDENCE = {
    "country": 0.97,            # the words name the child's own country ("Acme UK", BillingCountry UK)
    "code": 0.96,               # an ISO code that agrees with the child's country ("Acme US")
    "unit_same_country": 0.95,  # region or division, child and candidate in the same country ("Acme eComm")
    "unit": 0.9,                # region or division otherwise
    "unconfirmed": 0.9,         # names a country but the child's country is blank
    "unknown": 0.6,             # words we do not know ("Delta Dental" under "Delta")
    "conflict": 0.5,            # names a country other than the child's ("Acme UK" billing in Germany)
}


def _number(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None


@dataclass(frozen=True)
class Condition:
    """field op value; evaluated on text values as they come from the org (None or "" = blank)."""

    field: str
    op: str
    value: Any = None

    def test(self, raw: Any) -> bool:
        op, want = self.op, self.value
        text = "" if raw is None else str(raw).strip()
        if op == "blank":
            return text == ""
        if op == "not_blank":
            return text != ""
        if isinstance(want, bool):
            got = text.lower() in TRUE_TEXT
            return got == want if op == "equals" else got != want
        if op in ("gt", "gte", "lt", "lte"):
            a, b = _number(text), _number(want)
            if a is None or b is None:
                return False
            return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]
        if op in ("in", "not_in"):
            hit = any(_equal(text, w) for w in want)
            return hit if op == "in" else not hit
        if op == "equals":
            return _equal(text, want)
        if op == "not_equals":
            return not _equal(text, want)
        w = str(want).casefold()
        if op == "contains":
            return w in text.casefold()
        if op == "not_contains":
            return w not in text.casefold()
        if op == "starts_with":
            return text.casefold().startswith(w)
        raise ValueError(f"unknown op {op}")  # the schema admits no other


def _equal(text: str, want: Any) -> bool:
    if isinstance(want, bool):
        return (text.lower() in TRUE_TEXT) == want
    if isinstance(want, (int, float)):
        got = _number(text)
        return got is not None and got == _number(want)
    return text.casefold() == str(want).strip().casefold()


@dataclass(frozen=True)
class TieBreak:
    """largest_arr | oldest | most_children | field (asc/desc) | same_as_child (prefer the child's value)."""

    kind: str
    field: str | None = None
    descending: bool = False

    def describe(self) -> str:
        if self.kind == "field":
            return f"{self.field} {'desc' if self.descending else 'asc'}"
        return f"same {self.field} as the child" if self.kind == "same_as_child" else self.kind


@dataclass(frozen=True)
class Qualified:
    """One entry of a mapping table: child and parent (names or Ids), with where it was written."""

    child: str
    parent: str
    location: Location


@dataclass(frozen=True)
class MatchRule:
    """A matching rule: proposes (child, parent) links for one view, with confidence and evidence."""

    name: str
    type: str                       # key | domain | name | mapping
    view: str
    location: Location
    confidence: dict[str, float] | float = 1.0
    child: tuple[Condition, ...] = ()
    candidate: tuple[Condition, ...] = ()
    tie_break: tuple[TieBreak, ...] = ()
    override: bool = False
    skip_when_missing: bool = False
    auto_apply: float | None = None
    child_field: str | None = None
    candidate_field: str | None = None
    field: str | None = None
    ignore: frozenset[str] = frozenset()
    method: str = "qualifier"
    threshold: float = 90.0
    country_field: str | None = None
    entries: tuple[Qualified, ...] = ()
    match_by: str = "name"
    extra: dict = dc_field(default_factory=dict, compare=False, hash=False)

    def confidence_for(self, kind: str) -> float:
        c = self.confidence
        return c.get(kind, NAME_CONFIDENCE[kind]) if isinstance(c, dict) else float(c)

    def fields(self) -> list[str]:
        """Account fields the rule reads (pseudo fields excluded)."""
        names = [c.field for c in (*self.child, *self.candidate)]
        names += [t.field for t in self.tie_break if t.field]
        names += [f for f in (self.child_field, self.candidate_field, self.field, self.country_field) if f]
        return [n for n in dict.fromkeys(names) if not n.startswith("$")]
