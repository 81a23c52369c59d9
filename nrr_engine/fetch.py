"""The fetch stage: every read a run makes, done once, before anything is computed.

Org records (accounts, and ARR from subscriptions, an Account field or stored history), the stored ARR history
and family membership, the review decisions, and the org's KPI snapshots of the month: all read here into a
`State`, so the stages after it compute from data and none of them reads the ledger or the org.
"""
from __future__ import annotations

import bisect
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import structlog

from . import money, months
from . import orgcheck
from .needs import RECORD_CURRENCY, field_needs
from . import store
from . import rules as rules_mod
from .config import Settings
from .errors import ConfigError, ConfigErrors, DataError, Location
from .hierarchy.membership import Membership
from .hierarchy.repair import Decisions
from .ledger import Ledger
from .metrics import arr as arr_mod
from .metrics import gates, snapshot
from .metrics.monthly import MonthlyArr
from .model import INSERT, Accounts, Change, CheckOutcome, Finding, Nones
from .sources import LocalOrg
from .state import State

_log = structlog.get_logger("nrr_engine")


def _warn_loose_permissions(paths) -> None:
    """A log warning for each config or rule file (or its folder) another local user could write (validate says
    the same): the run goes on, but the file should be `chmod go-w`."""
    import structlog
    from .safe_output import loose_permissions
    for path, who in loose_permissions(paths):
        structlog.get_logger("nrr_engine").warning("project_file.writable", file=str(path), writable_by=who,
                                                   fix=f"chmod go-w {path}")


def open_org(settings: Settings) -> LocalOrg:
    if settings.salesforce is not None:
        from .sources.salesforce import SalesforceOrg  # only a Salesforce source loads the client
        return SalesforceOrg(settings.salesforce, settings.working_copy, settings.config_file,
                             currency=settings.currency)
    return LocalOrg(settings.org_path, settings.working_copy)


def require_columns(org: LocalOrg, obj: str, fields: list[str], what: str) -> None:
    if not org.has_table(obj):
        if org.remote:
            from .sources.grants import no_object_fix
            raise ConfigError(f"{what}: {no_object_fix(obj, [f for f in fields if f])}", Location(org.where(obj)))
        raise DataError(f"no {obj}.csv in the org folder; expected a Data Loader export of {obj}",
                        Location(org.where(obj)))
    for f in fields:
        if f and not org.has_field(obj, f):
            where = f"a field of {obj} in Salesforce" if org.remote else f"a column of {obj}.csv"
            raise ConfigError(f"{what}: field {f} is not {where} (fields: {', '.join(org.columns(obj)[:12])})",
                              Location(org.where(obj), None if org.remote else 1, field=f))


def _rule_fields(settings: Settings, org: LocalOrg, ruleset, findings: list[Finding]) -> tuple[list, list[str]]:
    """The rules whose fields the org has, and the Account fields they (and the guards) read.

    A missing field stops the run with the rule's file:line, unless the rule says when_fields_missing: skip
    (then it is reported as not evaluated, never as "nothing found")."""
    usable, fields = [], []
    for rule in ruleset.match:
        rule = rule.for_org(lambda f: org.has_field("Account", f))
        wanted = rule.fields()
        missing = [f for f in wanted if not org.has_field("Account", f)]
        if missing and rule.skip_when_missing:
            findings.append(Finding("rule_not_evaluated", f"rule {rule.name} ({rule.location.file}:{rule.location.line}) "
                                    f"not evaluated: Account has no field {', '.join(missing)}", (),
                                    CheckOutcome.NOT_EVALUATED))
            continue
        if missing:
            raise ConfigError(f"field {missing[0]} is not a column of Account (the org's columns include: "
                              f"{', '.join(org.columns('Account')[:15])}); fix the rule or set when_fields_missing: skip",
                              rule.location)
        usable.append(rule)
        fields.extend(wanted)
        if any(t.kind == "oldest" for t in rule.tie_break) and org.has_field("Account", "CreatedDate"):
            fields.append("CreatedDate")
    h = settings.hierarchy
    if h.locked_field:
        if org.has_field("Account", h.locked_field):
            fields.append(h.locked_field)
        elif h.locked_field_required:
            raise ConfigError(f"hierarchy.locked_field: {h.locked_field} is not a column of Account",
                              Location(str(settings.config_file), field=h.locked_field))
    if h.duplicates:
        fields.extend(f for f in ("Name", "Website", "BillingCountry") if org.has_field("Account", f))
    if h.missing_parents == "placeholder" and org.has_field("Account", h.placeholder_key_field):
        fields.append(h.placeholder_key_field)
    return usable, fields


