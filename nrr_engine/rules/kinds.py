"""Kinds of matching rule, one class each: the YAML settings it takes (with their JSON Schema), its typed fields,
how it is built from YAML, the Account fields it reads and how it proposes links. `KINDS` maps the YAML `type:`
to the class; adding a kind is a new class here, registered at the bottom.

Proposing delegates to the matchers in hierarchy.match (imported when a rule runs, not when rules load).
"""
from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, ClassVar

from .. import yamlsource
from ..errors import ConfigError, Location, not_utf8
from .model import NAME_CONFIDENCE, MatchRule, Qualified

FIELD = {"$ref": "#/$defs/fieldName"}

DEFAULT_IGNORED_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "yahoo.com", "hotmail.com", "outlook.com", "live.com", "aol.com", "icloud.com",
    "me.com", "msn.com", "proton.me", "protonmail.com", "gmx.de", "gmx.net", "web.de", "mail.ru", "yandex.ru",
    "qq.com", "163.com", "linkedin.com", "facebook.com", "twitter.com", "x.com", "instagram.com", "youtube.com",
    "wixsite.com", "wordpress.com", "blogspot.com", "squarespace.com", "google.com", "sites.google.com",
    "example.com", "example.org", "salesforce.com", "force.com", "myshopify.com", "godaddysites.com",
})
KNOWN_QUALIFIERS = ("country", "code", "place", "unit_same_country", "unit", "business", "unconfirmed",
                    "same_name")


@dataclass(frozen=True)
class Source:
    """Where a rule is written, for kinds that read more than their YAML (mapping tables) and for errors."""

    doc: Any               # yamlsource.Document
    path: Path
    at: tuple
    where: Location
    errors: list
    roots: tuple = ()      # folders a mapping table may be in (Settings.roots)

    def line(self, *keys) -> Location:
        return Location(self.where.file, self.doc.line_of(self.at + keys), rule=self.where.rule)


@dataclass(frozen=True)
class KeyRule(MatchRule):
    """The child's field equals a candidate's field (Parent_DUNS__c = DunsNumber, global-ultimate DUNS, LEI)."""

    type: ClassVar[str] = "key"
    settings: ClassVar[dict] = {
        "child_field": {**FIELD, "description": "key: the child's field holding the parent's key, e.g. Parent_DUNS__c"},
        "candidate_field": {**FIELD, "description": "key: the candidate's own key, e.g. DunsNumber"}}
    required: ClassVar[tuple] = ("child_field", "candidate_field")
    default_confidence: ClassVar[float] = 0.99
    child_field: str = ""
    candidate_field: str = ""

    @classmethod
    def build(cls, common: dict, raw: dict, src: Source) -> "KeyRule":
        return cls(**common, child_field=raw["child_field"], candidate_field=raw["candidate_field"])

    def own_fields(self) -> list[str]:
        return [self.child_field, self.candidate_field]

    def propose(self, pop, placeholders: bool):
        from ..hierarchy import match
        return (*match.match_key(pop, self), [])


@dataclass(frozen=True)
class DomainRule(MatchRule):
    """The registrable domain of the website (public-suffix aware) is shared with a candidate."""

    type: ClassVar[str] = "domain"
    settings: ClassVar[dict] = {
        "field": {**FIELD, "description": "domain: the website field (default Website)"},
        "ignore": {"type": "array", "items": {"type": "string"},
                   "description": "domain: registrable domains shared by unrelated companies (webmail, hosting)"}}
    default_confidence: ClassVar[float] = 0.96
    field: str = "Website"
    ignore: frozenset[str] = DEFAULT_IGNORED_DOMAINS

    @classmethod
    def build(cls, common: dict, raw: dict, src: Source) -> "DomainRule":
        return cls(**common, field=raw.get("field", "Website"),
                   ignore=frozenset(d.strip().lower() for d in raw.get("ignore", [])) | DEFAULT_IGNORED_DOMAINS)

    def own_fields(self) -> list[str]:
        return [self.field]

    def propose(self, pop, placeholders: bool):
        from ..hierarchy import match
        return (*match.match_domain(pop, self), [])


