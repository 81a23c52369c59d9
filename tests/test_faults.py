"""Faults: every API fault the Salesforce double injects ends in its documented exit code with the ledger true
to the org; a full disk is exit 3 naming the file; concurrent first runs; a killed run's side load."""
from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import nrr_engine
from nrr_engine.demo import write_demo_config
from nrr_engine.testing.salesforce_double import SalesforceDouble

import killing
from conftest import Cli

ROOT = Path(__file__).resolve().parent.parent
DEMO_ORG = Path(nrr_engine.__file__).parent / "demo" / "org"
AS_OF = "2026-11-15"
SF_SOURCE = ("source: {kind: salesforce, auth: password, poll_s: 0.001, backoff_s: 0.001, api_reserve: 100, "
             "bulk_write_min: 300, bulk_query_min: 1000, page_size: 1000}")
UPSERT = "(upsert)"


# ---- Salesforce API faults ------------------------------------------------------------------------

class Sf:
    """A demo project on the Salesforce double (Bulk reads and ingest jobs), served in this process."""

    def __init__(self, root: Path, monkeypatch, source: str = ""):
        shutil.copytree(DEMO_ORG, root / "org")
        cfg = write_demo_config(root)
        cfg.write_text(cfg.read_text().replace("source: {kind: local, path: ../org}", SF_SOURCE[:-1] + source + "}"))
        SalesforceDouble.seed(root / "sf.db", root / "org")
        self.root, self.cli = root, Cli(cfg)
        self.double = SalesforceDouble(root / "sf.db", metadata=ROOT / "salesforce")
        for var, value in (("SF_USERNAME", self.double.username), ("SF_PASSWORD", self.double.password),
                           ("SF_SECURITY_TOKEN", self.double.security_token)):
            monkeypatch.setenv(var, value)

    def ledger(self, sql: str, *args):
        con = sqlite3.connect(self.root / "state" / "nrr.db")
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def org(self) -> dict:
        return killing.tables(self.root / "sf.db", internal=True)

    def last_run(self) -> str:
        return self.ledger("SELECT id FROM runs ORDER BY started DESC, id DESC LIMIT 1")[0][0]

    def untrue(self, run_id: str, unapplied: bool = True) -> list[str]:
        """Changes of the run whose ledger status the org contradicts: `applied` that the org does not hold,
        and (`unapplied`: while no later run has written them) `failed` / `not_applied` that it does."""
        accounts = {r[0]: r for r in self.double.db.execute("SELECT * FROM Account")}
        columns = [d[1].lower() for d in self.double.db.execute("PRAGMA table_info(Account)")]
        snaps = {r[0] for r in self.double.db.execute("SELECT External_Id__c FROM KPI_Snapshot__c")}
        out = []
        for obj, rid, key, field, old, new, status in self.ledger(
                "SELECT object, record_id, external_id, field, old, new, status FROM changes WHERE run_id = ?", run_id):
            if field == UPSERT:
                holds = (key in snaps) == (new is not None)
            else:
                now = accounts[rid][columns.index(field.lower())]
                holds = now == new or (now is not None and new is not None and float(now) == float(new))
                if old == new:
                    continue
            if (status == "applied" and not holds) or (unapplied and status in ("failed", "not_applied") and holds):
                out.append(f"{obj} {rid or key} {field}: ledger says {status}, the org {'holds' if holds else 'lacks'} it")
        return out


def _after_first_job(double: SalesforceDouble, kind: str) -> None:
    """From the second ingest job on, every call meets `kind` (the org's API limit runs out mid-write)."""
    real, created = double.handle, []

    def handle(method, url, headers, body):
        if method == "POST" and url.split("?")[0].endswith("/jobs/ingest"):
            created.append(url)
            if len(created) == 2:
                double.fault(kind, path="/services/data/", times=100_000)
        return real(method, url, headers, body)

    double.handle = handle


