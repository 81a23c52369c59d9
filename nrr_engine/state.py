"""What a run carries from stage to stage: the RunContext (who, when, the clock) and the State (data).

`State` is frozen: the fetch stage fills its inputs, each later stage returns a new State with its outputs
added (dataclasses.replace), and the sinks write what the last one holds.
"""
from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from . import memory, months
from .errors import Interrupted
from .metrics.monthly import MonthlyArr
from .model import Accounts, Change, FieldChanges, Finding, SnapshotChanges

log = structlog.get_logger("nrr_engine")


def _peak_rss_mb() -> int | None:
    """This process's peak resident memory so far (MiB), for the stage log; None where it cannot be read."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


@dataclass
class RunContext:
    """Per-run state: identity, the date the run acts as of, and the injected clock."""

    run_id: str
    as_of: dt.date
    clock: Callable[[], dt.datetime]
    job: str = "nightly"
    dry_run: bool = False
    should_stop: Callable[[], bool] = lambda: False
    allow_shrink: bool = False  # --allow-shrink: an input that lost accounts or ARR is accepted (a finding)
    progress: Any = None  # a tqdm bar over the stages when stderr is a terminal
    stage_times: dict[str, float] = field(default_factory=dict)
    store_version: int | None = None  # the ledger's state version before this run began (store.py)

    @property
    def current_month(self) -> int:
        return months.of(self.as_of)

    def check_stop(self, stage: str) -> None:
        if self.should_stop():
            raise Interrupted(f"stop requested; run stopped before stage {stage!r}, nothing half-written: run it "
                              "again when you are ready")

    @contextmanager
    def stage(self, name: str, stoppable: bool = True) -> Iterator[None]:
        """Time a stage (added up when a name recurs), log its start and end, and stop before it if asked (not a
        stage after the writes, whose run has done what it set out to)."""
        if stoppable:
            self.check_stop(name)
        t0 = time.perf_counter()
        log.info("stage.start", stage=name)
        if self.progress is not None:
            self.progress.set_description(name)
        ok = False
        try:
            yield
            ok = True
        finally:
            took = time.perf_counter() - t0
            self.stage_times[name] = round(self.stage_times.get(name, 0) + took, 3)
            if ok:
                memory.release()   # what the stage freed goes back before the next one allocates
                log.info("stage.end", stage=name, seconds=round(took, 3), peak_rss_mb=_peak_rss_mb())
                if self.progress is not None:
                    self.progress.update(1)

    @staticmethod
    def new(clock: Callable[[], dt.datetime], as_of: dt.date | None = None, **kw) -> "RunContext":
        now = clock()
        run_id = now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
        return RunContext(run_id=run_id, as_of=as_of or now.date(), clock=clock, **kw)


@dataclass(frozen=True)
class State:
    """A run's data. Inputs (set by fetch) come first; each stage adds its outputs."""

    # ---- inputs: every read of the run, made by the fetch stage
    accounts: Accounts
    ruleset: Any
    first: int                                  # month index of the matrix's first column
    matrix: MonthlyArr | None                   # accounts x months ARR units (None until fetch_arr)
    arr_rows_changed: np.ndarray                # accounts whose stored ARR history differs from `matrix`
    membership: dict                            # view -> hierarchy.membership.Membership (recorded families)
    decisions: Any                              # hierarchy.repair.Decisions (review decisions)
    inserts: tuple[Change, ...] = ()            # records the run creates (placeholder parents)
    existing_snapshots: Any = None              # () -> metrics.snapshot.ExistingSnapshots of the month (read when asked)
    snapshots_held: str | None = None           # SnapshotSet.digest of the records the org holds, when the store knows
    findings: tuple[Finding, ...] = ()
    repair: bool = True                         # False for a report: trees as the org has them
    extra_fields: tuple[str, ...] = ()
    merged: dict = field(default_factory=dict)  # merged-away account Id -> surviving account Id
    excluded: Any = None                        # metrics.arr.Excluded: records left out of ARR (fetch_arr)
    cohorts: bool = False                       # a report by cohort: fetch_arr dates each account's first ARR
    first_arr: Any = None                       # per account, first month with ARR from subscriptions, or None
    csv_signature: Any = None                   # store.csv_signature of a local org before the sync (fetch)
    account_fields: tuple[str, ...] = ()        # the Account columns fetch read, Id first
    unchanged: bool = False                     # every input (accounts, ARR, history, membership) as the store has it
    account_packed: dict = field(default_factory=dict)  # columns the repair let go, packed for the store (repair)
    arr_findings: tuple[Finding, ...] = ()      # the findings of reading ARR (fetch_arr), kept in the store
    stored: Any = None                          # store.Columns of the last run that wrote one (matching's derived
                                                # columns are taken from it whether or not it is current)
    carried: Any = None                         # hierarchy.carry.Carried: the last run's matching proposals, and
                                                # this run's for the next (repair)
    reuse: Any = None                           # (store.Columns, positions of its accounts in this run): the last
                                                # run's ARR and membership, current with the ledger (fetch)
    # ---- outputs of the stages
    views: dict = field(default_factory=dict)   # view -> hierarchy.repair.ViewResult (repair)
    duplicates: tuple[dict, ...] = ()           # (repair)
    derived: dict = field(default_factory=dict)  # matching's name keys and sites with their raw values (repair)
    changes: tuple[FieldChanges, ...] = ()      # link batches (repair), rollup batches (rollup)
    membership_changes: dict = field(default_factory=dict)  # view -> [(account Id, root Id)] (membership)
    nrr: dict = field(default_factory=dict)     # view -> window -> figures (nrr)
    snapshots: Any = None                       # metrics.snapshot.SnapshotSet (snapshots)
    snapshot_changes: SnapshotChanges | None = None  # (snapshots)

    @property
    def merged_away(self) -> tuple[str, ...]:
        """Merged-away accounts: their stored history now lives under the survivor."""
        return tuple(sorted(self.merged))

    def labels_at(self, view: str, month: int, current_month: int) -> np.ndarray:
        """Every account's family in `month` for a view (recorded history; this run's tree from its own month)."""
        return self.membership[view].labels_at(month, self.views[view].tree, current_month, own_month=self.repair)
