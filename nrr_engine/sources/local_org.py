"""A local org: a folder of Data Loader CSVs (<SObject>.csv) loaded into a SQLite working copy.

Reads and writes go to the working copy. A CSV whose content changed since its last load is reloaded as a
three-way merge per field: a value the engine wrote survives unless the CSV's value changed since the last
load (then the CSV wins and the conflict is reported); columns the CSV lacks and records the engine created are
kept. Touching or copying a file changes nothing.
"""
from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import re
import sqlite3
import stat
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, Location, SourceUnavailable, disk_full, is_storage_error, not_utf8
from ..safe_output import atomic_file, csv_row, private_dir, private_file
from ..model import Finding, json_row
from ..ids import COUNTER_LIMIT, counter_range, engine_counter, sf_id, sf_ids
from .. import wal
from . import digests
from .child import as_child

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_BATCH = 20_000
ASIDE_MIN_BYTES = 4 << 20   # ~30,000 accounts: below, a load costs less than a process (and its Arrow import)


def _side_load(folder: Path, side: Path, obj: str, conn, keep_loaded: bool = True) -> None:
    """In a forked child: load one CSV into its own SQLite file and report the outcome (None or the error)."""
    try:
        org = LocalOrg(folder, side, keep_loaded)   # keeps the file beside the side file, for the parent to adopt
        org._forks_keepers = False                 # (inline: this process is the side load's own)
        path = folder / f"{obj}.csv"
        org._load(obj, path, path.stat())
        org.db.close()
        conn.send(None)
    except BaseException as exc:  # sent to the parent, which raises it
        try:
            conn.send(exc)
        except Exception:
            conn.send(SourceUnavailable(f"loading {obj}.csv failed: {exc}"))
    finally:
        conn.close()


def _side_load_child(parent: int, *args) -> None:
    """The side load's process: it dies with the engine, so a killed run never leaves it writing beside the
    run that follows (PR_SET_PDEATHSIG on Linux; elsewhere a thread that watches for the parent to go)."""
    as_child()
    try:
        import ctypes
        import signal
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the engine died before the line above took effect
        os._exit(1)

    def watch() -> None:
        import time
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="nrr-load-watch", daemon=True).start()
    try:
        os.nice(5)   # the engine keeps its core: a load beside it slowed its matching as much as it saved
    except OSError:
        pass
    folder, side, obj, conn, keep_loaded = args
    _side_load(folder, side, obj, _StorageNamed(conn, side, obj), keep_loaded)


class _StorageNamed:
    """The side load's end of the pipe: a full disk is sent as the DiskFull naming the side file (the cause
    behind an exception does not cross the pipe)."""

    def __init__(self, conn, side: Path, obj: str):
        self.conn, self.side, self.obj = conn, side, obj

    def send(self, outcome) -> None:
        from ..errors import disk_full, storage_cause
        cause = storage_cause(outcome) if isinstance(outcome, BaseException) else None
        if cause is not None:
            outcome = disk_full(cause, [self.side], f"loading {self.obj}.csv into the working copy")
        self.conn.send(outcome)

    def close(self) -> None:
        self.conn.close()


def separator_of(header: list[str]) -> str | None:
    """The separator a one-column header is really split by (Excel's ';' CSVs, tab-separated text), if any."""
    if len(header) == 1:
        return next((s for s in (";", "\t", "|") if s in header[0]), None)
    return None


def _row_problems(path: Path, id_col: int, width: int | None) -> Iterator[DataError]:
    """Each row's problem as a load meets it, in line order: a row of another width than `width` (not checked
    when None), an empty Id, an Id a line above holds already (saying when the line is an exact copy of it)."""
    seen: dict[str, tuple[int, int]] = {}   # Id -> (line, hash of the row): not the rows, a million of them
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for row in reader:
            if width is not None and len(row) != width:
                if any(cell.strip() for cell in row):
                    yield DataError(f"{len(row)} values but the header has {width} columns",
                                    Location(str(path), reader.line_num))
                continue
            if not row or id_col >= len(row):
                continue
            rid = row[id_col].strip()
            if not rid:
                yield DataError("empty Id; every record needs its Salesforce Id", Location(str(path), reader.line_num))
            elif rid in seen:
                line, first = seen[rid]
                copy = "; an exact copy of that line" if first == hash(tuple(row)) else "; the lines differ"
                yield DataError(f"duplicate Id {rid} (first on line {line}{copy})", Location(str(path), reader.line_num))
            else:
                seen[rid] = (reader.line_num, hash(tuple(row)))


def read_header(path: Path) -> list[str]:
    """The field names of a <SObject>.csv (its first row), checked: UTF-8, comma-separated, an Id column, API
    names, no repeats. DataError with file:line otherwise."""
    _regular_file(path)
    with open(path, newline="", encoding="utf-8-sig", errors="strict") as fh:
        try:
            header = next(csv.reader(fh, strict=True), None)
        except UnicodeDecodeError:
            raise not_utf8(path) or DataError("not UTF-8; re-save the file as UTF-8", Location(str(path), 1)) from None
        except csv.Error as exc:
            raise _separator_problem(path) or _csv_problem(exc, path, 1, 1) from None
    if header is None:
        raise DataError("empty file; expected a header row of field API names", Location(str(path), 1))
    header = [h.strip() for h in header]
    LocalOrg._check_header(header, path)
    return header


def _separator_problem(path: Path) -> DataError | None:
    """The header read with another separator, when only that makes sense of it (Excel's `"Id";"Name"`: quoted
    values separated by ';' are a csv error to a comma reader, not a one-column header)."""
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="strict") as fh:
            line = fh.readline()
        for sep in (";", "\t", "|"):
            fields = next(csv.reader([line], delimiter=sep, strict=True), [])
            if len(fields) > 1 and any(f.strip().lower() == "id" for f in fields):
                return _separated_by(sep, line.strip(), path)
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return None


def _separated_by(sep: str, shown: str, path: Path) -> DataError:
    return DataError(f"the header is separated by {sep!r}, not commas ({shown[:60]!r}): Data Loader "
                     "CSVs are comma-separated; re-save the file as \"CSV UTF-8 (Comma delimited)\" (Excel "
                     "in a locale that writes ';' needs the list separator set to ',') or export it with "
                     "Data Loader or `sf data export`", Location(str(path), 1))


def _regular_file(path: Path) -> None:
    """An org CSV must be a regular file: opening a FIFO or a device would block the run or read without end."""
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise DataError(f"{path.name} is {kind}; the org folder holds regular CSV files (a Data Loader export)",
                        Location(str(path)))


def _not_object(path: Path) -> str | None:
    """Why the CSV is plainly not an object export (a header without an Id column), or None."""
    try:
        read_header(path)
    except DataError as exc:
        if exc.message.startswith("no Id column"):
            return "not an object export (no Id column in its header)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return None


def _csv_problem(exc: csv.Error, path: Path, row_start: int, line: int) -> DataError:
    """A csv.Error as the user's fix: an unclosed quote names the line its row starts on."""
    if "unexpected end of data" in str(exc):
        return DataError(f"a quoted value in the row that starts on line {row_start} is never closed (the file ends "
                         f"inside it, at line {line}); close the quote or remove it", Location(str(path), row_start))
    if row_start < line:   # the row read on past its own line: a quote opened there and never closed
        return DataError(f"malformed CSV: {exc} at line {line}, in the row that starts on line {row_start}: a quoted "
                         f"value there is not closed on its line, so it read on into line {line} (close the quote; "
                         "a quote inside a value is written twice: \"\")", Location(str(path), row_start))
    return DataError(f"malformed CSV: {exc} (a value that starts with a quote must end with one, and a quote inside "
                     "it is written twice: \"\")", Location(str(path), line))


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"), path.with_name(path.name + "-journal")):
        p.unlink(missing_ok=True)


@dataclass(frozen=True)
class WriteResult:
    """Outcome of one record write: ok, or Salesforce-like error code and message."""

    id: str
    ok: bool
    error: str | None = None


