"""Inputs that used to pass silently: an input that lost most of its accounts or ARR stops the run before it writes
anything; unreadable values are findings naming line, field and raw value, with what they take out of each figure;
one reading policy everywhere; old and open months in `report nrr`; currency messages; the demo's next command."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import shlex
import sqlite3

import numpy as np
import pytest

from conftest import FIELD_ARR, NAME_RULE, Cli, write_csv
from nrr_engine import config as config_mod, history_files, money
from nrr_engine.config import SubscriptionSource
from nrr_engine.metrics import arr as arr_mod
from nrr_engine.scheduler import Daemon

AS_OF = ("--as-of", "2026-11-15")


def working_copy(org) -> sqlite3.Connection:
    return sqlite3.connect(org.root / "state" / "local-org.db")


def ledger(org) -> sqlite3.Connection:
    return sqlite3.connect(org.root / "state" / "nrr.db")


def world(org) -> dict:
    """Everything a run can write: the working copy's tables, the ARR history, the membership, the snapshots."""
    wc = working_copy(org)
    tables = [t for (t,) in wc.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_nrr%' "
                                       "ESCAPE '\\' ORDER BY name")]
    out = {t: sorted(wc.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
    out["_nrr_base"] = sorted(wc.execute("SELECT * FROM _nrr_base").fetchall())
    for name, table in history_files.named(org.root / "state" / "nrr.db").items():
        out[name] = sorted(history_files.tuples(table), key=repr)
    return out


@pytest.fixture
def acme(org):
    """Acme Inc. with an unlinked Acme US (the name rule links it: a value the engine writes) and two more
    customers, ARR from annual subscriptions."""
    a = org.account("001A", "Acme Inc.", BillingCountry="United States")
    org.sub(a, "2025-01-01", "", "100000")
    org.sub(org.account("001B", "Acme US", BillingCountry="United States"), "2025-06-01", "", "50000")
    org.sub(org.account("001C", "Initech"), "2025-01-01", "", "30000")
    org.sub(org.account("001D", "Hooli"), "2025-01-01", "", "20000")
    org.rules = {"r.yaml": NAME_RULE}
    return org.write()


# ---- item 6: an input that shrank stops the run before anything is written ---------------------------------

def test_header_only_account_csv_stops_the_run_and_leaves_everything_as_it_was(acme, cli):
    """A header-only Account.csv after a good run: exit 2 naming counts and ARR before/after and the setting;
    the working copy (with the engine's repaired ParentId), ARR history and membership are untouched."""
    cli("run", *AS_OF)
    assert dict(working_copy(acme).execute("SELECT Id, ParentId FROM Account"))["001B"] == "001A"
    before = world(acme)
    header = (acme.org / "Account.csv").read_text().splitlines()[0]
    good = (acme.org / "Account.csv").read_text()
    (acme.org / "Account.csv").write_text(header + "\n")
    r = cli("run", *AS_OF, expect=2)
    assert "accounts 4 -> 0 (-100.0 %)" in r.stderr and "ARR 200000.00 -> 0.00 (-100.0 %)" in r.stderr
    assert "guards.max_shrink (20 %)" in r.stderr and "--allow-shrink" in r.stderr
    assert world(acme) == before
    assert ledger(acme).execute("SELECT status FROM runs ORDER BY started DESC LIMIT 1").fetchone() == ("failed",)
    # the good file back: the working copy was never emptied, so the engine's link is still there: nothing to do
    (acme.org / "Account.csv").write_text(good)
    assert "changes: planned 0" in cli("run", *AS_OF).stdout
    assert world(acme) == before


def test_report_on_a_shrunken_input_stops_and_leaves_the_working_copy(acme, cli):
    """`report nrr` reads (and would reload) the same input: on a header-only Account.csv it stops with the
    guard's message and the working copy keeps every record and the engine's values."""
    cli("run", *AS_OF)
    before = world(acme)
    header = (acme.org / "Account.csv").read_text().splitlines()[0]
    (acme.org / "Account.csv").write_text(header + "\n")
    r = cli("report", "nrr", *AS_OF, expect=2)
    assert "accounts 4 -> 0 (-100.0 %)" in r.stderr and "nrr-engine run --allow-shrink" in r.stderr
    assert world(acme) == before


def test_plan_stops_too_and_allow_shrink_accepts_the_loss_as_the_new_baseline(acme, cli):
    """plan stops like run; --allow-shrink on plan or run goes on with an input_shrank finding, and the run that
    accepted it is the baseline of the next."""
    cli("run", *AS_OF)
    write_csv(acme.org / "Account.csv", acme.accounts[:1])
    assert "accounts 4 -> 1 (-75.0 %)" in cli("plan", *AS_OF, expect=2).stderr
    out = cli("plan", *AS_OF, "--allow-shrink").stdout
    assert "[input_shrank]" in out and "accepted with --allow-shrink" in out
    cli("run", *AS_OF, expect=2)
    assert "accounts read: 1" in cli("run", *AS_OF, "--allow-shrink").stdout
    assert "[input_shrank]" not in cli("run", *AS_OF).stdout   # compared with the accepted run now


def test_lost_arr_stops_the_run_even_with_every_account_present(acme, cli):
    """Subscriptions that went missing (same accounts) take ARR from 200,000 to 20,000: exit 2 saying so."""
    cli("run", *AS_OF)
    write_csv(acme.org / "Subscription__c.csv", acme.subs[3:])
    r = cli("run", *AS_OF, expect=2)
    assert "accounts 4 -> 4 (no change), ARR 200000.00 -> 20000.00 (-90.0 %)" in r.stderr


def test_unreadable_amounts_that_take_out_most_arr_are_named_when_the_guard_stops(acme, cli):
    """The stop message lists the records this run left out of ARR, so the cause is in front of the user."""
    cli("run", *AS_OF)
    acme.subs[0]["Amount__c"] = "100k"
    acme.write()
    r = cli("run", *AS_OF, expect=2)
    assert "ARR 200000.00 -> 100000.00 (-50.0 %)" in r.stderr and "Amount__c '100k'" in r.stderr


def test_max_shrink_is_a_setting_and_small_losses_pass(acme, cli):
    """guards.max_shrink: a loss within it passes; 1 turns the guard off; one account going away never stops."""
    cli("run", *AS_OF)
    write_csv(acme.org / "Account.csv", acme.accounts[:3])      # Hooli gone: 1 of 4 accounts, 10 % of ARR
    cli("run", *AS_OF)
    write_csv(acme.org / "Account.csv", acme.accounts[:1])      # 3 -> 1
    cli("run", *AS_OF, expect=2)
    acme.extra = "guards: {max_shrink: 1}\n"
    acme.accounts = acme.accounts[:1]
    acme.write()
    assert config_mod.load(acme.config).max_shrink == 1
    assert "accounts read: 1" in cli("run", *AS_OF).stdout


def test_a_scheduled_run_stops_on_a_shrunken_input_and_writes_nothing(acme, cli):
    """The daemon passes no --allow-shrink: a nightly job on a shrunken input is recorded failed, nothing written."""
    cli("run", *AS_OF)
    before = world(acme)
    write_csv(acme.org / "Account.csv", acme.accounts[:1])
    daemon = Daemon(config_mod.load(acme.config), clock=lambda: dt.datetime(2026, 11, 16, 2, tzinfo=dt.timezone.utc))
    daemon.run_job("nightly")
    assert daemon.completed == [("nightly", "failed")]
    assert world(acme) == before


# ---- item 7: unreadable values are findings naming line, field and raw value, with their ARR impact ---------

@pytest.fixture
def messy(org):
    """Subscriptions with the amounts and dates a spreadsheet produces."""
    a = org.account("001A", "Acme")
    org.sub(a, "2025-01-01", "", "100000")                      # Subscription__c.csv:2, fine
    org.sub(a, "2025-01-01", "", "12k")                         # :3
    org.sub(org.account("001B", "Initech"), "2025-01-01", "", "$100,000.00")   # :4
    org.sub(org.account("001C", "Hooli"), "2025-01-01", "", "1,200.50")        # :5
    org.sub(org.account("001D", "Wayne"), "2025-01-01", "08/31/2026", "40000")  # :6
    org.sub("001NOWHERE", "2025-06-01", "", "5000")             # :7, an orphan
    return org.write()


def test_unreadable_values_are_findings_naming_line_field_and_raw_value(messy, cli):
    """12k, $100,000.00 and 1,200.50 (once silently read as 1200.50) are unreadable amounts; 08/31/2026 an
    unreadable date: each finding names the CSV line, the record Id, the field and the raw value."""
    out = cli("run", *AS_OF).stdout
    sub = str(messy.org / "Subscription__c.csv")
    line = next(x for x in out.splitlines() if "[arr_not_a_number]" in x)
    assert "3 Subscription__c record(s) left out of ARR, amount unknown" in line
    assert f"{sub}:3 (Id a0S000000000000002) Amount__c '12k'" in line
    assert f"{sub}:4 (Id a0S000000000000003) Amount__c '$100,000.00'" in line
    assert f"{sub}:5 (Id a0S000000000000004) Amount__c '1,200.50'" in line
    assert "no thousands separators" in line
    date = next(x for x in out.splitlines() if "[bad_date]" in x)
    assert f"{sub}:6 (Id a0S000000000000005) End_Date__c '08/31/2026'" in date and "expected YYYY-MM-DD" in date
    orphan = next(x for x in out.splitlines() if "[orphan_subscription]" in x)
    assert f"{sub}:7 (Id a0S000000000000006) Account__c '001NOWHERE'" in orphan


def test_what_the_unreadable_records_take_out_is_reported_with_every_figure(messy, cli):
    """The run summary and `report nrr` (table, json, csv) say what the left-out records take out of the figure:
    at each end, known ARR and records of unknown amount; apart, records with unreadable dates."""
    out = cli("run", *AS_OF).stdout
    t12m = out.split("trailing 12 months:")[1].splitlines()[1]
    assert t12m.strip().startswith("excluded: 5 record(s) left out of ARR")
    r = cli.json("report", "nrr", "--period", "2026-10", "--window", "12", "--format", "json", *AS_OF)
    assert r["family"]["start"] == "100000.00"
    assert r["excluded"] == {
        "records": 5,
        "start": {"month": "2025-10", "arr": "5000.00", "records": 4, "amount_unknown": 3},
        "end": {"month": "2026-10", "arr": "5000.00", "records": 4, "amount_unknown": 3},
        "dates_unknown": {"records": 1, "arr": "40000.00", "amount_unknown": 0}}
    table = cli("report", "nrr", "--period", "2026-10", "--window", "12", *AS_OF).stdout
    assert ("active at 2025-10: 5000.00 in 1 record(s) + 3 of unknown amount" in table
            and "1 with unreadable dates (40000.00) may count at the window's start, its end, both or neither" in table)
    csv_text = cli("report", "nrr", "--period", "2026-10", "--window", "12", "--format", "csv", *AS_OF).stdout
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    # the configured report.segments (Region__c) add segment rows: the exclusions stay on the whole-view rows
    assert [(x["level"], x["excluded_records"], x["excluded_start_arr"]) for x in rows if not x["segment_by"]] == [
        ("family", "5", "5000.00"), ("naive", "5", "5000.00")]
    assert [(x["segment_by"], x["excluded_records"]) for x in rows if x["segment_by"]] == [("Region__c", "")]


def test_clean_figures_carry_no_exclusion(org, cli):
    """Without unreadable records there is no `excluded` block and no extra summary line."""
    org.sub(org.account("001A", "Acme"), "2025-01-01", "", "1000")
    org.write()
    assert "excluded:" not in cli("run", *AS_OF).stdout
    assert "excluded" not in cli.json("report", "nrr", "--format", "json", *AS_OF)


@pytest.mark.parametrize("text, ok", [("2026-08-31", True), ("2026-08-31T00:00:00.000Z", True),
                                      ("2026-08-31 12:30:00", True), (" 2026-08-31 ", True),
                                      ("2026-08", False), ("2026", False), ("20260831", False),
                                      ("08/31/2026", False), ("2026-08-31junk", False), ("2026-02-30", False),
                                      ("31.08.2026", False)])
def test_dates_are_read_by_one_policy(text, ok):
    """A date is YYYY-MM-DD (or a Salesforce date-time); numpy's partial dates and other forms are unreadable."""
    _, good, _ = arr_mod._months_of([text, "2026-01-01"], 0)
    assert good.tolist() == [ok, True]


def test_a_month_only_end_date_is_not_read_as_the_first_of_the_month(org, cli):
    """End date 2026-08 (numpy would take 2026-08-01) is an unreadable date, not an early end."""
    org.sub(org.account("001A", "Acme"), "2025-01-01", "2026-08", "1000")
    org.write()
    assert "End_Date__c '2026-08'" in cli("run", *AS_OF).stdout


def test_account_field_values_follow_the_same_policy(org, cli):
    """ARR from an Account field: 1,200.50 is unreadable too, named by Account.csv line, field and raw value."""
    org.arr = FIELD_ARR
    org.account("001A", "Acme", ARR__c="1000")
    org.account("001B", "Initech", ARR__c="1,200.50")
    org.write()
    out = cli("run", *AS_OF).stdout
    assert f"{org.org / 'Account.csv'}:3 (Id 001B) ARR__c '1,200.50'" in out and "ARR unknown" in out
    r = cli.json("report", "nrr", "--period", "2026-11", "--format", "json", *AS_OF)
    assert r["excluded"]["end"] == {"month": "2026-11", "arr": "0.00", "records": 1, "amount_unknown": 1}


@pytest.mark.parametrize("row, message", [
    ("001A,2026-10,\"1,200.50\"", "h.csv:2: '1,200.50' is not a number (column arr; expected a plain decimal"),
    ("001A,2026-10,12k", "h.csv:2: '12k' is not a number (column arr"),
    ("001A,2026-1,5", "h.csv:2: '2026-1' is not a month; expected YYYY-MM (column month)"),
    ("001A,\uff12\uff10\uff12\uff16-\uff11\uff10,5", "is not a month; expected YYYY-MM (column month)"),
])
def test_history_import_follows_the_same_policy(org, cli, tmp_path, row, message):
    """The history CSV reads amounts and months like everything else: nothing imported, line, column and value."""
    org.arr = FIELD_ARR
    org.account("001A", "Acme", ARR__c="1000")
    org.write()
    f = tmp_path / "h.csv"
    f.write_text("account_id,month,arr\n" + row + "\n", encoding="utf-8")
    r = cli("history", "import", str(f), expect=2)
    assert message in r.stderr.replace(str(tmp_path) + "/", "") and "nothing imported" in r.stderr


def test_findings_name_salesforce_records_by_id():
    """Without a CSV line to point at (Salesforce), a finding names the record Id, the field and the raw value."""
    cfg = SubscriptionSource(object="Sub__c", account="Account__c", start="Start__c", amount="Amount__c",
                             end="End__c", amount_period="annual")
    rows = [("a0X1", "001A", "2025-01-01", None, "12k", None), ("a0X2", "001A", "2025-01-01", None, "10", None)]
    matrix, findings, excluded = arr_mod.from_subscriptions(rows, {"001A": 0}, cfg, "USD", 24300, 24, "salesforce:Sub__c")
    assert [f.kind for f in findings] == ["arr_not_a_number"]
    assert "record a0X1 Amount__c '12k'" in findings[0].message and findings[0].records == ("a0X1",)
    assert int(matrix.dense()[0, -1]) == money.parse_units("10") and len(excluded) == 1


# ---- item 12: a period older than history_months ------------------------------------------------------------

def test_an_old_period_is_rebuilt_from_subscriptions(org, cli):
    """history_months 13 (from 2025-11 as of 2026-11-15): --period 2025-10 --window 12 is rebuilt from the
    subscriptions, with the figures a history of 36 months gives."""
    s = org.account("001STE", "Steady Co")
    org.sub(s, "2024-01-01", "", "100000")
    org.sub(org.account("001SUK", "Steady Co UK", s), "2025-03-01", "", "20000")
    org.sub(org.account("001GON", "Gone Ltd"), "2024-01-01", "2025-05-31", "7000")
    org.write()
    args = ("report", "nrr", "--period", "2025-10", "--window", "12", "--format", "json", *AS_OF)
    wide = cli.json(*args)
    org.config.write_text(org.config.read_text().replace("  source: subscriptions\n",
                                                         "  source: subscriptions\n  history_months: 13\n"))
    assert config_mod.load(org.config).arr.history_months == 13
    narrow = cli.json(*args)
    assert narrow == wide
    assert (narrow["family"]["start"], narrow["family"]["end"], narrow["family"]["churn"]) == (
        "107000.00", "120000.00", "7000.00")


def test_an_old_period_from_stored_history_names_the_setting_to_raise(org, cli):
    """ARR from an Account field exists only for the months kept: the error says which setting, to what."""
    org.arr = FIELD_ARR + "\n  history_months: 13"
    org.account("001A", "Acme", ARR__c="1000")
    org.write()
    r = cli("report", "nrr", "--period", "2025-10", "--window", "12", *AS_OF, expect=2)
    assert "raise arr.history_months to at least 26" in r.stderr and "needs ARR from 2024-10" in r.stderr


# ---- item 13: an open month, currency messages, the demo's next command -------------------------------------

def test_a_period_not_closed_yet_is_marked_provisional(org, cli):
    """--period of the month of as_of: a warning on stderr, `provisional` in JSON, PROVISIONAL in the table."""
    org.sub(org.account("001A", "Acme"), "2025-01-01", "", "1000")
    org.write()
    r = cli("report", "nrr", "--period", "2026-11", "--format", "json", *AS_OF)
    assert "warning: 2026-11 is not closed as of 2026-11-15" in r.stderr
    d = json.loads(r.stdout)
    assert d["provisional"] is True and "provisional" in d["note"]
    assert "PROVISIONAL" in cli("report", "nrr", "--period", "2026-11", *AS_OF).stdout
    closed = cli("report", "nrr", "--period", "2026-10", "--format", "json", *AS_OF)
    assert "provisional" not in json.loads(closed.stdout) and "warning" not in closed.stderr


def test_currency_messages_say_there_is_no_conversion(org, cli, tmp_path):
    """Mixed currencies: no mention of exchange rates there is no setting for; the limitation said plainly."""
    from test_local_org import eur_subscription
    eur_subscription(org)
    r = cli("run", *AS_OF, expect=2)
    assert "mixed currencies: nrr-engine does not convert currencies yet" in r.stderr
    assert not re.search(r"\brates?\b", r.stderr)
    org.arr = FIELD_ARR
    org.accounts[0]["ARR__c"] = "5"
    org.write()
    f = tmp_path / "h.csv"
    f.write_text("account_id,month,arr,currency\n001A,2026-10,5,EUR\n")
    r = cli("history", "import", str(f), expect=2)
    assert "does not convert currencies yet" in r.stderr and not re.search(r"\brates?\b", r.stderr)


def test_the_demo_suggests_a_command_that_reports_the_summary_month(tmp_path):
    """The demo's `next:` command, run as printed, reports the month and T12M NRR of the summary above it."""
    out = Cli(None)("demo", "--dir", str(tmp_path / "d")).stdout
    m = re.search(r"legal (\d{4}-\d{2}) trailing 12 months: NRR ([\d.]+) %", out)
    command = shlex.split(out.split("next: ")[1].strip())
    assert command[0] == "nrr-engine"
    r = Cli(None).json(*command[1:], "--format", "json")
    assert r["period"] == m.group(1) and r["window"] == 12
    assert f"{float(r['family']['nrr']) * 100:.1f}" == m.group(2)


def test_excluded_impact_counts_only_records_active_at_each_end():
    """Excluded.impact: a record counts at a month when active then; unknown amounts and dates are apart."""
    ex = arr_mod.Excluded(np.array([100, -1, 50, 70]), np.array([10, 10, 12, -1]), np.array([arr_mod.OPEN, 11, 12, 5]))
    got = ex.impact(11, 12)
    assert got["start"] == {"month": arr_mod.months.fmt(11), "arr": money.fmt(100), "records": 2, "amount_unknown": 1}
    assert got["end"] == {"month": arr_mod.months.fmt(12), "arr": money.fmt(150), "records": 2, "amount_unknown": 0}
    assert got["dates_unknown"] == {"records": 1, "arr": money.fmt(70), "amount_unknown": 0}
