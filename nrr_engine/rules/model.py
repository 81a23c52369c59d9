"""Typed, frozen rules: what a YAML rule says, and nothing that can run code or reach the network."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

from ..errors import Location
from ..model import TRUE_TEXT

PSEUDO_FIELDS = ("$is_root", "$arr", "$child_count", "$depth")

# Confidence of a name match by what the child's extra words are (DESIGN §3: names with a qualifier).
NAME_CONFIDENCE = {
    "country": 0.97,            # the words name the child's own country ("Acme UK", BillingCountry UK)
    "code": 0.96,               # an ISO code that agrees with the child's country ("Acme US")
    "place": 0.96,              # a city or province of the child's country ("JinkoSolar (Chuxiong)" in China)
    "unit_same_country": 0.95,  # region or division, child and candidate in the same country ("Acme eComm")
    "unit": 0.9,                # region or division otherwise
    "unconfirmed": 0.9,         # names a country but the child's country is blank
    "business": 0.9,            # the child's trade ("Acme Trading", "Acme Technology"): weak, a person confirms
    "unknown": 0.6,             # words we do not know ("Delta Dental" under "Delta")
    "conflict": 0.5,            # names a country other than the child's ("Acme UK" billing in Germany)
    "same_name": 0.95,          # the same name, another legal form, under the family's head that has children
                                # ("Globex GmbH" under "Globex Corporation"); in the head's own country: unknown
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
class MatchRule(abc.ABC):
    """A matching rule: proposes (child, parent) links for one view, with confidence and evidence.

    The settings every kind shares; each kind (rules/kinds.py, by YAML `type:`) adds its own typed fields."""

    type: ClassVar[str] = ""                 # the YAML type: of the kind
    settings: ClassVar[dict] = {}            # the kind's own YAML settings -> their JSON Schema
    default_confidence: ClassVar[float] = 1.0

    name: str
    view: str
    location: Location
    confidence: dict[str, float] | float = 1.0
    child: tuple[Condition, ...] = ()
    candidate: tuple[Condition, ...] = ()
    tie_break: tuple[TieBreak, ...] = ()
    override: bool = False
    skip_when_missing: bool = False
    auto_apply: float | None = None
    field_lines: tuple[tuple[str, Location], ...] = field(default=(), compare=False, repr=False)  # where each is named

    def confidence_for(self, kind: str) -> float:
        c = self.confidence
        return c.get(kind, NAME_CONFIDENCE[kind]) if isinstance(c, dict) else float(c)

    @classmethod
    def confidence_setting(cls, conf, raw: dict, src) -> dict[str, float] | float:
        """The rule's confidence from its YAML value (a number; the kind's default when absent)."""
        return float(conf) if conf is not None else cls.default_confidence

    def own_fields(self) -> list[str]:
        """Account fields the kind's own settings read."""
        return []

    def fields(self) -> list[str]:
        """Account fields the rule reads (pseudo fields excluded)."""
        names = [c.field for c in (*self.child, *self.candidate)]
        names += [t.field for t in self.tie_break if t.field]
        names += self.own_fields()
        return [n for n in dict.fromkeys(names) if n and not n.startswith("$")]

    def field_location(self, name: str) -> Location:
        """Where the rule names Account field `name` (a condition, tie-break or setting); the rule's own line for
        a default it leaves out."""
        return next((loc for f, loc in self.field_lines if f == name), self.location)

    def for_org(self, has_field) -> "MatchRule":
        """The rule as it runs on an org with these Account fields (a kind may drop an optional default)."""
        return self

    @abc.abstractmethod
    def propose(self, pop, placeholders: bool) -> tuple[list, list, list[str]]:
        """(proposals, placeholder parents, notes on unresolved entries) over a matching Population; every kind
        (rules/kinds.py) says how."""