FAULTS = {  # name: (set the fault up, the exit code it ends in[, more source settings])
    "http_500 twice on a write (retried)": (lambda d: d.fault("http_500", path="jobs/ingest", method="PUT", times=2), 0),
    "REQUEST_LIMIT_EXCEEDED once on a write (retried)":
        (lambda d: d.fault("limit_exceeded", path="jobs/ingest", method="PATCH", times=1), 0),
    "expired session once (logged in again)": (lambda d: d.fault("expire_session", path="jobs/ingest", times=1), 0),
    "UNABLE_TO_LOCK_ROW twice (retried)":
        (lambda d: d.fault("lock", records={"001000000000002AAA", "001000000000003AAA"}, times=2), 0),
    "UNABLE_TO_LOCK_ROW that never clears": (lambda d: d.fault("lock", records={"001000000000002AAA"}, times=1000), 1),
    "a record rejected by a validation rule": (lambda d: d.fault("record_error", records={"001000000000003AAA"}), 1),
    "an ingest job that fails after 100 records": (lambda d: d.fault("job_failed", after=100), 1),
    "REQUEST_LIMIT_EXCEEDED from the second ingest job on": (lambda d: _after_first_job(d, "limit_exceeded"), 3),
    "http_500 from the second ingest job on": (lambda d: _after_first_job(d, "http_500"), 3),
    "a session that keeps expiring from the second ingest job on":
        (lambda d: _after_first_job(d, "expire_session"), 3),
    "a job status answer lost once (retried)":
        (lambda d: d.fault("lost_response", path=r"jobs/ingest/\w+$", method="GET", times=1), 0),
    "answers lost from the second ingest job on": (lambda d: _after_first_job(d, "lost_response"), 3),
    "a read timeout after an upload was done (that job is abandoned for a new one)":
        (lambda d: d.fault("read_timeout", path="jobs/ingest/.*/batches", method="PUT", times=1), 0),
    "a Bulk ingest job that never finishes (source.job_timeout_s)":
        (lambda d: d.fault("job_stuck", path="jobs/ingest/", times=1), 3, ", job_timeout_s: 0.05"),
}


@pytest.fixture(scope="module")
def clean_sf(tmp_path_factory):
    """Salesforce (every record and field) and the applied changes after one clean run on the double."""
    mp = pytest.MonkeyPatch()
    p = Sf(tmp_path_factory.mktemp("clean"), mp)
    with p.double.serve():
        p.cli("run", "--as-of", AS_OF)
    mp.undo()
    return p.org(), killing.ledger_state(p.root / "state" / "nrr.db")["applied"]


@pytest.mark.parametrize("name", list(FAULTS))
def test_every_api_fault_ends_in_its_exit_code_with_the_ledger_true_to_the_org(name, tmp_path, monkeypatch, clean_sf):
    """Each fault kind of the double: the documented exit code; every change the ledger calls applied is in
    Salesforce (a write that failed part-way leaves the rest pending, run `failed`); the next run settles them
    and ends in the clean run's state with every change applied once; rollback of the faulted run undoes
    only what it wrote (no conflict, the next run's work kept)."""
    setup, code, *source = FAULTS[name]
    p = Sf(tmp_path, monkeypatch, *source)
    with p.double.serve():
        setup(p.double)
        r = p.cli("run", "--as-of", AS_OF, expect=code)
        faulted = p.last_run()
        p.double.handle = type(p.double).handle.__get__(p.double)
        p.double.faults.clear()
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr
        assert p.untrue(faulted) == [], "the ledger is true to the org"
        counts = dict(p.ledger("SELECT status, count(*) FROM changes WHERE run_id = ? GROUP BY status", faulted))
        status = p.ledger("SELECT status FROM runs WHERE id = ?", faulted)[0][0]
        if code == 3:
            assert status == "failed" and counts.get("pending", 0) > 0, counts
            assert "Salesforce" in r.stderr
        else:
            assert "pending" not in counts and status == ("succeeded" if code == 0 else "failed_records")
        if code == 0:
            assert p.org() == clean_sf[0]
            return
        p.cli("run", "--as-of", AS_OF, expect=0)
        rerun = p.last_run()
        assert p.ledger("SELECT count(*) FROM changes WHERE status = 'pending'") == [(0,)], "settled by the next run"
        assert p.untrue(faulted, unapplied=False) == [] and p.untrue(rerun) == []
        assert p.org() == clean_sf[0], "the org ends as after one clean run"
        applied = killing.ledger_state(p.root / "state" / "nrr.db")["applied"]
        assert applied == clean_sf[1] and max(applied.values()) == 1, "every change recorded applied exactly once"
        out = p.cli("rollback", faulted).stdout
        assert "left alone" not in out, "rollback of the faulted run meets no conflict"
        assert p.untrue(rerun) == [], "rollback of the faulted run leaves the next run's work"


