"""What the ledger's readers print agrees and explains itself: rollback counts that add up (local and Salesforce
alike), API calls in every summary, run ids in full or listed when a prefix is ambiguous, one provisional-month
warning, and validation messages that name places one way (dotted, rules by name)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import Cli
from nrr_engine.demo import write_demo_config
from test_salesforce import make_project

AS_OF = ("--as-of", "2026-11-15")
RUN_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")
ACCOUNTS = """Id,Name,ParentId,Website,BillingCountry,Region__c,Industry,OwnerId,DunsNumber
001000000000T01AAA,Tern Inc,,,United States,NA,Retail,005000000000001AAA,
001000000000T02AAA,Tern LLC,,,United States,NA,Retail,005000000000001AAA,
001000000000T03AAA,Tern UK,,,United Kingdom,EMEA,Retail,005000000000001AAA,
"""
SUBSCRIPTIONS = """Id,Account__c,Product__c,Start_Date__c,End_Date__c,Amount__c,CurrencyIsoCode
a0S000000000T01EAA,001000000000T01AAA,Core,2025-01-01,,1000.00,USD
a0S000000000T02EAA,001000000000T02AAA,Core,2025-01-01,,2000.00,USD
a0S000000000T03EAA,001000000000T03AAA,Core,2025-01-01,,500.00,USD
"""


@pytest.fixture
def tern_org(tmp_path) -> Path:
    """Tern Inc, Tern LLC and Tern UK: "Tern UK" ties between the two (review), so the second run links it."""
    org = tmp_path / "tern-org"
    org.mkdir()
    (org / "Account.csv").write_text(ACCOUNTS)
    (org / "Subscription__c.csv").write_text(SUBSCRIPTIONS)
    return org


def link_and_roll_back(cli: Cli) -> tuple[str, object]:
    """Run, approve Tern UK under Tern Inc, run again (Tern UK's snapshot deleted, Tern Inc's updated, rollups),
    roll that run back; returns (the linking run's id, the rollback's CLI result)."""
    cli("run", *AS_OF)
    item = next(i for i in cli.json("review", "list", "--format", "json") if i["parent_id"] == "001000000000T01AAA")
    cli("review", "approve", str(item["id"]))
    run = cli("run", *AS_OF).stdout.split()[1]
    return run, cli("rollback", run)


def local(tern_org: Path, tmp_path: Path) -> Cli:
    root = tmp_path / "local"
    shutil.copytree(tern_org, root / "org")
    return Cli(write_demo_config(root))


def counts_line(text: str) -> str:
    """The rollback's `N change(s): ...` explanation, run ids blanked."""
    return RUN_ID.sub("RUN", re.search(r"\d+ change\(s\): [^\n]*?(?:\(nothing edited since\)|edited since)", text).group(0))


def test_rollback_counts_add_up_and_agree_in_rollback_runs_list_and_runs_show(tern_org, tmp_path):
    """rollback, runs list and runs show give the same change count, and fields + snapshots restored + records
    deleted + re-created add up to it (the restored snapshot was counted nowhere before); runs show names the
    rolled-back run in full, in the RULE column too, and shows a deleted snapshot as (deleted)."""
    cli = local(tern_org, tmp_path)
    run, rb = link_and_roll_back(cli)
    said = counts_line(rb.stdout)
    assert said == ("7 change(s): restored 5 field(s) and 1 snapshot(s) to their old values, deleted 0 record(s) the "
                    "run created, re-created 1 record(s) it deleted; no conflict (nothing edited since)")
    rb_id = cli.json("runs", "list", "--format", "json")[0]["id"]
    listed = next(line for line in cli("runs", "list").stdout.splitlines() if line.startswith(rb_id))
    assert f"of {run}: " in listed and counts_line(listed) == said
    shown = cli("runs", "show", rb_id, "--changes", "50").stdout
    assert "changes by status: applied 7" in shown and counts_line(shown) == said
    assert f"rollback of {run}: " in shown and f"rollback:{run} " in shown
    assert cli.json("runs", "show", rb_id, "--format", "json")["counts"] == {
        "applied": 7, "fields_restored": 5, "snapshots_restored": 1, "records_deleted": 0, "records_recreated": 1,
        "conflicts": 0}
    linking = cli("runs", "show", run, "--changes", "50").stdout
    upserts = [line for line in linking.splitlines() if " (upsert) " in line]
    assert len(upserts) == 2 and sum(line.endswith(" -> (deleted)") for line in upserts) == 1, linking
    assert "(blank)" not in "".join(upserts)