@dataclass(frozen=True)
class NameRule(MatchRule):
    """The child is the candidate's normalised name plus a qualifier (method qualifier), or a near match of a
    candidate's name (method fuzzy, rapidfuzz ratio at least `threshold`)."""

    type: ClassVar[str] = "name"
    settings: ClassVar[dict] = {
        "field": {**FIELD, "description": "name: the name field (default Name)"},
        "method": {"enum": ["qualifier", "fuzzy"],
                   "description": "name: child = candidate name + qualifier (qualifier), or a near match of it (fuzzy)"},
        "threshold": {"type": "number", "minimum": 50, "maximum": 100,
                      "description": "name/fuzzy: minimum rapidfuzz ratio (0-100)"},
        "country_field": {**FIELD, "description": "name: the field a country qualifier is checked against "
                                                  "(default BillingCountry)"},
        "site_field": {**FIELD, "description": "name: the website field whose domains must agree before accounts that "
                                               "share a name go under one head (default Website)"}}
    default_confidence: ClassVar[float] = 0.85
    field: str = "Name"
    method: str = "qualifier"
    threshold: float = 90.0
    country_field: str | None = "BillingCountry"
    country_field_given: bool = dc_field(default=False, compare=False)
    site_field: str | None = "Website"
    site_field_given: bool = dc_field(default=False, compare=False)

    @classmethod
    def confidence_setting(cls, conf, raw: dict, src: Source):
        """A qualifier rule takes a number or a mapping by qualifier kind; a fuzzy one a number."""
        if raw.get("method", "qualifier") != "qualifier":
            if isinstance(conf, dict):
                src.errors.append(ConfigError("confidence: a mapping by qualifier kind is only for name rules with "
                                              "method qualifier; give a number", src.line("confidence")))
            return float(conf) if conf is not None and not isinstance(conf, dict) else cls.default_confidence
        confidence = dict(NAME_CONFIDENCE)
        if isinstance(conf, dict):
            confidence.update(conf)
        elif conf is not None:
            confidence.update({k: float(conf) for k in KNOWN_QUALIFIERS})
        return confidence

    @classmethod
    def build(cls, common: dict, raw: dict, src: Source) -> "NameRule":
        if "threshold" in raw and raw.get("method", "qualifier") != "fuzzy":
            src.errors.append(ConfigError("threshold: only fuzzy name rules take a threshold (add method: fuzzy)",
                                          src.line("threshold")))
        return cls(**common, field=raw.get("field", "Name"), method=raw.get("method", "qualifier"),
                   threshold=float(raw.get("threshold", 90)), country_field=raw.get("country_field", "BillingCountry"),
                   country_field_given="country_field" in raw, site_field=raw.get("site_field", "Website"),
                   site_field_given="site_field" in raw)

    def own_fields(self) -> list[str]:
        sites = [self.site_field] if self.method == "qualifier" and self.site_field else []
        return [f for f in (self.field, self.country_field, *sites) if f]

    def for_org(self, has_field) -> "NameRule":
        """Without the default country and site fields when the org has none (no country to check qualifiers
        against, no website to compare)."""
        rule = self
        if not self.country_field_given and self.country_field and not has_field(self.country_field):
            rule = dataclasses.replace(rule, country_field=None)
        if not self.site_field_given and self.site_field and not has_field(self.site_field):
            rule = dataclasses.replace(rule, site_field=None)
        return rule

    def propose(self, pop, placeholders: bool):
        from ..hierarchy import match
        if self.method == "fuzzy":
            return (*match.match_fuzzy(pop, self), [])
        p, _ = match.match_name(pop, self)
        return p, (match.name_placeholders(pop, self) if placeholders else []), []


@dataclass(frozen=True)
class MappingRule(MatchRule):
    """A RevOps-maintained table of known links (acquisitions): child -> parent by normalised name or by Id."""

    type: ClassVar[str] = "mapping"
    settings: ClassVar[dict] = {
        "table": {"type": "string",
                  "description": "mapping: a CSV (child,parent) or YAML list of {child, parent}, relative to this file"},
        "entries": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                               "required": ["child", "parent"],
                                               "properties": {"child": {"type": "string"}, "parent": {"type": "string"}}}},
        "match_by": {"enum": ["name", "id"],
                     "description": "mapping: entries name accounts by normalised Name (default) or by Id"}}
    one_of: ClassVar[tuple] = (("table",), ("entries",))
    default_confidence: ClassVar[float] = 1.0
    entries: tuple[Qualified, ...] = ()
    match_by: str = "name"

    @classmethod
    def build(cls, common: dict, raw: dict, src: Source) -> "MappingRule":
        return cls(**common, entries=tuple(_mapping_entries(src, raw)), match_by=raw.get("match_by", "name"))

    def own_fields(self) -> list[str]:
        return ["Name"] if self.match_by == "name" else []

    def propose(self, pop, placeholders: bool):
        from ..hierarchy import match
        return match.match_mapping(pop, self)


KINDS: dict[str, type[MatchRule]] = {k.type: k for k in (KeyRule, DomainRule, NameRule, MappingRule)}


def rule_schema(base: dict) -> dict:
    """The `rule` definition of the match schema: the common settings of `base` plus every kind's own."""
    rule = dict(base)
    rule["properties"] = {**base["properties"], "type": {"enum": list(KINDS)}}
    conditions = list(base.get("allOf", []))
    for kind in KINDS.values():
        rule["properties"].update(kind.settings)
        when = {"if": {"properties": {"type": {"const": kind.type}}, "required": ["type"]}}
        if getattr(kind, "required", ()):
            conditions.append({**when, "then": {"required": list(kind.required)}})
        if getattr(kind, "one_of", ()):
            conditions.append({**when, "then": {"oneOf": [{"required": list(r)} for r in kind.one_of]}})
    if conditions:
        rule["allOf"] = conditions
    return rule


