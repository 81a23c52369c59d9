"""SIGKILL a real `nrr-engine run` at points spread over every stage; each rerun ends in the clean run's state.

The points come from the clean run's own log (each stage logs its start and end, Salesforce reads and ingest
jobs log too): the test waits for an event on the engine's stderr, waits part of the way to the next one,
and kills the process from outside. After the kill the same command runs again; the org (every record and
field) and the ledger (every change applied exactly once, snapshots, ARR history, membership, review queue,
run statuses but the killed run's) must equal those of one clean run.
"""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

import nrr_engine
from nrr_engine.demo import write_demo_config
from nrr_engine.testing.salesforce_double import SalesforceDouble

import killing
from killing import Double, Point

DEMO_ORG = Path(nrr_engine.__file__).parent / "demo" / "org"
AS_OF = "2026-11-15"
SF_SOURCE = ("source: {kind: salesforce, auth: password, poll_s: 0.001, backoff_s: 0.001, api_reserve: 100, "
             "bulk_write_min: 300, bulk_query_min: 1000, page_size: 1000}")
# internal bookkeeping of the working copy that names files by their modification time
LOCAL_SKIP = ("_nrr_files",)


def _local_project(root: Path) -> Path:
    shutil.copytree(DEMO_ORG, root / "org")
    return write_demo_config(root)


def _sf_project(root: Path) -> Path:
    cfg = _local_project(root)
    cfg.write_text(cfg.read_text().replace("source: {kind: local, path: ../org}", SF_SOURCE))
    SalesforceDouble.seed(root / "sf.db", root / "org")
    return cfg


def _state(root: Path, salesforce: bool, keep: set[str] | None) -> dict:
    org = killing.tables(root / "sf.db", internal=True) if salesforce else killing.tables(root / "state" / "local-org.db", LOCAL_SKIP)
    return {"org": org, "ledger": killing.ledger_state(root / "state" / "nrr.db", keep)}


def _check(clean: dict, after: dict, point: Point, landed: str) -> list[str]:
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


def _one_point(base: Path, root: Path, point: Point, salesforce: bool, clean: dict):
    """On a fresh copy of the prepared project: kill at the point, rerun, compare with the clean run."""
    killing.copy_project(base, root)
    env = killing.env_without_tty()
    cfg = root / "config" / "nrr.yaml"
    double = Double(root / "sf.db", root / "sf.sock").start() if salesforce else None
    cmd = double.command(cfg, "run", "--as-of", AS_OF) if salesforce else killing.engine(cfg, "run", "--as-of", AS_OF)
    kill = killing.kill_at(cmd, point, env=env)
    rerun = killing.run(cmd, env=env)
    if double is not None:
        if rerun.returncode != 0 and double.proc.poll() is not None:
            # the double died answering the killed client (it finished the request in hand): a new one serves
            double.start()
            rerun = killing.run(cmd, env=env)
        double.stop(0)
    where = f"kill at {point} (in {kill.landed})"
    if rerun.returncode != 0:
        return kill, [f"{where}: rerun exit {rerun.returncode}: {rerun.stderr[-500:]}"]
    rerun_id = killing.RUN_ID.search(rerun.stdout).group(0)
    problems = [f"{where}: the killed run {rid} is left {status!r}"
                for rid, status in killing.run_ids(root / "state" / "nrr.db").items()
                if rid != rerun_id and status not in ("interrupted", "succeeded")]
    problems += _check(clean, _state(root, salesforce, {rerun_id}), point, kill.landed)
    shutil.rmtree(root)
    return kill, problems


def _kill_and_rerun(base: Path, work: Path, points: list[Point], salesforce: bool, clean: dict):
    """Every point, two at a time (2 cores): the kills and what differed from the clean run."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda np: _one_point(base, work / f"p{np[0]}", np[1], salesforce, clean),
                             enumerate(points)))
    return [k for k, _ in done], [p for _, ps in done for p in ps]


def _prepare(tmp_path: Path, salesforce: bool):
    """The prepared project (no state yet) and the clean run's end state and log events."""
    base = tmp_path / "base"
    (_sf_project if salesforce else _local_project)(base)
    clean_root = killing.copy_project(base, tmp_path / "clean")
    cfg = clean_root / "config" / "nrr.yaml"
    env = killing.env_without_tty()
    if salesforce:
        double = Double(clean_root / "sf.db", clean_root / "sf.sock").start()
        result = killing.run(double.command(cfg, "run", "--as-of", AS_OF), env=env)
        double.stop(0)
    else:
        result = killing.run(killing.engine(cfg, "run", "--as-of", AS_OF), env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    clean = _state(clean_root, salesforce, None)
    assert sum(clean["ledger"]["applied"].values()) > 7000 and clean["ledger"]["snapshots"]
    return base, clean, killing.events(result.stderr)


def _assert_spread(kills, stages: set[str], at_least: int):
    real = [k for k in kills if k.killed]
    landed = Counter(k.landed for k in real)
    assert len(real) >= at_least, f"only {len(real)} of {len(kills)} points killed a running engine: {landed}"
    missing = {s for s in stages if s not in landed}
    assert not missing, f"no kill landed in stage(s) {sorted(missing)}; landed: {dict(landed)}"
    print(f"kills landed: {dict(landed)}")
    return landed


def test_local_run_killed_at_any_point_then_rerun_equals_one_clean_run(tmp_path):
    """SIGKILL at 24 points over every stage of a first local run (working copy load, match, ledger, history...):
    each rerun leaves the org and the ledger as one clean run does."""
    base, clean, log = _prepare(tmp_path, salesforce=False)
    stages = {e.label.split(":", 1)[1] for e in log if e.label.startswith("stage.start:")}
    assert {"fetch", "match", "write", "ledger", "history"} <= stages
    # two points before the first log line (config, lock, a new state store being created and migrated)
    candidates = killing.points(log, fractions=(0.0, 0.5))
    chosen = [Point(None, 0, 0.25), Point(None, 0, 0.35), *killing.spread(candidates, 22)]
    kills, problems = _kill_and_rerun(base, tmp_path, chosen, False, clean)
    assert not problems, "\n".join(problems[:20])
    _assert_spread(kills, {"fetch", "write", "ledger", "history"}, at_least=20)


def test_salesforce_run_killed_at_any_point_then_rerun_equals_one_clean_run(tmp_path):
    """SIGKILL at 12 points of a run against the Salesforce double in its own process (Bulk reads, each
    ingest job, the snapshot upsert, ledger and history): each rerun leaves Salesforce and the ledger as one
    clean run does."""
    base, clean, log = _prepare(tmp_path, salesforce=True)
    jobs = [e for e in log if e.label.startswith("salesforce.job:")]
    assert len(jobs) >= 3 and any("KPI_Snapshot__c" in e.label for e in jobs)
    wanted = {"stage.start:fetch", "salesforce.read:Account", "stage.start:match", "stage.start:write",
              "stage.start:ledger", "stage.start:history", "stage.end:history"} | {e.label for e in jobs}
    candidates = [p for p in killing.points(log, fractions=(0.0, 0.5)) if p.label in wanted]
    chosen = killing.spread(candidates, 12)
    kills, problems = _kill_and_rerun(base, tmp_path, chosen, True, clean)
    assert not problems, "\n".join(problems[:20])
    _assert_spread(kills, {"fetch", "write", "ledger"}, at_least=10)
