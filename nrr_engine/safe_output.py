"""Hostile input stays data: record values reach a terminal, a spreadsheet or a file only as text.

One helper per outlet: `terminal` (control characters shown escaped), `csv_cell` (OWASP's formula rule, for
CSVs people open in a spreadsheet; Data Loader change sets never use it), and private, symlink-safe files.
"""
from __future__ import annotations

import contextlib
import os
import re
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
    name, so no symlink is followed), renamed over the target once complete; removed if the write fails."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not exc.filename:  # a write to the file: name it, not its gone temporary
            exc.filename = str(target)
        raise
