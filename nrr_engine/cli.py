"""The command line: thin commands that call one Engine method each and turn errors into exit codes."""
from __future__ import annotations

import datetime as dt
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import sys
import threading
from pathlib import Path

import click

from . import __version__, config as config_mod, log as log_mod, memory, report as report_mod
from .errors import ConfigErrors, ExitCode, NrrError, storage_cause
from .safe_output import atomic_file, csv_row, for_stream, private_dir, terminal

INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug in nrr-engine, never a user mistake


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {terminal(log_mod.redact_text(message), keep_newlines=True)}", err=True)  # values stay text
    sys.exit(int(code))


@contextlib.contextmanager
def _stop_on_signals():
    """SIGTERM (cron's timeout, `docker stop`) or Ctrl-C during a run: it stops before its next stage (exit 3,
    recorded as stopped, nothing half-written; once the writes have begun it finishes them). A second signal
    stops at once, as a kill would (the next run settles it)."""
    stop = threading.Event()

    def handler(signum, _frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        # (no logging in a signal handler: the log writer holds a lock the interrupted frame may own)
        os.write(2, f"\nnrr-engine: {signal.Signals(signum).name}: stopping after the current stage (again to stop "
                    f"at once)\n".encode())

    if threading.current_thread() is not threading.main_thread():
        yield stop.is_set
        return
    before = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop.is_set
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


def guarded(fn):
    """Library exceptions -> one clean message and the documented exit code; never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise  # usage errors: click prints them and exits 2
        except ConfigErrors as exc:
            for e in exc.errors:
                click.echo(f"error: {terminal(log_mod.redact_text(str(e)), keep_newlines=True)}", err=True)
            sys.exit(int(exc.exit_code))
        except NrrError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", ExitCode.UNAVAILABLE)
        except BrokenPipeError:  # `nrr-engine review list | head`: the reader left; nothing to report
            import os
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except OSError as exc:
            ctx = click.get_current_context(silent=True)
            if ctx and ctx.find_root().params.get("debug"):   # which call it was: the message may name no file
                import traceback
                click.echo(log_mod.redact_text(traceback.format_exc()), err=True, nl=False)
            _fail(f"{exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}", ExitCode.UNAVAILABLE)
        except Exception as exc:  # a bug: say so plainly, keep the traceback out of ops' logs unless asked
            cause = storage_cause(exc)
            if cause is not None:  # a full disk the library did not name (it names it where it can)
                _fail(f"cannot write ({cause}); free some space and run again", ExitCode.UNAVAILABLE)
            ctx = click.get_current_context(silent=True)
            if ctx and ctx.find_root().params.get("debug"):   # the traceback, redacted (frames can quote secrets)
                import traceback
                click.echo(log_mod.redact_text(traceback.format_exc()), err=True, nl=False)
                sys.exit(INTERNAL_ERROR)
            _fail(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug and report it", INTERNAL_ERROR)
    return wrapper


def _settings(ctx: click.Context):
    return config_mod.load(config_mod.find(ctx.find_root().params.get("config")))


def _engine(ctx: click.Context, job: str | None = None, full_read: bool = False):
    """The Engine of the config; `job` is checked against the config's jobs first (before anything is opened)."""
    import dataclasses
    from .engine import Engine
    settings = _settings(ctx)
    if job is not None:
        settings.job(job)
    if full_read and settings.salesforce is not None:
        settings = dataclasses.replace(settings, salesforce=dataclasses.replace(settings.salesforce, full_read=True))
    return Engine(settings)


def _as_of(value: str | None) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date; expected YYYY-MM-DD") from None


as_of_option = click.option("--as-of", "as_of", metavar="YYYY-MM-DD",
                            help="Run as of this date (default: today in the config's time zone).")
allow_shrink_option = click.option(
    "--allow-shrink", is_flag=True,
    help="Accept an input that lost more than guards.max_shrink of the accounts or the ARR since the last run, or "
         "has no accounts, or most of its ARR on subscriptions whose account is missing (otherwise the run stops, "
         "exit 2, before writing anything). The run becomes the new baseline, and the local working copy forgets "
         "what the engine wrote to the records that left (repaired links, rollups): approved review links are "
         "applied again when the records come back, rule-made ones when the rules propose them again.")


full_read_option = click.option(
    "--full-read", is_flag=True,
    help="Salesforce: read every object in full this time, not only the records changed since the last read. A full "
         "read also happens on the first run, when the fields read change and every source.full_read_days (7): the "
         "read of changes (SystemModstamp, queryAll) cannot see records purged from the recycle bin. A local org "
         "always reloads the CSVs that changed.")


class _Group(click.Group):
    """The command group: its own options (`--config FILE`, `--log-level L`, `--debug`) are taken wherever they
    stand, so `nrr-engine runs show ID --config FILE` works as `nrr-engine --config FILE runs show ID` does (no
    command has options of those names)."""

    _VALUED, _FLAGS = ("--config", "--log-level"), ("--debug",)

    def parse_args(self, ctx, args):
        front, rest, i = [], [], 0
        while i < len(args):
            arg = args[i]
            if arg == "--":   # what follows is never an option
                rest.extend(args[i:])
                break
            name = arg.split("=", 1)[0]
            if name in self._VALUED and "=" in arg or arg in self._FLAGS:
                front.append(arg)
            elif arg in self._VALUED and i + 1 < len(args):
                front.extend(args[i:i + 2])
                i += 1
            else:
                rest.append(arg)
            i += 1
        return super().parse_args(ctx, front + rest)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nrr-engine")
@click.option("--config", "config", type=click.Path(dir_okay=False), envvar=None,
              help="Config file (default: $NRR_ENGINE_CONFIG, else ./config/nrr.yaml).")
@click.option("--log-level", default=None, type=click.Choice(["debug", "info", "warning", "error"]),
              help="Log verbosity (stderr; JSON when stderr is not a terminal). Default: info for cron and "
                   "pipes, warning on a terminal (where a progress bar shows the stages).")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
def main(config, log_level, debug):
    """nrr-engine: repair account hierarchies, roll up ARR and report true family-level NRR.

    Exit codes: 0 ok, 1 record-level failures, 2 invalid config/rules/input,
    3 source or sink unavailable, 4 reconciliation gate failed (70: an internal error, a bug to report).
    """
    log_mod.configure(log_level or ("warning" if sys.stderr.isatty() else "info"))
    memory.configure()


@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@guarded
def init(directory, force):
    """Scaffold config/, rules/ and an example org/ in DIRECTORY (commented; runs as is)."""
    from .demo import generator
    root = Path(directory)
    target = root / "config" / "nrr.yaml"
    if target.exists() and not force:
        _fail(f"{target} exists; pass --force to overwrite", ExitCode.INVALID_INPUT)
    click.echo("\n".join(generator.scaffold(root, force)))


@main.command()
@click.option("--headers-only", "headers_only", is_flag=True,
              help="On a local org, check only the CSV headers, not every record (quicker on a large org).")
@click.pass_context
@guarded
def validate(ctx, headers_only):
    """Check the config and rule files, and every field they name against the org: the local org's CSV headers,
    or Salesforce's describe when its credentials are in the environment. On a local org, also load every record
    of the CSVs a run reads, as the run does, into a throwaway copy (duplicate or blank Ids, rows of the wrong
    width, text that is not UTF-8), unless --headers-only. Print every problem with file:line."""
    records = not headers_only
    path = config_mod.find(ctx.find_root().params.get("config"))
    settings, errors = config_mod.check(path)
    notes: list[str] = []
    n_rules, checked = 0, None
    if settings:
        from . import rules as rules_mod
        ruleset, rule_errors = rules_mod.check(settings.rule_files, [v.name for v in settings.lookup_views],
                                               settings.roots)
        errors.extend(rule_errors)
        notes.extend(f"warning: {w}" for w in settings.warnings)   # e.g. a rules glob that matches no file
        n_rules = len(ruleset.match)
        checked = _check_org(settings, ruleset, errors, notes, records)
        from .safe_output import loose_permission_warnings  # files another local user could edit
        notes.extend(f"warning: {w}" for w in loose_permission_warnings(
            [settings.config_file, *settings.rule_files, *ruleset.tables]))
    else:
        notes.append("rule files and org fields not checked: fix the config problems above first")
    files = [str(path), *(str(f) for f in (settings.rule_files if settings else ()))]
    errors.sort(key=lambda e: (files.index(e.location.file) if e.location.file in files else len(files),
                               e.location.file or "", e.location.line or 0))
    for e in errors:
        click.echo(f"error: {terminal(e, keep_newlines=True)}", err=True)
    for n in notes:
        click.echo(n if n.startswith("warning: ") else f"note: {n}", err=bool(errors))
    if errors:
        click.echo(f"{len(errors)} problem(s) found", err=True)
        sys.exit(int(max(e.exit_code for e in errors)))
    click.echo(f"{path}: ok ({len(settings.views)} view(s), {len(settings.rule_files)} rule file(s), "
               f"{n_rules} matching rule(s); {checked})")


def _check_org(settings, ruleset, errors: list, notes: list[str], records: bool = True) -> str:
    """Check the fields the config and rules name against the org (and, on a local org whose headers are right,
    every record of the CSVs a run loads); say what was checked against."""
    from . import orgcheck
    if settings.salesforce is None:
        if settings.org_path is None or not settings.org_path.is_dir():
            return "org fields not checked (no org folder)"
        headers = orgcheck.LocalHeaders(settings.org_path)
        problems, more = orgcheck.check(settings, ruleset, headers)
        errors.extend(problems)
        notes.extend(more)
        subs = settings.arr.subscriptions.object if settings.arr.source == "subscriptions" and settings.arr.subscriptions \
            else None
        for obj, why in (("Account", "run, plan and report stop on an input without accounts (exit 2) unless run "
                          "--allow-shrink accepts it"), (subs, "every account's ARR would be 0")):
            if obj and headers.has_records(obj) is False:
                notes.append(f"warning: {settings.org_path / (obj + '.csv')} has no records (a header only): {why}")
        said = f"fields checked against the CSV headers in {settings.org_path}"
        if problems or not records:
            return said
        found, counts = orgcheck.record_problems(settings, [o for o in orgcheck.run_objects(settings)
                                                            if headers.fields(o) is not None])   # (CSVs there are)
        errors.extend(found)
        return said + "; records checked as a run loads them: " + ", ".join(
            f"{obj}.csv {n:,}" for obj, n in counts.items())
    import tempfile
    from .errors import ConfigError
    from .sources.salesforce import SalesforceOrg
    try:
        skipped = orgcheck.login_skipped(settings)   # no network call: what is not set, and the key file checked
    except ConfigError as exc:   # a bad private key file: exit 2 at its line, as the run
        errors.append(exc)
        return "org fields not checked"
    if skipped is not None:   # a credential is not set: nothing to log in with
        notes.append(skipped[0])
        return skipped[1]
    with tempfile.TemporaryDirectory(prefix="nrr-validate-") as tmp:  # describe only: the mirror is thrown away
        org = SalesforceOrg(settings.salesforce, Path(tmp) / "mirror.db", settings.config_file)
        try:
            problems, more = orgcheck.check(settings, ruleset, orgcheck.DescribedFields(org))
        except NrrError as exc:  # the login or a describe failed
            if str(exc) not in map(str, errors):   # (a config problem already listed, e.g. no My Domain)
                errors.append(exc)
            return "org fields not checked"
        finally:
            org.close()
    errors.extend(problems)
    notes.extend(more)
    return "fields checked against Salesforce's describe"


@main.command()
@click.argument("which", default="config", type=click.Choice(["config", "match"]))
@guarded
def schema(which):
    """Print a JSON Schema: of the config file (default) or of matching-rule files (match).

    Point your editor's YAML plugin at it."""
    from . import rules as rules_mod
    click.echo(json.dumps(config_mod.schema() if which == "config" else rules_mod.schemas()[which], indent=2))


def _print_summary(summary: dict, exact: dict | None = None) -> None:
    """The run summary; `exact` (the plan's NRR figures) gives the percentages from the exact ratios, rounded once."""
    click.echo(f"run {summary['run_id']} ({summary['mode']}, as of {summary['as_of']})")
    click.echo(f"  accounts read: {summary['accounts']}   families: " +
               ", ".join(f"{v} {n}" for v, n in summary["families"].items()))
    ch = summary["changes"]
    snaps = f"   KPI snapshots of {summary['snapshot_month']}: {summary['snapshots']}" if "snapshot_month" in summary \
        else f"   snapshots: {summary['snapshots']}"
    if "snapshots_changed" in summary:   # (the snapshots are part of the changes: how many of them differ)
        snaps += f" ({summary['snapshots_changed']} {'to write' if summary['mode'] == 'plan' else 'written'})"
    click.echo("  changes: " + ", ".join(f"{k} {v}" for k, v in ch.items()) + snaps)
    for view, windows in summary["nrr"].items():
        for w, fig in windows.items():
            f, n = fig["family"], fig["naive"]
            label = "last month" if w == "1" else "trailing 12 months"
            mf, mn = ((exact[view][int(w)]["family"], exact[view][int(w)]["naive"]) if exact else (None, None))
            click.echo(f"  {view} {fig['period']} {label}: NRR {_pct(mf.nrr if mf else f['nrr'])} "
                       f"GRR {_pct(mf.grr if mf else f['grr'])} (naive account level: "
                       f"NRR {_pct(mn.nrr if mn else n['nrr'])} GRR {_pct(mn.grr if mn else n['grr'])}); "
                       f"internal transfers {f['internal_transfers']}, new logo {f['new_logo']} (naive {n['new_logo']})")
            if fig.get("excluded"):
                click.echo(f"    excluded: {report_mod.excluded_text(fig['excluded'])}")
            _print_segments(fig.get("segments") or [], exact[view][int(w)]["segments"] if exact else None)
    for view, st in (summary.get("repair") or {}).items():
        # review counts accounts; a tie proposes every candidate parent of one account. A placeholder parent is a
        # review item too, so it is counted as one "to review", not as a bare "proposed" beside "0 to review".
        to_review = (f"{st.get('review_accounts', st['review'])} account(s) ({st['review']} candidate link(s)) to review"
                     if st["review"] else "0 account(s) to review")
        applied = "to apply" if summary.get("mode") == "plan" else "applied"   # a plan applies nothing
        click.echo(f"  {view} repair: {st['applied']} link(s) {applied}, {to_review}, {st['blocked']} "
                   f"refused by guards, {st['placeholders']} placeholder parent(s) to review"
                   + ("; see `nrr-engine review list`" if st["review"] or st["placeholders"] else ""))
    order = {"error": 0, "warning": 1, "info": 2}
    for fnd in sorted(summary["findings"], key=lambda f: order.get(f.get("severity"), 1)):
        label = "not evaluated" if fnd.get("outcome") == "not_evaluated" else fnd.get("severity", "warning")
        click.echo(f"  data quality {label} [{fnd['kind']}]: {terminal(fnd['message'])}" +
                   (f" e.g. {', '.join(terminal(r) for r in fnd['records'][:3])}" if fnd["records"] else ""))
    click.echo(f"  API calls: {_api_text(summary.get('api_calls'))}")
    click.echo("  stages: " + ", ".join(f"{k} {v}s" for k, v in summary["stages"].items()))


def _api_text(usage: dict | None, local: bool = True) -> str:
    """A run's Salesforce API calls (runs.api_usage): the total by kind and the org's daily requests remaining."""
    if not usage:
        return "none (local org)" if local else "not recorded for this run"
    import re
    text = f"{usage.get('total', 0)} (" + ", ".join(f"{k} {v}" for k, v in usage.get("calls", {}).items()) + ")"
    seen = re.search(r"api-usage=(\d+)/(\d+)", usage.get("limit_info") or "")
    if seen:
        used, cap = int(seen.group(1)), int(seen.group(2))
        text += f"; daily API requests remaining: {cap - used:,} of {cap:,} (Sforce-Limit-Info after the run)"
    elif usage.get("daily_remaining_at_start") is not None:
        text += f"; daily API requests remaining at start: {usage['daily_remaining_at_start']:,}"
    return text


def _value_shown(change: dict, side: str) -> str:
    """A change's old or new value for reading: a record that did not exist yet, or no longer does, says so."""
    from .model import INSERT, UPSERT
    value = change[side]
    if value is None and change["field"] in (INSERT, UPSERT):
        return "(new record)" if side == "old" else "(deleted)"
    return _short(value, 40) or "(blank)"


def _rollback_text(counts: dict) -> str:
    """What a rollback did, in the words `rollback` prints and `runs list` shows: the parts add up to `applied`."""
    return (f"{counts['applied']} change(s): restored {counts['fields_restored']} field(s) and "
            f"{counts['snapshots_restored']} snapshot(s) to their old values, deleted {counts['records_deleted']} "
            f"record(s) the run created, re-created {counts['records_recreated']} record(s) it deleted; "
            + (f"{counts['conflicts']} conflict(s): left alone, edited since" if counts["conflicts"] else
               "no conflict (nothing edited since)"))


SUMMARY_SEGMENTS = 5  # segment values per field in the run summary (the largest at the window start)


def _print_segments(segments: list[dict], exact: list[dict] | None) -> None:
    """NRR by report.segments: per field, one line per value (the SUMMARY_SEGMENTS largest), then how many more."""
    from decimal import Decimal
    rows = [(s, exact[k]["family"] if exact else None) for k, s in enumerate(segments)]
    for field in dict.fromkeys(s["by"] for s in segments):
        mine = sorted((r for r in rows if r[0]["by"] == field),
                      key=lambda r: (-Decimal(r[0]["family"]["start"]), r[0]["value"]))
        for s, m in mine[:SUMMARY_SEGMENTS]:
            f = s["family"]
            click.echo(f"    {terminal(field)} {terminal(s['value'])}: NRR {_pct(m.nrr if m else f['nrr'])} "
                       f"GRR {_pct(m.grr if m else f['grr'])} (start {f['start']}, end {f['end']}, "
                       f"{f['families']} famil{'y' if f['families'] == 1 else 'ies'})")
        if len(mine) > SUMMARY_SEGMENTS:
            click.echo(f"    {terminal(field)}: {len(mine) - SUMMARY_SEGMENTS} more value(s) (`nrr-engine report nrr` lists "
                       "them all)")


def _pct(ratio) -> str:
    """A ratio (exact Decimal, or the JSON's 6-place text) as money.percent shows it."""
    from . import money
    return money.percent(ratio)


def _pct_kept(ratio: str | None) -> str:
    """A ratio as the ledger keeps it (6 places) in percent, with all its digits: 0.545455 -> 54.5455 %."""
    if ratio is None:
        return "n/a"
    from decimal import Decimal
    return f"{format((Decimal(ratio) * 100).normalize(), 'f')} %"


@main.command()
@click.option("--out", type=click.Path(dir_okay=False), help="Write the JSON plan here (default: stdout summary only).")
@click.option("--job", default="nightly", show_default=True,
              help="Job name recorded in the ledger: nightly or a job under schedule: in config.")
@as_of_option
@allow_shrink_option
@full_read_option
@click.pass_context
@guarded
def plan(ctx, out, job, as_of, allow_shrink, full_read):
    """Dry run: compute every change and write nothing to the org."""
    if out:
        private_dir(Path(out).parent)  # a missing folder is created 0700; one that cannot be fails before the run
    with _engine(ctx, job, full_read) as engine:
        outcome = engine.execute(job=job, as_of=_as_of(as_of), dry_run=True, allow_shrink=allow_shrink)
        if out:
            engine.write_plan(outcome.plan, Path(out))
            click.echo(f"plan written to {out}")
    _print_summary(outcome.summary, outcome.plan.nrr if outcome.plan else None)


@main.command()
@click.option("--job", default="nightly", show_default=True,
              help="Job name: nightly or a job under schedule: in config (recorded in the ledger).")
@as_of_option
@allow_shrink_option
@full_read_option
@click.pass_context
@guarded
def run(ctx, job, as_of, allow_shrink, full_read):
    """The nightly job: plan, apply the changes, record everything in the ledger."""
    with _engine(ctx, job, full_read) as engine, _stop_on_signals() as should_stop:
        outcome = engine.execute(job=job, as_of=_as_of(as_of), allow_shrink=allow_shrink, should_stop=should_stop)
    _print_summary(outcome.summary, outcome.plan.nrr if outcome.plan else None)
    sys.exit(int(outcome.exit_code))


@main.command()
@click.option("--accounts", type=click.IntRange(1, 20_000_000), help="Generate a synthetic org of N accounts instead.")
@click.option("--seed", default=7, show_default=True, help="Generator seed (same seed, same org).")
@click.option("--dir", "directory", default="nrr-demo", show_default=True, type=click.Path(file_okay=False),
              help="Where to build the demo (org/, config/, state/).")
@click.option("--fresh", is_flag=True, help="Delete DIR first (start from an empty ledger).")
@click.option("--force", is_flag=True, help="Build in a DIR that is not empty: overwrite its config/, rules/ and "
              "org/ (its state/ is kept).")
@guarded
def demo(accounts, seed, directory, fresh, force):
    """Build the demo org (or a synthetic one of N accounts) and run the nightly job on it.

    DIR must not exist or be empty, unless --fresh (delete it first) or --force (overwrite in it)."""
    from .demo import DEMO_AS_OF, generate, write_demo_config
    from .engine import Engine
    root = Path(directory)
    if root.is_dir() and any(root.iterdir()) and not (fresh or force):
        _fail(f"{root} is not empty: the demo would overwrite its config, rules and org; pass --fresh to delete it "
              "first or --force to overwrite in it", ExitCode.INVALID_INPUT)
    if fresh and root.exists():
        shutil.rmtree(root)
    org = root / "org"
    if accounts:
        info = generate(org, accounts=accounts, seed=seed)
        click.echo(f"generated {info['accounts']} accounts, {info['subscriptions']} subscriptions in {org}/")
    else:
        from .demo.generator import copy_demo_org
        copy_demo_org(org)  # 0600 in 0700 folders, whatever the umask
        click.echo(f"demo org copied to {org}/")
    cfg = write_demo_config(root)
    with Engine(config_mod.load(cfg)) as engine:  # the org was just replaced on purpose: a smaller one is no accident
        outcome = engine.execute(as_of=DEMO_AS_OF, allow_shrink=True)
    _print_summary(outcome.summary, outcome.plan.nrr if outcome.plan else None)
    # the same month as the summary: the demo runs as of DEMO_AS_OF, not today
    click.echo(f"\nnext: nrr-engine --config {cfg} report nrr --as-of {DEMO_AS_OF} --window 12 --by Region__c")


@main.group()
def report():
    """Reports (NRR/GRR)."""


@report.command("nrr")
@click.option("--period", metavar="YYYY-MM", help="Window end month (default: last closed month).")
@click.option("--window", type=click.Choice(["1", "3", "12"]), default="1", show_default=True,
              help="Months: 1 monthly, 3 quarterly, 12 trailing twelve months.")
@click.option("--view", help="Hierarchy view (default: the first configured, usually legal).")
@click.option("--by", "by", metavar="FIELD", help="Segment by a root account field (e.g. Region__c) or 'cohort'.")
@click.option("--as-of-start", is_flag=True, help="Families as of the window start instead of restated at its end.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
@click.option("--recompute", is_flag=True,
              help="Recompute from the org and the stored history instead of reading the last run's columnar store.")
@as_of_option
@click.pass_context
@guarded
def report_nrr(ctx, period, window, view, by, as_of_start, fmt, out, recompute, as_of):
    """Family-level NRR/GRR next to naive account-level figures for a period and window.

    Read from what the last run stored (its monthly ARR and families) while nothing has changed since: no other
    run or rollback, the same config, month and (local org) CSV files; otherwise, or with --recompute, the
    figures are recomputed from the org (on Salesforce: API calls) and the stored history."""
    if period:
        from . import months
        try:
            months.parse(period)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--period") from None
    if out:
        private_dir(Path(out).parent)  # a missing folder is created 0700, as export creates its own
    with _engine(ctx) as engine:
        fig = engine.report_nrr(period, int(window), view, by, as_of_start, _as_of(as_of), recompute)
    if fig.get("provisional") and (fmt != "table" or out):  # a table on the terminal says it itself, once
        click.echo(f"warning: {fig['provisional']}", err=True)
    text = {"table": report_mod.nrr_table, "csv": report_mod.nrr_csv,
            "json": lambda f: report_mod.dumps(report_mod.nrr_json(f))}[fmt](fig)
    if out:
        with atomic_file(Path(out), "w", encoding="utf-8") as fh:  # 0600: customer figures, whatever the umask
            fh.write(log_mod.redact_text(text) + ("\n" if not text.endswith("\n") else ""))  # for people: redacted
        click.echo(f"written to {out}")
    else:  # the table is escaped wherever it goes; CSV and JSON on a terminal only (a pipe gets what --out would)
        shown = terminal(text, keep_newlines=True) if fmt == "table" else text
        _print_data(shown + ("\n" if not shown.endswith("\n") else ""))


@main.group()
def review():
    """The review queue: proposed parent links below auto_apply, ties and placeholder parents.

    Approved links are applied on the next run (still through the guards); rejected pairs are never
    proposed again.
    """


@review.command("list")
@click.option("--status", default="pending", show_default=True,
              type=click.Choice(["pending", "approved", "rejected", "applied", "expired", "blocked", "all"]))
@click.option("--view", help="Only this view.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json", "csv"]))
@click.option("--out", type=click.Path(dir_okay=False), help="Write to this file instead of stdout (0600; a missing "
              "folder is created 0700).")