def test_a_write_that_fails_part_way_leaves_its_changes_pending_until_settled(tmp_path, monkeypatch):
    """REQUEST_LIMIT_EXCEEDED from the second ingest job on: exit 3, run `failed`, its changes pending (none
    claimed applied); `rollback` of the failed run settles them first (only the first job's are applied) and
    restores only those."""
    p = Sf(tmp_path, monkeypatch)
    before = p.org()["Account"]
    with p.double.serve():
        _after_first_job(p.double, "limit_exceeded")
        r = p.cli("run", "--as-of", AS_OF, expect=3)
        assert "REQUEST_LIMIT_EXCEEDED" in r.stderr
        failed = p.last_run()
        counts = dict(p.ledger("SELECT status, count(*) FROM changes WHERE run_id = ? GROUP BY status", failed))
        first_job = next(j for j in p.double.jobs.values() if j.get("data"))
        written = sum(sum(1 for cell in line.split(",")[1:] if cell) for line in first_job["data"].splitlines()[1:])
        assert list(counts) == ["pending"] and counts["pending"] > 7000, counts
        assert p.ledger("SELECT status FROM runs WHERE id = ?", failed) == [("failed",)]
        p.double.handle = type(p.double).handle.__get__(p.double)
        p.double.faults.clear()
        out = p.cli("rollback", failed).stdout
        assert f"restored {written} field(s)" in out and "left alone" not in out
        counts = dict(p.ledger("SELECT status, count(*) FROM changes WHERE run_id = ? GROUP BY status", failed))
        assert counts == {"applied": written, "not_applied": 7563 - written}, counts
        assert p.org()["Account"] == before, "Salesforce is back as it was"


# ---- a full disk ----------------------------------------------------------------------------------

def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-Urm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"],
                       capture_output=True)
    return r.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _can_mount_tmpfs(), reason="no user namespaces here: cannot mount a tmpfs "
                                                                 "without root")


def _local_demo(root: Path) -> Path:
    """The demo org, its working copy in wc/ and the ledger in state/ (each can be put on a small device)."""
    shutil.copytree(DEMO_ORG, root / "org")
    cfg = write_demo_config(root)
    cfg.write_text(cfg.read_text().replace("source: {kind: local, path: ../org}",
                                           "source: {kind: local, path: ../org, working_copy: ../wc/local-org.db}"))
    (root / "state").mkdir(exist_ok=True)
    (root / "wc").mkdir(exist_ok=True)
    return cfg


def _env() -> dict:
    # no bytecode written by a process whose writes may be cut short (a half .pyc would break later imports)
    return {**killing.env_without_tty(), "PYTHONDONTWRITEBYTECODE": "1"}


def _on_small_device(folder: Path, kb: int, cmd: list[str]) -> subprocess.CompletedProcess:
    """Run `cmd` with `folder` on a tmpfs of `kb` KB (in a user and mount namespace of its own, so no root is
    needed); what the command left in the folder is copied back to it afterwards."""
    stage = folder.with_name(folder.name + ".stage")
    stage.mkdir()
    script = ('f="$1"; s="$2"; k="$3"; shift 3; cp -a "$f/." "$s/" && mount -t tmpfs -o size="${k}k" tmpfs "$f" && '
              'cp -a "$s/." "$f/" && rm -rf "$s"/* || exit 99; "$@"; rc=$?; cp -a "$f/." "$s/"; exit $rc')
    r = subprocess.run(["unshare", "-Urm", "sh", "-c", script, "sh", str(folder), str(stage), str(kb), *cmd],
                       capture_output=True, text=True, env=_env(), cwd=folder.parent, timeout=120)
    assert r.returncode != 99, r.stderr
    shutil.rmtree(folder)
    stage.rename(folder)
    return r


