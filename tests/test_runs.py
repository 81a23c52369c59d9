"""Runs are safe: plan/run/rollback through the ledger, idempotent reruns, recovery after a crash."""
from __future__ import annotations

import datetime as dt
import json
import sqlite3

import pytest

from nrr_engine import config as config_mod
from nrr_engine.engine import Engine
from nrr_engine.errors import Interrupted, SourceUnavailable
from nrr_engine import pipeline
from nrr_engine.sinks.local import write_changes

AS_OF = dt.date(2026, 11, 15)
CLOCK = lambda: dt.datetime(2026, 11, 15, 2, 0, tzinfo=dt.timezone.utc)  # noqa: E731


@pytest.fixture
def family(org):
    """Disney with Hulu and Fox (linked) and an unlinked Acme, 20 months of subscriptions."""
    d = org.account("001DIS", "The Walt Disney Company")
    org.sub(d, "2025-03-01", "", "500000")
    org.sub(org.account("001HUL", "Hulu, LLC", d), "2025-03-01", "2026-09-30", "100000")
    org.sub(org.account("001FOX", "Fox Entertainment", d), "2026-10-01", "", "100000")
    org.sub(org.account("001ACM", "Acme"), "2025-05-01", "", "42000.50")
    return org.write()


def state_of(org) -> dict:
    """Everything a run leaves in the org: account rollups and snapshot records."""
    db = sqlite3.connect(org.root / "state" / "local-org.db")
    accounts = db.execute("SELECT Id, Ultimate_Parent__c, Hierarchy_Depth__c, Hierarchy_ARR__c, Child_Count__c "
                          "FROM Account ORDER BY Id").fetchall()
    snaps = db.execute("SELECT External_Id__c, Starting_ARR__c, Ending_ARR__c, NRR__c FROM KPI_Snapshot__c "
                       "ORDER BY External_Id__c").fetchall()
    return {"accounts": accounts, "snapshots": snaps}


def engine(org) -> Engine:
    return Engine(config_mod.load(org.config), clock=CLOCK)


def test_rerun_writes_nothing(family, cli):
    """A second run with no new data plans and writes 0 changes."""
    cli("run", "--as-of", "2026-11-15")
    with engine(family) as e:
        out = e.execute(as_of=AS_OF)
    assert out.summary["changes"] == {"planned": 0}


def test_snapshots_are_upserted_by_external_id(family, cli):
    """One KPI snapshot per (view, family root, month), keyed <view>:<root>:<YYYY-MM>."""
    cli("run", "--as-of", "2026-11-15")
    snaps = dict((k, (s, e, n)) for k, s, e, n in state_of(family)["snapshots"])
    assert snaps["legal:001DIS:2026-10"] == ("600000.00", "600000.00", "1.0000")
    assert snaps["legal:001ACM:2026-10"] == ("42000.50", "42000.50", "1.0000")
    ids = [r[0] for r in sqlite3.connect(family.root / "state" / "local-org.db").execute("SELECT Id FROM KPI_Snapshot__c")]
    assert all(len(i) == 18 and i.startswith("a0K") for i in ids)


def test_rollback_restores_and_plan_shows_the_same_changes(family, cli, tmp_path):
    """rollback RUN_ID restores every old value; the next plan lists the same changes again."""
    p1 = tmp_path / "p1.json"
    cli("plan", "--out", str(p1), "--as-of", "2026-11-15")
    run_id = cli("run", "--as-of", "2026-11-15").stdout.split()[1]
    out = cli("rollback", run_id).stdout
    assert "restored" in out and "deleted 2 record(s)" in out
    p2 = tmp_path / "p2.json"
    cli("plan", "--out", str(p2), "--as-of", "2026-11-15")
    strip = lambda p: sorted((c["object"], c["id"], c["field"], c["old"], c["new"]) for c in json.loads(p.read_text())["changes"])  # noqa: E731
    assert strip(p1) == strip(p2) and len(strip(p1)) > 10


