"""Kill a real `nrr-engine` process with SIGKILL at points chosen from its own log, and read what it left.

Shared by tests/test_kill.py (the demo org, local and against the Salesforce double in its own process) and
bench/kill.py (any generated org). Points are external kills: the engine is never told, and never kills itself.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from nrr_engine import history_files
from nrr_engine.demo import DEMO_AS_OF, write_demo_config
from nrr_engine.testing.salesforce_double import SalesforceDouble

from forkserver import ForkServer

UPSERT = "(upsert)"
RUN_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")
ROOT = Path(__file__).resolve().parent.parent
AS_OF = DEMO_AS_OF.isoformat()   # the demo and generated orgs' "today"


@dataclass(frozen=True)
class Point:
    """Kill `delay` seconds after the `nth` log event labelled `label` (None: after the process started)."""

    label: str | None
    nth: int = 0
    delay: float = 0.0

    def __str__(self) -> str:
        where = "start" if self.label is None else f"{self.label}#{self.nth}"
        return f"{where}+{self.delay * 1000:.0f}ms"


@dataclass
class Event:
    label: str
    t: float          # seconds since the first event
    run_id: str | None


def label(event: dict) -> str:
    """What a log event marks: stage start/end by stage, Salesforce reads and jobs by object and operation."""
    name = event.get("event", "")
    if name.startswith("stage."):
        return f"{name}:{event.get('stage')}"
    if name == "salesforce.read":
        return f"{name}:{event.get('object')}"
    if name == "salesforce.job":
        return f"{name}:{event.get('object')}:{event.get('operation')}"
    return name


def parse(line: str) -> dict | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def events(stderr: str) -> list[Event]:
    out, t0 = [], None
    for line in stderr.splitlines():
        e = parse(line)
        if e is None or "timestamp" not in e:
            continue
        t = _seconds(e["timestamp"])
        t0 = t if t0 is None else t0
        out.append(Event(label(e), t - t0, e.get("run_id")))
    return out


def _seconds(stamp: str) -> float:
    import datetime as dt
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def points(clean: list[Event], at_start: tuple[float, ...] = (), fractions: tuple[float, ...] = (0.0, 0.5),
           min_gap: float = 0.002) -> list[Point]:
    """Points spread over the clean run: right after each event, and part-way to the next one where they
    are far enough apart to land between them (fractions of the gap)."""
    out = [Point(None, 0, d) for d in at_start]
    seen: Counter[str] = Counter()
    for i, e in enumerate(clean):
        nth = seen[e.label]
        seen[e.label] += 1
        gap = clean[i + 1].t - e.t if i + 1 < len(clean) else 0.0
        for f in fractions:
            if f == 0.0 or gap * f >= min_gap:
                out.append(Point(e.label, nth, round(gap * f, 4)))
    return out


def spread(candidates: list[Point], n: int) -> list[Point]:
    """n of the candidates, evenly spread over the run (all of them when there are fewer)."""
    if len(candidates) <= n:
        return candidates
    step = len(candidates) / n
    return [candidates[int(i * step)] for i in range(n)]


@dataclass
class Kill:
    """What one kill did: whether the process was still running when killed, and where it was."""

    point: Point
    killed: bool
    returncode: int
    stderr: str
    run_ids: set[str] = field(default_factory=set)

    @property
    def landed(self) -> str:
        """The stage the process was in when it died ('before run' / 'between stages' / 'after run')."""
        open_stage, began, ended = None, False, False
        for e in events(self.stderr):
            if e.label == "run.start":
                began = True
            elif e.label == "run.end":
                ended = True
            elif e.label.startswith("stage.start:"):
                open_stage = e.label.split(":", 1)[1]
            elif e.label.startswith("stage.end:"):
                open_stage = None
        if ended:
            return "after run"
        if open_stage:
            return open_stage
        return "between stages" if began else "before run"


def kill_at(cmd: list[str], point: Point, env: dict | None = None, cwd: Path | None = None,
            timeout: float = 120, server: ForkServer | None = None) -> Kill:
    """Start `cmd`, watch its stderr for the point's event, wait its delay, SIGKILL it (if still running).
    With a fork `server`, `cmd` (`python -m MODULE ARGS`) is forked from the preloaded interpreter instead."""
    if server is not None:
        return _kill_forked(server, cmd, point, env, cwd, timeout)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1,
                            env=env, cwd=cwd)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    if point.label is None:
        time.sleep(point.delay)
    else:
        for line in _until(point, proc.stderr, deadline):
            lines.append(line)
        time.sleep(point.delay)
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)
    rest = proc.stderr.read()
    proc.wait()
    stderr = "".join(lines) + rest
    return Kill(point, alive, proc.returncode, stderr, {m for m in RUN_ID.findall(stderr)})


def _until(point: Point, lines, deadline: float):
    """The lines up to and including the point's event (or all of them, or those until the deadline)."""
    seen = 0
    for line in lines:
        yield line
        e = parse(line)
        if e is not None and label(e) == point.label:
            if seen == point.nth:
                return
            seen += 1
        if time.monotonic() > deadline:
            return


