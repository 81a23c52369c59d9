"""An ops lead's trial (findings 5, 6, 9, 12): `export` picks the latest run that changed the org (a rollback, a
killed run once settled) and `--since` gives every change set oldest first; `runs list` counts a killed run's
changes; `review list` on Salesforce needs no credentials; a run that stops logs `run.failed` with its run_id."""
from __future__ import annotations

import json
import sqlite3

import pytest

AS_OF = ("--as-of", "2026-11-15")


@pytest.fixture
def acme(org):
    """Acme and its child Acme UK: the first run writes rollups and snapshots (changes that reach the org)."""
    org.account("001A", "Acme")
    org.account("001B", "Acme UK", "001A")
    org.sub("001A", "2025-01-01", "", "1000")
    org.sub("001B", "2025-01-01", "", "500")
    return org.write()


def run_id(out: str) -> str:
    return out.split()[1]


def test_export_default_is_the_latest_run_that_changed_the_org_and_since_lists_all_oldest_first(acme, cli, tmp_path):
    """After run, rollback and a no-change run, `export` writes the rollback's change set and says why; `--since`
    the plan before them writes the run's and the rollback's, oldest first, and skips runs that changed nothing."""
    plan = run_id(cli("plan", *AS_OF).stdout)
    run = run_id(cli("run", *AS_OF).stdout)
    cli("rollback", run)
    rb = cli.json("runs", "list", "--format", "json")[0]["id"]
    quiet = run_id(cli("plan", *AS_OF).stdout)  # a plan changes nothing in the org
    out = cli("export", "--out", str(tmp_path / "x")).stdout
    assert f"change set of rollback {rb} (the latest that changed the org; --run to pick another" in out
    assert sorted(p.name for p in (tmp_path / "x" / "changes").iterdir()) == [rb]
    out = cli("export", "--out", str(tmp_path / "y"), "--since", plan).stdout
    assert "2 change set(s) of the runs after" in out
    assert out.index(f"change set of run {run}") < out.index(f"change set of rollback {rb}")
    assert sorted(p.name for p in (tmp_path / "y" / "changes").iterdir()) == sorted([run, rb])
    assert "no run after" in cli("export", "--out", str(tmp_path / "z"), "--since", quiet).stdout


def killed_after_writing(org, run: str) -> None:
    """Leave `run` as a process killed after it wrote every change (the history stage) leaves it: still running,
    no counts recorded (the kill came before finish_run)."""
    db = sqlite3.connect(org.root / "state" / "nrr.db")
    with db:
        db.execute("UPDATE runs SET status = 'running', counts = NULL, ended = NULL WHERE id = ?", [run])
    db.close()


def test_a_killed_run_once_settled_is_exported_and_counted_like_runs_show(acme, cli, tmp_path):
    """A run killed after writing: the next run (no changes) settles it; `export` then writes the killed run's
    change set (not `run None`), and `runs list` shows the same applied count as `runs show`, table and JSON."""
    killed = run_id(cli("run", *AS_OF).stdout)
    killed_after_writing(acme, killed)
    cli("run", *AS_OF)
    shown = cli.json("runs", "show", killed, "--format", "json")
    assert shown["status"] == "interrupted" and shown["counts"] is None
    applied = shown["change_status"]["applied"]
    listed = {r["id"]: r for r in cli.json("runs", "list", "--format", "json")}
    assert listed[killed]["counts"] == {"applied": applied, "planned": applied}
    table = next(line for line in cli("runs", "list").stdout.splitlines() if line.startswith(killed))
    assert table.endswith(f"applied {applied}, planned {applied}")
    out = cli("export", "--out", str(tmp_path / "x")).stdout
    assert f"change set of run {killed} (the latest that changed the org" in out and "run None" not in out
    assert (tmp_path / "x" / "changes" / killed).is_dir()


def test_export_names_an_unsettled_run_instead_of_skipping_it_silently(acme, cli, tmp_path):
    """A killed run nothing has settled yet is in no change set: `export` says so and that the next run settles it."""
    killed = run_id(cli("run", *AS_OF).stdout)
    killed_after_writing(acme, killed)
    out = cli("export", "--out", str(tmp_path / "x")).stdout
    assert f"run {killed} stopped part-way and is not settled yet" in out


def test_review_list_on_salesforce_needs_no_credentials(tmp_path, monkeypatch):
    """With the integration user's secrets unset, `review list` still lists the queue with the account names the
    last run mirrored (no login), as `review approve` and `runs list` already did."""
    from test_salesforce import make_project
    p = make_project(tmp_path, monkeypatch)
    with p.double.serve():
        p.cli("run", *AS_OF)
        with_login = p.cli.json("review", "list", "--status", "all", "--format", "json")
    assert with_login, "the demo org has review items"
    for var in ("SF_USERNAME", "SF_PASSWORD", "SF_SECURITY_TOKEN"):
        monkeypatch.delenv(var)
    without = p.cli.json("review", "list", "--status", "all", "--format", "json")
    assert without == with_login
    assert any(i["child_name"] for i in without)
    assert p.cli("review", "list").exit_code == 0


def test_a_run_that_stops_logs_run_failed_with_its_run_id_and_exit_code(acme, cli):
    """An Account.csv separated by semicolons stops the run (exit 2): besides the `error:` line, stderr holds a
    JSON `run.failed` event with the run's id, the exit code and the message, and the run's other lines share it."""
    path = acme.org / "Account.csv"
    path.write_text(path.read_text().replace(",", ";"))
    result = cli("run", *AS_OF, expect=2)
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    [failed] = [e for e in events if e["event"] == "run.failed"]
    start = next(e for e in events if e["event"] == "run.start")
    assert failed["run_id"] == start["run_id"] and failed["exit_code"] == 2 and failed["level"] == "error"
    assert f"error: {failed['error']}" in result.stderr.splitlines()


def test_a_rollback_that_stops_logs_run_failed_with_the_rollbacks_run_id(acme, cli):
    """A rollback that stops before it starts (the org's Account.csv went away since the run loaded it) logs
    `run.failed` with the rollback's own run id, its exit code and the message, and records nothing."""
    run = run_id(cli("run", *AS_OF).stdout)
    (acme.org / "Account.csv").unlink()
    result = cli("rollback", run, expect=2)
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    [failed] = [e for e in events if e["event"] == "run.failed"]
    runs = cli.json("runs", "list", "--format", "json")
    assert failed["run_id"] != run and failed["exit_code"] == 2 and failed["level"] == "error"
    assert [(r["id"], r["status"]) for r in runs] == [(run, "succeeded")], "nothing rolled back, no half record"
    assert "Account.csv was loaded before but is no longer in the org folder" in failed["error"]
