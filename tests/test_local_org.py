"""Local org source/sink: loading, reloading, Ids, writes, export, and every bad CSV DESIGN names."""
from __future__ import annotations

import os
import re
import sqlite3

import pytest

from conftest import read_csv, write_csv
from nrr_engine.errors import DataError
from nrr_engine.ids import id18, sf_id
from nrr_engine.sources.local_org import LocalOrg

AS_OF = ("--as-of", "2026-11-15")


@pytest.fixture
def small(org):
    """Acme with two linked subsidiaries and revenue."""
    a = org.account("001ACM", "Acme Inc")
    org.sub(a, "2025-01-01", "", "100000")
    org.sub(org.account("001AUS", "Acme US", a), "2025-06-01", "", "50000")
    org.account("001AEU", "Acme eComm", a)
    return org.write()


def _working_copy(org) -> sqlite3.Connection:
    return sqlite3.connect(org.root / "state" / "local-org.db")


def test_sf_id_is_18_chars_with_case_checksum():
    """Generated Ids have the key prefix, 18 characters and the case-insensitive checksum suffix."""
    rid = sf_id("001", 1)
    assert len(rid) == 18 and rid.startswith("001") and re.fullmatch(r"[0-9A-Za-z]{18}", rid)
    assert id18("001D000000IqhSL") == "001D000000IqhSLIAZ"  # Salesforce's documented example
    assert sf_id("00T", 62) == "00T000000000010EAA"


def test_run_writes_rollups_and_rerun_writes_nothing(small, cli):
    """Rollups land in the working copy; a second run with no new data writes 0 changes."""
    out = cli("run", *AS_OF).stdout
    assert "applied" in out
    rows = dict(_working_copy(small).execute("SELECT Id, Hierarchy_ARR__c FROM Account").fetchall())
    assert rows == {"001ACM": "150000.00", "001AUS": "50000.00", "001AEU": "0.00"}
    assert "changes: planned 0" in cli("run", *AS_OF).stdout


def test_reload_picks_up_csv_edits_and_keeps_engine_fields(small, cli):
    """Editing Account.csv is picked up on the next run; rollup columns of kept records survive the reload."""
    cli("run", *AS_OF)
    small.accounts[1]["ParentId"] = ""           # Acme US is detached in the CSV
    small.write()
    run_id = cli("run", *AS_OF).stdout.split()[1]
    rows = dict(_working_copy(small).execute("SELECT Id, Hierarchy_ARR__c FROM Account").fetchall())
    assert rows["001ACM"] == "100000.00" and rows["001AUS"] == "50000.00"
    shown = cli.json("runs", "show", run_id, "--format", "json")["changes"]
    changed = {(c["record_id"], c["field"]) for c in shown if c["field"] != "(upsert)"}
    assert changed == {("001ACM", "Hierarchy_ARR__c"), ("001ACM", "Child_Count__c"),
                       ("001AUS", "Ultimate_Parent__c"), ("001AUS", "Hierarchy_Depth__c")}
    # the same run's October snapshots describe the families it sees: Acme without Acme US, and Acme US alone
    assert {c["external_id"] for c in shown if c["field"] == "(upsert)"} == {"legal:001ACM:2026-10",
                                                                             "legal:001AUS:2026-10"}
    ids = dict(_working_copy(small).execute("SELECT Id, Ultimate_Parent__c FROM Account").fetchall())
    assert ids["001AUS"] == "001AUS"


def test_plan_writes_nothing_to_the_org(small, cli, tmp_path):
    """`plan` leaves the working copy untouched and writes plan.json with the DESIGN §8 keys."""
    out = tmp_path / "plan.json"
    cli("plan", "--out", str(out), *AS_OF)
    import json
    plan = json.loads(out.read_text())
    assert {"run_id", "as_of", "changes", "review", "flags", "snapshots"} <= set(plan)
    change = plan["changes"][0]
    assert {"object", "id", "field", "old", "new", "rule", "confidence", "evidence"} <= set(change)
    cols = [r[1] for r in _working_copy(small).execute("PRAGMA table_info(Account)")]
    assert "Hierarchy_ARR__c" not in cols