@pytest.fixture(scope="module")
def clean_local(tmp_path_factory):
    """The working copy and the ledger after one clean run of the demo org (working copy in wc/)."""
    root = tmp_path_factory.mktemp("clean-local")
    cfg = _local_demo(root)
    r = killing.run(killing.engine(cfg, "run", "--as-of", AS_OF), env=_env())
    assert r.returncode == 0, r.stderr
    return _local_state(root), {p.name: p.stat().st_size for p in (root / "state" / "nrr.db", root / "wc" / "local-org.db")}


def _local_state(root: Path, keep: set[str] | None = None) -> dict:
    return {"org": killing.tables(root / "wc" / "local-org.db", killing.LOCAL_SKIP),
            "ledger": killing.ledger_state(root / "state" / "nrr.db", keep)}


@needs_tmpfs
def test_a_full_disk_is_exit_3_naming_the_file_and_nothing_is_lost(tmp_path, clean_local):
    """The ledger's device or the working copy's fills up at points spread over a first run (creating the
    store, loading the CSVs, the side load, the write, the ledger, the history): exit 3 naming the file and the
    space it needs, never an internal error; the next run, with room, ends in the clean run's state."""
    clean, sizes = clean_local
    ledger_kb, wc_kb = sizes["nrr.db"] // 1024, sizes["local-org.db"] // 1024
    points = [("state", max(40, ledger_kb * f // 100)) for f in (2, 18, 88)] + \
             [("wc", wc_kb * f // 100) for f in (14, 54, 130)]
    landed = Counter()
    for n, (where, kb) in enumerate(points):
        root = tmp_path / f"p{n}"
        cfg = _local_demo(root)
        r = _on_small_device(root / where, kb, killing.engine(cfg, "run", "--as-of", AS_OF))
        if r.returncode == 0:
            continue  # it fitted
        stage = killing.Kill(None, True, r.returncode, r.stderr).landed
        landed[stage] += 1
        error = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 3, f"{where} {kb} KB (in {stage}): exit {r.returncode}: {error}"
        assert "internal error" not in error and "cannot rollback" not in error
        assert re.search(rf"{re.escape(str(root / where))}/\S+: no space left on the device for .* \(\S+ \S+ free; it "
                         r"needs about \S+ \S+ more\)", error), error
        rerun = killing.run(killing.engine(cfg, "run", "--as-of", AS_OF), env=_env())
        assert rerun.returncode == 0, rerun.stderr[-800:]
        rerun_id = killing.RUN_ID.search(rerun.stdout).group(0)
        after = _local_state(root, {rerun_id})
        for key in ("org", "ledger"):
            for part, value in clean[key].items():
                assert after[key][part] == value, f"{where} {kb} KB (in {stage}): {key} {part} differs after the rerun"
    print(f"full-disk points landed in {dict(landed)}")
    assert sum(landed.values()) >= 5 and len(landed) >= 4, f"full-disk points landed in {dict(landed)}"


def _limited(kb: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (kb * 1024, kb * 1024))
    return preexec


@pytest.mark.parametrize("command, target", [(("plan", "--out", "plan.json", "--as-of", AS_OF), "plan.json"),
                                             (("export", "--out", "export"), "export/full/")])
def test_a_file_size_limit_is_exit_3_naming_the_file(tmp_path, command, target):
    """A plan file or an export that hits the process's file size limit (EFBIG, no root needed): exit 3 naming
    the file and the limit; no half plan.json is left; with the limit raised the same command succeeds."""
    cfg = _local_demo(tmp_path)
    assert killing.run(killing.engine(cfg, "run", "--as-of", AS_OF), env=_env()).returncode == 0
    r = subprocess.run(killing.engine(cfg, *command), capture_output=True, text=True, env=_env(), cwd=tmp_path,
                       preexec_fn=_limited(48), timeout=120)
    error = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 3, error
    assert f"error: {target}" in error and "file size limit of this process (48.0 KB, ulimit -f)" in error, error
    left = [p.name for p in tmp_path.iterdir() if "plan.json" in p.name]  # the plan or its temporary file
    assert left == [], f"a half-written plan was left: {left}"
    again = subprocess.run(killing.engine(cfg, *command), capture_output=True, text=True, env=_env(), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-500:]


# ---- concurrent runs, a killed run's side load -----------------------------------------------------

# Both processes import the engine, then meet at a barrier (a file each in a folder) and go on together.
_AT = ("import os, sys, time; import nrr_engine.cli, nrr_engine.engine; barrier = sys.argv[1]; "
       "open(os.path.join(barrier, str(os.getpid())), 'w').close(); "
       "[time.sleep(0.001) for _ in iter(lambda: len(os.listdir(barrier)) >= 2, True)]; "
       "nrr_engine.cli.main(sys.argv[2:], prog_name='nrr-engine')")


def test_two_first_ever_runs_started_at_once_one_runs_the_other_exits_3(tmp_path):
    """Two `run`s on an org with no state store yet, started at the same instant: one runs, the other exits
    3 saying another run holds the lock (never 'database is locked' or a migration error)."""
    for attempt in range(2):
        root = tmp_path / f"a{attempt}"
        cfg = _local_demo(root)
        shutil.rmtree(root / "state")
        barrier = root / "barrier"
        barrier.mkdir()
        procs = [subprocess.Popen([sys.executable, "-c", _AT, str(barrier), "--config", str(cfg), "run", "--as-of", AS_OF],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
                 for _ in range(2)]
        results = [(p.wait(120), p.stderr.read()) for p in procs]
        codes = sorted(code for code, _ in results)
        loser = next((err for code, err in results if code != 0), "")
        assert codes == [0, 3], f"attempt {attempt}: exits {codes}: {loser.strip().splitlines()[-1:]}"
        assert "another nrr-engine run holds the lock" in loser


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to find the side load's process")
def test_a_killed_runs_side_load_does_not_outlive_it(tmp_path):
    """SIGKILL the engine while its forked subscription loader is still loading (held stopped, so it cannot
    finish first): the loader is gone at once, it does not go on writing beside the next run."""
    cfg = _local_demo(tmp_path)
    subs = tmp_path / "org" / "Subscription__c.csv"
    header, *rows = subs.read_text().splitlines()
    with subs.open("a") as fh:  # enough rows that the load is still going when the test sees the process
        for n in range(200_000):
            fh.write(rows[n % len(rows)].replace(rows[n % len(rows)].split(",", 1)[0], f"a0Z{n:015d}", 1) + "\n")
    proc = subprocess.Popen(killing.engine(cfg, "run", "--as-of", AS_OF), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env())
    loader = None
    try:
        for _ in range(3000):
            kids = _children(proc.pid)
            if kids:
                loader = kids[0]
                os.kill(loader, signal.SIGSTOP)  # a stopped process only dies of SIGKILL: PDEATHSIG must be that
                break
            if proc.poll() is not None:
                break
            time.sleep(0.002)
        assert loader is not None, f"the engine forked no side load (exit {proc.poll()})"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # Let it go on: a loader stopped before it armed PDEATHSIG must see its engine gone and quit at once,
        # one that armed it was killed with it; a loader that outlives its engine would load its rows (seconds).
        os.kill(loader, signal.SIGCONT)
        for _ in range(50):
            if not Path(f"/proc/{loader}").exists() or "Z" in Path(f"/proc/{loader}/stat").read_text().split()[2]:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the side load is still running after its engine was killed")
    finally:
        if loader is not None and Path(f"/proc/{loader}").exists():
            try:
                os.kill(loader, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_validate_at_a_file_size_limit_is_exit_3_and_leaves_no_copy(tmp_path):
    """validate's throwaway copy of the records hits the process's file size limit: exit 3 saying it was that
    copy and how to check the headers alone; no copy is left in the temporary folder; --headers-only still says ok."""
    cfg = _local_demo(tmp_path)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**_env(), "TMPDIR": str(scratch)}
    r = subprocess.run(killing.engine(cfg, "validate"), capture_output=True, text=True, env=env, cwd=tmp_path,
                       preexec_fn=_limited(48), timeout=120)
    assert r.returncode == 3, r.stderr[-800:]
    assert "throwaway copy" in r.stderr and "validate --headers-only" in r.stderr, r.stderr
    assert list(scratch.iterdir()) == [], "validate left its throwaway copy"
    ok = subprocess.run(killing.engine(cfg, "validate", "--headers-only"), capture_output=True, text=True, env=env,
                        cwd=tmp_path, preexec_fn=_limited(48), timeout=120)
    assert ok.returncode == 0 and ": ok (" in ok.stdout, ok.stderr[-500:]