def test_salesforce_rollback_counts_and_log_lines_are_the_local_ones(tern_org, tmp_path, monkeypatch):
    """The same story against the Salesforce double: the rollback explains the same counts as the local one; its
    log lines carry its run id, as a run's do; the summaries and the runs show table show the API calls by kind and
    the daily requests remaining, and a local run says it made none."""
    want = counts_line(link_and_roll_back(local(tern_org, tmp_path))[1].stdout)
    p = make_project(tmp_path / "sf", monkeypatch, org=tern_org)
    with p.double.serve():
        first = p.cli("run", *AS_OF).stdout
        run, rb = link_and_roll_back(p.cli)
    assert counts_line(rb.stdout) == want
    rb_id = p.cli.json("runs", "list", "--format", "json")[0]["id"]
    lines = [json.loads(line) for line in rb.stderr.splitlines() if line.startswith("{")]
    assert lines and all(line.get("run_id") == rb_id for line in lines), rb.stderr
    api = re.compile(r"  API calls: \d+ \((auth \d+, )?[a-z_]+ \d+.*\); daily API requests remaining: [\d,]+ of [\d,]+")
    assert api.search(first) and api.search(rb.stdout)
    shown = p.cli("runs", "show", run).stdout
    usage = p.cli.json("runs", "show", run, "--format", "json")["api_usage"]
    assert f"  API calls: {usage['total']} (" in shown and api.search(shown)
    plain = local(tern_org, tmp_path / "again")
    out = plain("run", *AS_OF).stdout
    assert "  API calls: none (local org)" in out
    assert "  API calls: none (local org)" in plain("runs", "show", out.split()[1]).stdout


def test_an_ambiguous_run_prefix_lists_the_runs_it_could_mean(tern_org, tmp_path):
    """runs show, rollback and export with a prefix two runs share: exit 2 listing both, never a bare "no run"."""
    cli = local(tern_org, tmp_path)
    ids = [cli("plan", *AS_OF).stdout.split()[1], cli("plan", *AS_OF).stdout.split()[1]]
    prefix = ids[0][:9]
    for args in (("runs", "show", prefix), ("rollback", prefix), ("export", "--out", str(tmp_path / "x"), "--run", prefix)):
        err = cli(*args, expect=2).stderr
        assert f"run {prefix!r} is ambiguous: 2 runs start so:" in err and all(i in err for i in ids), err
    assert "no run 'nope'" in cli("runs", "show", "nope", expect=2).stderr


def test_the_provisional_month_is_said_once(tern_org, tmp_path):
    """report nrr on the open month: the table says it (title and last line) with no second warning on stderr;
    JSON (and a file) get the stderr warning, since their reader is a program."""
    cli = local(tern_org, tmp_path)
    cli("run", *AS_OF)
    table = cli("report", "nrr", "--period", "2026-11", *AS_OF)
    assert "PROVISIONAL" in table.stdout and table.stdout.count("is not closed as of 2026-11-15") == 1
    assert "not closed" not in table.stderr
    as_json = cli("report", "nrr", "--period", "2026-11", "--format", "json", *AS_OF)
    assert as_json.stderr.count("warning: 2026-11 is not closed as of 2026-11-15") == 1


def test_validation_names_places_dotted_and_rules_by_name(tern_org, tmp_path):
    """A bad amount_period and a bad rule setting: arr.subscriptions.amount_period and rules[name-fuzzy].threshold,
    in the style of arr.subscriptions.amount (no slashes, no list indexes where a rule has a name)."""
    cli = local(tern_org, tmp_path)
    cfg = cli.config
    cfg.write_text(cfg.read_text().replace("amount_period: annual", "amount_period: quarterly"))
    names = cfg.parent.parent / "rules" / "match-names.yaml"
    names.write_text(names.read_text().replace("threshold: 85", "threshold: 185"))
    err = cli("validate", expect=2).stderr
    assert "arr.subscriptions.amount_period: 'quarterly' is not allowed" in err
    assert "rules[name-fuzzy].threshold: 185 is greater than the maximum of 100" in err
    assert "arr/" not in err and "rules/1" not in err


@pytest.mark.parametrize("ratio, shown", [("0.999735", "99.97 %"), ("1.000400", "100.04 %"), ("0.999996", "99.9996 %"),
                                          ("1", "100.0 %"), ("1.001200", "100.1 %"), ("0.545455", "54.5 %")])
def test_a_percentage_reads_100_0_only_when_it_is(ratio, shown):
    """The summary's 0.1 % rounding takes more places where it would show a contraction (or growth) as 100.0 %."""
    from nrr_engine.cli import _pct
    assert _pct(ratio) == shown