def account_fields(settings: Settings, extra_fields: tuple[str, ...] = ()) -> list[str]:
    """The Account columns a run or report reads, Id first."""
    return ["Id", *dict.fromkeys([*settings.account_fields_read(), *extra_fields])]


def fetch_accounts(settings: Settings, org: LocalOrg, extra_fields: tuple[str, ...] = (),
                   stored: list[list] | None = None) -> Accounts:
    """The accounts, read from the working copy, or `stored`: the same columns as the last run's store holds
    them when the working copy is provably what it left (store.Columns.accounts)."""
    require_columns(org, "Account", [v.parent_field for v in settings.lookup_views], "views.parent_field")
    require_columns(org, "Account", [v.by for v in settings.views if v.by], "views.by")
    if settings.arr.source == "account_field":
        require_columns(org, "Account", [settings.arr.account_field], "arr.account_field")
    fields = account_fields(settings, extra_fields)
    cols = stored if stored is not None else org.read_columns("Account", fields)
    # a column without a value (a first run's rollup fields) is held as what it is: n Nones
    return Accounts(ids=cols[0], fields={f: Nones(len(c)) if c.count(None) == len(c) else c
                                         for f, c in zip(fields[1:], cols[1:])})


def _placeholder_parents(settings: Settings, org: LocalOrg, approved: list[dict],
                         accounts: Accounts) -> tuple[dict[int, int], list[Change]]:
    """Approved placeholder parents: {review id: account index}, creating (in the plan) those not in the org yet.

    A placeholder is found again by its family key in `placeholder_key_field`, so it is created once."""
    items = [it for it in approved if it["parent_ref"].startswith("placeholder:")]
    if not items:
        return {}, []
    key_field = settings.hierarchy.placeholder_key_field
    by_key = {str(k): i for i, k in enumerate(accounts.column(key_field)) if k} if accounts.has(key_field) else {}
    missing = list(dict.fromkeys(it["parent_ref"] for it in items if it["parent_ref"] not in by_key))
    inserts = []
    for rid, ref in zip(org.free_ids("Account", "001", len(missing)), missing):
        item = next(it for it in items if it["parent_ref"] == ref)
        record = {"Name": item["placeholder_name"], key_field: ref}
        by_key[ref] = accounts.append(rid, record)
        inserts.append(Change("Account", rid, INSERT, None, json.dumps(record, sort_keys=True),
                              f"placeholder:{item['rule']}", confidence=item["confidence"],
                              evidence={"review_id": item["id"], "members": item["members"]}))
    return {it["id"]: by_key[it["parent_ref"]] for it in items}, inserts


def _returning(items: list[dict], accounts: Accounts, parent_field: str) -> tuple[list[dict], list, list]:
    """A person's decision outlives an input that lost its accounts: (approved items whose child and parent
    are back, to apply again; applied items whose child or parent is not in this input, with a note; items
    that came back with another parent in the org, left as the org says, with why)."""
    back, away, blocked = [], [], []
    index, parents = accounts.index, accounts.column(parent_field)
    for it in items:
        if it["parent_ref"].startswith("placeholder:") or not it["child_id"]:
            continue
        c, p = index.get(it["child_id"]), index.get(it["parent_id"] or "")
        if it["status"] == "applied" and not it.get("away_run") and (c is None or p is None):
            missing = " and the ".join(w for w, i in (("child", c), ("parent", p)) if i is None)
            away.append((it["id"], f"the {missing} of this approved link {'are' if c is None and p is None else 'is'} "
                         "not in the input (an export without them, or one accepted with --allow-shrink): the "
                         "approval stands, and the link is applied again when both are back"))
        elif it.get("away_run") and it["status"] in ("applied", "blocked") and c is not None and p is not None:
            now = parents[c] or None
            if now is None or now == it["parent_id"]:
                back.append(it)
            else:
                blocked.append((it["id"], f"the child is back with another parent ({parent_field} {now}) in the org; "
                                "the approved link is not applied over it: approve the item again to apply it"))
    return back, away, blocked