@click.pass_context
@guarded
def review_list(ctx, status, view, fmt, out):
    """Review items, most confident first: id, confidence, rule, child -> proposed parent, why.

    On a terminal every format shows control characters escaped; a pipe or --out FILE gets the data as it is
    (the CSV's cells that start like a formula neutralised for a spreadsheet)."""
    if out:
        private_dir(Path(out).parent)  # a folder that cannot be made fails before the ledger is opened
    with _engine(ctx) as engine:
        items = engine.review_list(None if status == "all" else status, view)
    text = {"json": lambda: json.dumps(items, indent=2, sort_keys=True) + "\n", "csv": lambda: _review_csv(items),
            "table": lambda: _review_table(items, status)}[fmt]()
    if out:
        with atomic_file(Path(out), "w", newline="", encoding="utf-8") as fh:  # 0600: customer names, whatever the umask
            fh.write(log_mod.redact_text(text))  # for people: redacted as stdout is
        click.echo(f"{len(items)} review item(s) written to {out}")
    else:
        _print_data(text)


def _print_data(text: str) -> None:
    """A document (CSV, JSON, a table) on stdout, printed as is: escaped on a terminal (`for_stream`: an ESC or OSC
    sequence in a value must not act), byte for byte in a pipe (color=True: click would strip what looks like a
    colour code from a value there)."""
    click.echo(for_stream(text), nl=False, color=True)