def _module_of(cmd: list[str]) -> tuple[str, list[str]]:
    assert cmd[1] == "-m", f"a fork server runs `python -m MODULE ...` commands, not {cmd[:3]}"
    return cmd[2], cmd[3:]


def _kill_forked(server: ForkServer, cmd: list[str], point: Point, env: dict | None, cwd: Path | None,
                 timeout: float) -> Kill:
    running = server.start(*_module_of(cmd), env=env, cwd=cwd)
    if point.label is None:
        time.sleep(point.delay)
    else:
        stderr = (text for tag, text in running if tag == "E")
        for _ in _until(point, stderr, time.monotonic() + timeout):
            pass
        time.sleep(point.delay)
    running.kill()
    child = running.finish()
    stderr = "".join(child.stderr)
    # killed only if the signal ended it: one sent to a child that had just exited (not yet reaped) did nothing
    return Kill(point, child.returncode == -signal.SIGKILL, child.returncode, stderr,
                {m for m in RUN_ID.findall(stderr)})


def run(cmd: list[str], env: dict | None = None, cwd: Path | None = None, timeout: float = 300,
        server: ForkServer | None = None):
    if server is None:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    child = server.run(*_module_of(cmd), env=env, cwd=cwd, timeout=timeout)
    return subprocess.CompletedProcess(cmd, child.returncode, "".join(child.stdout), "".join(child.stderr))


def engine(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "nrr_engine", "--config", str(config), *args]


# ---- the double in its own process ---------------------------------------------------------------

class Double:
    """The Salesforce double serving a store over a Unix socket, in a process of its own."""

    def __init__(self, store: Path, socket: Path):
        self.store, self.socket = store, socket
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Double":
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "nrr_engine.testing.salesforce_double", "serve",
                                      str(self.store), str(ROOT / "salesforce"), str(self.socket)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(400):
            if self.socket.exists() or self.proc.poll() is not None:
                break
            time.sleep(0.01)
        assert self.socket.exists(), f"the double did not start (exit {self.proc.poll()})"
        return self

    def stop(self, grace: float = 0.2) -> None:
        """Let the request in hand finish (its client may have died), then stop the double."""
        if self.proc is None:
            return
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait()
        self.proc = None

    def command(self, config: Path, *args: str) -> list[str]:
        return [sys.executable, "-m", "nrr_engine.testing.salesforce_double", "connect", str(self.socket), "--",
                "--config", str(config), *args]


# ---- end states ------------------------------------------------------------------------------------