def csv_lines(org: LocalOrg, obj: str) -> arr_mod.Locate | None:
    """For a local org: record Ids -> the line of their record in <obj>.csv (a re-read of the file, made only
    for the few records a finding names). None for Salesforce, whose records are named by Id."""
    if org.remote:
        return None
    path = Path(org.where(obj))

    def locate(ids) -> dict[str, int]:
        wanted, found = set(ids), {}
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh)
                col = [h.strip().lower() for h in next(reader, [])].index("id")
                line = reader.line_num
                for row in reader:
                    if col < len(row) and row[col].strip() in wanted:
                        found[row[col].strip()] = line + 1  # the record's first line (a cell may span lines)
                        if len(found) == len(wanted):
                            break
                    line = reader.line_num
        except (OSError, UnicodeDecodeError, ValueError, csv.Error):
            pass  # the file changed under us: the records are still named by Id
        return found
    return locate


def arr_matrix(settings: Settings, org: LocalOrg, accounts: Accounts, stored: MonthlyArr | None, first: int,
               count: int, cur: int,
               first_active: np.ndarray | None = None) -> tuple[MonthlyArr, list[Finding], arr_mod.Excluded]:
    a = settings.arr
    if a.source == "subscriptions":
        s = a.subscriptions
        require_columns(org, s.object, [s.account, s.start, s.end, s.amount, s.currency], "arr.subscriptions")
        if not s.currency:   # not configured: the record currency column of a multi-currency org, where there is one
            s = dataclasses.replace(s, currency=RECORD_CURRENCY)
        args = (accounts.index, s, settings.currency, first, count, org.where(s.object), csv_lines(org, s.object))
        batches = org.csv_batches(s.object, {"Id": "Id", "account": s.account, "start": s.start, "end": s.end,
                                             "amount": s.amount, "currency": s.currency}, accounts.index)
        if batches is not None:   # the CSV the working copy holds, read in C
            cohorts = None if first_active is None else first_active.copy()
            try:
                out = arr_mod.from_subscriptions((), *args, cohorts, batches=batches)
                if first_active is not None:
                    first_active[:] = cohorts
                return out
            except (arr_mod.NotFast, *org.columnar_errors) as exc:
                _log.info("arr.rows", object=s.object, why=type(exc).__name__)
        rows = org.read(s.object, ["Id", s.account, s.start, s.end, s.amount, s.currency])
        return arr_mod.from_subscriptions(rows, *args, first_active)
    matrix = stored
    fs: list[Finding] = []
    excluded = arr_mod.Excluded()
    if a.source == "account_field":
        column, fs, excluded = arr_mod.from_account_field(accounts.column(a.account_field), accounts.ids,
                                                          a.account_field, org.where("Account"), cur,
                                                          csv_lines(org, "Account"))
        matrix = stored.with_column(cur - first, column)
    return matrix, fs, excluded


def report_first(settings: Settings, current_month: int, period: int, window: int) -> int | None:
    """The first month a report of window period-window -> period needs when it lies before the months a run
    keeps (None: the usual ones). Subscriptions rebuild any month: the matrix then starts where a run made the
    month after `period` would start it, so the figures are the ones that run reports. Stored history (an
    Account field, imports) exists only for the months kept: the error names the setting to raise."""
    m0 = period - window
    usual = current_month - settings.arr.history_months + 1
    if m0 >= usual:
        return None
    if settings.arr.source != "subscriptions":
        need = current_month - m0 + 1
        raise DataError(f"--period {months.fmt(period)} --window {window} needs ARR from {months.fmt(m0)}, but "
                        f"arr.source {settings.arr.source} keeps arr.history_months ({settings.arr.history_months}) "
                        f"months, from {months.fmt(usual)}: raise arr.history_months to at least {need} "
                        + ("(at most 120) " if need <= 120 else "(it can be at most 120: pick a later period) ")
                        + "and import the older months with `nrr-engine history import FILE`",
                        Location(str(settings.config_file), field="arr.history_months"))
    return min(m0, period - settings.arr.history_months + 2)


def shrink_baseline(ledger: Ledger) -> dict | None:
    """Accounts and ARR of the last run that wrote (succeeded or failed_records; not rolled back), or None."""
    for r in ledger.runs(1000):
        if r["mode"] == "run" and r["status"] in ("succeeded", "failed_records") and r.get("summary"):
            s = json.loads(r["summary"])
            arr, left = s.get("arr"), s.get("arr_left_out")
            return {"run_id": r["id"], "as_of": r["as_of"], "accounts": int(s.get("accounts") or 0),
                    "arr": money.parse_units(arr) if arr is not None else None,
                    "arr_left_out": money.parse_units(left) if left is not None else None}
    return None