def _review_csv(items: list[dict]) -> str:
    """The review items as a CSV for a spreadsheet: every cell as stored (the same rule for every column), a cell
    that starts like a formula neutralised."""
    import csv as csv_mod
    import io
    # member_ids/member_names: the accounts a placeholder parent would hold (its item has no child), in one order
    cols = ["id", "status", "confidence", "rule", "view", "child_id", "child_name", "parent_id", "parent_name", "reason",
            "note", "notes", "decided_by", "decided_at", "member_ids", "member_names"]
    buf = io.StringIO(newline="")
    w = csv_mod.writer(buf)
    w.writerow(cols)
    for i in items:
        members = i.get("members") or []
        names = i.get("member_names") or [None] * len(members)
        listed = {"member_ids": " | ".join(members), "member_names": " | ".join(n or "" for n in names)}
        w.writerow(csv_row([(i["parent_id"] or i["parent_ref"]) if c == "parent_id" else
                            " | ".join(_note_texts(i)) if c == "notes" else
                            (listed[c] or None) if c in listed else i.get(c) for c in cols]))
    return buf.getvalue()


def _review_table(items: list[dict], status: str) -> str:
    """The review items for reading: one line each, then its notes; values escaped and cut to their columns."""
    if not items:
        return f"no {'' if status == 'all' else status + ' '}review items\n"
    lines = []
    for i in items:
        child = f"{terminal(i['child_id'])} {_short(i['child_name'])}" if i["child_id"] else _members_text(i)
        parent = f"{terminal(i['parent_id'])} {_short(i['parent_name'])}" if i["parent_id"] else \
            f"NEW {_short(i['parent_name'])}"
        lines.append(f"#{i['id']:<5} {i['status']:<8} {i['confidence']:.2f}  {i['rule']:<22} {child}  ->  {parent}"
                     + (f"   [{_short(_reason(i), 200)}]" if i["reason"] else ""))
        lines.extend(f"       {n}" for n in _notes(i))  # every note, oldest first: the item's audit trail
    return "\n".join(lines) + "\n"