def _mapping_entries(src: Source, raw: dict) -> list[Qualified]:
    where, errors = src.where, src.errors
    out = [Qualified(e["child"].strip(), e["parent"].strip(), src.line("entries", i))
           for i, e in enumerate(raw.get("entries", []))]
    table = raw.get("table")
    if table:
        path = (src.path.parent / table).resolve()
        if not yamlsource.within(path, src.roots):
            errors.append(ConfigError(f"table: {yamlsource.excerpt(table)} is outside the project folder; expected a "
                                      "file inside it (or list its folder under allowed_paths: in config)",
                                      src.line("table")))
        else:
            out.extend(_read_table(path, where, errors, src.line("table")))
    for e in out:
        if not e.child or not e.parent:
            errors.append(ConfigError("mapping entry needs both child and parent", e.location))
        elif e.child == e.parent:
            errors.append(ConfigError(f"mapping entry maps {e.child!r} to itself", e.location))
    return out


def _read_table(table: Path, where: Location, errors: list, ref: Location) -> list[Qualified]:
    if not table.exists():
        errors.append(ConfigError(f"table: file {table} does not exist", ref))
        return []
    if table.is_dir():   # (a read said "Is a directory: <fd>", exit 3)
        errors.append(ConfigError(f"table: {table} is a folder, not a file; expected a CSV file of child,parent[,note] "
                                  "rows (or a YAML list of {child: ..., parent: ...})", ref))
        return []
    if table.suffix.lower() in (".yaml", ".yml"):
        try:
            doc = yamlsource.load(table)
        except ConfigError as exc:
            errors.append(exc)
            return []
        items = doc.data if isinstance(doc.data, list) else None
        if items is None or not all(isinstance(e, dict) and isinstance(e.get("child"), str)
                                    and isinstance(e.get("parent"), str) for e in items):
            errors.append(ConfigError("expected a list of {child: ..., parent: ...} entries", doc.location()))
            return []
        return [Qualified(e["child"].strip(), e["parent"].strip(), Location(str(table), doc.line_of((i,)), rule=where.rule))
                for i, e in enumerate(items)]
    out = []
    start = 1  # the line the row being read starts on (a quoted value may span lines)
    try:
        try:
            raw = yamlsource.read_limited(table)  # a regular file of bounded size: not /dev/zero, not a FIFO
        except ConfigError as exc:
            errors.append(ConfigError(exc.message, Location(str(table), rule=where.rule)))
            return []
        with io.StringIO(raw.decode("utf-8-sig"), newline="") as fh:
            reader = csv.reader(fh, strict=True)  # an unclosed quote is an error, not a row swallowing the rest
            first = next(reader, [])
            header = [h.strip().lower() for h in first]
            if header[:2] != ["child", "parent"]:
                sep = next((s for s in (";", "\t", "|") if len(header) == 1 and s in header[0]), None)
                why = (f"; it is separated by {sep!r}, not commas: re-save it as \"CSV UTF-8 (Comma delimited)\""
                       if sep else "")
                # a short, escaped excerpt only: the message reaches stderr and the ledger
                errors.append(ConfigError(f"header is {yamlsource.excerpt(','.join(first))}; expected "
                                          f"child,parent[,note]{why}", Location(str(table), 1, rule=where.rule)))
                return []
            start = reader.line_num + 1
            for row in reader:
                loc = Location(str(table), start, rule=where.rule)
                spans, start = reader.line_num > loc.line, reader.line_num + 1
                if not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
                    continue
                if len(row) < 2:
                    errors.append(ConfigError("expected child,parent", loc))
                    continue
                if spans and any("\n" in c or "\r" in c for c in row[:2]):
                    errors.append(ConfigError(f"a child or parent name spans lines {loc.line}-{reader.line_num}: a "
                                              "quote left open? (names are one line)", loc))
                    continue
                out.append(Qualified(row[0].strip(), row[1].strip(), loc))
    except UnicodeDecodeError:
        bad = not_utf8(table)
        errors.append(ConfigError(bad.message if bad else "not UTF-8; re-save the table as UTF-8",
                                  Location(str(table), bad.location.line if bad else None, rule=where.rule)))
    except csv.Error as exc:
        what = ("a quoted value is never closed (the file ends inside it); close the quote or remove it"
                if "unexpected end of data" in str(exc) else f"malformed CSV: {exc}")
        errors.append(ConfigError(what, Location(str(table), start, rule=where.rule)))
    return out