def fetch(settings: Settings, org: LocalOrg, ledger: Ledger, ctx, extra_fields: tuple[str, ...] = (),
          repair: bool = True, since: int | None = None, cohorts: bool = False) -> State:
    """Read everything a run (repair=True) or a report (repair=False: no rules, decisions or snapshots) needs.

    `since`: a first month earlier than the history a run keeps (a report of an old period; report_first).
    `cohorts`: also each account's first month with ARR (from the subscriptions, however old; `--by cohort`)."""
    findings: list[Finding] = []
    ruleset, rule_fields = rules_mod.RuleSet(), []
    cur = months.of(ctx.as_of)
    with ctx.stage("fetch"):
        # loaded into the working copy by other processes while this one reads the CSVs with Arrow and matches
        # (a first load is the file as it is: nothing waits for it before the plan is made; else the first read);
        # accounts only when their file is worth a process (a small org's load costs less than the fork)
        objects = orgcheck.run_objects(settings, repair)  # (a report reads no snapshots: on Salesforce, API calls)
        background = ["Account"] if org.worth_loading_aside("Account") else []
        if settings.arr.subscriptions and settings.arr.source == "subscriptions":
            background.append(settings.arr.subscriptions.object)
        if repair:
            ledger.check_history_files()   # (a run can take them from the store, and write them after its writes)
            ruleset = rules_mod.load(settings.rule_files, [v.name for v in settings.lookup_views], settings.roots)
            _warn_loose_permissions([settings.config_file, *settings.rule_files, *ruleset.tables])
            # what validate warns of (a rules glob that matches no file: repair without its rules)
            findings.extend(Finding("config_warning", str(w)) for w in settings.warnings)
        signature = store.csv_signature(org)  # before the sync: a file changed during the run is seen as changed
        token = org.state_token()   # the working copy as the last run left it (or not: deleted, restored since)
        org.prepare(field_needs(settings, ruleset, extra_fields))  # Salesforce: budget and describe checks
        org.sync(objects, background=background)
        findings.extend(org.reload_findings())
        problems = orgcheck.local_problems(settings, ruleset)  # what validate says, at the config's lines
        if problems:  # (a Salesforce org was checked against describe by prepare)
            raise ConfigErrors(problems)
        require_columns(org, "Account", list(extra_fields), "--by")
        if repair:
            usable, rule_fields = _rule_fields(settings, org, ruleset, findings)
            ruleset = rules_mod.RuleSet(tuple(usable), ruleset.files)
        stored = store.read(store.path_for(settings.state)) if repair else None
        fields = account_fields(settings, (*extra_fields, *rule_fields))
        kept = None
        if _working_copy_as_stored(stored, ctx, signature, token):
            kept = stored.accounts(fields)
            if kept is not None:
                _log.info("store.reused", run=stored.meta.get("run_id"), what="accounts")
        elif _reloaded_since_store(stored, ctx, org, token):
            kept = _patched(stored.accounts(fields), org, fields)
            if kept is not None:
                _log.info("store.reused", run=stored.meta.get("run_id"), what="accounts",
                          read_again=len(org.deltas["Account"].touched), removed=len(org.deltas["Account"].removed))
        accounts = fetch_accounts(settings, org, (*extra_fields, *rule_fields), kept)
        kept_all = kept is not None
        del kept

        decisions = Decisions()
        inserts: list[Change] = []
        if repair:
            approved = {v.name: ledger.review_items(status="approved", view=v.name) for v in settings.lookup_views}
            placeholder_parents: dict[int, int] = {}
            if settings.hierarchy.missing_parents == "placeholder":
                # placeholder parents approved in review join the accounts now; they have no ARR history
                placeholder_parents, inserts = _placeholder_parents(
                    settings, org, [it for items in approved.values() for it in items], accounts)
            away, blocked = {}, {}
            for v in settings.lookup_views:
                kept = [*ledger.review_items(status="applied", view=v.name),
                        *ledger.review_items(status="blocked", view=v.name)]
                back, away[v.name], blocked[v.name] = _returning(kept, accounts, v.parent_field)
                approved[v.name] = approved[v.name] + back
            decisions = Decisions(approved, {v.name: ledger.rejected_pairs(v.name) for v in settings.lookup_views},
                                  placeholder_parents, {v.name: ledger.held_pairs(v.name) for v in settings.lookup_views},
                                  away, blocked)

        merged = {loser: survivor for loser, survivor in org.merged().items()
                  if survivor in accounts.index and loser not in accounts.index}
        if merged:
            findings.append(Finding("merged_accounts", f"{len(merged)} merged-away account(s) carry their ARR history "
                                    "to the surviving account (MasterRecordId)", tuple(sorted(merged))))
        reuse = _reusable(stored, ctx, accounts) if not merged else None
        # every input as the store holds it: a run that then changes nothing need not write the store again
        unchanged = (kept_all and reuse is not None and reuse[1] is None and signature == stored.meta.get("csv")
                     and stored.meta.get("config") == store.config_digest(settings.config_file))
        membership = {v.name: ((reuse[0].membership[v.name] if reuse[1] is None else
                                store.remap(reuse[0].membership[v.name], reuse[1], reuse[0].ids))
                               if reuse is not None and v.name in reuse[0].membership else
                               Membership.from_table(v.name, ledger.membership_table(v.name), accounts.ids))
                      for v in settings.views}
        existing = snapshot.ExistingSnapshots()
        obj = settings.snapshot_object
        held = _snapshots_held(settings, stored, ctx, signature, token) if repair else None
        if repair and settings.snapshots_enabled and org.has_field(obj, snapshot.KEY) and held is None:
            existing = snapshot.read_existing(org, obj, cur - 1)
        read_later = held is not None and org.has_field(obj, snapshot.KEY)
        if held is not None:
            _log.info("store.reused", run=stored.meta.get("run_id"), what="the KPI snapshots the org holds")

        def existing_snapshots(existing=existing):
            """The org's records of the month: read now when the store's were not these after all (the
            families changed although no input did: a review decision)."""
            if read_later:
                _log.info("snapshots.read", why="the run's snapshots differ from those the last run left in the org")
                org.finish_sync()   # (the loads beside this process, and the thread adopting their Ids, end first)
                return snapshot.read_existing(org, obj, cur - 1)
            return existing
    # the loads beside this process enter the working copy while matching runs, and the snapshots' new Ids are
    # looked for (a scan of every cell) meanwhile
    org.adopt_aside(() if org.remote or not (repair and settings.snapshots_enabled) else (settings.snapshot_prefix,))

    first = cur - settings.arr.history_months + 1
    return State(accounts=accounts, ruleset=ruleset, first=first if since is None else min(first, since), matrix=None,
                 arr_rows_changed=np.zeros(0, dtype=np.int64), membership=membership,
                 decisions=decisions, inserts=tuple(inserts),
                 existing_snapshots=existing_snapshots, snapshots_held=held, findings=tuple(findings), repair=repair,
                 extra_fields=tuple(extra_fields), merged=merged, cohorts=cohorts, reuse=reuse,
                 csv_signature=signature, stored=stored, account_fields=tuple(fields),
                 carried=store.read_proposals(store.proposals_path(settings.state)) if repair else None,
                 unchanged=bool(unchanged))


