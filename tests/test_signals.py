"""SIGTERM (cron's timeout, `docker stop`) or Ctrl-C during `nrr-engine run`: a clean stop before the next stage."""
from __future__ import annotations

import json
import signal
import subprocess

import pytest

import killing
from nrr_engine.demo.generator import generate
from test_kill import DEMO_ORG


def _start(cfg):
    return subprocess.Popen(killing.engine(cfg, "run", "--as-of", killing.AS_OF), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=killing.env_without_tty())


def _after(cfg, root, stopped_runs: int = 1) -> dict:
    """The state after the stopped run, counting the statuses of the runs after it only."""
    runs = json.loads(subprocess.run(killing.engine(cfg, "runs", "list", "--format", "json"), capture_output=True,
                                     text=True, env=killing.env_without_tty()).stdout)
    return killing.state(root, False, {r["id"] for r in runs[:-stopped_runs]})


def _signal_at_first_stage(proc, sig, again: bool = False) -> tuple[int, str]:
    """Send `sig` once the run logs its first stage (twice when `again`); the exit code and stderr."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if '"stage.start"' in line:
            proc.send_signal(sig)
            if not again:
                break
        if "stopping after the current stage" in line:
            proc.send_signal(sig)   # (two at once would be one: a signal pending is not counted twice)
            break
    out, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_before_its_next_stage_and_the_next_run_is_clean(tmp_path, sig):
    """The run says it is stopping, stops before its next stage (exit 3, "stop requested"), is recorded as
    stopped, writes nothing; the next run then ends where one clean run does."""
    base, clean, _ = killing.prepare(tmp_path, DEMO_ORG, salesforce=False)
    root = killing.copy_project(base, tmp_path / "signalled")
    cfg = root / "config" / "nrr.yaml"
    code, err = _signal_at_first_stage(_start(cfg), sig)
    assert code == 3, err[-2000:]
    assert f"{sig.name}: stopping after the current stage" in err and "stop requested" in err
    runs = json.loads(subprocess.run(killing.engine(cfg, "runs", "list", "--format", "json"), capture_output=True,
                                     text=True, env=killing.env_without_tty()).stdout)
    assert [r["status"] for r in runs] == ["stopped"]
    assert killing.state(root, False, None)["ledger"]["applied"] == {}
    again = subprocess.run(killing.engine(cfg, "run", "--as-of", killing.AS_OF), capture_output=True, text=True,
                           env=killing.env_without_tty())
    assert again.returncode == 0, again.stderr[-2000:]
    assert killing.check(clean, _after(cfg, root), killing.Point(None), "signal") == []


def test_a_second_signal_stops_at_once_and_the_next_run_settles_it(tmp_path):
    """SIGTERM, then again once the run said it is stopping: no waiting for the stage to end (as a kill would;
    a 20,000-account org, whose first stage outlasts the two signals); the next run still ends clean."""
    org = tmp_path / "org20k"
    generate(org, accounts=20_000)
    base, clean, _ = killing.prepare(tmp_path, org, salesforce=False)
    root = killing.copy_project(base, tmp_path / "twice")
    cfg = root / "config" / "nrr.yaml"
    code, err = _signal_at_first_stage(_start(cfg), signal.SIGTERM, again=True)
    assert code == 3 and "interrupted" in err, err[-2000:]
    again = subprocess.run(killing.engine(cfg, "run", "--as-of", killing.AS_OF), capture_output=True, text=True,
                           env=killing.env_without_tty())
    assert again.returncode == 0, again.stderr[-2000:]
    assert killing.check(clean, _after(cfg, root), killing.Point(None), "signal") == []