def _unchanged_since(path: Path, st: os.stat_result) -> None:
    """SourceUnavailable when the file is not the one `st` described as a load of it began (an export or a save
    still writing it): what was read of it is not loaded."""
    try:
        now = os.stat(path)
    except OSError:
        now = None
    if now is None or (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise SourceUnavailable(f"{path.name} changed while it was being read (an export, a copy or a save still "
                                "writing it?): nothing of it was loaded, the working copy is as it was; run again "
                                "once the file is complete", Location(str(path)))


def _ids_sound(cols: list[list], fields: Sequence[str]) -> bool:
    """Whether the Id column (if read) holds a value in every record and none twice, as the working copy's
    primary key will: columns read from a CSV whose load is still running are used only then."""
    at = next((i for i, f in enumerate(fields) if f.lower() == "id"), None)
    if at is None:
        return True
    ids = cols[at]
    return None not in ids and "" not in ids and len(set(ids)) == len(ids)


def _forkable() -> bool:
    """Forking a process that runs other threads (the scheduler daemon) can copy a lock mid-use: load inline
    there, and where fork does not exist."""
    wal.wait()   # a background checkpoint is a thread, briefly: wait for it rather than load inline
    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1


def _conflict(obj: str, col: str, ids: list[str]) -> Finding:
    return Finding("reload_conflict", f"{obj}.csv: {len(ids)} record(s) have a {col} the engine changed and the CSV "
                   "changed too since its last load; the CSV's value is kept (the engine proposes again)", tuple(ids))


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_adopters: set[threading.Thread] = set()   # adopt_aside's threads, running inside SQLite


def _wait_for_adopters() -> None:
    """Before a fork: a thread inside SQLite while the process forks could leave the child a lock it never gets."""
    for thread in list(_adopters):
        thread.join()


os.register_at_fork(before=_wait_for_adopters)


class LocalOrg:
    """The local org: CSV folder + working copy. Only this class touches the working copy's SQL."""

    kind = "local"
    remote = False

    def __init__(self, folder: Path, working_copy: Path, keep_loaded: bool = True):
        # keep_loaded: keep each loaded CSV beside the working copy, so a reload applies only what changed
        # (digests.py); a working copy that is renamed afterwards (the double's seed) keeps none
        self.keep_loaded = keep_loaded
        self._referenced: dict[str, int] = {}   # _referenced_top's scans (key prefix -> counter), until a reload
        self.folder = Path(folder)
        self.path = Path(working_copy)
        try:
            private_file(private_dir(self.path.parent) / self.path.name)  # customer data: 0600, whatever the umask
            # (check_same_thread off: `adopt_aside`'s thread uses it while this one leaves it alone)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._adopter: threading.Thread | None = None
            self._adopt_error: BaseException | None = None
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            wal.configure(self.db)
            self.db.execute("CREATE TABLE IF NOT EXISTS _nrr_files (object TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER)")
            self.db.execute("CREATE TABLE IF NOT EXISTS _nrr_sequences (prefix TEXT PRIMARY KEY, n INTEGER)")
            # `token`: a new random value with every transaction that writes (state_token)
            self.db.execute("CREATE TABLE IF NOT EXISTS _nrr_meta (key TEXT PRIMARY KEY, value TEXT)")
            # The three-way merge: the CSV header and content hash of each load; the CSV's value (the base) of
            # every field the engine changed since; the records the engine created.
            if "sha256" not in {r[1] for r in self.db.execute("PRAGMA table_info(_nrr_files)")}:
                self.db.execute("ALTER TABLE _nrr_files ADD COLUMN sha256 TEXT")
                self.db.execute("ALTER TABLE _nrr_files ADD COLUMN header TEXT")
            self.db.execute("CREATE TABLE IF NOT EXISTS _nrr_base (object TEXT NOT NULL, id TEXT NOT NULL, "
                            "field TEXT NOT NULL, value TEXT, PRIMARY KEY (object, id, field)) WITHOUT ROWID")
            self.db.execute("CREATE TABLE IF NOT EXISTS _nrr_created (object TEXT NOT NULL, id TEXT NOT NULL, "
                            "PRIMARY KEY (object, id)) WITHOUT ROWID")
            self._pending: dict[str, tuple] = {}
            self._conflicts: list[Finding] = []
            self._holding = False  # inside reloads_held: a reload keeps the table it replaces
            self.deltas: dict[str, digests.Reloaded] = {}   # what this sync's delta reloads did, by object
            self._keepers: list[int] = []   # children writing kept loads (_keep_loaded)
            self._forks_keepers = True
        except sqlite3.Error as exc:
            if is_storage_error(exc):   # a device too full to make the working copy's tables
                raise disk_full(exc, [working_copy], "the local org working copy") from None
            raise SourceUnavailable(f"cannot open the local org working copy: {exc}", Location(str(working_copy))) from None

    @property
    def db(self) -> sqlite3.Connection:
        """The working copy's connection; while `adopt_aside`'s thread has it, any other thread waits for it."""
        if self._adopter is not None and self._adopter is not threading.current_thread():
            self._join_adopter()
        return self._db

    def close(self) -> None:
        try:
            self._join_adopter()
        except BaseException:
            pass   # an adoption that failed left no table: the next sync loads that CSV again (and says why)
        for obj in list(self._pending):  # a run that stopped early: drop its side loads
            self._drop_side_load(obj)
        self.wait_for_kept_loads()
        wal.wait(self.path)   # (the last connection's close checkpoints what is left)
        self.db.close()

    def _drop_side_load(self, obj: str) -> None:
        proc, recv, side, _ = self._pending.pop(obj)
        proc.terminate()
        proc.join()
        recv.close()
        _remove(side)
        digests.discard(digests.path_for(side, obj))

    def where(self, obj: str) -> str:
        """Where an object's records come from, for error messages."""
        return str(self.folder / f"{obj}.csv")

    def prepare(self, needs) -> None:
        """Nothing to check ahead: a local org's columns are checked as they are read."""

    def want(self, obj: str, fields: Iterable[str]) -> None:
        """A local org reads whole CSVs; nothing to select."""

    def merged(self) -> dict[str, str]:
        """{merged-away Id: survivor Id}: Data Loader exports hold no deleted records."""
        return {}

    def api_usage(self) -> dict | None:
        return None

    # ---- loading -------------------------------------------------------------------------------
    def csv_objects(self) -> list[str]:
        """Objects present as <SObject>.csv in the folder: every CSV named like an object, except those that are
        plainly not an object export (a readable, comma-separated header without an Id column, e.g. a mapping
        table). A broken export (not UTF-8, ';'-separated) stays in, so loading it says what is wrong."""
        return sorted(p.stem for p in self.folder.glob("*.csv") if _API_NAME.match(p.stem) and _not_object(p) is None)

    def csv_skipped(self) -> list[tuple[str, str]]:
        """(file name, why) of the CSVs in the folder that csv_objects leaves out."""
        out = []
        for p in sorted(self.folder.glob("*.csv")):
            why = "its name is not an object API name" if not _API_NAME.match(p.stem) else _not_object(p)
            if why:
                out.append((p.name, why))
        return out

    def sync(self, objects: Iterable[str], background: Iterable[str] = ()) -> list[str]:
        """(Re)load each object's CSV if it changed since its last load; return the objects loaded.

        Objects in `background` load in a forked process into a side file while this one goes on; the first
        read of the working copy (or `finish_sync`) waits for them and adopts the table."""
        self._referenced.clear()   # a reload may bring new dangling references
        self.deltas.clear()
        self.wait_for_kept_loads()
        loaded = []
        background = set(background) if _forkable() else set()
        checks = self._start_checks(objects)   # every delta reload's strict read at once, beside the Arrow reads
        try:
            for obj in objects:
                check = checks.pop(obj, None)
                try:
                    self._sync_one(obj, background, check, loaded)
                finally:
                    if check is not None:
                        check.cancel()   # (nothing left to do once its result was read)
        finally:
            for check in checks.values():
                check.cancel()
        return loaded

    def _start_checks(self, objects: Iterable[str]) -> dict[str, "digests.StrictCheck"]:
        """The strict CSV checks of the objects that may reload as deltas (changed since a load that was kept)."""
        out = {}
        if not self.keep_loaded:
            return out
        tables = self._tables()
        for obj in objects:
            path = self.folder / f"{obj}.csv"
            row = self.db.execute("SELECT size, mtime_ns, header FROM _nrr_files WHERE object = ?", (obj,)).fetchone()
            try:
                st = os.stat(path)
            except OSError:
                continue
            if row is None or not row[2] or obj not in tables or (row[0], row[1]) == (st.st_size, st.st_mtime_ns) \
                    or not stat.S_ISREG(st.st_mode) or not digests.path_for(self.path, obj).exists():
                continue
            out[obj] = digests.StrictCheck(path, len(json.loads(row[2])), _forkable())
        return out

    def _sync_one(self, obj: str, background: set[str], check, loaded: list[str]) -> None:
        """Sync one object (see sync); appends it to `loaded` when (re)loaded."""
        path = self.folder / f"{obj}.csv"
        if not path.exists():
            if self.db.execute("SELECT 1 FROM _nrr_files WHERE object = ?", (obj,)).fetchone():
                # never run on a stale copy of a file that went away
                raise DataError(f"{obj}.csv was loaded before but is no longer in the org folder; put it back "
                                f"(an export of {obj} with its Id column)", Location(str(path)))
            return
        _regular_file(path)
        st = path.stat()
        row = self.db.execute("SELECT size, mtime_ns, sha256 FROM _nrr_files WHERE object=?", (obj,)).fetchone()
        if row is not None and obj in self._tables():
            if row[:2] == (st.st_size, st.st_mtime_ns):
                return
            if row[0] == st.st_size and row[2] and row[2] == _sha256(path):  # touched or copied: same content
                self.db.execute("UPDATE _nrr_files SET mtime_ns = ? WHERE object = ?", (st.st_mtime_ns, obj))
                return
            if self._reload_delta(obj, path, st, check):
                loaded.append(obj)
                return
        if obj in background:
            self._start_side_load(obj, st)
        else:
            self._load(obj, path, st)
        loaded.append(obj)

    def worth_loading_aside(self, obj: str) -> bool:
        """Whether the object's CSV is big enough (ASIDE_MIN_BYTES) that loading it in another process while
        this one goes on pays for the process."""
        try:
            return os.stat(self.folder / f"{obj}.csv").st_size >= ASIDE_MIN_BYTES
        except OSError:
            return False

    def _start_side_load(self, obj: str, st: os.stat_result) -> None:
        if obj in self._pending:
            # a stopped run left this load going: keep it if the file is the same, else it must not write on
            started = self._pending[obj][3]
            if (started.st_size, started.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
                return
            self._drop_side_load(obj)
        side = self.path.with_name(f"{self.path.name}.load-{obj}")
        _remove(side)
        ctx = multiprocessing.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_side_load_child, args=(os.getpid(), self.folder, side, obj, send, self.keep_loaded),
                           name=f"nrr-load-{obj}", daemon=True)
        proc.start()
        send.close()
        self._pending[obj] = (proc, recv, side, st)

    def finish_sync(self) -> None:
        """Wait for background loads and move their tables into the working copy (a page copy in SQLite)."""
        self._join_adopter()
        pending, self._pending = self._pending, {}
        self._adopt_pending(pending)

    def adopt_aside(self, prefixes: Sequence[str] = ()) -> None:
        """Wait for the background loads and adopt their tables in a thread of this process, while the caller goes
        on computing without the working copy: the copies run in SQLite's C code, off the interpreter lock, on the
        other core. Then scan the working copy for the Ids `prefixes` will be created with (`free_ids`: the scan
        of every cell a write that creates records needs). Any use of the working copy meanwhile (`db`,
        `finish_sync`) waits for the thread and raises what stopped it."""
        prefixes = [p for p in prefixes if p not in self._referenced]
        if (not self._pending and not prefixes) or self._adopter is not None:
            return
        pending, self._pending = self._pending, {}

        def work() -> None:
            try:
                self._adopt_pending(pending)
                for prefix in prefixes:
                    self._referenced_top(prefix)
            except BaseException as exc:  # raised in the thread that waits for this one
                self._adopt_error = exc

        self._adopter = threading.Thread(target=work, name="nrr-adopt", daemon=True)
        _adopters.add(self._adopter)
        self._adopter.start()

    def _join_adopter(self) -> None:
        thread = self._adopter
        if thread is None:
            return
        thread.join()
        _adopters.discard(thread)
        self._adopter = None
        error, self._adopt_error = self._adopt_error, None
        if error is not None:
            raise error

    def _adopt_pending(self, pending: dict[str, tuple]) -> None:
        for obj, (proc, recv, side, st) in pending.items():
            try:
                try:
                    outcome = recv.recv()
                except EOFError:
                    outcome = SourceUnavailable(f"loading {obj}.csv stopped unexpectedly (exit {proc.exitcode})",
                                                Location(str(self.folder / f"{obj}.csv")))
                proc.join()
                if isinstance(outcome, BaseException):
                    raise outcome
                self._adopt(obj, side, st)
            finally:
                recv.close()
                _remove(side)
                digests.discard(digests.path_for(side, obj))

    def _adopt(self, obj: str, side: Path, st: os.stat_result) -> None:
        _unchanged_since(self.folder / f"{obj}.csv", st)   # the file the side load read is the one recorded
        db = self.db
        tmp = f"_nrr_loading_{obj}"
        db.execute("ATTACH DATABASE ? AS side", (str(side),))
        try:
            header = [r[1] for r in db.execute(f"PRAGMA side.table_info({_q(obj)})")]
            id_col = next(i for i, h in enumerate(header) if h.lower() == "id")
            db.execute("BEGIN")
            try:
                self._create_loading(tmp, header, id_col)
                db.execute(f"INSERT INTO {_q(tmp)} SELECT * FROM side.{_q(obj)}")
                self._swap(obj, tmp, header, st)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.execute("DETACH DATABASE side")
        kept = digests.path_for(side, obj)
        if kept.exists():   # (not forked from here: a child of this big process would copy its pages as they change)
            self._set_aside_kept(obj)
            os.replace(kept, digests.path_for(self.path, obj))

    def _tables(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _load(self, obj: str, path: Path, st: os.stat_result) -> None:
        tmp = f"_nrr_loading_{obj}"
        db = self.db
        read_header(path)  # every header problem said as the user's fix (separator, encoding, quotes, Id) first
        with open(path, newline="", encoding="utf-8-sig", errors="strict") as fh:
            reader = csv.reader(fh, strict=True)  # an unclosed quote is an error, never a row that swallows the rest
            try:
                header = next(reader)
            except StopIteration:
                raise DataError("empty file; expected a header row of field API names", Location(str(path), 1)) from None
            except UnicodeDecodeError:
                raise not_utf8(path) or DataError("not UTF-8; re-save the file as UTF-8", Location(str(path), 1)) from None
            header = [h.strip() for h in header]
            self._check_header(header, path)
            id_col = next(i for i, h in enumerate(header) if h.lower() == "id")
            db.execute("BEGIN")
            try:
                self._create_loading(tmp, header, id_col)
                # Empty cells are NULL, as in Salesforce; trimming and NULLIF run in SQLite, not per cell in Python.
                values = ", ".join("NULLIF(TRIM(?), '')" if i == id_col else "NULLIF(?, '')" for i in range(len(header)))
                insert = f"INSERT INTO {_q(tmp)} VALUES ({values})"
                try:  # fast path: clean files go through csv and SQLite in C
                    db.execute("SAVEPOINT fast")
                    db.executemany(insert, filter(None, reader))
                    db.execute("RELEASE fast")
                except (sqlite3.ProgrammingError, sqlite3.IntegrityError, UnicodeDecodeError, csv.Error):
                    db.execute("ROLLBACK TO fast")
                    db.execute("RELEASE fast")
                    try:
                        self._load_checked(path, insert, header, id_col)  # re-read, naming the exact line
                    except DataError:
                        _unchanged_since(path, st)   # a file being written says so, not a line of it
                        raise
                _unchanged_since(path, st)
                self._check_id_forms(tmp, path, id_col)
                self._swap(obj, tmp, header, st)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if self.keep_loaded:
            self._keep_loaded(obj, path, digests.path_for(self.path, obj))

    def _keep_loaded(self, obj: str, path: Path, target: Path) -> None:
        """Keep the file just loaded as an Arrow file (digests.py) for the next reload to compare with; without
        it (a file Arrow reads otherwise, a full disk), the next reload loads in full."""
        self._set_aside_kept(obj)
        digests.discard(target)
        row = self.db.execute("SELECT size, mtime_ns, sha256, header FROM _nrr_files WHERE object = ?",
                              (obj,)).fetchone()
        if row is None or not row[2] or not row[3]:
            return
        header = json.loads(row[3])
        records = self.db.execute(f"SELECT count(*) FROM {_q(obj)}").fetchone()[0]
        if self._forks_keepers and _forkable():   # in a child of its own while this process goes on (a first run)
            pid = os.fork()
            if pid == 0:
                try:
                    as_child()
                    os.nice(10)   # after the loads and the run's own work
                    digests.keep(path, target, header, records, row[0], row[1], row[2])
                finally:
                    os._exit(0)
            self._keepers.append(pid)
            return
        digests.keep(path, target, header, records, row[0], row[1], row[2])

    def wait_for_kept_loads(self) -> None:
        """Wait for the children writing kept loads (before a reload may read them, or a hold settles them)."""
        while self._keepers:
            try:
                os.waitpid(self._keepers.pop(), 0)
            except ChildProcessError:
                pass

    def _reload_delta(self, obj: str, path: Path, st: os.stat_result, check=None) -> bool:
        """Reload only what changed since the last load (digests.py), inside one transaction; False when the file
        is not a delta of the kept last load (the caller loads in full)."""
        db = self.db
        row = db.execute("SELECT size, mtime_ns, sha256, header FROM _nrr_files WHERE object = ?", (obj,)).fetchone()
        if row is None or not row[2] or not row[3] or not self.keep_loaded:
            return False
        header = json.loads(row[3])
        kept = digests.path_for(self.path, obj)
        old = digests.read(kept, row[0], row[2], header)
        if old is None:
            return False
        try:
            if [h.strip() for h in read_header(path)] != header:
                return False
            id_name = digests.id_name(header)
            check = check or digests.StrictCheck(path, len(header), _forkable())
            try:
                new = digests.read_table(path, header, None)
            finally:
                records = check.result()   # (waits for the check, even when Arrow failed)
            if new.num_rows != records:
                return False
            delta = digests.diff(old, new, id_name)
        except (digests.NotDelta, DataError):
            return False
        del old, new
        sha = _sha256(path)
        now = os.stat(path)
        if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            return False   # being written: the full load says so
        id_col = header.index(id_name)
        touched = [r[id_col] for r in delta.rows]
        db.execute("BEGIN")
        try:
            if self._holding:
                self._hold_rows(obj, [*touched, *delta.removed])
            self._apply_delta(obj, header, id_col, delta)
            if any(len(rid) == 15 for rid in touched):
                self._check_id_forms(obj, path, id_col, skip_created=obj)
            db.execute("INSERT OR REPLACE INTO _nrr_files (object, size, mtime_ns, sha256, header) VALUES (?, ?, ?, ?, ?)",
                       (obj, st.st_size, st.st_mtime_ns, sha, json.dumps(header)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.deltas[obj] = digests.Reloaded((row[0], row[1]), touched, delta.removed, header, delta.rows, delta.before)
        self._set_aside_kept(obj)
        try:
            digests.write(kept, delta.table, st.st_size, sha)
        except OSError:
            digests.discard(kept)
        return True

    def _apply_delta(self, obj: str, header: list[str], id_col: int, delta: digests.Delta) -> None:
        """The three-way merge of `_merge`, for the records a reload changed, added or removed only (inside the
        caller's transaction): the same table, bases and conflicts as a full reload."""
        db = self.db
        tmp = f"_nrr_delta_{obj}"
        db.execute(f"DROP TABLE IF EXISTS temp.{_q(tmp)}")
        cols = ", ".join(f"{_q(h)} TEXT" + (" NOT NULL PRIMARY KEY" if i == id_col else "") for i, h in enumerate(header))
        db.execute(f"CREATE TEMP TABLE {_q(tmp)} ({cols})")
        values = ", ".join("NULLIF(TRIM(?), '')" if i == id_col else "NULLIF(?, '')" for i in range(len(header)))
        db.executemany(f"INSERT INTO temp.{_q(tmp)} VALUES ({values})", delta.rows)
        # the records the CSV no longer holds: those that left it, and records the engine created that it lacks
        gone = set(delta.removed)
        created = [rid for (rid,) in db.execute("SELECT id FROM _nrr_created WHERE object = ?", (obj,))]
        if created:
            listed = {rid for (rid,) in db.execute(f"SELECT Id FROM {_q(obj)} WHERE Id IN (SELECT value FROM "
                                                   "json_each(?))", (json.dumps(created),))}
            in_csv = self._csv_ids(obj, created, delta)
            gone.update(rid for rid in created if rid in listed and rid not in in_csv)
        gone_json = json.dumps(sorted(gone))
        self._merge_bases(obj, f"temp.{_q(tmp)}", header, gone_json)
        names = ", ".join(_q(h) for h in header)
        sets = ", ".join(f"{_q(h)} = t.{_q(h)}" for i, h in enumerate(header) if i != id_col)
        if sets:
            db.execute(f"UPDATE {_q(obj)} AS o SET {sets} FROM temp.{_q(tmp)} AS t WHERE o.Id = t.Id")
        db.execute(f"INSERT INTO {_q(obj)} ({names}) SELECT {names} FROM temp.{_q(tmp)} "
                   f"WHERE Id NOT IN (SELECT Id FROM {_q(obj)})")
        if delta.removed:
            db.execute(f"DELETE FROM {_q(obj)} WHERE Id IN (SELECT value FROM json_each(?)) AND Id NOT IN "
                       "(SELECT id FROM _nrr_created WHERE object = ?)", (json.dumps(delta.removed), obj))
        db.execute(f"DROP TABLE temp.{_q(tmp)}")

    @staticmethod
    def _csv_ids(obj: str, ids: list[str], delta: digests.Delta) -> set[str]:
        """Those of `ids` that the reloaded CSV holds."""
        import pyarrow as pa
        import pyarrow.compute as pc
        column = delta.table.column(digests.id_name(delta.table.column_names))
        found = pc.is_in(pa.array(ids, type=pa.string()), value_set=column).to_pylist()
        return {rid for rid, hit in zip(ids, found) if hit}

    def _create_loading(self, tmp: str, header: list[str], id_col: int) -> None:
        """The table a load fills before it replaces the object's: every column TEXT, Id the primary key."""
        self.db.execute(f"DROP TABLE IF EXISTS {_q(tmp)}")
        cols = ", ".join(f"{_q(h)} TEXT" + (" NOT NULL PRIMARY KEY" if i == id_col else "") for i, h in enumerate(header))
        self.db.execute(f"CREATE TABLE {_q(tmp)} ({cols})")

    def _swap(self, obj: str, tmp: str, header: list[str], st: os.stat_result) -> None:
        """Replace the object's table by the freshly loaded one, merged three ways with what the engine wrote,
        inside the caller's transaction."""
        db = self.db
        if obj in self._tables():
            if self._holding and ("_nrr_prevrows_" + obj) in self._tables():
                # a delta reload earlier in this hold: undone, so this reload starts from the last committed load
                self._undo_held(obj)
            kept = self._holding and self._keep_previous(obj)  # before the merge moves the bases
            self._merge(obj, tmp, header)
            if kept:
                db.execute(f"ALTER TABLE {_q(obj)} RENAME TO {_q('_nrr_prev_' + obj)}")
            else:
                db.execute(f"DROP TABLE {_q(obj)}")
        db.execute(f"ALTER TABLE {_q(tmp)} RENAME TO {_q(obj)}")
        db.execute("INSERT OR REPLACE INTO _nrr_files (object, size, mtime_ns, sha256, header) VALUES (?, ?, ?, ?, ?)",
                   (obj, st.st_size, st.st_mtime_ns, _sha256(self.folder / f"{obj}.csv"), json.dumps(header)))

    @contextmanager
    def reloads_held(self):
        """Within: a reload keeps the table it replaces (with its merge bases and file record). An exception
        puts every reloaded object back as it was, so a run that stops before it writes (an input guard, a
        gate, a stop request) leaves the working copy untouched and the next command loads the CSVs again;
        leaving normally drops the kept tables. Kept tables a dead process left behind are put back first."""
        db = self.db
        db.execute("CREATE TABLE IF NOT EXISTS _nrr_held (object TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                   "sha256 TEXT, header TEXT, had_file INTEGER)")
        db.execute("CREATE TABLE IF NOT EXISTS _nrr_held_base (object TEXT NOT NULL, id TEXT NOT NULL, "
                   "field TEXT NOT NULL, value TEXT)")
        self._settle_held(restore=True)
        self._holding = True
        try:
            yield
        except BaseException:
            self._holding = False
            for obj in list(self._pending):  # a load still running is never adopted
                self._drop_side_load(obj)
            self._settle_held(restore=True)
            raise
        self._holding = False
        self._settle_held(restore=False)

    def _hold_rows(self, obj: str, ids: list[str]) -> None:
        """Before a held delta reload changes `ids`: keep their records as they are (once per hold), so putting
        the object back restores them; an object whose whole table is held already needs nothing more."""
        db = self.db
        if ("_nrr_prev_" + obj) in self._tables():
            return
        self._keep_previous(obj)
        rows = "_nrr_prevrows_" + obj
        db.execute(f"CREATE TABLE IF NOT EXISTS {_q(rows)} AS SELECT * FROM {_q(obj)} WHERE 0")
        db.execute("CREATE TABLE IF NOT EXISTS _nrr_held_ids (object TEXT NOT NULL, id TEXT NOT NULL, "
                   "PRIMARY KEY (object, id)) WITHOUT ROWID")
        cols = ", ".join(_q(c) for c in self._table_columns(rows))
        chunk = json.dumps(ids)
        db.execute(f"INSERT INTO {_q(rows)} ({cols}) SELECT {cols} FROM {_q(obj)} WHERE Id IN (SELECT value FROM "
                   "json_each(?)) AND Id NOT IN (SELECT id FROM _nrr_held_ids WHERE object = ?)", (chunk, obj))
        db.execute("INSERT OR IGNORE INTO _nrr_held_ids SELECT ?, value FROM json_each(?)", (obj, chunk))

    def _put_rows_back(self, obj: str) -> None:
        """Undo the held delta reloads of `obj`: the records they touched as they were, those they added gone."""
        db = self.db
        rows = "_nrr_prevrows_" + obj
        if rows not in self._tables():
            return
        cols = ", ".join(_q(c) for c in self._table_columns(rows))
        db.execute(f"DELETE FROM {_q(obj)} WHERE Id IN (SELECT id FROM _nrr_held_ids WHERE object = ?)", (obj,))
        db.execute(f"INSERT INTO {_q(obj)} ({cols}) SELECT {cols} FROM {_q(rows)}")
        self._drop_held_rows(obj)

    def _drop_held_rows(self, obj: str) -> None:
        self.db.execute(f"DROP TABLE IF EXISTS {_q('_nrr_prevrows_' + obj)}")
        if "_nrr_held_ids" in self._tables():
            self.db.execute("DELETE FROM _nrr_held_ids WHERE object = ?", (obj,))

    def _table_columns(self, table: str) -> list[str]:
        return [r[1] for r in self.db.execute(f"PRAGMA table_info({_q(table)})")]

    def _set_aside_kept(self, obj: str) -> None:
        """While held, the kept last load a reload replaces is set aside (once), to go back with the table."""
        kept = digests.path_for(self.path, obj)
        aside = kept.with_name(kept.name + ".held")
        if self._holding and kept.exists() and not aside.exists():
            os.replace(kept, aside)

    def _settle_kept(self, obj: str, restore: bool) -> None:
        kept = digests.path_for(self.path, obj)
        aside = kept.with_name(kept.name + ".held")
        if not aside.exists():
            return
        if restore:
            os.replace(aside, kept)
        else:
            digests.discard(aside)

    def _keep_previous(self, obj: str) -> bool:
        """Remember the object's file record and merge bases before a held reload; False if already held."""
        db = self.db
        if db.execute("SELECT 1 FROM _nrr_held WHERE object = ?", (obj,)).fetchone():
            return False  # reloaded twice in one hold: the first table is the one to put back
        row = db.execute("SELECT size, mtime_ns, sha256, header FROM _nrr_files WHERE object = ?", (obj,)).fetchone()
        db.execute("INSERT INTO _nrr_held VALUES (?, ?, ?, ?, ?, ?)", (obj, *(row or (None,) * 4), row is not None))
        db.execute("INSERT INTO _nrr_held_base SELECT object, id, field, value FROM _nrr_base WHERE object = ?", (obj,))
        return True

    def _settle_held(self, restore: bool) -> None:
        """Put the held objects back (restore) or let their previous tables go."""
        db = self.db
        held = db.execute("SELECT object, size, mtime_ns, sha256, header, had_file FROM _nrr_held").fetchall()
        if not held:
            return
        self.wait_for_kept_loads()
        with self.transaction():
            for obj, *record in held:
                if restore:
                    self._restore_held(obj, *record)
                else:
                    db.execute(f"DROP TABLE IF EXISTS {_q('_nrr_prev_' + obj)}")
                    self._drop_held_rows(obj)
                self._settle_kept(obj, restore)
            db.execute("DELETE FROM _nrr_held")
            db.execute("DELETE FROM _nrr_held_base")

    def _restore_held(self, obj: str, size, mtime_ns, sha, header, had_file) -> None:
        """Put one held object back: its table (whole, or the records a delta reload touched), bases, file record."""
        db = self.db
        prev = "_nrr_prev_" + obj
        self._put_rows_back(obj)
        if prev in self._tables():
            db.execute(f"DROP TABLE IF EXISTS {_q(obj)}")
            db.execute(f"ALTER TABLE {_q(prev)} RENAME TO {_q(obj)}")
        db.execute("DELETE FROM _nrr_base WHERE object = ?", (obj,))
        db.execute("INSERT INTO _nrr_base SELECT object, id, field, value FROM _nrr_held_base WHERE object = ?", (obj,))
        if had_file:
            db.execute("INSERT OR REPLACE INTO _nrr_files (object, size, mtime_ns, sha256, header) "
                       "VALUES (?, ?, ?, ?, ?)", (obj, size, mtime_ns, sha, header))
        else:
            db.execute("DELETE FROM _nrr_files WHERE object = ?", (obj,))

    def _undo_held(self, obj: str) -> None:
        """Undo a held reload of one object now (inside the caller's transaction) and stop holding it."""
        db = self.db
        row = db.execute("SELECT size, mtime_ns, sha256, header, had_file FROM _nrr_held WHERE object = ?",
                         (obj,)).fetchone()
        if row is not None:
            self._restore_held(obj, *row)
        self._settle_kept(obj, restore=True)
        db.execute("DELETE FROM _nrr_held WHERE object = ?", (obj,))
        db.execute("DELETE FROM _nrr_held_base WHERE object = ?", (obj,))

    def _merge(self, obj: str, tmp: str, header: list[str]) -> None:
        """Carry the engine's writes into the fresh load `tmp` (the CSV as it is now, 'theirs').

        Per field the engine changed since the last load (its CSV value kept in _nrr_base): theirs still equal
        to that base -> the engine's value stays; theirs changed -> theirs wins and, where the engine's value
        differs from it, a conflict is reported. Columns the CSV lacks (rollup fields) and records the engine
        created are kept, by Id."""
        db = self.db
        lowered = {h.lower(): h for h in header}
        keep = [c for c in self.columns(obj) if c.lower() not in lowered]
        for c in keep:
            db.execute(f"ALTER TABLE {_q(tmp)} ADD COLUMN {_q(c)} TEXT")
        if keep:
            sets = ", ".join(f"{_q(c)} = o.{_q(c)}" for c in keep)
            db.execute(f"UPDATE {_q(tmp)} AS t SET {sets} FROM {_q(obj)} AS o WHERE o.Id = t.Id")
        self._merge_bases(obj, _q(tmp), header)
        created = "SELECT id FROM _nrr_created WHERE object = ?"
        if db.execute(created + " LIMIT 1", (obj,)).fetchone():
            cols = [_q(c) for c in self.columns(obj) if c.lower() in lowered or c in keep]
            db.execute(f"INSERT INTO {_q(tmp)} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM {_q(obj)} "
                       f"WHERE Id IN ({created}) AND Id NOT IN (SELECT Id FROM {_q(tmp)})", (obj,))

    def _merge_bases(self, obj: str, tmp: str, header: list[str], gone_json: str | None = None) -> None:
        """Per field the engine changed since the last load (its CSV value kept in _nrr_base), for the records of
        `tmp` (the table reference of the fresh load: every record, or a delta reload's new and changed ones):
        theirs still equal to the base -> the engine's value is put into `tmp`; theirs changed -> theirs stays and,
        where the engine's value differs, a conflict is reported; the base goes where theirs won or the record
        left the CSV (a full reload: not in `tmp`; a delta reload: the Ids `gone_json` lists)."""
        db = self.db
        lowered = {h.lower(): h for h in header}
        fields = [f for (f,) in db.execute("SELECT DISTINCT field FROM _nrr_base WHERE object = ?", (obj,))]
        base = "SELECT id, value FROM _nrr_base WHERE object = ? AND field = ?"
        for f in fields:
            col = lowered.get(f.lower())
            if col is None:
                continue  # the CSV no longer has the column: the engine's value is kept with the column
            c = _q(col)
            conflicts = [rid for (rid,) in db.execute(
                f"SELECT t.Id FROM {tmp} t JOIN {_q(obj)} o ON o.Id = t.Id JOIN ({base}) b ON b.id = t.Id "
                f"WHERE t.{c} IS NOT b.value AND o.{c} IS NOT t.{c} ORDER BY t.Id", (obj, f))]
            if conflicts:
                self._conflicts.append(_conflict(obj, f, conflicts))
            if gone_json is None:
                db.execute(f"DELETE FROM _nrr_base WHERE object = ? AND field = ? AND id NOT IN (SELECT b.id FROM "
                           f"({base}) b JOIN {tmp} t ON t.Id = b.id WHERE t.{c} IS b.value)", (obj, f, obj, f))
            else:
                db.execute(f"DELETE FROM _nrr_base WHERE object = ? AND field = ? AND (id IN (SELECT value FROM "
                           f"json_each(?)) OR id IN (SELECT b.id FROM ({base}) b JOIN {tmp} t ON t.Id = b.id "
                           f"WHERE t.{c} IS NOT b.value))", (obj, f, gone_json, obj, f))
            db.execute(f"UPDATE {tmp} AS t SET {c} = o.{c} FROM {_q(obj)} AS o, ({base}) AS b "
                       f"WHERE o.Id = t.Id AND b.id = t.Id AND t.{c} IS b.value", (obj, f))

    def reload_findings(self) -> list[Finding]:
        """Conflicts the three-way merge of the last reloads found (each reported once)."""
        out, self._conflicts = self._conflicts, []
        return out

    def _csv_fields(self, obj: str, fields: Sequence[str]) -> list[str]:
        """Those of `fields` that are columns of the object's CSV (the fields whose base a reload needs)."""
        row = self.db.execute("SELECT header FROM _nrr_files WHERE object = ?", (obj,)).fetchone()
        if row is None:
            return []
        if row[0] is None:  # a working copy made before headers were kept: read the file's header once
            path = self.folder / f"{obj}.csv"
            try:
                with open(path, newline="", encoding="utf-8-sig") as fh:
                    header = [h.strip() for h in next(csv.reader(fh), [])]
            except (OSError, UnicodeDecodeError):
                return []
            self.db.execute("UPDATE _nrr_files SET header = ? WHERE object = ?", (json.dumps(header), obj))
        else:
            header = json.loads(row[0])
        have = {h.lower() for h in header}
        return [f for f in fields if f.lower() in have]

    def _keep_base(self, obj: str, fields: Sequence[str], ids: Sequence[str]) -> None:
        """Before the engine changes `fields` of `ids`: remember the CSV's value, unless already remembered."""
        fields = self._csv_fields(obj, fields)
        for start in range(0, len(ids) if fields else 0, 50_000):
            chunk = json.dumps([str(rid) for rid in ids[start:start + 50_000]])  # one statement per chunk, not per Id
            for f in fields:
                self.db.execute(f"INSERT OR IGNORE INTO _nrr_base (object, id, field, value) SELECT ?, o.Id, ?, "
                                f"o.{_q(f)} FROM json_each(?) j JOIN {_q(obj)} o ON o.Id = j.value", (obj, f, chunk))

    def _load_checked(self, path: Path, insert: str, header: list[str], id_col: int) -> None:
        """The careful load: check each row's width and encoding so an error names its line."""
        width = len(header)
        with open(path, newline="", encoding="utf-8-sig", errors="strict") as fh:
            reader = csv.reader(fh, strict=True)
            state = {"line": 1}
            if next(reader, None) is None:
                raise DataError("empty file; expected a header row of field API names", Location(str(path), 1))

            def rows():
                for row in reader:
                    if len(row) != width:
                        if not any(cell.strip() for cell in row):
                            continue
                        raise DataError(f"{len(row)} values but the header has {width} columns",
                                        Location(str(path), reader.line_num))
                    state["line"] = reader.line_num
                    yield row

            try:
                self.db.executemany(insert, rows())
            except sqlite3.IntegrityError:
                raise self._id_problem(path, id_col) from None
            except UnicodeDecodeError:  # the reader decodes ahead of its rows: find the byte itself
                raise not_utf8(path) or DataError("not UTF-8; re-save the file as UTF-8", Location(str(path))) from None
            except csv.Error as exc:
                raise _csv_problem(exc, path, state["line"] + 1, reader.line_num) from None

    def _check_id_forms(self, table: str, path: Path, id_col: int, skip_created: str | None = None) -> None:
        """A 15-character Id and an 18-character one that is its other form name one record twice (Salesforce's
        Ids are the same in both forms): the duplicate-Id error, naming both lines. Through the Id index, looking
        only at 15-character Ids; `skip_created`: an object whose records the engine created are not the CSV's."""
        q = _q(table)
        mine = "" if skip_created is None else " AND o.Id NOT IN (SELECT id FROM _nrr_created WHERE object = ?)"
        row = self.db.execute(f"SELECT s.Id, o.Id FROM {q} s JOIN {q} o ON o.Id > s.Id AND o.Id < s.Id || char(127) "
                              f"WHERE length(s.Id) = 15 AND length(o.Id) = 18 AND substr(o.Id, 1, 15) = s.Id{mine} "
                              f"ORDER BY s.Id LIMIT 1", () if skip_created is None else (skip_created,)).fetchone()
        if row is not None:
            raise self._id_problem(path, id_col, same=row)

    @staticmethod
    def _id_problem(path: Path, id_col: int, same: tuple[str, str] | None = None) -> DataError:
        """Find the line that broke the Id constraint (rare path: re-scan the file)."""
        if same is None:
            return next(_row_problems(path, id_col, None), None) or DataError("Id column violates uniqueness",
                                                                            Location(str(path)))
        seen: dict[str, int] = {}
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            next(reader, None)
            for row in reader:
                if not row or id_col >= len(row):
                    continue
                rid = row[id_col].strip()
                if rid in same:
                    seen[rid] = reader.line_num
                if len(seen) == 2:
                    (a, la), (b, lb) = sorted(seen.items(), key=lambda kv: kv[1])
                    return DataError(f"duplicate Id {b}: the same record as {a} (line {la}), in its "
                                     f"{len(b)}-character form; keep one line per record",
                                     Location(str(path), lb))
        return DataError("Id column violates uniqueness", Location(str(path)))

    @staticmethod
    def row_problems(path: Path, limit: int = 20) -> list[DataError]:
        """The row problems a load of the CSV stops at (a row of the wrong width, an empty or repeated Id), up
        to `limit`, in line order: what `validate` lists at once where a load names only the first. A problem
        of the file as a whole (its encoding, its quoting) ends the list; the load names it."""
        header = read_header(path)
        id_col = [h.lower() for h in header].index("id")
        out: list[DataError] = []
        try:
            for problem in _row_problems(path, id_col, len(header)):
                out.append(problem)
                if len(out) == limit:
                    break
        except (UnicodeDecodeError, csv.Error, OSError):
            pass
        return out

    @staticmethod
    def _check_header(header: list[str], path: Path) -> None:
        lowered = [h.lower() for h in header]
        if "id" not in lowered:
            sep = separator_of(header)
            if sep:
                raise _separated_by(sep, header[0], path)
            raise DataError(f"no Id column; expected a header with Id (found: {', '.join(header[:8])})",
                            Location(str(path), 1))
        for i, h in enumerate(header):
            if not _API_NAME.match(h):
                raise DataError(f"column {i + 1} {h[:40]!r} is not a field API name", Location(str(path), 1))
            if lowered.index(h.lower()) != i:
                raise DataError(f"column {h} appears twice in the header", Location(str(path), 1))

    # ---- reading -------------------------------------------------------------------------------
    def _loading_first(self, obj: str) -> Path | None:
        """The CSV of an object whose first load runs in the background (no table of it yet, nothing the engine
        wrote to it, the file as the load found it): the table it makes is that file, so its header and its
        columns (read with Arrow) need not wait for it."""
        pending = self._pending.get(obj)
        if pending is None or obj in self._tables():
            return None
        for table in ("_nrr_base", "_nrr_created"):
            if self.db.execute(f"SELECT 1 FROM {table} WHERE object = ? LIMIT 1", (obj,)).fetchone():
                return None
        path, st = self.folder / f"{obj}.csv", pending[3]
        try:
            now = os.lstat(path)
        except OSError:
            return None
        return path if (now.st_size, now.st_mtime_ns) == (st.st_size, st.st_mtime_ns) else None

    def has_table(self, obj: str) -> bool:
        if obj in self._pending:
            if self._loading_first(obj) is not None:
                return True   # (a load that fails says so when it is waited for: finish_sync)
            self.finish_sync()
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (obj,)).fetchone() is not None

    def has_field(self, obj: str, field: str) -> bool:
        """The object exists and has the field (API names are case-insensitive, as in Salesforce)."""
        return self.has_table(obj) and field.lower() in {c.lower() for c in self.columns(obj)}

    def columns(self, obj: str) -> list[str]:
        """Field API names of an object (as the CSV header spells them)."""
        if obj in self._pending:
            path = self._loading_first(obj)
            if path is not None:
                return read_header(path)
            self.finish_sync()
        return [r[1] for r in self.db.execute(f"PRAGMA table_info({_q(obj)})")]

    def read(self, obj: str, fields: Sequence[str], order_by: str = "Id") -> Iterator[tuple]:
        """Stream rows of `fields` (missing columns read as None), ordered by Id (or `order_by`)."""
        if obj in self._pending:
            self.finish_sync()
        have = {c.lower() for c in self.columns(obj)}
        cols = ", ".join(_q(f) if f.lower() in have else "NULL" for f in fields)
        cur = self.db.execute(f"SELECT {cols} FROM {_q(obj)} ORDER BY {_q(order_by)}")
        while True:
            rows = cur.fetchmany(_BATCH)
            if not rows:
                return
            yield from rows

    def read_packed(self, obj: str, columns: Sequence[Sequence[str]], order_by: str,
                    like: tuple[str, str] | None = None) -> list[tuple[bytes, np.ndarray]]:
        """Rows as packed text, no Python object per row: for each entry of `columns` (a list of fields, whose
        values are joined by \\x1f), one UTF-8 buffer of the rows' values joined by \\x1e, and the offsets of
        each row's value in it (len(rows) + 1 of them). Separators inside values become spaces."""
        if obj in self._pending:
            self.finish_sync()
        have = {c.lower() for c in self.columns(obj)}

        def query(cleaned: bool):
            def value(f: str) -> str:
                v = f"coalesce({_q(f) if f.lower() in have else chr(39) * 2}, '')"
                return f"replace(replace({v}, char(30), ' '), char(31), ' ')" if cleaned else v

            exprs = [" || char(31) || ".join(value(f) for f in fields) for fields in columns]
            where, args = "", []
            if like is not None:
                where, args = f" WHERE {_q(like[0])} LIKE ?", [like[1]]
            inner = ", ".join(f"{e} AS c{i}" for i, e in enumerate(exprs))
            # an aggregate over an ordered subquery: SQLite concatenates in the subquery's order
            row = self.db.execute(f"SELECT count(*), {', '.join(f'group_concat(c{i}, char(30))' for i in range(len(exprs)))}"
                                  f" FROM (SELECT {inner} FROM {_q(obj)}{where} ORDER BY {_q(order_by)})", args).fetchone()
            return row[0], [(text or "").encode() for text in row[1:]]

        n, blobs = query(cleaned=False)
        # a value holding a separator shows as a count of separators other than the rows' and fields' own: then
        # read again with every separator inside a value made a space (22 replace() a row cost more than the read)
        if any(b.count(b"\x1e") != max(n - 1, 0) or b.count(b"\x1f") != n * (len(f) - 1) for b, f in zip(blobs, columns)):
            n, blobs = query(cleaned=True)
        out = []
        for blob in blobs:
            if not n:
                out.append((b"", np.zeros(1, dtype=np.int64)))
                continue
            seps = np.flatnonzero(np.frombuffer(blob, dtype=np.uint8) == 0x1E)
            out.append((blob, np.concatenate([[0], seps + 1, [len(blob) + 1]]).astype(np.int64)))
        return out

    def _as_loaded(self, obj: str, wait: bool = True) -> tuple[Path, tuple[int, int]] | None:
        """(CSV, its size and mtime) when the working copy's table holds exactly that file as it is now: loaded
        from it, with no field or record the engine wrote; else None. `wait=False`: also while the object's
        first load runs in the background (the table it makes is that file, if the load accepts it)."""
        if self.remote:
            return None
        if obj in self._pending:
            if not wait and (path := self._loading_first(obj)) is not None:
                st = self._pending[obj][3]
                return path, (st.st_size, st.st_mtime_ns)
            self.finish_sync()
        path = self.folder / f"{obj}.csv"
        row = self.db.execute("SELECT size, mtime_ns, header FROM _nrr_files WHERE object = ?", (obj,)).fetchone()
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if row is None or (row[0], row[1]) != (st.st_size, st.st_mtime_ns) or not row[2] or not stat.S_ISREG(st.st_mode):
            return None
        if {c.lower() for c in self.columns(obj)} != {h.lower() for h in json.loads(row[2])}:
            return None   # a column the engine added
        for table in ("_nrr_base", "_nrr_created"):
            if self.db.execute(f"SELECT 1 FROM {table} WHERE object = ? LIMIT 1", (obj,)).fetchone():
                return None
        return path, (st.st_size, st.st_mtime_ns)

    def csv_batches(self, obj: str, fields: dict[str, str | None], index: dict[str, int]):
        """The object's columns read straight from its CSV with Arrow (sources/columnar.py), batch by batch, when
        the working copy's table holds exactly that file (_as_loaded); else None (read the working copy).
        Iterating raises one of `columnar_errors` when the file changed meanwhile or Arrow cannot read it: read
        the working copy then."""
        loaded = self._as_loaded(obj)
        if loaded is None:
            return None
        from . import columnar
        return columnar.read_batches(loaded[0], fields, loaded[1], index)

    @property
    def columnar_errors(self) -> tuple[type[BaseException], ...]:
        from . import columnar
        import pyarrow as pa
        return (columnar.Changed, pa.ArrowException, OSError)

    def read_columns(self, obj: str, fields: Sequence[str]) -> list[list]:
        """Like read, but column by column: straight from the CSV with Arrow while the table holds exactly that
        file (a first run's accounts), else transposed from SQLite a chunk at a time in C."""
        aside = obj in self._pending
        loaded = self._as_loaded(obj, wait=False)
        if loaded is not None:
            from . import columnar
            try:
                cols = columnar.read_columns(loaded[0], fields, loaded[1])
                if not aside or _ids_sound(cols, fields):
                    return cols
            except self.columnar_errors:
                pass
            # a file the load may refuse (an Id missing or twice, ...): its load says how, naming the line
        cols = [[] for _ in fields]
        rows = self.read(obj, fields)
        while chunk := list(islice(rows, _BATCH)):
            for col, values in zip(cols, zip(*chunk)):
                col.extend(values)
        return cols

    def get(self, obj: str, ids: Sequence[str], fields: Sequence[str]) -> dict[str, tuple]:
        """Current values of `fields` for the given Ids (absent Ids are left out)."""
        if not self.has_table(obj):
            return {}
        have = {c.lower() for c in self.columns(obj)}
        cols = ", ".join(_q(f) if f.lower() in have else "NULL" for f in fields)
        out = {}
        for i in range(0, len(ids), 500):
            chunk = list(ids[i:i + 500])
            q = f"SELECT Id{', ' + cols if cols else ''} FROM {_q(obj)} WHERE Id IN ({', '.join('?' * len(chunk))})"
            for row in self.db.execute(q, chunk):
                out[row[0]] = row[1:]
        return out

    # ---- writing -------------------------------------------------------------------------------
    @contextmanager
    def transaction(self):
        """One working-copy transaction; nested calls join the outer one (commit happens once, at the end)."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")
        before = self.db.total_changes
        try:
            yield
            if self.db.total_changes != before:   # a write: what a store says of this working copy no longer holds
                self.db.execute("INSERT OR REPLACE INTO _nrr_meta (key, value) VALUES ('token', ?)", [uuid.uuid4().hex])
        except BaseException:
            if self.db.in_transaction:  # SQLite rolls back by itself on a full disk: keep its error, not ours
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        wal.after_commit(self.path)

    def state_token(self, make: bool = False) -> str | None:
        """A value that changes with every write to the working copy (a load, a reload, a run's write) and is
        another for another working copy (deleted and made again, restored from a backup): the columnar store
        records it, and is not taken for this working copy's content unless it still holds. None: none yet;
        `make`: one is made then (a working copy an older version made has none until it is written)."""
        if make and self.state_token() is None:
            with self.transaction():
                self.db.execute("INSERT OR IGNORE INTO _nrr_meta (key, value) VALUES ('token', ?)", [uuid.uuid4().hex])
        try:
            row = self.db.execute("SELECT value FROM _nrr_meta WHERE key = 'token'").fetchone()
        except sqlite3.OperationalError:   # no such table (it could not be made: a full disk)
            return None
        return row[0] if row else None

    def ensure_fields(self, obj: str, fields: Iterable[str]) -> None:
        """Add missing columns (the local equivalent of deploying the custom fields)."""
        if not self.has_table(obj):
            self.db.execute(f"CREATE TABLE {_q(obj)} (Id TEXT NOT NULL PRIMARY KEY)")
        have = {c.lower() for c in self.columns(obj)}
        for f in fields:
            if f.lower() not in have:
                self.db.execute(f"ALTER TABLE {_q(obj)} ADD COLUMN {_q(f)} TEXT")
                have.add(f.lower())

    def update_fields(self, obj: str, fields: Sequence[str], ids: Sequence[str],
                      columns: Sequence[Sequence[str | None]]) -> list[tuple[str, str]]:
        """Set `fields` on the records `ids` (values column by column); return (Id, error) of records not found."""
        if len(ids) == 0:
            return []
        with self.transaction():
            self.ensure_fields(obj, fields)
            self._keep_base(obj, fields, ids)
            sets = ", ".join(f"{_q(f)} = ?" for f in fields)
            cur = self.db.executemany(f"UPDATE {_q(obj)} SET {sets} WHERE Id = ?", zip(*columns, ids))
            if cur.rowcount == len(ids):
                return []
            existing = self.get(obj, ids, [])
            return [(rid, "ENTITY_IS_DELETED: record does not exist") for rid in ids if rid not in existing]

    def upsert_json(self, obj: str, key_field: str, fields: Sequence[str], records: Iterable[str], prefix: str,
                    chunk: int = 10_000) -> list[tuple[int, str]]:
        """Upsert records given as JSON objects by external id (`upsert_rows` of their values)."""
        cols = (key_field, *fields)
        return self.upsert_rows(obj, key_field, fields, (json_row(text, cols) for text in records), prefix, chunk)

    def upsert_rows(self, obj: str, key_field: str, fields: Sequence[str], rows: Iterable[Sequence], prefix: str,
                    chunk: int = 10_000) -> list[tuple[int, str]]:
        """Upsert records given as rows (external id, then the values of `fields`) by external id, a chunk at a
        time. New records get 18-character Ids with `prefix`. Returns (position, error) of records that failed."""
        db = self.db
        it = iter(rows)
        with self.transaction():
            self.ensure_fields(obj, [key_field, *fields])
            index = f"CREATE INDEX IF NOT EXISTS {_q('_nrr_key_' + obj)} ON {_q(obj)} ({_q(key_field)})"
            # Into an empty table (a first run's snapshots) no key can exist but the ones this call inserts: no
            # lookups, and the index built once after the inserts (cheaper than kept up row by row)
            seen: set[str] | None = set() if db.execute(f"SELECT 1 FROM {_q(obj)} LIMIT 1").fetchone() is None else None
            if seen is None:
                db.execute(index)
            cols = [key_field, *fields]
            insert = f"INSERT INTO {_q(obj)} (Id, {', '.join(map(_q, cols))}) VALUES ({', '.join('?' * (len(cols) + 1))})"
            update = f"UPDATE {_q(obj)} SET {', '.join(f'{_q(f)} = ?' for f in fields)} WHERE Id = ?"
            while part := list(islice(it, chunk)):
                keys = [r[0] for r in part]
                existing: dict[str, str] = {}
                if seen is not None:
                    if seen.isdisjoint(keys):
                        seen.update(keys)
                        keys_checked = 0
                    else:   # a key this call inserted already: look keys up as usual from here on
                        db.execute(index)
                        seen, keys_checked = None, len(keys)
                else:
                    keys_checked = len(keys)
                for i in range(0, keys_checked, 500):
                    sub = keys[i:i + 500]
                    existing.update((k, rid) for rid, k in db.execute(
                        f"SELECT Id, {_q(key_field)} FROM {_q(obj)} WHERE {_q(key_field)} IN ({', '.join('?' * len(sub))})",
                        sub))
                fresh, updates = [], []
                for key, rec in zip(keys, part):
                    rid = existing.get(key)
                    if rid is None:
                        fresh.append(rec)
                    else:
                        updates.append((*rec[1:], rid))
                ids = self.free_ids(obj, prefix, len(fresh))
                db.executemany(insert, ((rid, *rec) for rid, rec in zip(ids, fresh)))
                db.executemany(update, updates)
                self._advance(ids[-1:])   # free_ids hands out ascending counters: the last is the highest
            if seen is not None:
                db.execute(index)
        return []

    def free_ids(self, obj: str, prefix: str, count: int) -> list[str]:
        """`count` new 18-character Ids for `obj` that no record holds in any shape (15 or 18 characters) and
        that the engine never handed out before, even to a record deleted since (read-only: a plan names the
        records it will create, and the run that writes them names the same ones).

        Numbered in the engine's range (ids.COUNTER_LIMIT) above both the prefix's sequence and the highest Id
        of the table in that range, so no record can hold one; an org whose Ids are Salesforce's own has none
        there. When that range is used up to its top, the lowest free counters above the sequence."""
        if count <= 0:
            return []
        seq = self._sequence(prefix)
        top = max(seq, self._referenced_top(prefix))
        for rid in self._range_ids(obj, *counter_range(prefix), descending=True):
            if (n := engine_counter(rid)) is not None:  # an Id in the range, so the highest counter of all
                top = max(top, n)
                break
        if top + count < COUNTER_LIMIT:
            return sf_ids(prefix, top + 1, count)
        out: list[str] = []
        n = seq + 1
        for rid in self._range_ids(obj, sf_id(prefix, min(n, COUNTER_LIMIT))[:15], counter_range(prefix)[1]):
            held = engine_counter(rid)
            if held is None or held < n:  # not a counter, or the other shape (15/18) of one passed already
                continue
            out.extend(sf_id(prefix, k) for k in range(n, min(held, n + count - len(out))))
            if len(out) == count:
                return out
            n = held + 1
        out.extend(sf_id(prefix, k) for k in range(n, min(COUNTER_LIMIT, n + count - len(out))))
        if len(out) < count:
            raise DataError(f"no free {obj} Id with key prefix {prefix}: every counter up to {COUNTER_LIMIT - 1} "
                            "is held or was handed out", Location(str(self.path)))
        return out

    def _referenced_top(self, prefix: str) -> int:
        """The highest engine-range counter any cell of any object holds (a ParentId or Account__c pointing at a
        record that is not there): a new record never takes an Id a dangling reference names, which would make it
        that child's parent or that subscription's account without anyone deciding so. A scan of every column,
        made only when records are created."""
        low, high = counter_range(prefix)
        if prefix in self._referenced:   # one scan per prefix and load: the engine's own writes reference only
            return self._referenced[prefix]  # records it created, whose counters the sequence holds
        top = 0
        for obj in self.objects():
            cols = self.columns(obj)
            if not cols:
                continue
            # one pass over the table: the highest value of each column in the range (base-62 digits sort by value)
            cells = ", ".join(f"max(CASE WHEN {_q(c)} >= :lo AND {_q(c)} < :hi THEN {_q(c)} END)" for c in cols)
            row = self.db.execute(f"SELECT {cells} FROM {_q(obj)}", {"lo": low, "hi": high}).fetchone()
            for col, value in zip(cols, row):
                if isinstance(value, str) and (n := engine_counter(value)) is not None:
                    top = max(top, n)
                elif isinstance(value, str):   # not an Id shape: the highest one that is, the slow way
                    top = max(top, self._column_top(obj, col, value, low))
        self._referenced[prefix] = top
        return top

    def _column_top(self, obj: str, col: str, below: str, low: str) -> int:
        """The highest engine counter in a column whose highest in-range value is not an Id."""
        cur = self.db.execute(f"SELECT DISTINCT {_q(col)} FROM {_q(obj)} WHERE {_q(col)} >= ? AND {_q(col)} <= ? "
                              f"ORDER BY 1 DESC", (low, below))
        try:
            for (value,) in cur:
                if isinstance(value, str) and (n := engine_counter(value)) is not None:
                    return n
        finally:
            cur.close()
        return 0

    def _sequence(self, prefix: str) -> int:
        """The highest counter the engine handed out with this key prefix (0 for none)."""
        return (self.db.execute("SELECT n FROM _nrr_sequences WHERE prefix=?", (prefix,)).fetchone() or (0,))[0]

    def _range_ids(self, obj: str, low: str, high: str, descending: bool = False) -> Iterator[str]:
        """The table's Ids from `low` (inclusive) to `high` (exclusive) in byte order, through the Id index."""
        if not self.has_table(obj):
            return
        cur = self.db.execute(f"SELECT Id FROM {_q(obj)} WHERE Id >= ? AND Id < ? ORDER BY Id"
                              f"{' DESC' if descending else ''}", (low, high))
        try:
            for (rid,) in cur:
                yield rid
        finally:
            cur.close()

    def _advance(self, ids: Iterable[str]) -> None:
        """Move each key prefix's sequence up to the counters of `ids`, records the engine created (so rollback
        deleting one never frees its Id for another record)."""
        top: dict[str, int] = {}
        for rid in ids:
            if (n := engine_counter(rid)) is not None:
                top[rid[:3]] = max(n, top.get(rid[:3], 0))
        self.db.executemany("INSERT INTO _nrr_sequences VALUES (?, ?) ON CONFLICT(prefix) DO UPDATE SET "
                            "n = max(n, excluded.n)", top.items())

    def insert(self, obj: str, records: Sequence[dict]) -> list[tuple[str, str]]:
        """Insert records that carry their own Id; return (Id, error) of those that could not be inserted."""
        failed = []
        with self.transaction():
            self.ensure_fields(obj, sorted({f for r in records for f in r if f != "Id"}))
            for r in records:
                cols = list(r)
                try:
                    self.db.execute(f"INSERT INTO {_q(obj)} ({', '.join(map(_q, cols))}) VALUES "
                                    f"({', '.join('?' * len(cols))})", [r[c] for c in cols])
                except sqlite3.IntegrityError:
                    failed.append((r["Id"], "DUPLICATE_VALUE: a record with this Id exists"))
                else:
                    self.db.execute("INSERT OR IGNORE INTO _nrr_created VALUES (?, ?)", (obj, r["Id"]))
            self._advance(r["Id"] for r in records)
        return failed

    def delete(self, obj: str, ids: Sequence[str]) -> list[WriteResult]:
        """Delete records by Id (rollback of inserts, snapshots of absorbed families); Ids already gone fail
        individually."""
        if not ids:
            return []
        with self.transaction():
            existing = self.get(obj, ids, [])
            if existing:
                self.db.executemany(f"DELETE FROM {_q(obj)} WHERE Id = ?", ((rid,) for rid in existing))
            self.db.executemany("DELETE FROM _nrr_created WHERE object = ? AND id = ?", ((obj, rid) for rid in existing))
        return [WriteResult(rid, rid in existing, None if rid in existing else "ENTITY_IS_DELETED") for rid in ids]

    # ---- export --------------------------------------------------------------------------------
    def objects(self) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE '\\_nrr%' ESCAPE '\\' ORDER BY name")]

    def in_org(self, obj: str, ids: Iterable[str]) -> set[str]:
        """The Ids among `ids` of records of the org's own export (<obj>.csv in the folder), as opposed to those
        only the working copy has: the engine created them, and the real org knows them by their external id."""
        wanted = set(ids)
        path = self.folder / f"{obj}.csv"
        if not wanted or not path.is_file():
            return set()
        found = set()
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:  # loaded already: it is sound
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            if "id" not in header:
                return set()
            col = header.index("id")
            for row in reader:
                if len(row) > col and row[col].strip() in wanted:
                    found.add(row[col].strip())
        return found

    def export_full(self, out: Path) -> list[Path]:
        """Write every object of the working copy as <SObject>.csv (UTF-8): a picture for people, so a cell that
        starts like a formula (=, +, -, @) is neutralised with a leading quote; files 0600 in a 0700 folder."""
        private_dir(out)
        written = []
        for obj in self.objects():
            cols = self.columns(obj)
            target = out / f"{obj}.csv"
            with atomic_file(target, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(csv_row(cols))
                for row in self.read(obj, cols):
                    w.writerow(csv_row(row))
            written.append(target)
        return written
