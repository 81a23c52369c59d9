"""Rule files -> typed rules. `check` collects every problem (for `validate`); `load` raises them all at once.

A file says its `kind:`; a registry maps the kind to its schema and builder. Cross-file checks (unique
rule names, known views, mapping tables) run after every file is read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .. import yamlsource
from ..errors import ConfigError, ConfigErrors, Location, close_match
from .kinds import KINDS, Source, rule_schema
from .model import Condition, MatchRule, TieBreak


def schemas() -> dict[str, dict]:
    """The JSON Schemas of rule files, by kind (the match schema's rule kinds come from the registry)."""
    text = resources.files("nrr_engine").joinpath("schemas/match.schema.json").read_text("utf-8")
    schema = json.loads(text)
    schema["$defs"]["rule"] = rule_schema(schema["$defs"]["rule"])
    return {"match": schema}


@dataclass(frozen=True)
class RuleSet:
    """Every enabled rule, in file order (earlier rules win ties between equally confident proposals)."""

    match: tuple[MatchRule, ...] = ()
    files: tuple[Path, ...] = field(default=())
    tables: tuple[Path, ...] = field(default=())   # the mapping tables the rules read (resolved)

    def for_view(self, view: str) -> tuple[MatchRule, ...]:
        return tuple(r for r in self.match if r.view == view)


def load(files: list[Path] | tuple[Path, ...], views: list[str], roots: tuple[Path, ...] | None = None) -> RuleSet:
    rules, errors = check(files, views, roots)
    if errors:
        raise ConfigErrors(errors)
    return rules


def check(files: list[Path] | tuple[Path, ...], views: list[str],
          roots: tuple[Path, ...] | None = None) -> tuple[RuleSet, list[ConfigError]]:
    """Read every rule file; return the rules and every problem found (each with file:line).

    A mapping table must lie inside `roots` (Settings.roots: the project folder and the config's allowed_paths;
    by default the folder that holds each rule file's folder, the <project> of <project>/rules)."""
    if roots is None:
        roots = tuple(dict.fromkeys(Path(f).resolve().parent.parent for f in files))
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
        problems = yamlsource.schema_problems(doc, schema_by_kind[kind])
        errors.extend(p.error for p in problems)
        # a bad rule hides none of the others: only the rules the problems point into are left out
        bad = {p.path[1] for p in problems if len(p.path) > 1 and p.path[0] == "rules"}
        items = doc.data.get("rules")
        for i, raw in enumerate(items if isinstance(items, list) else []):
            if i in bad or not isinstance(raw, dict):
                continue
            rule = _match_rule(doc, path, ("rules", i), raw, views, errors, roots)
            if rule is not None and raw.get("enabled", True):
                rules.append(rule)
    seen: dict[str, MatchRule] = {}
    for r in rules:
        if r.name in seen:
            errors.append(ConfigError(f"rule name {r.name!r} is used twice (first at {seen[r.name].location})",
                                      r.location))
        seen.setdefault(r.name, r)
    return RuleSet(tuple(rules), tuple(files), tuple(sorted(tables))), errors


_COMMON = {"name", "type", "description", "enabled", "view", "confidence", "auto_apply", "child", "candidate",
           "tie_break", "override", "when_fields_missing"}


def _match_rule(doc: yamlsource.Document, path: Path, at: tuple, raw: dict, views: list[str],
                errors: list[ConfigError], roots: tuple[Path, ...] = ()) -> MatchRule | None:
    loc = doc.location(at)
    name, kind = raw["name"], KINDS[raw["type"]]
    where = Location(loc.file, loc.line, rule=name)
    src = Source(doc, path, at, where, errors, roots)
    n_before = len(errors)
    for key in sorted(set(raw) - _COMMON - set(kind.settings)):
        hint = close_match(key, kind.settings)
        errors.append(ConfigError(f"{key}: not a setting of {kind.type} rules" + (f"; did you mean {hint}?" if hint else "")
                                  + f" (they take: {', '.join(sorted(kind.settings))}, plus the common ones)",
                                  src.line(key)))
    view = raw.get("view", views[0] if views else "legal")
    if view not in views:
        hint = close_match(view, views)
        errors.append(ConfigError(f"view: {view!r} is not a lookup view in config" + (f"; did you mean {hint}?" if hint else "")
                                  + f" (views with a parent_field: {', '.join(views)})", src.line("view")))
    conf = raw.get("confidence")
    if isinstance(conf, dict) and kind.type != "name":
        errors.append(ConfigError("confidence: a mapping by qualifier kind is only for name rules with method "
                                  "qualifier; give a number", src.line("confidence")))
        conf = None
    common = dict(
        name=name, view=view, location=where, confidence=kind.confidence_setting(conf, raw, src),
        child=tuple(Condition(c["field"], c["op"], c.get("value")) for c in raw.get("child", [])),
        candidate=tuple(Condition(c["field"], c["op"], c.get("value")) for c in raw.get("candidate", [])),
        tie_break=tuple(_tie_break(t) for t in raw.get("tie_break", [])),
        override=raw.get("override", False), skip_when_missing=raw.get("when_fields_missing", "error") == "skip",
        auto_apply=raw.get("auto_apply"), field_lines=_field_lines(src, raw, kind))
    rule = kind.build(common, raw, src)
    return None if len(errors) > n_before else rule


def _field_lines(src: Source, raw: dict, kind) -> tuple[tuple[str, Location], ...]:
    """(field, location) of every Account field the rule names: conditions, tie-breaks and the kind's settings."""
    out = []
    for side in ("child", "candidate"):
        out += [(c["field"], src.line(side, i, "field")) for i, c in enumerate(raw.get(side, []))]
    for i, t in enumerate(raw.get("tie_break", [])):
        if isinstance(t, dict):
            key = "same_as_child" if "same_as_child" in t else "field"
            out.append((t[key], src.line("tie_break", i, key)))
    out += [(raw[k], src.line(k)) for k, s in kind.settings.items()
            if s.get("$ref") == "#/$defs/fieldName" and isinstance(raw.get(k), str)]
    return tuple(out)


def _tie_break(raw) -> TieBreak:
    if isinstance(raw, str):
        return TieBreak(raw)
    if "same_as_child" in raw:
        return TieBreak("same_as_child", raw["same_as_child"])
    return TieBreak("field", raw["field"], raw.get("order", "asc") == "desc")