def test_export_writes_full_csvs_and_change_sets(small, cli, tmp_path):
    """export: full object CSVs plus Id + changed-field CSVs of the last run, Data Loader ready."""
    cli("run", *AS_OF)
    cli("export", "--out", str(tmp_path / "x"))
    full = read_csv(tmp_path / "x" / "full" / "Account.csv")
    assert {r["Id"]: r["Hierarchy_ARR__c"] for r in full}["001ACM"] == "150000.00"
    change_dir = next((tmp_path / "x" / "changes").iterdir())
    upd = read_csv(change_dir / "Account.update.csv")
    assert set(upd[0]) == {"Id", "Child_Count__c", "Hierarchy_ARR__c", "Hierarchy_Depth__c", "Ultimate_Parent__c"}
    assert len(upd) == 3


def test_non_utf8_csv_is_a_clear_error(small, cli):
    """A Latin-1 Account.csv: exit 2 naming the file and line, nothing loaded."""
    (small.org / "Account.csv").write_bytes("Id,Name,ParentId\n001A,Soci\xe9t\xe9 G\xe9n\xe9rale,\n".encode("latin-1"))
    r = cli("run", *AS_OF, expect=2)
    assert re.search(r"Account\.csv:\d+: not UTF-8", r.stderr)
    assert "Traceback" not in r.stderr + r.stdout


def test_duplicate_ids_are_a_clear_error(small, cli):
    """Two rows with one Id: exit 2 with both line numbers; the previous working copy stays intact."""
    cli("run", *AS_OF)
    small.accounts.append(dict(small.accounts[0]))
    small.write()
    r = cli("run", *AS_OF, expect=2)
    assert "Account.csv:5: duplicate Id 001ACM (first on line 2; an exact copy of that line)" in r.stderr
    assert _working_copy(small).execute("SELECT count(*) FROM Account").fetchone()[0] == 3


def test_missing_id_column_is_a_clear_error(small, cli):
    """A header without Id: exit 2 saying an Id column is expected."""
    write_csv(small.org / "Account.csv", [{"Name": "Acme"}])
    r = cli("run", *AS_OF, expect=2)
    assert "Account.csv:1: no Id column" in r.stderr


def test_ragged_row_is_a_clear_error(small, cli):
    """A row with more values than the header names the line."""
    path = small.org / "Account.csv"
    path.write_text(path.read_text() + "001X,Extra,,NA,surplus\n")
    r = cli("run", *AS_OF, expect=2)
    assert re.search(r"Account\.csv:5: 5 values but the header has 4 columns", r.stderr)


def test_dangling_parent_and_bad_money_are_findings(org, cli):
    """ParentId pointing nowhere, non-numeric and negative amounts: reported findings, run succeeds."""
    a = org.account("001A", "Acme", "001NOWHERE")
    org.sub(a, "2025-01-01", "", "abc")
    org.sub(a, "2025-01-01", "", "-500")
    org.sub(a, "2025-01-01", "", "1000")
    org.write()
    out = cli("run", *AS_OF).stdout
    assert "[dangling_parent]" in out and "001A" in out
    assert "[arr_not_a_number]" in out and "[negative_arr]" in out
    assert dict(_working_copy(org).execute("SELECT Id, Hierarchy_ARR__c FROM Account").fetchall()) == {"001A": "1000.00"}


def test_html_and_sql_looking_names_pass_through_untouched(org, cli, tmp_path):
    """Hostile names are data: stored and exported byte for byte, never interpreted."""
    names = ["<script>alert(1)</script>", "Robert'); DROP TABLE Account;--", "x" * 10_000, ""]
    for i, n in enumerate(names):
        org.account(f"001H{i}", n)
    org.write()
    cli("run", *AS_OF)
    cli("export", "--out", str(tmp_path / "x"))
    assert [r["Name"] for r in read_csv(tmp_path / "x" / "full" / "Account.csv")] == names


def eur_subscription(org) -> None:
    """A USD org whose one subscription (a0S1, on Acme) is in EUR, the currency column mapped."""
    org.account("001A", "Acme")
    org.write()
    write_csv(org.org / "Subscription__c.csv", [
        {"Id": "a0S1", "Account__c": "001A", "Start_Date__c": "2025-01-01", "End_Date__c": "", "Amount__c": "10",
         "Product__c": "Core", "CurrencyIsoCode": "EUR"}])
    org.config.write_text(org.config.read_text().replace("product: Product__c}", "product: Product__c, currency: CurrencyIsoCode}"))


def test_mixed_currencies_without_rates_is_a_clear_error(org, cli):
    """A EUR subscription in a USD org with no rates: exit 2 naming the field and the record."""
    eur_subscription(org)
    r = cli("run", *AS_OF, expect=2)
    assert "record a0S1" in r.stderr and "EUR" in r.stderr and "does not convert currencies" in r.stderr


