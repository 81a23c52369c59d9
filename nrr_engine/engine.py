"""The library object behind the CLI: one method per command, each returning data (never printing).

Owns the cross-process run lock, the ledger records of runs, rollback, history import and export.
"""
from __future__ import annotations

import csv
import datetime as dt
import fcntl
import gc
import sys
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

from . import money, months, pipeline, reconcile, store
from .fetch import open_org
from .config import Settings
from .errors import (DataError, ExitCode, Interrupted, Location, NrrError, SourceUnavailable, disk_full,
                     storage_cause)
from .ledger import Ledger
from .metrics import arr as arr_mod
from .metrics import snapshot as snapshot_mod
from .metrics.monthly import MonthlyArr
from .pipeline import RunContext
from .sinks import PlanFileSink, change_set

log = structlog.get_logger("nrr_engine")

_SETTLED = ". Nothing is lost: what was written is in the ledger, and the next run settles the rest against the org"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def os_account() -> str:
    """Who runs this process, for the ledger when no name is given: the login name ($LOGNAME, $USER, ...),
    else the account of the uid (pwd), else `uid N` (a container user without a passwd entry)."""
    import getpass
    import os
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


@dataclass
class Outcome:
    """What a plan/run did: the summary printed to the user and the exit code."""

    run_id: str
    summary: dict
    exit_code: ExitCode = ExitCode.OK
    plan: pipeline.Plan | None = field(default=None, repr=False)


def find_run(ledger: Ledger, run_id: str) -> dict:
    """The run `run_id` names (its id or a unique prefix); an unknown or ambiguous one is a DataError that lists
    the runs it could mean."""
    found = ledger.runs_starting(run_id, limit=11) if run_id else []
    exact = [r for r in found if r["id"] == run_id]
    if exact or len(found) == 1:
        return (exact or found)[0]
    if not found:
        raise DataError(f"no run {run_id!r}; see `nrr-engine runs list`")
    shown = "\n  ".join(f"{r['id']}  {r['job']} {r['mode']} {r['status']}" for r in found[:10])
    more = "\n  ... and more: give more of the id" if len(found) > 10 else ""
    raise DataError(f"run {run_id!r} is ambiguous: {'more than 10' if len(found) > 10 else len(found)} runs start "
                    f"so:\n  {shown}{more}")


INTERNAL_ERROR = 70  # EX_SOFTWARE, as the CLI ends on a bug


def failure_of(exc: BaseException) -> tuple[int, str]:
    """The exit code the CLI ends with for `exc` and the message it prints (cli.guarded says the same)."""
    if isinstance(exc, KeyboardInterrupt):
        return int(ExitCode.UNAVAILABLE), "interrupted"
    if isinstance(exc, NrrError):
        errors = getattr(exc, "errors", None)  # ConfigErrors: several, each printed on its own line
        return int(exc.exit_code), "; ".join(map(str, errors)) if errors else str(exc)
    cause = storage_cause(exc) if isinstance(exc, Exception) else None
    if cause is not None:
        return int(ExitCode.UNAVAILABLE), f"cannot write ({cause}); free some space and run again"
    if isinstance(exc, OSError):   # as cli.guarded ends on it: exit 3, not 70
        return int(ExitCode.UNAVAILABLE), f"{exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}"
    return INTERNAL_ERROR, f"internal error ({type(exc).__name__}: {exc})"


def log_failed(exc: BaseException) -> None:
    """A run that stops logs one `run.failed` event (with its bound run_id): the exit code and why, as JSON when
    stderr is not a terminal, besides the CLI's `error:` line."""
    code, message = failure_of(exc)
    log.error("run.failed", exit_code=code, error=message)


@contextmanager
def logged_run(run_id: str):
    """Log lines in the block carry `run_id`; if the block raises, `run.failed` says why before it unbinds."""
    with structlog.contextvars.bound_contextvars(run_id=run_id):
        try:
            yield
        except BaseException as exc:
            log_failed(exc)
            raise