def _members_text(item: dict) -> str:
    """A placeholder item's accounts for the table: how many, the first three Ids, and how many more there are."""
    members = item["members"] or []
    more = f", and {len(members) - 3} more" if len(members) > 3 else ""
    return f"{len(members)} accounts ({', '.join(_short(m, 18) for m in members[:3])}{more})"


def _reason(item: dict) -> str:
    """Why an item is in review, in words; a tie says why its confidence is 0.5 whatever its evidence grade."""
    ev = item.get("evidence") or {}
    if item["reason"] != "tie" or not ev.get("tie"):
        return item["reason"]
    grade = f" (name evidence grade: {ev['grade']})" if ev.get("grade") else ""
    return (f"tie: {ev.get('tie_count', len(ev['tie']))} candidates left after the tie-breakers{grade}; a tie scores "
            "at most 0.5, so a person decides")


def _note_texts(item: dict) -> list[str]:
    """The item's notes as stored, oldest first: when, who or which run, and what (a decision says what was
    decided); data, not yet escaped for a terminal."""
    out = []
    for n in item.get("notes") or ([{"text": item["note"]}] if item.get("note") else []):
        when = (n.get("at") or "")[:16].replace("T", " ")
        who = " ".join(x for x in (n.get("by"), n.get("decision")) if x)
        head = " ".join(x for x in (when, who) if x)
        text = n.get("text")
        out.append(head + (": " if head and text else "") + (text or ""))
    return out


