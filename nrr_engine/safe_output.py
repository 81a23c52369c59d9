"""Hostile input stays data: record values reach a terminal, a spreadsheet or a file only as text.

One helper per outlet: `terminal` (control characters shown escaped), `for_stream` (any output, CSV and JSON too,
escaped when it reaches a terminal and left as data in a pipe or a file), `csv_cell` (OWASP's formula rule, for
CSVs people open in a spreadsheet; Data Loader change sets never use it), private, symlink-safe files, and
`loose_permissions` (the project files that others could edit).
"""
from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
import tempfile
from pathlib import Path

# A cell a spreadsheet reads as a formula (or, after a tab or CR, as the start of one): OWASP's list.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")  # -500.00 is a figure, not a formula


def terminal(text, keep_newlines: bool = False) -> str:
    """`text` with every non-printable character (C0/C1 controls, ESC, bidi overrides such as U+202E, line and
    paragraph separators) shown as its Python escape, so a record value can neither move the cursor, retitle
    the window nor reorder what the reader sees. `keep_newlines` keeps "\\n" (multi-line output)."""
    text = "" if text is None else str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or (keep_newlines and ch == "\n") else repr(ch)[1:-1] for ch in text)


def for_stream(text: str, stream=None) -> str:
    """`text` as it may be written to `stream` (default: stdout): on a terminal, where an ESC or OSC sequence in a
    record value would act (clear the screen, retitle the window), `terminal` escapes it (newlines kept, a CSV's
    CRLF line ends shown as LF); a pipe or a file gets the data unchanged."""
    stream = sys.stdout if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        tty = False
    return terminal(text.replace("\r\n", "\n"), keep_newlines=True) if tty else text


def csv_cell(value):
    """A cell for a CSV meant for people: one that starts like a formula gets a leading single quote, so a
    spreadsheet shows it as text instead of evaluating it. A plain number (-500.00) and everything else are
    returned unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_row(row) -> list:
    """A row of `csv_cell`s (None becomes a blank cell)."""
    return ["" if v is None else csv_cell(v) for v in row]


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) as 0700, whatever the umask; a folder that exists is left as it is."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty as 0600 (never through a symlink) if it does not exist, so files opened on it later
    (SQLite's database, whose -wal and -shm copy its mode) are not readable by other local users."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return path
    os.close(fd)
    return path


def open_lock(path: Path):
    """The lock file, opened read-write without following a symlink and created 0600: a binary file object."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    return os.fdopen(fd, "r+b")


@contextlib.contextmanager
def atomic_file(target: Path, mode: str = "w", **kwargs):
    """Write `target` through a fresh temporary file in its folder (mkstemp: O_EXCL, 0600, an unpredictable
    name, so no symlink is followed), renamed over the target once complete; removed if the write fails.
    A missing folder is created 0700 (as `export --out` creates its own); an error names the target, never
    the temporary file."""
    target = Path(target)
    private_dir(target.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:  # a folder we may not write in: name the file asked for, not a random temporary
        exc.filename, exc.filename2 = str(target), None
        raise
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and (not exc.filename or exc.filename == tmp):  # name the file, not its temporary
            exc.filename, exc.filename2 = str(target), None
        raise


def private_bytes(target: Path, data: bytes) -> Path:
    """`target` holding `data`, 0600 in folders created 0700, whatever the umask (`atomic_file`): the project
    files `init` and `demo` write (config, rules, the example org), which steer what the engine reads and writes."""
    with atomic_file(target, "wb") as fh:
        fh.write(data)
    return Path(target)


def loose_permissions(paths) -> list[tuple[Path, str]]:
    """The files among `paths`, and the folders holding them, that group or others may write: (path, who), who
    being "group", "others" or "group and others". Such a config or rule file can be edited by another local user
    (allowed_paths, source.path, the rules); such a folder lets one replace them or add a rule file. A folder
    with the sticky bit (/tmp) is left out: there no one can replace another's file."""
    out, seen = [], set()
    for path in paths:
        path = Path(path)
        for p, is_dir in ((path, False), (path.parent, True)):
            if p in seen:
                continue
            seen.add(p)
            try:
                st = p.stat()
            except OSError:
                continue
            if is_dir and st.st_mode & stat.S_ISVTX:
                continue
            who = [w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if st.st_mode & bit]
            if who:
                out.append((p, " and ".join(who)))
    return out


def loose_permission_warnings(paths) -> list[str]:
    """`loose_permissions` in words, each naming the file or folder and the fix."""
    return [f"{'folder ' if p.is_dir() else ''}{terminal(p)} is writable by {who}: another local user could "
            f"{'add or replace the files in it' if p.is_dir() else 'edit it'} and change what the engine reads and "
            f"writes; run `chmod go-w {terminal(p)}`" for p, who in loose_permissions(paths)]