def test_unknown_parent_field_names_the_field(small, cli):
    """A view whose parent_field is not a column: exit 2 naming the field and the CSV."""
    small.config.write_text(small.config.read_text().replace("parent_field: ParentId", "parent_field: Sales_Parent__c"))
    r = cli("run", *AS_OF, expect=2)
    assert "field Sales_Parent__c is not a column of Account.csv" in r.stderr


def test_update_of_a_deleted_record_fails_individually(tmp_path):
    """A write to an Id that is gone is a per-record failure, not an exception."""
    (tmp_path / "org").mkdir()
    write_csv(tmp_path / "org" / "Account.csv", [{"Id": "001A", "Name": "A"}])
    lo = LocalOrg(tmp_path / "org", tmp_path / "wc.db")
    lo.sync(["Account"])
    failed = lo.update_fields("Account", ["X__c"], ["001A", "001GONE"], [["1", "2"]])
    assert [rid for rid, _ in failed] == ["001GONE"] and list(lo.read("Account", ["Id", "X__c"])) == [("001A", "1")]
    assert failed[0][1].startswith("ENTITY_IS_DELETED")


def test_failed_load_leaves_previous_copy(tmp_path):
    """A CSV that fails half-way does not replace the loaded table (no partial write)."""
    (tmp_path / "org").mkdir()
    write_csv(tmp_path / "org" / "Account.csv", [{"Id": "001A", "Name": "A"}])
    lo = LocalOrg(tmp_path / "org", tmp_path / "wc.db")
    lo.sync(["Account"])
    write_csv(tmp_path / "org" / "Account.csv", [{"Id": "001B", "Name": "B"}, {"Id": "001B", "Name": "C"}])
    with pytest.raises(DataError, match="duplicate Id"):
        lo.sync(["Account"])
    assert list(lo.read("Account", ["Id", "Name"])) == [("001A", "A")]


def test_blank_lines_are_skipped_on_both_load_paths(tmp_path):
    """Empty and whitespace-only lines are ignored, whether or not the file needs the careful path."""
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "Account.csv").write_text("Id,Name\n001A,A\n\n001B,B\n")
    lo = LocalOrg(tmp_path / "org", tmp_path / "wc.db")
    lo.sync(["Account"])
    assert [r[0] for r in lo.read("Account", ["Id"])] == ["001A", "001B"]
    (tmp_path / "org" / "Account.csv").write_text("Id,Name\n001A,A\n   \n001C,C\n")
    lo.sync(["Account"])
    assert [r[0] for r in lo.read("Account", ["Id"])] == ["001A", "001C"]


def test_subscriptions_load_beside_the_run_and_their_errors_still_name_the_line(small, cli):
    """Subscription__c.csv loads in a second process: a duplicate Id there still stops the run (exit 2) with
    file:line, the previous working copy keeps its subscriptions, and a fixed file loads on the next run."""
    cli("run", *AS_OF)
    before = _working_copy(small).execute("SELECT count(*) FROM Subscription__c").fetchone()[0]
    small.subs.append(dict(small.subs[0]))
    small.write()
    r = cli("run", *AS_OF, expect=2)
    assert re.search(r"Subscription__c\.csv:\d+: duplicate Id", r.stderr) and "Traceback" not in r.stderr
    assert _working_copy(small).execute("SELECT count(*) FROM Subscription__c").fetchone()[0] == before
    assert not list(small.root.glob("state/*.load-*"))  # no side file left behind
    small.subs.pop()
    small.subs[0]["Amount__c"] = "99999"
    small.write()
    cli("run", *AS_OF)
    assert _working_copy(small).execute("SELECT Amount__c FROM Subscription__c WHERE Id = ?",
                                        (small.subs[0]["Id"],)).fetchone() == ("99999",)


def test_a_background_load_left_by_a_stopped_run_is_reused_or_replaced_never_doubled(tmp_path):
    """Syncing again while an object's side load still runs keeps one loader per object: the same one for an
    unchanged file, a fresh one (the old stopped) for an edited file; the adopted table is the newest file."""
    import multiprocessing
    (tmp_path / "org").mkdir()
    path = tmp_path / "org" / "Subscription__c.csv"
    write_csv(path, [{"Id": f"a0S{i:015d}", "Amount__c": "1"} for i in range(200_000)])
    lo = LocalOrg(tmp_path / "org", tmp_path / "wc.db")
    lo.sync(["Subscription__c"], background=["Subscription__c"])
    lo.sync(["Subscription__c"], background=["Subscription__c"])       # a stopped run, then the next one
    assert len(multiprocessing.active_children()) == 1
    write_csv(path, [{"Id": "a0S000000000000001", "Amount__c": "2"}])
    lo.sync(["Subscription__c"], background=["Subscription__c"])
    assert len(multiprocessing.active_children()) == 1
    lo.finish_sync()
    assert list(lo.read("Subscription__c", ["Id", "Amount__c"])) == [("a0S000000000000001", "2")]
    lo.close()