def _notes(item: dict) -> list[str]:
    """The item's notes as table lines: escaped and cut to 400 characters."""
    return ["note " + _short(n, 400) for n in _note_texts(item)]


def _short(text, width: int = 30) -> str:
    """One line of at most `width` characters, control characters shown escaped (terminal output stays text)."""
    text = terminal("" if text is None else str(text).replace("\n", " "))
    return text if len(text) <= width else text[: width - 1] + "…"


def _decision(approve: bool, outcome: str, doc: str):
    """review approve / review reject: the same command but for the decision."""
    @click.argument("ids", nargs=-1, type=int, required=True)
    @click.option("--note", help="Why (kept in the ledger).")
    @click.option("--by", "by", envvar="USER", help="Who decides (default: $USER; where it is not set, as under "
                  "cron or in Docker, the OS account running the command).")
    @click.pass_context
    @guarded
    def command(ctx, ids, note, by):
        with _engine(ctx) as engine:
            done = engine.review_decide(list(ids), approve=approve, note=note, by=by)
        for i in done:
            click.echo(f"#{i['id']} {outcome}")
        if not (by and by.strip()) and done:
            click.echo(f"note: $USER is not set: recorded as decided by {done[0]['decided_by']!r}, the OS account "
                       "running this command; pass --by NAME to record who decided", err=True)
    command.__doc__ = doc
    return command