def tables(db: Path, skip: tuple[str, ...] = (), internal: bool = False) -> dict[str, list[tuple]]:
    """Every row of every table of an SQLite file, sorted (the org: every record and field); `internal`:
    leave out tables whose name starts with "_" (the double's Bulk query results)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {n: sorted(con.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr)
                for n in names if n not in skip and not n.startswith("sqlite_") and not (internal and n.startswith("_"))}
    finally:
        con.close()


def _no_run_ids(value):
    return RUN_ID.sub("RUN", value) if isinstance(value, str) else value


def history_rows(db: Path) -> dict[str, list[tuple]]:
    """The ARR history and the membership (every view) a ledger names, as sorted rows."""
    tables = history_files.named(db)
    arr = tables.pop(history_files.ARR, None)
    return {"arr_history": sorted(history_files.tuples(arr, history_files.ARR_COLUMNS)),
            "membership": sorted(r for t in tables.values()
                                 for r in history_files.tuples(t, history_files.MEMBERSHIP_COLUMNS))}


def ledger_state(db: Path, keep: set[str] | None = None) -> dict:
    """What a run leaves in the ledger, without run ids: every applied change (counted: each exactly once),
    the KPI snapshots, ARR history, membership and the review queue; `keep`: the runs whose statuses count."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        applied = Counter(
            (obj, ext if field == UPSERT else rid, field, old, new) for obj, rid, ext, field, old, new in con.execute(
                "SELECT object, record_id, external_id, field, old, new FROM changes WHERE status = 'applied'"))
        open_changes = con.execute("SELECT status, count(*) FROM changes WHERE status NOT IN ('applied', "
                                   "'not_applied', 'failed') GROUP BY status").fetchall()
        runs = [(mode, status) for rid, mode, status in con.execute("SELECT id, mode, status FROM runs ORDER BY started")
                if keep is None or rid in keep]
        review_cols = ("view, child_id, parent_ref, parent_id, placeholder_name, members, rule, confidence, evidence, "
                       "reason, status, note")
        return {
            "applied": applied,
            "open changes": open_changes,
            "snapshots": sorted(con.execute("SELECT external_id, view, root_id, month, data FROM snapshots")),
            **history_rows(db),
            "review": sorted(tuple(_no_run_ids(v) for v in r)
                             for r in con.execute(f"SELECT {review_cols} FROM review")),
            "runs": runs,
        }
    finally:
        con.close()


