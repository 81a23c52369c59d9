"""APScheduler 3.x wiring only: cron triggers from config, one run at a time, catch-up, graceful stop.

The job itself is Engine.execute; the catch-up decision is a pure function of (trigger, last run, now).
"""
from __future__ import annotations

import datetime as dt
import signal
import threading
from collections.abc import Callable

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from .config import Settings
from .engine import Engine, utc_now
from .errors import NrrError
from .ledger import Ledger

log = structlog.get_logger("nrr_engine.scheduler")


def missed_fire(trigger: BaseTrigger, last_run: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    """The first fire time after `last_run` if it is already past at `now` (a run was missed), else None."""
    if last_run is None:
        return None
    nxt = trigger.get_next_fire_time(None, last_run + dt.timedelta(microseconds=1))
    return nxt if nxt is not None and nxt <= now else None


class Daemon:
    """Runs the configured jobs; `triggers` and `clock` can be injected (tests use fast triggers)."""

    def __init__(self, settings: Settings, clock: Callable[[], dt.datetime] = utc_now,
                 triggers: dict[str, BaseTrigger] | None = None):
        self.settings = settings
        self.clock = clock
        self.stop_event = threading.Event()
        self.triggers = triggers or {job: CronTrigger.from_crontab(expr, timezone=settings.timezone)
                                     for job, expr in settings.schedule.items()}
        self.completed: list[tuple[str, str]] = []  # (job, status), for observers and tests

    def run_job(self, job: str) -> None:
        if self.stop_event.is_set():
            return
        try:
            with Engine(self.settings, self.clock) as engine:
                outcome = engine.execute(job=job, should_stop=self.stop_event.is_set)
            self.completed.append((job, "succeeded" if not outcome.exit_code else "failed_records"))
        except NrrError as exc:
            log.error("job.failed", job=job, error=str(exc), exit_code=int(exc.exit_code))
            self.completed.append((job, "failed"))
        except Exception as exc:  # the daemon must outlive one bad night
            log.exception("job.crashed", job=job, error=f"{type(exc).__name__}: {exc}")
            self.completed.append((job, "crashed"))

    def catch_up(self) -> list[str]:
        """Jobs whose scheduled time passed since their last recorded run; run each once now."""
        ledger = Ledger(self.settings.state)
        due = []
        try:
            for job, trigger in self.triggers.items():
                last = ledger.last_run(job, statuses=("succeeded", "failed_records", "failed", "interrupted"))
                last_at = dt.datetime.fromisoformat(last["started"]) if last else None
                if missed_fire(trigger, last_at, self.clock()):
                    due.append(job)
        finally:
            ledger.close()
        for job in due:
            log.info("job.catch_up", job=job)
            self.run_job(job)
        return due

    def stop(self, *_):
        # Signal-handler safe: no logging here (the log writer holds a lock the interrupted frame may own).
        self.stop_event.set()

    def serve(self, install_signals: bool = True) -> None:
        """Block until stopped; a running job finishes its current stage, then stops cleanly."""
        if install_signals:
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        sched = BackgroundScheduler(timezone=self.settings.timezone,
                                    job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 3600})
        # One executor thread: jobs never overlap in this process; the flock covers other processes.
        sched.configure(executors={"default": {"type": "threadpool", "max_workers": 1}})
        for job, trigger in self.triggers.items():
            sched.add_job(self.run_job, trigger, args=[job], id=job, name=job)
        log.info("scheduler.start", jobs={j: str(t) for j, t in self.triggers.items()})
        self.catch_up()
        sched.start()
        try:
            while not self.stop_event.wait(0.2):
                pass
            log.info("scheduler.stopping")
        finally:
            sched.shutdown(wait=True)
            log.info("scheduler.stopped")