review.command("approve")(_decision(True, "approved: applied on the next run",
                                    "Approve review items by id: the links are applied on the next run."))
review.command("reject")(_decision(False, "rejected: never proposed again",
                                   "Reject review items by id: the pairs are never proposed again."))


@main.group()
def runs():
    """The run ledger."""


@runs.command("list")
@click.option("--limit", default=20, show_default=True)
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json"]))
@click.pass_context
@guarded
def runs_list(ctx, limit, fmt):
    """Recent runs, newest first: id, job, mode, status, as-of date, change counts."""
    from .ledger import Ledger
    settings = _settings(ctx)
    ledger = Ledger(settings.state)
    rows = ledger.runs(limit)
    if fmt == "json":
        _print_data(report_mod.dumps([{k: (ledger.run_counts(r) if k == "counts" else v) for k, v in r.items()
                                       if k in ("id", "job", "mode", "status", "as_of", "started", "ended", "counts",
                                                "error")} for r in rows]) + "\n")
        return
    if not rows:
        click.echo(f"no runs recorded yet in {settings.state}; `nrr-engine plan` or `nrr-engine run` records one")
        return
    click.echo(f"{'RUN':<24}  {'JOB':<11} {'MODE':<8} {'STATUS':<14} {'AS OF':<10}  CHANGES")
    errors = ledger.error_findings([r["id"] for r in rows])
    for r in rows:
        counts = ledger.run_counts(r) or {}  # a killed run's from its changes in the ledger, as `runs show` has them
        shown = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "stages") or "-"
        if r["mode"] == "rollback" and "fields_restored" in counts:
            target = (json.loads(r["summary"]) if r["summary"] else {}).get("rolled_back")
            shown = f"of {target}: {_rollback_text(counts)}"
        if r["status"] != "succeeded" and r.get("error") and shown == "-":   # why it stopped (`runs show` in full)
            text = re.sub(r"(?:[^\s:]*/)+([^/\s:]+:\d+)", r"\1", " ".join(log_mod.redact_text(r["error"]).split()))
            shown = "error: " + _short(text, 90)   # (a file:line by its name: the folder is in `runs show`)
        if errors.get(r["id"]):   # a run can succeed and still have left data out (`runs show` lists them)
            n = errors[r["id"]]
            shown += f"; {n} data-quality error{'s' if n > 1 else ''}"
        click.echo(f"{r['id']:<24}  {_short(r['job'], 11):<11} {r['mode']:<8} {r['status']:<14} {r['as_of'] or '':<10}  "
                   f"{shown}")