def test_a_csv_that_went_away_stops_the_run_instead_of_using_the_stale_copy(small, cli):
    """Deleting Subscription__c.csv after a load is exit 2 naming the file, not a run on the old working copy."""
    cli("run", *AS_OF)
    (small.org / "Subscription__c.csv").unlink()
    err = cli("run", *AS_OF, expect=2).stderr
    assert "Subscription__c.csv was loaded before but is no longer in the org folder" in err


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_an_org_csv_that_is_not_a_regular_file_is_refused_not_waited_on(small, cli, kind):
    """Subscription__c.csv as a FIFO (opening it would block the run for ever) or a directory: exit 2 naming
    the file and what it is, from run and from validate, before anything is loaded."""
    path = small.org / "Subscription__c.csv"
    path.unlink()
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    for command in (("run", *AS_OF), ("validate",)):
        err = cli(*command, expect=2).stderr
        what = "a FIFO" if kind == "fifo" else "a directory"
        assert f"Subscription__c.csv: Subscription__c.csv is {what}; the org folder holds regular CSV files" in err
        assert "Traceback" not in err


@pytest.mark.parametrize("obj", ["Account", "Subscription__c"])
def test_a_quoted_semicolon_csv_as_excel_saves_it_is_named_as_such(small, cli, obj):
    """`"Id";"Name";...` (Excel in a ';' locale quotes every value): exit 2 saying the file is ';'-separated and
    how to re-save it, from run, report and validate (it was an internal error, exit 70, from run)."""
    path = small.org / f"{obj}.csv"
    rows = read_csv(path)
    header = list(rows[0])
    lines = [";".join(f'"{h}"' for h in header)] + [";".join(f'"{r[h] or ""}"' for h in header) for r in rows]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    for command in (("run", *AS_OF), ("report", "nrr", *AS_OF), ("validate",)):
        err = cli(*command, expect=2).stderr
        assert f"{obj}.csv:1: the header is separated by ';', not commas" in err, err
        assert "internal error" not in err and "Traceback" not in err


def test_an_unclosed_quote_mid_file_names_the_line_its_row_starts_on(tmp_path):
    """A quote opened and never closed on its line (Data Loader style: every field quoted, CRLF) reads on into the
    next line, where the parser stops: the error names the row's own line, and the line it read on to."""
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "Account.csv").write_text(
        '"Id","Name","ParentId"\r\n"001A","Acme",""\r\n"001B","Stark Industries,""\r\n"001C","Wayne",""\r\n',
        encoding="utf-8")
    with pytest.raises(DataError, match=r"Account\.csv:3: malformed CSV: .* at line 4, in the row that starts on "
                                        r"line 3: a quoted value there is not closed on its line"):
        LocalOrg(tmp_path / "org", tmp_path / "wc.db").sync(["Account"])


def test_a_reload_conflict_names_the_field_as_its_api_name_not_the_headers_spelling(tmp_path):
    """An export with upper-case headers (ID, NAME, PARENTID): a conflict on the engine's ParentId says ParentId."""
    folder = tmp_path / "org"
    folder.mkdir()
    rows = [{"ID": "001A", "NAME": "Acme", "PARENTID": ""}, {"ID": "001B", "NAME": "Acme UK", "PARENTID": ""}]
    write_csv(folder / "Account.csv", rows, ["ID", "NAME", "PARENTID"])
    lo = LocalOrg(folder, tmp_path / "wc.db")
    lo.sync(["Account"])
    lo.update_fields("Account", ["ParentId"], ["001B"], [["001A"]])
    rows[1]["PARENTID"] = "001C"
    write_csv(folder / "Account.csv", rows, ["ID", "NAME", "PARENTID"])
    lo.sync(["Account"])
    [finding] = lo.reload_findings()
    assert finding.kind == "reload_conflict" and "have a ParentId the engine changed" in finding.message
    assert finding.records == ("001B",)
