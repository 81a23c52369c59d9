"""SQLite's WAL checkpoints off the run's path: a commit returns as soon as its pages are in the WAL, and the copy
into the database file (SQLite's automatic checkpoint, ~1 s a 170 MB transaction) runs in a thread meanwhile.

The copy runs in SQLite's C code without the interpreter lock, so on a 2-core machine it costs the run nothing
while the run goes on in Python. It is as safe as SQLite's own: a checkpoint that stops half-way (a kill, a full
disk) leaves the WAL, which the next connection reads and checkpoints again.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

# SQLite's own automatic checkpoint starts at 1,000 pages (~4 MB): the same threshold, taken in the background
THRESHOLD = 4 << 20

_running: dict[str, threading.Thread] = {}
_lock = threading.Lock()


def configure(conn: sqlite3.Connection) -> None:
    """A connection that leaves checkpoints to `after_commit` (call it after each transaction that may be big)."""
    conn.execute("PRAGMA wal_autocheckpoint=0")
    # a checkpoint that reset the WAL truncates its file to this (else a first run's WAL stays on disk, ~400 MB)
    conn.execute(f"PRAGMA journal_size_limit={THRESHOLD}")


def after_commit(path: Path | str) -> None:
    """Start a checkpoint of the database at `path` in the background when its WAL has grown past THRESHOLD and
    none is running (a transaction that committed while one ran is taken by the next)."""
    key = str(path)
    try:
        if os.stat(key + "-wal").st_size < THRESHOLD:
            return
    except OSError:
        return
    with _lock:
        if key in _running and _running[key].is_alive():
            return
        t = threading.Thread(target=_checkpoint, args=(key,), name="nrr-checkpoint", daemon=True)
        _running[key] = t
        t.start()


def wait(path: Path | str | None = None) -> None:
    """Wait for the background checkpoint of `path` (every one when None): before closing the last connection,
    whose own checkpoint would otherwise wait for it, and before forking (a thread inside SQLite while the process
    forks could leave the child a lock it never gets back)."""
    with _lock:
        threads = [t for k, t in _running.items() if path is None or k == str(path)]
    for t in threads:
        t.join()


def _checkpoint(path: str) -> None:
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            # PASSIVE: copies what no reader still needs and never waits for a writer or blocks one
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            conn.close()
    except (sqlite3.Error, OSError):
        pass   # (busy, full disk, file gone): the WAL stays; the next checkpoint or connection takes it


os.register_at_fork(before=wait)