@runs.command("show")
@click.argument("run_id")
@click.option("--changes", "show_changes", default=20, show_default=True, help="How many changes to list.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json"]),
              help="table: for reading; json: every recorded field, for scripts.")
@click.pass_context
@guarded
def runs_show(ctx, run_id, show_changes, fmt):
    """One run: summary, change counts by status, data-quality findings, the first changes."""
    from .engine import find_run
    from .ledger import Ledger
    settings = _settings(ctx)
    ledger = Ledger(settings.state)
    r = find_run(ledger, run_id)
    out = {k: (json.loads(v) if k in ("counts", "summary", "api_usage") and v else v) for k, v in r.items()}
    out["change_status"] = ledger.change_counts(r["id"])
    out["findings"] = [{k: f.get(k) for k in ("kind", "severity", "outcome", "message", "record_count")}
                       for f in ledger.findings(r["id"])]
    out["changes"] = [{k: c[k] for k in ("object", "record_id", "external_id", "field", "old", "new", "status", "error",
                                         "rule")}
                      for _, c in zip(range(show_changes), ledger.changes(r["id"]))]
    if fmt == "json":
        _print_data(report_mod.dumps(out) + "\n")
        return
    click.echo(f"run {out['id']}: {out['status']} ({out['mode']}, job {out['job']}, as of {out['as_of']})")
    click.echo(f"  started {out['started']}" + (f", ended {out['ended']}" if out.get("ended") else ""))
    click.echo(f"  config hash {out.get('config_hash') or '-'}, rules hash {out.get('rules_hash') or '-'}")
    if out.get("error"):
        click.echo(f"  error: {_short(out['error'], 2000)}")
    status = out["change_status"]
    click.echo("  changes by status: " + (", ".join(f"{k} {v}" for k, v in sorted(status.items())) or "none"))
    summary = out.get("summary")
    counts = out.get("counts") or {}
    if out["mode"] == "rollback" and isinstance(summary, dict) and "fields_restored" in counts:
        click.echo(f"  rollback of {summary.get('rolled_back')}: {_rollback_text(counts)}")
    click.echo(f"  API calls: {_api_text(out.get('api_usage'), local=settings.salesforce is None)}")
    if isinstance(summary, dict) and summary.get("nrr") is not None:
        for view, windows in summary["nrr"].items():
            for w, fig in windows.items():
                f, n = fig["family"], fig["naive"]
                # the ledger keeps the ratios to 6 places: shown as kept, never rounded a second time
                click.echo(f"  {view} {fig['period']} {'last month' if w == '1' else 'trailing 12 months'}: "
                           f"NRR {_pct_kept(f['nrr'])} GRR {_pct_kept(f['grr'])} (naive account level: NRR "
                           f"{_pct_kept(n['nrr'])} GRR {_pct_kept(n['grr'])})")
    for fnd in out["findings"]:
        label = "not evaluated" if fnd.get("outcome") == "not_evaluated" else fnd.get("severity") or "warning"
        click.echo(f"  data quality {label} [{fnd['kind']}]: {_short(fnd['message'], 400)}"
                   + (f" ({fnd['record_count']} record(s))" if fnd.get("record_count") else ""))
    total = sum(status.values())
    if out["changes"]:
        click.echo(f"  first {len(out['changes'])} of {total} change(s):")
        # wide enough for a whole rule name, so `rollback:<run id>` names the run it undid
        rw = min(max([24, *(len(c["rule"] or "") for c in out["changes"])]), 60)
        click.echo(f"    {'OBJECT':<16} {'RECORD':<18} {'FIELD':<20} {'STATUS':<11} {'RULE':<{rw}} OLD -> NEW")
        for c in out["changes"]:
            record = c["record_id"] or c["external_id"] or ""
            click.echo(f"    {_short(c['object'], 16):<16} {_short(record, 18):<18} {_short(c['field'], 20):<20} "
                       f"{c['status']:<11} {_short(c['rule'] or '', rw):<{rw}} {_value_shown(c, 'old')} -> "
                       f"{_value_shown(c, 'new')}" + (f"  [{_short(c['error'], 120)}]" if c["error"] else ""))
        if total > len(out["changes"]):
            click.echo(f"  ... {total - len(out['changes'])} more: --changes N lists more, --format json for scripts")


@main.command()
@click.argument("run_id")
@click.option("--dry-run", is_flag=True, help="Show what the rollback would restore, delete, re-create and leave "
              "alone (edited since) and the review items it would reopen; write nothing, record no run.")
@click.option("--hold", is_flag=True, help="Keep the parent links it undoes out of the org: later runs send them "
              "to review instead of applying them again (rule-made links too) until a person approves each.")
