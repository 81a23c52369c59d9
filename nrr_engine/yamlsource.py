"""YAML loading that remembers where every value came from and refuses duplicate keys.

`load(path)` returns a Document: the plain data plus a map from JSON path to line, so schema errors
can point at the YAML line RevOps must edit.
"""
from __future__ import annotations

import copy
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import ConfigError, Location, close_match

Path_ = tuple  # a JSON path: keys and list indexes

# Hostile input stays data: a file the engine reads is a regular file of bounded size, and a YAML document is
# bounded in nesting and in what its aliases (*name) expand to, so an alias bomb or a 50,000-deep [[[...]]] is a
# clean error (file:line, exit 2), not minutes of CPU, gigabytes of memory or a RecursionError.
MAX_BYTES = 8 << 20          # a config, rule file or mapping table
MAX_DEPTH = 64               # nested mappings/lists
MAX_ALIASES = 1_000          # *alias uses in one document
MAX_ALIAS_VALUES = 100_000   # values the aliases add when expanded


def read_limited(path: Path, limit: int = MAX_BYTES) -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes; else a ConfigError (a device such as
    /dev/zero, a FIFO or a folder is refused before anything is read)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", Location(str(path))) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):   # before fdopen, which refuses a folder as "Is a directory: <fd>"
        os.close(fd)
        raise ConfigError("not a regular file (a device, FIFO or folder); expected a file", Location(str(path)))
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(limit + 1)
    if len(raw) > limit:
        raise ConfigError(f"larger than {limit // (1 << 20)} MB; expected a config, rule file or table of at most that",
                          Location(str(path)))
    return raw


def excerpt(text: str, limit: int = 60) -> str:
    """At most `limit` characters of `text` for an error message, control characters escaped, quoted."""
    # repr escapes exactly the characters that are not printable, once (escaping them first and then taking the
    # repr doubled every backslash: '\\x1b[2J' instead of '\x1b[2J')
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def within(path: Path, roots) -> bool:
    """Whether the resolved `path` is one of `roots` (resolved folders or files) or inside one."""
    path = Path(path).resolve()
    return any(path == r or r in path.parents for r in roots)


@dataclass
class Document:
    """Parsed YAML with line numbers (1-based) for each JSON path."""

    file: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int | None:
        """Line of the nearest enclosing value that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def location(self, path: Path_ = ()) -> Location:
        return Location(file=self.file, line=self.line_of(path))


def _build(node: yaml.Node, path: Path_, lines: dict, file: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError("YAML merge keys (<<) are not supported; write the keys out",
                                  Location(file, key_node.start_mark.line + 1))
            key = _build(key_node, path + ("<key>",), {}, file)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise ConfigError(f"mapping key {key!r} must be a plain string",
                                  Location(file, key_node.start_mark.line + 1))
            key = str(key)
            if key in out:
                raise ConfigError(f"duplicate key {key!r} (first on line {lines[path + (key,)]})",
                                  Location(file, key_node.start_mark.line + 1))
            out[key] = _build(value_node, path + (key,), lines, file)
            lines[path + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), lines, file) for i, item in enumerate(node.value)]
    # Scalars: SafeLoader's resolver already tagged them (int, bool, null, str...).
    value = _SCALAR_LOADER.construct_object(node, deep=True)
    # Dates stay text: config and rules compare them as ISO strings, and JSON Schema sees strings.
    return value.isoformat() if hasattr(value, "isoformat") else value


_SCALAR_LOADER = yaml.SafeLoader("")


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader's composer with a nesting limit and an alias count (checked while composing, before any of a
    document's aliases is expanded)."""

    def __init__(self, stream, file: str):
        super().__init__(stream)
        self.file, self.depth, self.aliases, self.first_alias = file, 0, 0, None

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            self.first_alias = self.first_alias or line
            if self.aliases > MAX_ALIASES:
                raise ConfigError(f"more than {MAX_ALIASES} aliases (*name); write the values out",
                                  Location(self.file, line))
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ConfigError(f"nested more than {MAX_DEPTH} levels deep; expected a flatter document",
                              Location(self.file, line))
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _expansion(node: yaml.Node, file: str, first_alias: int | None) -> None:
    """Refuse a document whose aliases expand to too many values, nest too deep, or refer to themselves."""
    memo: dict[int, tuple[int, int]] = {}  # id(node) -> (values when expanded, depth when expanded)
    open_: set[int] = set()

    def walk(n: yaml.Node) -> tuple[int, int]:
        key = id(n)
        if key in memo:
            return memo[key]
        if key in open_:
            raise ConfigError("an alias (*name) refers to the value that contains it; write the values out",
                              Location(file, n.start_mark.line + 1))
        open_.add(key)
        if isinstance(n, yaml.MappingNode):
            kids = [c for pair in n.value for c in pair]
        elif isinstance(n, yaml.SequenceNode):
            kids = list(n.value)
        else:
            kids = []
        sizes = [walk(c) for c in kids]
        open_.discard(key)
        memo[key] = (1 + sum(s for s, _ in sizes), 1 + max((d for _, d in sizes), default=0))
        return memo[key]

    size, depth = walk(node)
    if depth > MAX_DEPTH + 1:
        raise ConfigError(f"aliases (*name) nest values more than {MAX_DEPTH} levels deep; write the values out",
                          Location(file, first_alias))
    if size - len(memo) > MAX_ALIAS_VALUES:
        raise ConfigError(f"aliases (*name) expand to more than {MAX_ALIAS_VALUES:,} values (an alias bomb?); "
                          "write the values out", Location(file, first_alias))