def test_rollback_leaves_values_edited_since_and_reports_them(family, cli):
    """A rollup edited by someone after the run is reported as a conflict and left as edited."""
    run_id = cli("run", "--as-of", "2026-11-15").stdout.split()[1]
    db = sqlite3.connect(family.root / "state" / "local-org.db")
    db.execute("UPDATE Account SET Hierarchy_ARR__c = '1.00' WHERE Id = '001ACM'")
    db.commit()
    out = cli("rollback", run_id).stdout
    assert "left alone (edited since): Account 001ACM Hierarchy_ARR__c" in out
    assert db.execute("SELECT Hierarchy_ARR__c FROM Account WHERE Id='001ACM'").fetchone()[0] == "1.00"
    assert db.execute("SELECT Ultimate_Parent__c FROM Account WHERE Id='001ACM'").fetchone()[0] is None


def test_runs_list_and_show(family, cli):
    """The ledger lists runs and shows one with its changes, statuses and data-quality findings."""
    family.account("001ORP", "Orphan Ltd", "001GONE")
    family.write()
    run_id = cli("run", "--as-of", "2026-11-15").stdout.split()[1]
    assert run_id in cli("runs", "list").stdout
    shown = cli.json("runs", "show", run_id[:20], "--format", "json")
    assert shown["status"] == "succeeded" and shown["change_status"]["applied"] > 0
    assert shown["changes"][0]["status"] == "applied" and shown["config_hash"]
    assert shown["findings"] == [{"kind": "dangling_parent", "record_count": 1, "severity": "warning", "outcome": "found",
                                  "message": "1 account(s) have a ParentId that matches no account; treated as roots"}]


# fetch, match, arr, hierarchy, rollup, nrr, snapshot, gates, apply, write, ledger, history: 12 stop checks.
STOP_CHECKS = 12


@pytest.mark.parametrize("stop_at", range(STOP_CHECKS))
def test_run_stopped_at_any_stage_then_rerun_equals_one_clean_run(family, tmp_path, stop_at):
    """A stop request before any stage leaves nothing half-written; the next run converges to a clean run."""
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > stop_at

    with engine(family) as e:
        with pytest.raises(Interrupted, match="stop requested"):
            e.execute(as_of=AS_OF, should_stop=should_stop)
        assert e.ledger.runs(1)[0]["status"] == "stopped"
        e.execute(as_of=AS_OF)
        assert e.execute(as_of=AS_OF).summary["changes"] == {"planned": 0}
    assert state_of(family) == _clean_state(family, tmp_path)


def test_stop_checks_cover_every_stage(family):
    """The run checks for a stop request exactly once before each of its stages."""
    calls = []
    with engine(family) as e:
        e.execute(as_of=AS_OF, should_stop=lambda: calls.append(1) and False)
    assert len(calls) == STOP_CHECKS


def _clean_state(org, tmp_path):
    from conftest import Org
    twin = Org(tmp_path / "twin", accounts=[dict(a) for a in org.accounts], subs=[dict(s) for s in org.subs]).write()
    with engine(twin) as e:
        e.execute(as_of=AS_OF)
    return state_of(twin)


def _started_plan(e: Engine, org) -> pipeline.Plan:
    """A run recorded as started and its computed plan: the state a process is in just before it writes."""
    ctx = pipeline.RunContext.new(CLOCK, AS_OF)
    e.ledger.start_run({"id": ctx.run_id, "job": "nightly", "mode": "run", "as_of": "2026-11-15",
                        "started": CLOCK().isoformat()})
    return pipeline.compute(config_mod.load(org.config), e.org, e.ledger, ctx)