ROLLBACK_PARTS = (("fields_restored", "restored_fields"), ("snapshots_restored", "restored_snapshots"),
                  ("records_deleted", "deleted_records"), ("records_recreated", "restored_records"))


def rollback_counts(result: dict) -> dict:
    """A rollback's counts as the ledger keeps them (runs list, runs show): `applied` is every change it recorded
    and the four parts add up to it; the same code counts a local and a Salesforce rollback."""
    return {"applied": result["changes"], **{name: result[key] for name, key in ROLLBACK_PARTS},
            "conflicts": result["conflict_count"]}


class Engine:
    """Opens the org and the state store for one command; `clock` is injected (tests pass a fixed one)."""

    def __init__(self, settings: Settings, clock: Callable[[], dt.datetime] = utc_now):
        self.settings = settings
        self.clock = clock
        self._ledger: Ledger | None = None
        self._org = None

    # Opened on first use, so a command that takes the run lock creates and migrates the state store and the
    # working copy only once it holds the lock (two first-ever runs at once: the loser waits for nothing).
    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.settings.state)
        return self._ledger

    @property
    def org(self):
        if self._org is None:
            self._org = open_org(self.settings)
        return self._org

    def close(self) -> None:
        if self._org is not None:
            self._org.close()
        if self._ledger is not None:
            self._ledger.close()
        gc.unfreeze()   # what matching froze (repair.cycles_uncollected) is the collector's again

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def lock(self):
        """One run at a time, across processes (flock on <state>.lock: 0600, never opened through a symlink)."""
        from .safe_output import open_lock, private_dir
        path = self.settings.state.with_suffix(".lock")
        try:
            fh = open_lock(private_dir(path.parent) / path.name)
        except OSError as exc:
            if path.is_symlink():   # O_NOFOLLOW's ELOOP: a planted link could point the lock at any file
                import os
                raise SourceUnavailable(f"cannot create the run lock: the lock file is a symbolic link (to "
                                        f"{os.readlink(path)!r}), and the lock is never opened through one; remove "
                                        f"the link (rm {path}) and run again", Location(str(path))) from None
            raise SourceUnavailable(f"cannot create the run lock: {exc.strerror}", Location(str(path))) from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise SourceUnavailable("another nrr-engine run holds the lock; try again when it finishes",
                                    Location(str(path))) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    @contextmanager
    def storage(self, what: str, *paths: Path, note: str = ""):
        """A write the file system refused (full device, file size limit), however deep it surfaced, becomes
        DiskFull (exit 3) naming the file and the space it needs, not an internal error."""
        try:
            yield
        except NrrError:
            raise
        except BaseException as exc:
            cause = storage_cause(exc)
            if cause is None:
                raise
            raise disk_full(cause, [*paths, self.settings.state, self.settings.working_copy], what, note) from None

    def today(self) -> dt.date:
        import zoneinfo
        return self.clock().astimezone(zoneinfo.ZoneInfo(self.settings.timezone)).date()

    # ---- plan / run -----------------------------------------------------------------------------
    def execute(self, job: str = "nightly", as_of: dt.date | None = None, dry_run: bool = False,
                should_stop: Callable[[], bool] = lambda: False, allow_shrink: bool = False) -> Outcome:
        """Plan (dry_run) or run the job; the run is recorded in the ledger either way."""
        ctx = RunContext.new(self.clock, as_of or self.today(), job=job, dry_run=dry_run, should_stop=should_stop,
                             allow_shrink=allow_shrink)
        structlog.contextvars.bind_contextvars(run_id=ctx.run_id)
        if sys.stderr.isatty():
            from tqdm import tqdm
            ctx.progress = tqdm(total=8 if dry_run else 12, unit="stage", leave=False)
        try:
            with self.lock(), self.storage("the run", note=_SETTLED):
                calls_before = dict((self.org.api_usage() or {}).get("calls", {}))
                recovered = reconcile.recover(self.org, self.ledger)
                if recovered:
                    log.warning("run.recovered", runs=recovered)
                ctx.store_version = self.ledger.state_version()  # the columnar store is current at this one
                self.ledger.start_run({"id": ctx.run_id, "job": job, "mode": "plan" if dry_run else "run",
                                       "as_of": ctx.as_of.isoformat(), "started": self.clock().isoformat(),
                                       "config_hash": pipeline.file_hash([self.settings.config_file]),
                                       "rules_hash": pipeline.file_hash(list(self.settings.rule_files))})
                log.info("run.start", job=job, as_of=ctx.as_of.isoformat(), dry_run=dry_run)
                try:
                    with self.storage("the run", note=_SETTLED):
                        with self.org.reloads_held():  # a run that stops before writing leaves the working copy
                            plan = pipeline.compute(self.settings, self.org, self.ledger, ctx)
                        carried = plan.state.carried
                        if carried is not None and carried.reused:
                            log.info("store.reused", what="matching's proposals", rules=carried.reused,
                                     matched_again=carried.matched)
                        elif carried is not None and carried.previous:   # a file, but no entry fits any more
                            log.info("store.not_reused", what="matching's proposals", matched_again=carried.matched)
                        counts = {"planned": plan.change_count()}
                        if not dry_run:
                            counts.update(pipeline.apply(plan, self.org, self.ledger, self.settings))
                except NrrError as exc:
                    self._record_failure(ctx.run_id, status="stopped" if isinstance(exc, Interrupted) else "failed",
                                         ended=self.clock().isoformat(), error=str(exc),
                                         counts={"stages": ctx.stage_times}, api_usage=self._usage(calls_before))
                    raise
                except BaseException as exc:
                    self._record_failure(ctx.run_id, status="failed", ended=self.clock().isoformat(),
                                         error=f"{type(exc).__name__}: {exc}", api_usage=self._usage(calls_before))
                    raise
                self.ledger.record_findings(ctx.run_id, plan.findings)
                plan.api_calls = self._usage(calls_before)
                failed = counts.get("failed", 0)
                if not dry_run:
                    if not failed:  # a cache for reports and the next run; stale unless written now
                        with ctx.stage("store", stoppable=False):
                            pipeline.write_store(self.settings, plan, self.org, self.ledger.state_version())
                            store.write_proposals(store.proposals_path(self.settings.state), plan.state.carried)
                    else:
                        store.discard(store.path_for(self.settings.state))
                summary = self.summary(plan, counts)
                status = "planned" if dry_run else ("failed_records" if failed else "succeeded")
                self.ledger.finish_run(ctx.run_id, status=status, ended=self.clock().isoformat(),
                                       counts=counts, summary=summary, api_usage=plan.api_calls, unsettled=None)
                log.info("run.end", status=status, **{k: v for k, v in counts.items()})
                return Outcome(ctx.run_id, summary, ExitCode.RECORD_FAILURES if failed else ExitCode.OK, plan)
        except BaseException as exc:
            log_failed(exc)
            raise
        finally:
            if ctx.progress is not None:
                ctx.progress.close()
            structlog.contextvars.unbind_contextvars("run_id")

    def _record_failure(self, run_id: str, **fields) -> None:
        """Record why a run stopped; if even that cannot be written (a full disk), the run stays running or
        applying and the next run settles it: the error that stopped it is what the caller raises."""
        try:
            self.ledger.finish_run(run_id, **fields)
        except Exception as exc:
            log.error("run.unrecorded", error=str(exc))

    def _usage(self, before: dict) -> dict | None:
        """Salesforce API calls made since `before` (this run's), by kind; None for a local org."""
        usage = self.org.api_usage()
        if usage is None:
            return None
        calls = {k: v - before.get(k, 0) for k, v in usage["calls"].items() if v - before.get(k, 0)}
        return {**usage, "calls": calls, "total": sum(calls.values())}

    def summary(self, plan: pipeline.Plan, counts: dict) -> dict:
        ctx = plan.ctx
        nrr = {}
        for view, windows in plan.nrr.items():
            nrr[view] = {str(w): {"period": f["period"], "family": f["family"].as_json(),
                                  "naive": f["naive"].as_json(naive=True),
                                  **({"excluded": f["excluded"]} if f.get("excluded") else {}),
                                  **({"segments": [{"by": sg["by"], "value": sg["value"],
                                                    "family": sg["family"].as_json()} for sg in f["segments"]]}
                                     if f.get("segments") else {})}
                         for w, f in windows.items()}
        arr = money.fmt(plan.matrix.total(plan.current_month - plan.first_month))  # the shrink guard's baseline
        excluded = plan.state.excluded
        left_out = money.fmt(excluded.arr_at(plan.current_month) if excluded is not None else 0)
        return {"run_id": ctx.run_id, "job": ctx.job, "mode": "plan" if ctx.dry_run else "run",
                "as_of": ctx.as_of.isoformat(), "accounts": len(plan.accounts), "arr": arr, "arr_left_out": left_out,
                "families": {v: r.families for v, r in plan.views.items()},
                "max_depth": {v: r.depth_max for v, r in plan.views.items()},
                "changes": counts, "snapshots": len(plan.snapshots), "snapshot_month": months.fmt(plan.current_month - 1),
                "snapshots_changed": len(plan.snapshot_changes),
                "findings": [f.as_dict() for f in plan.findings], "nrr": nrr, "stages": ctx.stage_times,
                "repair": plan.rule_stats, **({"api_calls": plan.api_calls} if plan.api_calls else {})}

    def write_plan(self, plan: pipeline.Plan, out: Path) -> None:
        """plan.json (DESIGN §8), through the plan-file sink."""
        summary = {k: v for k, v in self.summary(plan, {"planned": plan.change_count()}).items()
                   if k in ("accounts", "families", "nrr", "changes", "repair")}
        with self.storage("the plan file", out, note=f" (the plan is recorded in the ledger as run {plan.ctx.run_id}; "
                          f"{out} was left as it was)"):
            PlanFileSink(out, self.settings).write(plan.ctx, plan, summary)

    # ---- report ---------------------------------------------------------------------------------
    def report_nrr(self, period: str | None, window: int, view: str | None, by: str | None,
                   as_of_start: bool = False, as_of: dt.date | None = None, recompute: bool = False) -> dict:
        """NRR/GRR for a period and window (writes nothing): from the last run's columnar store while it is
        current, else (or with `recompute`) recomputed from the org and the stored history."""
        v = self.settings.view(view) if view else self.settings.views[0]
        ctx = RunContext.new(self.clock, as_of or self.today(), dry_run=True)
        cur = months.of(ctx.as_of)
        p = months.parse(period) if period else cur - 1
        if p > cur:
            raise DataError(f"--period {period} is in the future (as of {ctx.as_of})")
        fig = None if recompute else pipeline.report_from_store(self.settings, self.org, self.ledger, cur, v.name, p,
                                                                 window, as_of_start, by)
        if fig is None:
            with self.org.reloads_held():  # a report that stops (the input guard) leaves the working copy as it was
                fig = pipeline.report(self.settings, self.org, self.ledger, ctx, v.name, p, window, as_of_start, by)
        if p == cur:  # figures of an open month, as of today: they change until it closes
            fig["provisional"] = (f"{months.fmt(p)} is not closed as of {ctx.as_of}: its figures are provisional "
                                  f"and can change until the month closes ({months.fmt(cur - 1)} is the last closed "
                                  "month)")
        return fig

    # ---- review queue ---------------------------------------------------------------------------
    def review_list(self, status: str | None = "pending", view: str | None = None) -> list[dict]:
        """Review items (links below auto_apply, ties, placeholder parents) with account names for reading."""
        if view:
            self.settings.view(view)
        items = self.ledger.review_items(status=status, view=view)
        wanted = {i["child_id"] for i in items if i["child_id"]} | {i["parent_id"] for i in items if i["parent_id"]}
        wanted |= {m for i in items for m in (i["members"] or ())}   # a placeholder's accounts, named for the CSV
        names = {}
        if wanted and self.settings.salesforce is not None:
            # the names in the mirror the last run read: no login, so a reviewer needs no integration secret
            names = _mirror_names(self.settings.working_copy, wanted)
        elif wanted and self.org.has_table("Account") and self.org.has_field("Account", "Name"):
            names = {rid: row[0] for rid, row in self.org.get("Account", sorted(wanted), ["Name"]).items()}
        for i in items:
            i["child_name"] = names.get(i["child_id"])
            i["parent_name"] = names.get(i["parent_id"]) if i["parent_id"] else i["placeholder_name"]
            if i["members"]:
                i["member_names"] = [names.get(m) for m in i["members"]]
        return items

    def review_decide(self, ids: list[int], approve: bool, note: str | None = None, by: str | None = None) -> list[dict]:
        """Approve (applied on the next run, still through the guards) or reject (never proposed again)."""
        found = {i["id"]: i for i in self.ledger.review_items(ids=ids)}
        unknown = [i for i in ids if i not in found]
        if unknown:
            raise DataError(f"no review item {', '.join(map(str, unknown))}; see `nrr-engine review list --status all`")
        final = [i for i in ids if found[i]["status"] in ("applied", "rejected" if approve else "applied")]
        if final:
            raise DataError(f"review item {final[0]} is already {found[final[0]]['status']}; it cannot be "
                            f"{'approved' if approve else 'rejected'}")
        if approve and self.settings.hierarchy.missing_parents != "placeholder" and any(
                found[i]["parent_ref"].startswith("placeholder:") for i in ids):
            raise DataError("hierarchy.missing_parents is not placeholder: approving a placeholder parent would "
                            "create nothing", Location(str(self.settings.config_file)))
        when = self.clock().isoformat()
        by = by.strip() if by and by.strip() else os_account()  # never a decision by nobody (cron, Docker)
        with self.lock(), self.storage("the review decision"):
            decided = self.ledger.decide_review(ids, "approved" if approve else "rejected", when, by, note)
            if approve:  # one parent per child: the other candidates of an approved child are rejected
                for item in decided:
                    if not item["child_id"]:
                        continue
                    rivals = [r["id"] for r in self.ledger.review_items(view=item["view"])
                              if r["child_id"] == item["child_id"] and r["id"] != item["id"]
                              and r["status"] in ("pending", "expired", "blocked", "approved")]
                    if rivals:
                        self.ledger.decide_review(rivals, "rejected", when, by, f"another parent was approved (#{item['id']})")
        return decided

    # ---- rollback -------------------------------------------------------------------------------
    def rollback(self, run_id: str, dry_run: bool = False, hold: bool = False) -> dict:
        """Restore the old values of a run's applied changes; values edited since are reported, not touched.

        The review items whose links it undoes are pending again (a person decides again). `hold`: every link it
        undoes stays out of the org until a person approves it (rules send it to review instead of applying it
        again). `dry_run`: what it would restore, delete, re-create, leave alone and reopen; nothing written."""
        ctx = RunContext.new(self.clock, self.today(), job="rollback")
        # its log lines carry the rollback's run id, as a run's do (a dry run records no run: none to bind)
        with self.lock(), self.storage("the rollback", note=_SETTLED), (
                nullcontext() if dry_run else logged_run(ctx.run_id)):
            run = find_run(self.ledger, run_id)
            if run["mode"] != "run" or run["status"] in ("rolled_back",):
                raise DataError(f"run {run['id']} is a {run['mode']} with status {run['status']}; only runs that "
                                "wrote changes can be rolled back (and only once)")
            calls_before = dict((self.org.api_usage() or {}).get("calls", {}))
            if dry_run:
                return self._rollback_preview(run, hold, calls_before)
            # a run killed or failed part-way is settled against the org first: only what it wrote is undone
            recovered = reconcile.recover(self.org, self.ledger)
            if recovered:
                log.warning("run.recovered", runs=recovered)
                run = self.ledger.run(run["id"])
            if self.org.remote:
                reconcile.refresh(self.org, self.ledger, run["id"], ("applied",))
            else:
                self.org.sync(["Account", self.settings.snapshot_object])
            self.ledger.start_run({"id": ctx.run_id, "job": "rollback", "mode": "rollback", "as_of": ctx.as_of.isoformat(),
                                   "started": self.clock().isoformat()})
            try:
                result = reconcile.rollback(self.org, self.ledger, run["id"], ctx.run_id, self.settings.snapshot_prefix,
                                            links=self._link_fields())
                # the families the run recorded go too: reports and the next run see those recorded before it
                result["membership"] = self.ledger.undo_membership(run["id"])
                result["review"] = self._review_after_rollback(run["id"], ctx.run_id, result.pop("links"), hold)
            except BaseException as exc:
                self.ledger.finish_run(ctx.run_id, status="failed", ended=self.clock().isoformat(),
                                       error=f"{type(exc).__name__}: {exc}", api_usage=self._usage(calls_before))
                raise
            result["api_calls"] = self._usage(calls_before)
            self.ledger.finish_run(ctx.run_id, status="succeeded", ended=self.clock().isoformat(),
                                   counts=rollback_counts(result), summary=result, api_usage=result["api_calls"])
            self.ledger.finish_run(run["id"], status="rolled_back")
            return result

    def _link_fields(self) -> list[tuple[str, str]]:
        return [("Account", v.parent_field) for v in self.settings.lookup_views]

    def _rollback_preview(self, run: dict, hold: bool, calls_before: dict) -> dict:
        """`rollback --dry-run`: the rollback's counts, conflicts, membership and review items, computed against
        the org as it is now; no run is recorded, nothing is settled or written."""
        if self.org.remote:
            reconcile.refresh(self.org, self.ledger, run["id"], ("applied",))
        else:
            self.org.sync(["Account", self.settings.snapshot_object])
        result = reconcile.rollback(self.org, self.ledger, run["id"], None, self.settings.snapshot_prefix,
                                    dry_run=True, links=self._link_fields())
        result["membership"] = self.ledger.membership_undo_preview(run["id"])
        result["review"] = self._review_after_rollback(run["id"], None, result.pop("links"), hold, dry_run=True)
        result["dry_run"] = True
        if run["status"] in ("running", "applying") or run.get("unsettled"):
            result["unsettled"] = (f"run {run['id']} is {run['status']}: the rollback first settles its changes "
                                   "against the org, so it may undo fewer than shown here")
        result["api_calls"] = self._usage(calls_before)
        return result

    def _review_after_rollback(self, run_id: str, rollback_id: str | None, links: dict[str, list[str]], hold: bool,
                               dry_run: bool = False) -> dict:
        """The review side of a rollback: approved items whose links it undid are pending again; with `hold`,
        every link it undid is held out (a rule-made one gets a pending item). `rule_links`: the links it undid
        that rules made, which the next run applies again unless held or the rules or data change."""
        out = {"reopened": 0, "held": 0, "created": 0, "rule_links": 0}
        when = self.clock().isoformat()
        for v in self.settings.lookup_views:
            ids = links.get(v.parent_field) or []
            if not ids:
                continue
            details = self.ledger.link_details(run_id, "Account", v.parent_field, ids)
            got = self.ledger.reopen_after_rollback(rollback_id or "(dry run)", run_id, v.name,
                                                    details if hold else [d for d in details if d["approved"]],
                                                    hold, when, dry_run)
            for k in ("reopened", "held", "created"):
                out[k] += got[k]
            out["rule_links"] += sum(1 for d in details if not d["approved"])
        return out

    # ---- history import -------------------------------------------------------------------------
    def import_history(self, path: Path) -> dict:
        """Monthly ARR history CSV (account_id, month, arr[, currency]) into the state store, all or nothing."""
        if self.settings.arr.source == "subscriptions":
            raise DataError("arr.source is subscriptions: history is rebuilt from the subscriptions every run, so an "
                            "import would be overwritten; use arr.source: history or account_field",
                            Location(str(self.settings.config_file)))
        rows, errors = _read_history(path, self.settings.currency)
        if errors:
            shown = "\n  ".join(errors[:20])
            more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
            raise DataError(f"{len(errors)} problem(s); nothing imported:\n  {shown}{more}", Location(str(path)))
        if not rows:
            raise DataError("no rows; expected a header account_id,month,arr[,currency] and one row per account-month",
                            Location(str(path)))
        with self.lock(), self.storage("the history import", note=" (nothing was imported)"):
            existing = list(self.ledger.arr_segments())
            ids = sorted({r[0] for r in existing} | {r[0] for r in rows})
            index = {a: i for i, a in enumerate(ids)}
            lo = min([months.parse(s) for _, s, _, _ in existing] + [m for _, m, _ in rows])
            hi = max([months.parse(e) for _, _, e, _ in existing] + [m for _, m, _ in rows])
            matrix = arr_mod.from_segments(existing, index, lo, hi - lo + 1).dense()
            touched = set()
            for a, m, units in rows:
                matrix[index[a], m - lo] = units
                touched.add(index[a])
            rows_idx = np.array(sorted(touched), dtype=np.int64)
            self.ledger.replace_arr([ids[r] for r in rows_idx.tolist()],
                                    arr_mod.segment_parts(MonthlyArr.from_dense(matrix), rows_idx, lo, ids))
        return {"rows": len(rows), "accounts": len(touched), "months": f"{months.fmt(lo)}..{months.fmt(hi)}"}

    # ---- export ---------------------------------------------------------------------------------
    def export(self, out: Path, run_id: str | None = None, since: str | None = None) -> dict:
        """Full object CSVs of the working copy plus change sets as Data Loader CSVs: of `run_id`, of every run
        after `since` that changed the org (oldest first), or by default of the latest run that changed it."""
        with self.storage("the export", out, note=" (export again once there is room: every file is written anew)"):
            return self._export(out, run_id, since)

    def changed_org(self, run: dict) -> bool:
        """The run's changes reached the org: a run or rollback (one killed or failed part-way too, once settled)
        with at least one applied change."""
        return (run["mode"] in ("run", "rollback") and self.ledger.has_changes(run)
                and run["status"] not in ("running", "applying") and not run.get("unsettled")
                and self.ledger.has_applied(run["id"]))

    def _export(self, out: Path, run_id: str | None, since: str | None) -> dict:
        if run_id and since:
            raise DataError("give --run or --since, not both")
        self.org.sync(self.org.csv_objects())
        full = self.org.export_full(out / "full")
        unsettled = []  # runs a kill or a failed write left unsettled: the next run (or rollback) settles them
        if run_id:
            runs, chosen = [find_run(self.ledger, run_id)], "given"
        else:
            newest_first = self.ledger.runs(100_000)
            unsettled = [r["id"] for r in newest_first if r["mode"] in ("run", "rollback") and self.ledger.has_changes(r)
                         and (r["status"] in ("running", "applying") or r.get("unsettled"))]
            if since:
                start = find_run(self.ledger, since)
                later = newest_first[:next(i for i, r in enumerate(newest_first) if r["id"] == start["id"])]
                runs, chosen = [r for r in reversed(later) if self.changed_org(r)], "since"
            else:
                runs, chosen = next(([r] for r in newest_first if self.changed_org(r)), []), "latest"
        sets = []
        for run in runs:
            cs = change_set.write(self.ledger.changes(run["id"], status="applied"), self._org_view(),
                                  out / "changes" / run["id"])
            sets.append({"run": run["id"], "mode": run["mode"], "changes": [str(p) for p in cs.files],
                         "steps": [s.text() for s in cs.steps], "notes": cs.notes,
                         "load_order": str(out / "changes" / run["id"] / change_set.LOAD_ORDER)})
        last = sets[-1] if sets else {}
        return {"full": [str(p) for p in full], "sets": sets, "chosen": chosen, "since": since,
                "unsettled": unsettled, "remote": self.org.remote,
                # the one change set of --run or the default (the last of --since)
                "run": last.get("run"), "changes": last.get("changes", []), "steps": last.get("steps", []),
                "notes": last.get("notes", []), "load_order": last.get("load_order"),
                "skipped": [] if self.org.remote else self.org.csv_skipped()}  # CSVs in the org folder that are no object

    def _org_view(self) -> change_set.OrgView:
        """The org as the change set sees it: which records the real org holds (a local org: those of its CSVs;
        Salesforce: all), and the external ids of those the engine created."""
        org = self.org
        key_fields = {"Account": self.settings.hierarchy.placeholder_key_field,
                      self.settings.snapshot_object: snapshot_mod.KEY}

        def keys(obj: str, ids) -> dict[str, str]:
            field = key_fields.get(obj)
            if not field or not org.has_table(obj) or not org.has_field(obj, field):
                return {}
            return {rid: row[0] for rid, row in org.get(obj, sorted(ids), [field]).items() if row[0]}
        return change_set.OrgView(in_org=(lambda obj, ids: set(ids)) if org.remote else org.in_org, keys=keys,
                                  columns=lambda obj: org.columns(obj) if org.has_table(obj) else [],
                                  key_fields=key_fields, remote=org.remote)