@click.pass_context
@guarded
def rollback(ctx, run_id, dry_run, hold):
    """Restore the old values of RUN_ID's changes; values edited since are reported and left alone.

    Links a person approved come back to review. Links rules made come back with the next run while the
    rules still propose them, unless --hold keeps them out until a person approves them."""
    with _engine(ctx) as engine:
        result = engine.rollback(run_id, dry_run=dry_run, hold=hold)
    from .engine import rollback_counts
    m = result.get("membership") or {}
    if dry_run:
        click.echo(f"dry run, nothing written: rolling back {result['rolled_back']} would make "
                   f"{_rollback_text(rollback_counts(result))}; {_membership_text(m, dry_run)}")
        if result.get("unsettled"):
            click.echo(f"  warning: {result['unsettled']}")
    else:
        click.echo(f"rolled back {result['rolled_back']} as run {result['run_id']}: "
                   f"{_rollback_text(rollback_counts(result))}; {_membership_text(m, dry_run)}")
    for line in _rollback_review_text(result.get("review") or {}, hold, dry_run):
        click.echo(f"  {line}")
    click.echo(f"  API calls: {_api_text(result.get('api_calls'))}")
    for c in result["conflicts"]:
        click.echo(f"  left alone (edited since): {c['object']} {c['id']} {c['field']}: expected {c['expected']!r}, "
                   f"found {c['found']!r}")
    if result["conflict_count"] > len(result["conflicts"]):
        click.echo(f"  ... and {result['conflict_count'] - len(result['conflicts'])} more left alone")


def _membership_text(m: dict, dry_run: bool) -> str:
    """What a rollback does to the families the ledger recorded (which `report nrr` uses for past months)."""
    restored, later = m.get("restored", 0), m.get("replaced_since", 0)
    if restored:
        text = f"family membership of {restored} account(s) {'would be ' if dry_run else ''}restored"
    else:
        text = ("family membership unchanged: the run recorded no family of its own (the families it saw were "
                "recorded already)")
    if later:
        text += f"; {later} account(s) left as a later run recorded their families"
    return text


def _rollback_review_text(rv: dict, hold: bool, dry_run: bool) -> list[str]:
    """What a rollback does (or would do) to the review queue, and whether the next run undoes it."""
    would = "would be" if dry_run else "are"
    out = []
    if rv.get("reopened"):
        out.append(f"review: {rv['reopened']} approved link(s) it undoes {would} pending again (`nrr-engine review "
                   "list`): a person decides again")
    if hold and rv.get("held"):
        out.append(f"held: {rv['held']} link(s) {would} kept out of the org: later runs send them to review "
                   "instead of applying them, until a person approves each")
    elif rv.get("rule_links"):
        out.append(f"note: {rv['rule_links']} of the links it undoes were made by rules: the next run applies them "
                   "again while the rules still propose them (change the rules or the data, or roll back with --hold "
                   "to keep them out until a person approves each)")
    return out


@main.group()
def history():
    """ARR history."""


@history.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
@guarded
def history_import(ctx, file):
    """Import monthly ARR history from a CSV: account_id,month,arr[,currency]."""
    with _engine(ctx) as engine:
        result = engine.import_history(Path(file))
    click.echo(f"imported {result['rows']} row(s) for {result['accounts']} account(s), months {result['months']}")


@main.command()
@click.option("--out", default="export", show_default=True, type=click.Path(file_okay=False))
@click.option("--run", "run_id", help="Change set of this run (default: the latest run that changed the org, a run "
              "or a rollback).")
@click.option("--since", "since", metavar="RUN_ID", help="Change sets of every run after RUN_ID that changed the org "
              "(runs and rollbacks), oldest first: the order to load them in.")
@click.pass_context
@guarded
def export(ctx, out, run_id, since):
    """Write the local org as Data Loader CSVs (full/) and a run's change set (changes/RUN_ID/)."""
    with _engine(ctx) as engine:
        result = engine.export(Path(out), run_id, since)
    click.echo(f"{len(result['full'])} full object file(s) in {out}/full (the working copy, with its own Ids for the "
               "records the engine created)")
    sets = result["sets"]
    if result["chosen"] == "since":
        click.echo(f"{len(sets)} change set(s) of the runs after {result['since']} that changed the org, oldest "
                   "first: load them in this order" if sets else
                   f"no run after {result['since']} changed the org: no change set written")
    elif not sets:
        click.echo("no run has changed the org yet: no change set written")
    for cs in sets:
        why = " (the latest that changed the org; --run to pick another, --since RUN_ID for every one after a run)" \
            if result["chosen"] == "latest" else ""
        click.echo(f"change set of {'rollback' if cs['mode'] == 'rollback' else 'run'} {cs['run']}{why}: "
                   f"{len(cs['changes'])} change file(s) in {out}/changes/{cs['run']}")
        if cs["steps"]:
            click.echo("  the run wrote them to Salesforce itself; they record what it wrote:" if result["remote"] else
                       "  load them into the org the CSVs came from with Data Loader, in this order:")
            for n, step in enumerate(cs["steps"], start=1):
                click.echo(f"  {n}. {step}")
        for note in cs["notes"]:
            click.echo(f"  note: {note}")
        click.echo(f"  (the same steps are in {cs['load_order']})")
    for rid in result["unsettled"]:
        click.echo(f"  note: run {rid} stopped part-way and is not settled yet: its changes are in no change set "
                   "until the next run (or a rollback) settles them against the org; export again then")
    for name, why in result.get("skipped", []):
        click.echo(f"  skipped {name}: {why}")


@main.command()
@click.pass_context
@guarded
def schedule(ctx):
    """Run the jobs under `schedule:` on their cron triggers until SIGTERM/SIGINT."""
    from .scheduler import Daemon
    Daemon(_settings(ctx)).serve()