def test_crash_in_the_middle_of_writes_is_recovered(family, tmp_path):
    """A process that died after writing part of a run: the next run settles the ledger and converges."""
    with engine(family) as e:
        plan = _started_plan(e, family)
        ctx, total = plan.ctx, plan.change_count()
        e.ledger.record_changes(ctx.run_id, plan.batches(), "pending")
        batch = plan.changes[0]
        half = len(batch) // 2
        e.org.update_fields(batch.object, [batch.field], batch.ids[:half], [batch.new[:half]])
        crashed = ctx.run_id                                 # ... and then the process dies
    with engine(family) as e:
        e.execute(as_of=AS_OF)
        counts = e.ledger.change_counts(crashed)
        assert half > 0 and counts == {"applied": half, "not_applied": total - half}
        assert e.ledger.run(crashed)["status"] == "interrupted"
        assert e.execute(as_of=AS_OF).summary["changes"] == {"planned": 0}
    assert state_of(family) == _clean_state(family, tmp_path)


def test_one_run_at_a_time(family):
    """While one process holds the run lock, another run exits 3 (source unavailable)."""
    with engine(family) as a, engine(family) as b:
        with a.lock():
            with pytest.raises(SourceUnavailable, match="holds the lock"):
                b.execute(as_of=AS_OF)


def test_migrations_are_recorded(family, cli):
    """The state store records each schema migration once."""
    cli("run", "--as-of", "2026-11-15")
    db = sqlite3.connect(family.root / "state" / "nrr.db")
    assert db.execute("SELECT id FROM migrations").fetchall() == [(1,), (2,), (3,), (4,), (5,), (6,), (7,), (8,)]


def test_crash_between_ledger_commit_and_org_commit_is_recovered(family, tmp_path):
    """Ledger says applied but the org transaction never committed: the next run marks them not applied."""
    with engine(family) as e:
        plan = _started_plan(e, family)
        ctx = plan.ctx
        e.ledger.finish_run(ctx.run_id, status="applying")
        e.ledger.record_changes(ctx.run_id, plan.batches(), "applied")   # ... and the org never commits
        total, crashed = plan.change_count(), ctx.run_id
    with engine(family) as e:
        e.execute(as_of=AS_OF)
        assert e.ledger.change_counts(crashed) == {"not_applied": total}
        assert e.ledger.run(crashed)["status"] == "interrupted"
    assert state_of(family) == _clean_state(family, tmp_path)


def test_record_deleted_during_the_run_is_a_record_failure(family):
    """An account deleted by someone while the run computes: its changes fail with the error, exit code 1."""
    calls = []

    def someone_deletes_acme() -> bool:
        calls.append(1)
        if len(calls) == 9:  # at the apply stage's check (the accounts' first load is in the working copy then)
            db = sqlite3.connect(family.root / "state" / "local-org.db")
            db.execute("DELETE FROM Account WHERE Id = '001ACM'")
            db.commit()
            db.close()
        return False

    with engine(family) as e:
        out = e.execute(as_of=AS_OF, should_stop=someone_deletes_acme)
        failed = list(e.ledger.changes(out.run_id, status="failed"))
        assert int(out.exit_code) == 1 and e.ledger.run(out.run_id)["status"] == "failed_records"
    assert {c["record_id"] for c in failed} == {"001ACM"} and out.summary["changes"]["failed"] == len(failed)
    assert all(c["error"].startswith("ENTITY_IS_DELETED") for c in failed)


def test_crash_after_all_writes_before_settling_is_recovered(family, tmp_path):
    """Every write (rollups and snapshot upserts) reached the org, then the process died: all settle as applied."""
    with engine(family) as e:
        plan = _started_plan(e, family)
        e.ledger.record_changes(plan.ctx.run_id, plan.batches(), "pending")
        with e.org.transaction():
            write_changes(e.org, plan, config_mod.load(family.config).snapshot_prefix)
        total, crashed = plan.change_count(), plan.ctx.run_id            # ... and then the process dies
    with engine(family) as e:
        assert e.execute(as_of=AS_OF).summary["changes"] == {"planned": 0}
        assert e.ledger.change_counts(crashed) == {"applied": total}
        assert len(list(e.ledger.changes(crashed, status="applied"))) == total
    assert state_of(family) == _clean_state(family, tmp_path)
