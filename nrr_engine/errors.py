"""Errors that point at their source, and the exit codes the CLI turns them into.

Every error a user can cause carries a Location (file:line, rule, record) and says what was expected.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    """Process exit codes (DESIGN §8). When several apply, the highest wins."""

    OK = 0
    RECORD_FAILURES = 1
    INVALID_INPUT = 2
    UNAVAILABLE = 3
    GATE_FAILED = 4


@dataclass(frozen=True)
class Location:
    """Where a problem comes from: a file and line, a rule, a record, a field."""

    file: str | None = None
    line: int | None = None
    rule: str | None = None
    record: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.file:
            parts.append(f"{self.file}:{self.line}" if self.line else self.file)
        if self.rule:
            parts.append(f"rule {self.rule}")
        if self.record:
            parts.append(f"record {self.record}")
        if self.field:
            parts.append(f"field {self.field}")
        return ", ".join(parts)


class NrrError(ValueError):
    """Base error: a message plus where it comes from; `exit_code` says how the CLI ends."""

    exit_code = ExitCode.INVALID_INPUT

    def __init__(self, message: str, location: Location | None = None):
        from .log import redact_text   # a message may quote what a server echoed: never a secret (log.py's rule)
        self.message = redact_text(message)
        self.location = location or Location()
        super().__init__(str(self))

    def __str__(self) -> str:
        from .log import redact_text
        where = str(self.location)
        return redact_text(f"{where}: {self.message}" if where else self.message)


class ConfigError(NrrError):
    """The config or a rule file is invalid."""


class DataError(NrrError):
    """Input data (CSV, history file) cannot be read as a whole."""


class SourceUnavailable(NrrError):
    """The org or the state store cannot be reached or locked."""

    exit_code = ExitCode.UNAVAILABLE


class GateFailed(NrrError):
    """A reconciliation gate failed; nothing was written."""

    exit_code = ExitCode.GATE_FAILED


class Interrupted(NrrError):
    """The run was asked to stop (SIGTERM/SIGINT) between stages; nothing half-written."""

    exit_code = ExitCode.UNAVAILABLE


def close_match(word: str, options, cutoff: float = 0.75) -> str | None:
    """The option most like `word` (case folded), for "did you mean ...?"; None when nothing is close."""
    import difflib

    by_folded = {}
    for o in options:
        by_folded.setdefault(str(o).casefold(), str(o))
    hits = difflib.get_close_matches(str(word).casefold(), list(by_folded), n=1, cutoff=cutoff)
    return by_folded[hits[0]] if hits else None


def not_utf8(path, chunk: int = 1 << 20) -> "DataError | None":
    """Where a file stops being UTF-8: the line, column and byte offset of the first bad byte, and the fix.

    Read in chunks with an incremental decoder (a text reader's error points at its read-ahead buffer, not at
    the line); None when the whole file decodes."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()  # a BOM is valid UTF-8
    offset, line, last_nl = 0, 1, -1          # bytes before this block; line number; offset of the last newline
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                # exc.object is the decoder's held-back bytes (an unfinished character, never a newline) + block
                base = offset - (len(exc.object) - len(block))
                before = exc.object[:exc.start]
                at = base + exc.start
                if b"\n" in before:
                    line += before.count(b"\n")
                    last_nl = base + before.rindex(b"\n")
                return DataError(f"not UTF-8: byte 0x{exc.object[exc.start]:02x} at line {line}, column "
                                 f"{at - last_nl}, byte offset {at} (a Windows-1252 or Latin-1 file, as Excel's "
                                 "\"CSV (Comma delimited)\" saves?); re-save it as UTF-8 (Excel: \"CSV UTF-8\")",
                                 Location(str(path), line))
            if not block:
                return None
            if b"\n" in block:
                line += block.count(b"\n")
                last_nl = offset + block.rindex(b"\n")
            offset += len(block)


class ConfigErrors(ConfigError):
    """Several config/rule problems collected at once (for `validate`)."""

    def __init__(self, errors: list[NrrError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class DiskFull(SourceUnavailable):
    """A file could not be written: its device is full or the process's file size limit was reached."""


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


_SQLITE_STORAGE = ("database or disk is full", "disk i/o error")


def is_storage_error(exc: BaseException) -> bool:
    """ENOSPC / EFBIG (and SQLite's words for them): a write the file system refused, not a bug."""
    import errno
    import sqlite3
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    return isinstance(exc, sqlite3.OperationalError) and any(w in str(exc).lower() for w in _SQLITE_STORAGE)


def storage_cause(exc: BaseException) -> BaseException | None:
    """The storage error behind `exc`, if any: SQLite answers a full disk and then "cannot rollback - no
    transaction is active", which would hide it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if is_storage_error(exc):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def disk_full(exc: BaseException, paths, what: str, note: str = "") -> DiskFull:
    """A DiskFull naming the file that could not be written and the space it needs.

    `paths` are the files the failed step was writing (the first for an OSError that names none); the one on
    a full device, or at the process's file size limit (RLIMIT_FSIZE), is named."""
    import os
    import resource
    import shutil
    from pathlib import Path

    given = [Path(p) for p in ([getattr(exc, "filename", None)] if getattr(exc, "filename", None) else []) + list(paths)]
    candidates = []
    for p in given:  # a folder being written (an export): the files in it, newest first, then the folder
        if p.is_dir():
            candidates += sorted((q for q in p.rglob("*") if q.is_file()), key=lambda q: -q.stat().st_mtime_ns)[:200]
        candidates.append(p)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]

    def written(p: Path) -> int:  # the file and SQLite's log beside it
        return sum(q.stat().st_size for q in (p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-journal"))
                   if q.exists())

    def free(p: Path) -> int:
        d = p if p.is_dir() else p.parent
        while not d.exists() and d != d.parent:
            d = d.parent
        return shutil.disk_usage(d).free

    def at_limit(p: Path, exactly: bool) -> bool:  # a file (or its log) that stopped growing at the limit
        if limit == resource.RLIM_INFINITY:
            return False
        sizes = [q.stat().st_size for q in (p, p.with_name(p.name + "-wal")) if q.exists()]
        return any(limit - 8192 <= n <= limit if exactly else n >= limit for n in sizes)

    import errno
    too_big = isinstance(exc, OSError) and exc.errno == errno.EFBIG
    # a file that stopped at the limit; else the file the caller was writing (a plain write names none)
    chosen = next((p for p in candidates if at_limit(p, True)), None)
    if chosen is None and too_big and given:
        chosen = given[0]
    chosen = chosen or next((p for p in candidates if at_limit(p, False)), None)
    if chosen is not None:
        return DiskFull(f"{what} stopped at the file size limit of this process ({_size(limit)}, ulimit -f): "
                        "it needs a larger file than that; raise the limit and run again" + note, Location(str(chosen)))
    chosen = min(candidates, key=free) if candidates else Path(os.getcwd())
    need = max(written(chosen), 1 << 20)  # SQLite can copy every page of a file into its log once
    return DiskFull(f"no space left on the device for {what} ({_size(free(chosen))} free; it needs about "
                    f"{_size(need)} more): free some space and run again" + note, Location(str(chosen)))