_PARSED: dict[tuple[str, str], Document] = {}
_PARSED_MAX = 64               # documents kept, each at most _PARSED_TEXT characters: a few MB at worst
_PARSED_TEXT = 64 << 10


def parse(text: str, file: str) -> Document:
    """Parse YAML text; syntax errors become ConfigError with the line; size, nesting and aliases are bounded.
    A text parsed before in this process (the scheduler's nightly jobs, a command that reads a rule file twice)
    is not parsed again: its Document is copied (callers may change what they get)."""
    if len(text) > _PARSED_TEXT:
        return _parse(text, file)
    key = (text, file)
    if key not in _PARSED:
        doc = _parse(text, file)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[key] = doc
    return copy.deepcopy(_PARSED[key])


def _parse(text: str, file: str) -> Document:
    if len(text) > MAX_BYTES:
        raise ConfigError(f"larger than {MAX_BYTES // (1 << 20)} MB; expected a smaller document", Location(file))
    try:
        loader = _BoundedLoader(text, file)
    except yaml.reader.ReaderError as exc:  # a control character in the text (YAML allows printable ones only)
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(f"character U+{exc.character:04X} is not allowed in YAML (a control character?); "
                          "remove it or write it as an escape in a double-quoted string", Location(file, line)) from None
    try:
        node = loader.get_single_node()
        first_alias = loader.first_alias
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(f"YAML syntax error: {exc.problem or exc}", Location(file, line)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", Location(file)) from None
    except RecursionError:  # a guard, should the composer ever nest deeper than MAX_DEPTH allows
        raise ConfigError(f"nested too deep; expected at most {MAX_DEPTH} levels", Location(file)) from None
    finally:
        loader.dispose()
    if node is None:
        return Document(file, None, {(): 1})
    _expansion(node, file, first_alias)
    lines: dict = {}
    try:
        data = _build(node, (), lines, file)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise ConfigError(f"YAML value error: {exc.problem}", Location(file, mark.line + 1 if mark else None)) from None
    return Document(file, data, lines)


def load(path: Path) -> Document:
    """Read and parse a YAML file (UTF-8): a regular file of at most MAX_BYTES."""
    raw = read_limited(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise ConfigError(f"not UTF-8 (byte 0x{raw[exc.start]:02x} at line {line}, column {column}, byte offset "
                          f"{exc.start}); re-save the file as UTF-8", Location(str(path), line)) from None
    return parse(text, str(path))


def dotted(path: Path_, data: Any = None) -> str:
    """A place in a YAML document as every message names it: keys joined by dots, a list item by its `name` when
    it has one, else by its 0-based index (arr.subscriptions.amount_period, rules[name-fuzzy].threshold,
    views[legal].fields.arr, report.segments[0])."""
    out, node = "", data
    for step in path:
        if isinstance(step, int):
            item = node[step] if isinstance(node, list) and 0 <= step < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None
            out += f"[{name}]" if isinstance(name, str) and name.strip() else f"[{step}]"
            node = item
        else:
            out += ("." if out else "") + str(step)
            node = node.get(step) if isinstance(node, dict) else None
    return out or "(top level)"


@dataclass(frozen=True)
class SchemaProblem:
    """One JSON-Schema violation: the JSON path it is at (keys and list indexes) and the error to report."""

    path: Path_
    error: ConfigError


def schema_problems(doc: Document, schema: dict) -> list[SchemaProblem]:
    """Every JSON-Schema violation in `doc` with its path, each error at its own file:line; an unknown key is
    reported at the key's line, one error per key, with the close match of the keys allowed there."""
    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for err in validator.iter_errors(doc.data):
        path = tuple(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = sorted(err.schema.get("properties", {}))
            for key in [k for k in err.instance if k not in allowed]:
                where = dotted(path, doc.data)
                hit = close_match(key, allowed)
                out.append(SchemaProblem(path + (key,), ConfigError(
                    f"{where}: unknown key {key!r}" + (f"; did you mean {hit!r}?" if hit else "")
                    + f" (expected one of: {', '.join(allowed)})", doc.location(path + (key,)))))
            continue
        out.append(SchemaProblem(path, ConfigError(_describe(err, doc.data), doc.location(path))))
    out.sort(key=lambda p: p.error.location.line or 0)
    return out


def schema_errors(doc: Document, schema: dict) -> list[ConfigError]:
    """Every JSON-Schema violation in `doc`, each with file:line and what was expected."""
    return [p.error for p in schema_problems(doc, schema)]


def usable(data: Any, schema: dict, problems: list[SchemaProblem], rounds: int = 8) -> Any:
    """A copy of `data` without the values the problems point at, if what is left is valid; else None.

    So one bad value does not hide the checks of the rest (validate reports everything at once); a problem at the
    top level or at a list item leaves nothing to build on (removing a list item would shift the lines of the
    next ones)."""
    import copy

    data = copy.deepcopy(data)
    validator = jsonschema.Draft202012Validator(schema)
    paths = [p.path for p in problems]
    for _ in range(rounds):
        for path in paths:
            if not path or isinstance(path[-1], int):
                return None
            parent = data
            for step in path[:-1]:
                try:
                    parent = parent[step]
                except (KeyError, IndexError, TypeError):
                    parent = None
                    break
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
        paths = [q for e in validator.iter_errors(data) for q in _paths(e)]
        if not paths:
            return data
    return None


def _paths(err: jsonschema.ValidationError) -> list[Path_]:
    path = tuple(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = err.schema.get("properties", {})
        return [path + (k,) for k in err.instance if k not in allowed]
    return [path]


def _describe(err: jsonschema.ValidationError, data: Any = None) -> str:
    where = dotted(tuple(err.absolute_path), data)
    hint = err.schema.get("description") if isinstance(err.schema, dict) else None
    if err.validator == "enum":
        options = [str(v) for v in err.validator_value]
        hit = close_match(str(err.instance), options)
        return (f"{where}: {err.instance!r} is not allowed; expected one of: {', '.join(options)}"
                + (f" (did you mean {hit}?)" if hit else ""))
    msg = f"{where}: {err.message}"
    return f"{msg} (expected: {hint})" if hint else msg
