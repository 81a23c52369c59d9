"""The scheduler: cron triggers from config, catch-up from the ledger, one run at a time, clean SIGTERM."""
from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from nrr_engine import config as config_mod
from nrr_engine.engine import Engine
from nrr_engine.scheduler import Daemon, missed_fire

UTC = dt.timezone.utc
NIGHTLY = CronTrigger.from_crontab("0 2 * * *", timezone="UTC")


@pytest.fixture
def small(org):
    """One account with revenue."""
    org.sub(org.account("001A", "Acme"), "2025-01-01", "", "1000")
    return org.write()


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize("last, now, expected", [
    (at(20, 2, 0), at(22, 1), at(21, 2)),   # the 21st's run was missed
    (at(21, 2, 0), at(22, 1), None),        # nothing due since the last run
    (at(21, 2, 0), at(22, 2, 1), at(22, 2)),
    (None, at(22, 1), None),                # never ran: wait for the schedule
])
def test_missed_fire_is_a_pure_function_of_last_run_and_now(last, now, expected):
    """Catch-up is decided from the trigger, the last recorded run and the clock, nothing else."""
    assert missed_fire(NIGHTLY, last, now) == expected


def test_catch_up_runs_a_missed_job_once(small):
    """A nightly run missed while the daemon was down runs at start, and is recorded in the ledger."""
    settings = config_mod.load(small.config)
    with Engine(settings, clock=lambda: at(20, 2)) as e:
        e.execute(job="nightly")
    daemon = Daemon(settings, clock=lambda: at(22, 1), triggers={"nightly": NIGHTLY})
    assert daemon.catch_up() == ["nightly"]
    assert daemon.completed == [("nightly", "succeeded")]
    daemon2 = Daemon(settings, clock=lambda: at(22, 1, 30), triggers={"nightly": NIGHTLY})
    assert daemon2.catch_up() == []


def test_fast_trigger_runs_jobs_and_records_them(small):
    """With an injected 0.2 s trigger the daemon runs the job, records it like a manual run, and stops cleanly."""
    settings = config_mod.load(small.config)
    daemon = Daemon(settings, triggers={"nightly": IntervalTrigger(seconds=0.2)})
    t = threading.Thread(target=daemon.serve, kwargs={"install_signals": False})
    t.start()
    deadline = time.monotonic() + 30
    while len(daemon.completed) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    daemon.stop()
    t.join(30)
    assert not t.is_alive()
    assert daemon.completed[:2] == [("nightly", "succeeded"), ("nightly", "succeeded")]
    with Engine(settings) as e:
        assert [r["job"] for r in e.ledger.runs()][:2] == ["nightly", "nightly"]


def test_sigterm_stops_the_daemon_cleanly(small):
    """`nrr-engine schedule` exits 0 on SIGTERM and logs that it stopped."""
    env = {**os.environ, "NRR_ENGINE_CONFIG": str(small.config)}
    proc = subprocess.Popen([sys.executable, "-m", "nrr_engine", "schedule"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    seen = ""
    while "scheduler.start" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert '"event": "scheduler.stopped"' in seen + err


def test_second_process_cannot_run_concurrently(small):
    """A run started while another process holds the lock exits 3."""
    settings = config_mod.load(small.config)
    with Engine(settings) as e, e.lock():
        r = subprocess.run([sys.executable, "-m", "nrr_engine", "--config", str(small.config), "run"],
                           capture_output=True, text=True)
    assert r.returncode == 3 and "holds the lock" in r.stderr