def _mirror_names(mirror: Path | None, ids) -> dict[str, str]:
    """Account names by Id from a Salesforce mirror, read-only and without logging in ({} when there is none yet)."""
    import sqlite3
    if mirror is None or not mirror.is_file():
        return {}
    con = sqlite3.connect(f"{mirror.resolve().as_uri()}?mode=ro", uri=True)
    try:
        columns = {r[1].lower(): r[1] for r in con.execute('PRAGMA table_info("Account")')}
        if "id" not in columns or "name" not in columns:
            return {}
        wanted, names = sorted(ids), {}
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            names.update(con.execute(f'SELECT "{columns["id"]}", "{columns["name"]}" FROM "Account" WHERE '
                                     f'"{columns["id"]}" IN ({", ".join("?" * len(part))})', part))
        return names
    finally:
        con.close()


def _read_history(path: Path, currency: str) -> tuple[list[tuple[str, int, int]], list[str]]:
    rows, errors = [], []
    try:
        fh = open(path, newline="", encoding="utf-8-sig", errors="strict")
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror}", Location(str(path))) from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip().lower() for h in next(reader, [])]
            if header[:3] != ["account_id", "month", "arr"] or len(header) > 4 or (len(header) == 4 and header[3] != "currency"):
                raise DataError(f"header is {','.join(header)}; expected account_id,month,arr[,currency]",
                                Location(str(path), 1))
            seen: dict[tuple[str, int], int] = {}
            for row in reader:
                line = reader.line_num
                if not any(c.strip() for c in row):
                    continue
                if len(row) < 3:
                    errors.append(f"{path}:{line}: expected account_id,month,arr")
                    continue
                a, m_text, arr_text = row[0].strip(), row[1].strip(), row[2]
                # the one reading policy of the engine (money.NUMBER_FORMAT, months YYYY-MM): nothing is guessed
                try:
                    m = months.parse(m_text)
                except ValueError as exc:
                    errors.append(f"{path}:{line}: {exc} (column month)")
                    continue
                try:
                    units = money.parse_units(arr_text)
                except money.MoneyError as exc:
                    errors.append(f"{path}:{line}: {exc} (column arr; expected {money.NUMBER_FORMAT})")
                    continue
                if not a:
                    errors.append(f"{path}:{line}: account_id is empty")
                elif units is None or units < 0:
                    errors.append(f"{path}:{line}: arr {arr_text!r} must be a number >= 0")
                elif len(row) > 3 and row[3].strip() and row[3].strip().upper() != currency:
                    errors.append(f"{path}:{line}: currency {row[3].strip()} differs from the corporate currency "
                                  f"{currency}: mixed currencies, and nrr-engine does not convert currencies yet; "
                                  f"convert the amounts to {currency} first")
                elif (a, m) in seen:
                    errors.append(f"{path}:{line}: {a} {m_text} already given on line {seen[(a, m)]}")
                else:
                    seen[(a, m)] = line
                    rows.append((a, m, units))
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 ({exc.reason}) after line {reader.line_num}; re-export as UTF-8",
                            Location(str(path), reader.line_num + 1)) from None
    return rows, errors
