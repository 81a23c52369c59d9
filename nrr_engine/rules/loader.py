"""Rule files -> typed rules. `check` collects every problem (for `validate`); `load` raises them all at once.

A file says its `kind:`; a registry maps the kind to its schema and builder. Cross-file checks (unique
rule names, known views, mapping tables) run after every file is read.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .. import yamlsource
from ..errors import ConfigError, ConfigErrors, Location
from .model import NAME_CONFIDENCE, Condition, MatchRule, Qualified, TieBreak

KNOWN_KINDS = ("country", "code", "unit_same_country", "unit", "unconfirmed")


def schemas() -> dict[str, dict]:
    """The JSON Schemas of rule files, by kind."""
    text = resources.files("nrr_engine").joinpath("schemas/match.schema.json").read_text("utf-8")
    return {"match": json.loads(text)}


@dataclass(frozen=True)
class RuleSet:
    """Every enabled rule, in file order (earlier rules win ties between equally confident proposals)."""

    match: tuple[MatchRule, ...] = ()
    files: tuple[Path, ...] = field(default=())

    def for_view(self, view: str) -> tuple[MatchRule, ...]:
        return tuple(r for r in self.match if r.view == view)


def load(files: list[Path] | tuple[Path, ...], views: list[str]) -> RuleSet:
    rules, errors = check(files, views)
    if errors:
        raise ConfigErrors(errors)
    return rules


def check(files: list[Path] | tuple[Path, ...], views: list[str]) -> tuple[RuleSet, list[ConfigError]]:
    """Read every rule file; return the rules and every problem found (each with file:line)."""
    errors: list[ConfigError] = []
    rules: list[MatchRule] = []
    schema_by_kind = schemas()
    docs = []
    for path in files:
        if path.suffix.lower() not in (".yaml", ".yml"):
            continue  # mapping tables (CSV) and READMEs sit beside the rule files
        try:
            docs.append((path, yamlsource.load(path)))
        except ConfigError as exc:
            errors.append(exc)
    # A YAML mapping table may sit beside the rules (and match their glob): it is data, not a rule file.
    tables = {(path.parent / r["table"]).resolve() for path, doc in docs if isinstance(doc.data, dict)
              for r in (doc.data.get("rules") or []) if isinstance(r, dict) and isinstance(r.get("table"), str)}
    for path, doc in docs:
        if doc.data is None or path.resolve() in tables:
            continue  # an empty file (everything commented out) holds no rules
        if not isinstance(doc.data, dict) or "kind" not in doc.data:
            errors.append(ConfigError("expected a mapping with kind: match and rules: [...]", doc.location()))
            continue
        kind = doc.data["kind"]
        if kind not in schema_by_kind:
            errors.append(ConfigError(f"kind: {kind!r} is not a rule kind this version reads; expected one of: "
                                      f"{', '.join(schema_by_kind)}", doc.location(("kind",))))
            continue
        problems = yamlsource.schema_errors(doc, schema_by_kind[kind])
        if problems:
            errors.extend(problems)
            continue
        for i, raw in enumerate(doc.data["rules"]):
            rule = _match_rule(doc, path, ("rules", i), raw, views, errors)
            if rule is not None and raw.get("enabled", True):
                rules.append(rule)
    seen: dict[str, MatchRule] = {}
    for r in rules:
        if r.name in seen:
            errors.append(ConfigError(f"rule name {r.name!r} is used twice (first at {seen[r.name].location})",
                                      r.location))
        seen.setdefault(r.name, r)
    return RuleSet(tuple(rules), tuple(files)), errors


_ALLOWED = {
    "key": {"child_field", "candidate_field"},
    "domain": {"field", "ignore"},
    "name": {"field", "method", "threshold", "country_field"},
    "mapping": {"table", "entries", "match_by"},
}
_COMMON = {"name", "type", "description", "enabled", "view", "confidence", "auto_apply", "child", "candidate",
           "tie_break", "override", "when_fields_missing"}

DEFAULT_IGNORED_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "yahoo.com", "hotmail.com", "outlook.com", "live.com", "aol.com", "icloud.com",
    "me.com", "msn.com", "proton.me", "protonmail.com", "gmx.de", "gmx.net", "web.de", "mail.ru", "yandex.ru",
    "qq.com", "163.com", "linkedin.com", "facebook.com", "twitter.com", "x.com", "instagram.com", "youtube.com",
    "wixsite.com", "wordpress.com", "blogspot.com", "squarespace.com", "google.com", "sites.google.com",
    "example.com", "example.org", "salesforce.com", "force.com", "myshopify.com", "godaddysites.com",
})


def _match_rule(doc: yamlsource.Document, path: Path, at: tuple, raw: dict, views: list[str],
                errors: list[ConfigError]) -> MatchRule | None:
    loc = doc.location(at)
    name, kind = raw["name"], raw["type"]
    where = Location(loc.file, loc.line, rule=name)
    n_before = len(errors)
    for key in sorted(set(raw) - _COMMON - _ALLOWED[kind]):
        errors.append(ConfigError(f"{key}: not a setting of {kind} rules (they take: "
                                  f"{', '.join(sorted(_ALLOWED[kind]))}, plus the common ones)",
                                  Location(loc.file, doc.line_of(at + (key,)), rule=name)))
    view = raw.get("view", views[0] if views else "legal")
    if view not in views:
        errors.append(ConfigError(f"view: {view!r} is not a lookup view in config (views with a parent_field: "
                                  f"{', '.join(views)})", Location(loc.file, doc.line_of(at + ("view",)), rule=name)))
    conf = raw.get("confidence")
    if isinstance(conf, dict) and not (kind == "name" and raw.get("method", "qualifier") == "qualifier"):
        errors.append(ConfigError("confidence: a mapping by qualifier kind is only for name rules with method "
                                  "qualifier; give a number", Location(loc.file, doc.line_of(at + ("confidence",)), rule=name)))
    if kind == "name" and raw.get("method", "qualifier") == "qualifier":
        confidence: dict | float = dict(NAME_CONFIDENCE)
        if isinstance(conf, dict):
            confidence.update(conf)
        elif conf is not None:
            confidence.update({k: float(conf) for k in KNOWN_KINDS})
    else:
        confidence = float(conf) if conf is not None else {"key": 0.99, "domain": 0.96, "name": 0.85,
                                                             "mapping": 1.0}[kind]
    if "threshold" in raw and raw.get("method", "qualifier") != "fuzzy":
        errors.append(ConfigError("threshold: only fuzzy name rules take a threshold (add method: fuzzy)",
                                  Location(loc.file, doc.line_of(at + ("threshold",)), rule=name)))
    entries: tuple[Qualified, ...] = ()
    if kind == "mapping":
        entries = tuple(_mapping_entries(doc, path, at, raw, where, errors))
    if len(errors) > n_before:
        return None
    return MatchRule(
        name=name, type=kind, view=view, location=where, confidence=confidence,
        child=tuple(Condition(c["field"], c["op"], c.get("value")) for c in raw.get("child", [])),
        candidate=tuple(Condition(c["field"], c["op"], c.get("value")) for c in raw.get("candidate", [])),
        tie_break=tuple(_tie_break(t) for t in raw.get("tie_break", [])),
        override=raw.get("override", False), skip_when_missing=raw.get("when_fields_missing", "error") == "skip",
        auto_apply=raw.get("auto_apply"), child_field=raw.get("child_field"), candidate_field=raw.get("candidate_field"),
        field=raw.get("field", {"domain": "Website", "name": "Name"}.get(kind)),
        ignore=frozenset(d.strip().lower() for d in raw.get("ignore", [])) | DEFAULT_IGNORED_DOMAINS
        if kind == "domain" else frozenset(),
        method=raw.get("method", "qualifier"), threshold=float(raw.get("threshold", 90)),
        country_field=raw.get("country_field", "BillingCountry") if kind == "name" else None,
        entries=entries, match_by=raw.get("match_by", "name"),
        extra={"default_country_field": kind == "name" and "country_field" not in raw},
    )


def _tie_break(raw) -> TieBreak:
    if isinstance(raw, str):
        return TieBreak(raw)
    if "same_as_child" in raw:
        return TieBreak("same_as_child", raw["same_as_child"])
    return TieBreak("field", raw["field"], raw.get("order", "asc") == "desc")


def _mapping_entries(doc, path: Path, at: tuple, raw: dict, where: Location, errors: list) -> list[Qualified]:
    out = [Qualified(e["child"].strip(), e["parent"].strip(), Location(where.file, doc.line_of(at + ("entries", i)),
                                                                      rule=where.rule))
           for i, e in enumerate(raw.get("entries", []))]
    table = raw.get("table")
    if table:
        out.extend(_read_table(path.parent / table, where, errors, Location(where.file, doc.line_of(at + ("table",)),
                                                                          rule=where.rule)))
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
    try:
        with open(table, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            if header[:2] != ["child", "parent"]:
                errors.append(ConfigError(f"header is {','.join(header)!r}; expected child,parent[,note]",
                                          Location(str(table), 1, rule=where.rule)))
                return []
            for row in reader:
                if not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
                    continue
                loc = Location(str(table), reader.line_num, rule=where.rule)
                if len(row) < 2:
                    errors.append(ConfigError("expected child,parent", loc))
                    continue
                out.append(Qualified(row[0].strip(), row[1].strip(), loc))
    except UnicodeDecodeError as exc:
        errors.append(ConfigError(f"not UTF-8 ({exc.reason}); save the table as UTF-8", Location(str(table), rule=where.rule)))
    return out