def _working_copy_as_stored(cols, ctx, signature, token: str | None) -> bool:
    """Whether the local working copy's accounts are the ones the store holds: written at the ledger state
    before this run (no run, rollback or import since), of this very working copy as it was then (its write
    token: not one deleted and loaded again, or restored from a backup), from an Account.csv with the size and
    modification time it has now (so the sync reloaded nothing)."""
    if cols is None or signature is None or "Account.csv" not in signature:
        return False
    return _of_this_working_copy(cols, ctx, token) and (cols.meta.get("csv") or {}).get("Account.csv") == \
        signature["Account.csv"]


def _of_this_working_copy(cols, ctx, token: str | None) -> bool:
    """Whether a store was written at the ledger state before this run (no run, rollback or import since) from
    this very working copy as it was then (its write token before this run's sync)."""
    return (getattr(ctx, "store_version", None) is not None and cols.meta.get("stamp") == ctx.store_version
            and token is not None and cols.meta.get("working_copy") == token)


def _snapshots_held(settings: Settings, cols, ctx, signature, token: str | None) -> str | None:
    """The digest of the KPI snapshots of last month the local working copy holds, when they are the ones the
    last run left there (its store's, of this month and config, at the ledger state before this run, in this very
    working copy, with no CSV changed since): a run whose snapshots have that digest has nothing to write and
    need not read them. None otherwise (and always for Salesforce: its records can change under us)."""
    if cols is None or signature is None or token is None or not settings.snapshots_enabled:
        return None
    meta, held = cols.meta, cols.meta.get("snapshots") or {}
    if (not _of_this_working_copy(cols, ctx, token) or meta.get("csv") != signature
            or meta.get("month") != ctx.current_month or meta.get("config") != store.config_digest(settings.config_file)
            or held.get("object") != settings.snapshot_object):
        return None
    return held.get("digest")


