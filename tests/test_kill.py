"""SIGKILL a real `nrr-engine run` at points spread over every stage; each rerun ends in the clean run's state.

The clean run is a process started from scratch; the killed runs and reruns are forked from a preloaded
interpreter (tests/forkserver.py): each the same engine in a process of its own, reached ~0.6 s sooner, so the
points before its first log line land in its own first steps (config, lock, creating the state store) rather
than in Python's imports. The points come from the clean run's own log (each stage logs its start and end, Salesforce reads and ingest
jobs log too): the test waits for an event on the engine's stderr, waits part of the way to the next one,
and kills the process from outside. After the kill the same command runs again; the org (every record and
field) and the ledger (every change applied exactly once, snapshots, ARR history, membership, review queue,
run statuses but the killed run's) must equal those of one clean run.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import nrr_engine

import killing
from killing import Point

DEMO_ORG = Path(nrr_engine.__file__).parent / "demo" / "org"


def _assert_spread(kills, stages: set[str], at_least: int):
    real = [k for k in kills if k.killed]
    landed = Counter(k.landed for k in real)
    assert len(real) >= at_least, f"only {len(real)} of {len(kills)} points killed a running engine: {landed}"
    missing = {s for s in stages if s not in landed}
    assert not missing, f"no kill landed in stage(s) {sorted(missing)}; landed: {dict(landed)}"
    print(f"kills landed: {dict(landed)}")
    return landed


def test_local_run_killed_at_any_point_then_rerun_equals_one_clean_run(tmp_path):
    """SIGKILL at 22 points over every stage of a first local run (working copy load, match, ledger, history...):
    each rerun leaves the org and the ledger as one clean run does."""
    base, clean, log = killing.prepare(tmp_path, DEMO_ORG, salesforce=False)
    stages = {e.label.split(":", 1)[1] for e in log if e.label.startswith("stage.start:")}
    assert {"fetch", "match", "write", "ledger", "history"} <= stages
    # two points before the first log line (config, lock, a new state store being created and migrated: the
    # first ~50 ms of a forked run)
    candidates = killing.points(log, fractions=(0.0, 0.5))
    chosen = [Point(None, 0, 0.015), Point(None, 0, 0.035), *killing.spread(candidates, 20)]
    # and at the start of the write and ledger stages, which the spread can step over (short on the demo org)
    chosen += [p for p in candidates if p.label in ("stage.start:write", "stage.start:ledger")
               and p not in chosen]
    kills, problems = killing.kill_and_rerun(base, tmp_path, chosen, False, clean, forked=True)
    assert not problems, "\n".join(problems[:20])
    _assert_spread(kills, {"fetch", "write", "ledger", "history"}, at_least=20)


def test_salesforce_run_killed_at_any_point_then_rerun_equals_one_clean_run(tmp_path):
    """SIGKILL at 11 points of a run against the Salesforce double in its own process (Bulk reads, each
    ingest job, the snapshot upsert, ledger and history): each rerun leaves Salesforce and the ledger as one
    clean run does."""
    base, clean, log = killing.prepare(tmp_path, DEMO_ORG, salesforce=True)
    jobs = [e for e in log if e.label.startswith("salesforce.job:")]
    assert len(jobs) >= 3 and any("KPI_Snapshot__c" in e.label for e in jobs)
    wanted = {"stage.start:fetch", "salesforce.read:Account", "stage.start:match", "stage.start:write",
              "stage.start:ledger", "stage.start:history", "stage.end:history"} | {e.label for e in jobs}
    candidates = [p for p in killing.points(log, fractions=(0.0, 0.5)) if p.label in wanted]
    chosen = killing.spread(candidates, 11)
    kills, problems = killing.kill_and_rerun(base, tmp_path, chosen, True, clean, forked=True)
    assert not problems, "\n".join(problems[:20])
    _assert_spread(kills, {"fetch", "write", "ledger"}, at_least=10)