def run_ids(db: Path) -> dict[str, str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(con.execute("SELECT id, status FROM runs"))
    finally:
        con.close()


def copy_project(base: Path, to: Path) -> Path:
    shutil.copytree(base, to, symlinks=True)
    return to


def env_without_tty() -> dict:
    env = dict(os.environ)
    env.pop("NRR_ENGINE_CONFIG", None)
    return env


# ---- one kill point, end to end ---------------------------------------------------------------------

SF_SOURCE = ("source: {kind: salesforce, auth: password, poll_s: 0.001, backoff_s: 0.001, api_reserve: 100, "
             "bulk_write_min: 300, bulk_query_min: 1000, page_size: 1000}")
# internal bookkeeping of the working copy: files by their modification time, the random token of its last write
LOCAL_SKIP = ("_nrr_files", "_nrr_meta")


def local_project(root: Path, org: Path) -> Path:
    """A project on a copy of the org folder: config/ and rules/ as `nrr-engine demo` writes them."""
    shutil.copytree(org, root / "org")
    return write_demo_config(root)


def sf_project(root: Path, org: Path) -> Path:
    """The same project with the org served by the Salesforce double (Bulk reads and ingest jobs)."""
    cfg = local_project(root, org)
    cfg.write_text(cfg.read_text().replace("source: {kind: local, path: ../org}", SF_SOURCE))
    SalesforceDouble.seed(root / "sf.db", root / "org")
    return cfg


def state(root: Path, salesforce: bool, keep: set[str] | None) -> dict:
    org = tables(root / "sf.db", internal=True) if salesforce else tables(root / "state" / "local-org.db", LOCAL_SKIP)
    return {"org": org, "ledger": ledger_state(root / "state" / "nrr.db", keep)}


def check(clean: dict, after: dict, point: Point, landed: str) -> list[str]:
    """What differs from the clean run (empty when nothing does)."""
    where = f"kill at {point} (in {landed})"
    problems = []
    for table, rows in clean["org"].items():
        if after["org"].get(table) != rows:
            got = after["org"].get(table) or []
            problems.append(f"{where}: org table {table} differs ({len(got)} rows, clean {len(rows)}; "
                            f"e.g. {sorted(set(got) ^ set(rows), key=repr)[:2]})")
    for key, value in clean["ledger"].items():
        if after["ledger"][key] != value:
            if key == "applied":
                twice = [c for c, n in after["ledger"][key].items() if n > 1]
                missing = clean["ledger"][key] - after["ledger"][key]
                problems.append(f"{where}: ledger changes: {len(twice)} applied twice, {sum(missing.values())} "
                                f"never recorded applied")
            else:
                problems.append(f"{where}: ledger {key} differs ({len(after['ledger'][key])} rows, clean {len(value)})")
    return problems


def one_point(base: Path, root: Path, point: Point, salesforce: bool, clean: dict,
              server: ForkServer | None = None):
    """On a fresh copy of the prepared project: kill at the point, rerun, compare with the clean run (the engine
    forked from `server` when given)."""
    copy_project(base, root)
    env = env_without_tty()
    cfg = root / "config" / "nrr.yaml"
    double = Double(root / "sf.db", root / "sf.sock").start() if salesforce else None
    cmd = double.command(cfg, "run", "--as-of", AS_OF) if salesforce else engine(cfg, "run", "--as-of", AS_OF)
    kill = kill_at(cmd, point, env=env, server=server)
    rerun = run(cmd, env=env, server=server)
    if double is not None:
        if rerun.returncode != 0 and double.proc.poll() is not None:
            # the double died answering the killed client (it finished the request in hand): a new one serves
            double.start()
            rerun = run(cmd, env=env, server=server)
        double.stop(0)
    where = f"kill at {point} (in {kill.landed})"
    if rerun.returncode != 0:
        return kill, [f"{where}: rerun exit {rerun.returncode}: {rerun.stderr[-500:]}"]
    rerun_id = RUN_ID.search(rerun.stdout).group(0)
    problems = [f"{where}: the killed run {rid} is left {status!r}"
                for rid, status in run_ids(root / "state" / "nrr.db").items()
                if rid != rerun_id and status not in ("interrupted", "succeeded")]
    problems += check(clean, state(root, salesforce, {rerun_id}), point, kill.landed)
    shutil.rmtree(root)
    return kill, problems


def kill_and_rerun(base: Path, work: Path, points: list[Point], salesforce: bool, clean: dict, workers: int = 2,
                   forked: bool = False):
    """Every point, `workers` at a time (2 cores): the kills and what differed from the clean run. `forked`: each
    run is forked from a preloaded interpreter (one per worker), not started from scratch: the same engine in a
    process of its own, without the ~0.6 s of interpreter start and imports before its first step."""
    import queue
    from concurrent.futures import ThreadPoolExecutor
    servers: queue.Queue = queue.Queue()
    for _ in range(workers):
        servers.put(ForkServer() if forked else None)

    def one(np):
        server = servers.get()
        try:
            return one_point(base, work / f"p{np[0]}", np[1], salesforce, clean, server)
        finally:
            servers.put(server)

    try:
        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(one, enumerate(points)))
    finally:
        while not servers.empty():
            server = servers.get()
            if server is not None:
                server.close()
    return [k for k, _ in done], [p for _, ps in done for p in ps]


def prepare(tmp_path: Path, org: Path, salesforce: bool):
    """The prepared project (no state yet) and the clean run's end state and log events."""
    base = tmp_path / "base"
    (sf_project if salesforce else local_project)(base, org)
    clean_root = copy_project(base, tmp_path / "clean")
    cfg = clean_root / "config" / "nrr.yaml"
    env = env_without_tty()
    if salesforce:
        double = Double(clean_root / "sf.db", clean_root / "sf.sock").start()
        result = run(double.command(cfg, "run", "--as-of", AS_OF), env=env)
        double.stop(0)
    else:
        result = run(engine(cfg, "run", "--as-of", AS_OF), env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    clean = state(clean_root, salesforce, None)
    assert sum(clean["ledger"]["applied"].values()) > 0 and clean["ledger"]["snapshots"], "the clean run wrote nothing"
    return base, clean, events(result.stderr)