def _reloaded_since_store(cols, ctx, org, token: str | None) -> bool:
    """Whether this run's sync reloaded Account.csv as a delta (LocalOrg.deltas) from the very load the store
    holds, into the working copy the store was written from, with no run, rollback or import since: the store's
    accounts with the delta's records read again are the working copy's."""
    delta = getattr(org, "deltas", {}).get("Account")
    if cols is None or delta is None:
        return False
    return _of_this_working_copy(cols, ctx, token) and (cols.meta.get("csv") or {}).get("Account.csv") == \
        list(delta.since)


def _patched(cols: list[list] | None, org, fields: list[str]) -> list[list] | None:
    """The store's account columns (Id first, ordered by Id) with the records a delta reload wrote read again
    from the working copy and those it removed dropped."""
    if cols is None:
        return None
    touched, removed = org.deltas["Account"].touched, org.deltas["Account"].removed
    fresh = org.get("Account", touched, fields[1:])
    ids = cols[0]
    n = len(ids)
    added = []
    for rid, values in fresh.items():
        i = bisect.bisect_left(ids, rid)
        if i < n and ids[i] == rid:
            for col, v in zip(cols[1:], values):
                col[i] = v
        else:
            added.append((rid, values))
    gone = {rid for rid in removed if rid not in fresh}
    if not added and not gone:
        return cols
    keep = [i for i, rid in enumerate(ids) if rid not in gone] if gone else range(n)
    rows = sorted([(ids[i], i) for i in keep] + [(rid, -1 - k) for k, (rid, _) in enumerate(added)])
    out = [[rid for rid, _ in rows]]
    for c in range(1, len(cols)):
        col = cols[c]
        out.append([col[i] if i >= 0 else added[-1 - i][1][c - 1] for _, i in rows])
    return out


def _reusable(cols, ctx, accounts: Accounts):
    """The last run's columnar store with the positions of its accounts in this run, when it is current (written
    at the ledger's state before this run began, in this month) and holds the same accounts; else None."""
    version = getattr(ctx, "store_version", None)
    if version is None:
        return None
    if cols is None or cols.meta.get("stamp") != version or cols.meta.get("month") != ctx.current_month \
            or cols.size != len(accounts.ids):
        return None
    if cols.same_ids(accounts.ids):
        return cols, None
    get = accounts.index.get
    pos = np.fromiter((get(a, -1) for a in cols.ids), dtype=np.int64, count=len(cols.ids))
    if (pos < 0).any():
        return None
    return cols, pos


def needs_arr(ruleset) -> bool:
    """Whether a matching rule reads ARR (largest_arr tie-break, $arr condition)."""
    return any(t.kind == "largest_arr" for r in ruleset.match for t in r.tie_break) or any(
        c.field == "$arr" for r in ruleset.match for c in (*r.child, *r.candidate))


def fetch_arr(settings: Settings, org: LocalOrg, ledger: Ledger, ctx, state: State) -> State:
    """Monthly ARR of every account (subscriptions, an Account field or the stored history) and the accounts whose
    stored history differs. Part of fetch; the pipeline runs it after matching when no rule reads ARR, so the
    matching's indexes are freed before the matrices need the memory. Reads only what fetch synced."""
    accounts, merged, cur = state.accounts, state.merged, ctx.current_month
    findings = list(state.findings)
    with ctx.stage("arr"):
        first = state.first
        count = cur - first + 1
        # merged-away accounts (queryAll's MasterRecordId) carry their stored history to the survivor
        index = accounts.index
        if merged:
            index = {**index, **{loser: index[survivor] for loser, survivor in merged.items()}}
        rebuilt = settings.arr.source == "subscriptions"
        stored = None
        reuse = state.reuse
        if reuse is not None and reuse[0].meta.get("first") == first and reuse[0].matrix.shape[1] == count:
            # the last run's matrix is the stored history of these months (it wrote what differed)
            stored = reuse[0].matrix if reuse[1] is None else reuse[0].matrix.placed(reuse[1])
            _log.info("store.reused", run=reuse[0].meta.get("run_id"), what="arr history and membership")
        elif state.repair or not rebuilt:  # a report from subscriptions compares nothing with the stored history
            stored = arr_mod.from_table(ledger.arr_history(), index, first, count, size=len(accounts))
        first_arr = None
        if state.cohorts and rebuilt:  # the subscriptions date every cohort, before the months kept too
            first_arr = np.full(len(accounts), arr_mod.OPEN, dtype=np.int64)
        subs_reused = stored is not None and reuse is not None and first_arr is None and \
            _same_subscriptions(settings, state)
        if subs_reused:
            # the subscriptions, the accounts and the config are the ones the last run derived its ARR from
            # the same runs (a MonthlyArr is never changed in place)
            matrix, excluded = stored, arr_mod.Excluded(*reuse[0].excluded) if reuse[0].excluded else arr_mod.Excluded()
            fs = [Finding(f["kind"], f["message"], tuple(f["records"]), CheckOutcome(f["outcome"]))
                  for f in reuse[0].meta["arr_findings"]]
            _log.info("store.reused", run=reuse[0].meta.get("run_id"), what="arr from subscriptions")
        else:
            patched = _arr_after_delta(settings, org, state, stored, first, count) \
                if stored is not None and reuse is not None and first_arr is None and not merged else None
            if patched is not None:
                matrix, fs, excluded = patched, [], arr_mod.Excluded()
                _log.info("store.reused", run=reuse[0].meta.get("run_id"), what="arr from subscriptions",
                          subscriptions_read_again=len(org.deltas[settings.arr.subscriptions.object].rows))
            else:
                matrix, fs, excluded = arr_matrix(settings, org, accounts, stored, first, count, cur, first_arr)
        findings.extend(fs)
        changed = np.zeros(0, dtype=np.int64)
        if state.repair:
            changed = matrix.differs(stored)
        del stored
        if merged and state.repair:  # stored again under the survivor, so the history outlives the recycle bin
            changed = np.union1d(changed, np.array(sorted({index[s] for s in merged.values()}), dtype=np.int64))
        # a report too: it reads (and reloads) the same input, and must not show figures of a broken export.
        # Merged-away accounts are not lost: their ARR and history live on in the survivor.
        findings.extend(_shrink_guard(settings, ledger, ctx, len(accounts) + len(merged),
                                      matrix.total(cur - first), fs, excluded.arr_at(cur)))
    return dataclasses.replace(state, first=first, matrix=matrix, arr_rows_changed=changed, findings=tuple(findings),
                               excluded=excluded, first_arr=first_arr, arr_findings=tuple(fs), reuse=None,
                               unchanged=state.unchanged and not len(changed) and (not rebuilt or subs_reused))


def _same_subscriptions(settings: Settings, state: State) -> bool:
    """Whether this run's ARR is the last run's: ARR from the subscriptions of a local org whose CSV is the one
    the store was derived from (size and mtime before the sync), under the same config, for the same accounts."""
    if settings.arr.source != "subscriptions" or state.csv_signature is None:
        return False
    meta = state.reuse[0].meta
    name = f"{settings.arr.subscriptions.object}.csv"
    return (meta.get("config") == store.config_digest(settings.config_file) and "arr_findings" in meta
            and (meta.get("csv") or {}).get(name) is not None and meta["csv"].get(name) == state.csv_signature.get(name))


def _arr_after_delta(settings: Settings, org, state: State, stored: MonthlyArr, first: int,
                     count: int) -> MonthlyArr | None:
    """The ARR matrix from subscriptions when this run's sync reloaded the subscription CSV as a delta from the
    load the last run derived its ARR from (a clean one: no finding, nothing left out) for the same accounts: the
    last run's matrix less what the changed and removed subscriptions counted, plus what their new versions count
    (ARR is a sum over subscriptions, in exact units). None where that does not hold or a changed subscription
    needs a finding (unreadable, orphan, another currency): then ARR is derived from every subscription again."""
    a = settings.arr
    if a.source != "subscriptions" or state.reuse is None or state.reuse[1] is not None:
        return None
    s = a.subscriptions
    delta = getattr(org, "deltas", {}).get(s.object)
    meta = state.reuse[0].meta
    if delta is None or meta.get("arr_findings") != [] or state.reuse[0].excluded is not None \
            or meta.get("config") != store.config_digest(settings.config_file) \
            or (meta.get("csv") or {}).get(f"{s.object}.csv") != list(delta.since):
        return None
    lowered = {h.lower(): i for i, h in enumerate(delta.header)}
    if not s.currency:
        s = dataclasses.replace(s, currency=RECORD_CURRENCY)
    cols = [lowered.get(f.lower()) if f else None for f in ("Id", s.account, s.start, s.end, s.amount, s.currency)]
    if any(c is None for c in cols[:5]):
        return None

    def rows(records):   # as the working copy holds them: blank is None, the Id trimmed
        return [tuple((r[c].strip(" ") if k == 0 else r[c]) or None if c is not None else None
                      for k, c in enumerate(cols)) for r in records]

    before, after = rows(delta.before), rows(delta.rows)
    index = state.accounts.index
    touched = sorted({r[1] for r in (*before, *after) if r[1]})
    if any(acc not in index for acc in touched):
        return None   # an orphan subscription (before: the last run would have a finding; after: this one will)
    compact = {acc: k for k, acc in enumerate(touched)}
    out = []
    for part in (before, after):
        try:
            m, fs, excluded = arr_mod.from_subscriptions(part, compact, s, settings.currency, first, count,
                                                         org.where(s.object))
        except DataError:   # another currency: the full derivation says which record
            return None
        if fs or len(excluded):
            return None
        out.append(m)
    if not touched:
        return stored
    pos = np.array([index[acc] for acc in touched], dtype=np.int64)
    return stored.replace_rows(pos, stored.dense(pos) + out[1].dense() - out[0].dense())



def _shrink_guard(settings: Settings, ledger: Ledger, ctx, accounts: int, arr: int,
                  arr_findings: list[Finding], left_out: int = 0) -> list[Finding]:
    """Stop the run or report (exit 2, before anything is written) when its input lost more than guards.max_shrink
    of the accounts or the ARR since the last run, or is unusable on any run, a first one too (no accounts, or
    more than guards.max_shrink of its ARR on subscriptions whose account is missing); with --allow-shrink the
    loss is a finding and the run goes on."""
    before = shrink_baseline(ledger)
    limit = f"more than guards.max_shrink ({_pct(settings.max_shrink)}) allows"
    shrank = gates.shrink(before, accounts, arr, settings.max_shrink)
    bad = gates.unusable(accounts, arr, left_out, months.fmt(ctx.current_month), settings.max_shrink, before)
    problems = ([f"{shrank}: {limit}"] if shrank else []) + (
        [f"{bad}: " + ("an empty input stops every run unless --allow-shrink accepts it" if accounts == 0 else limit)]
        if bad else [])
    if not problems:
        # below the stop, a loss a quarter of that size is still worth a look (a truncated export)
        notice = gates.shrink(before, accounts, arr, settings.max_shrink / 4)
        return [Finding("input_smaller", f"{notice} since run {before['run_id']}: less than guards.max_shrink "
                        f"({_pct(settings.max_shrink)}) stops, but check that the export is complete (a truncated "
                        "or filtered CSV, a report with a filter)")] if notice else []
    problem = "; ".join(problems)
    if ctx.allow_shrink:
        return [Finding("input_shrank", f"{problem}; accepted with --allow-shrink: {_ACCEPTED}")]
    left = "".join(f"\n  {f.message}" for f in arr_findings if f.kind in _LEFT_OUT)
    raise DataError(f"{problem}. Nothing was written: the working copy, the ledger's ARR history and the org are as "
                    "they were. Check the export (a header-only or truncated CSV, a filtered report or query, "
                    "subscriptions exported without their accounts, unreadable values); if the loss is real, accept "
                    "it with `nrr-engine run --allow-shrink` (plan takes it too; `report nrr` then reads the input as "
                    f"it is){', or raise guards.max_shrink' if shrank or accounts else ''}. Accepting it: {_ACCEPTED}"
                    + (f". Records this run left out of ARR:{left}" if left else ""),
                    Location(str(settings.config_file), field="guards.max_shrink"))


# what --allow-shrink costs, said where it is offered and where it is taken
_ACCEPTED = ("this run is the new baseline, and the local working copy forgets what the engine wrote to the records "
             "that left (repaired links, rollups); if they come back, links approved in review are applied again "
             "and rule-made links when the rules propose them again")


_LEFT_OUT = ("arr_not_a_number", "negative_arr", "bad_date", "orphan_subscription", "ends_before_start")


def _pct(share: float) -> str:
    return f"{share * 100:g} %"
