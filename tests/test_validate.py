"""`validate` and the run check the config and rules against the org: every problem at its own line with the close
match; typos in fields the engine writes are refused; CSVs, jobs and the run ledger say plainly what is wrong."""
from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from conftest import NAME_RULE, Cli
from test_matching import AS_OF, shipped_rules

REPO = Path(__file__).resolve().parents[1]


def line_of(path: Path, text: str) -> int:
    """1-based line of the first line of `path` containing `text`."""
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if text in line)


def small(org, **extra):
    """Two accounts and a subscription each; `extra` goes into Account.csv as columns."""
    org.account("001A", "Acme", Type="Customer", **extra)
    org.account("001B", "Acme UK", Type="Subsidiary", BillingCountry="United Kingdom", **extra)
    org.sub("001A", "2025-01-01", "", "1000")
    org.sub("001B", "2025-01-01", "", "500")
    return org


def working_copy(org) -> sqlite3.Connection:
    return sqlite3.connect(org.root / "state" / "local-org.db")


# ---- item 8: the README's partition view ---------------------------------------------------------------------

def test_a_partition_view_validates_and_runs_with_rules(org, cli):
    """The README's {name: by_region, partition_of: legal, by: Region__c} with rules present: validate says ok
    (it crashed with exit 70) and the run snapshots the partition."""
    small(org).rules = {"r.yaml": NAME_RULE}
    org.extra = ("views:\n  - {name: legal, parent_field: ParentId}\n"
                 "  - {name: by_region, partition_of: legal, by: Region__c}\n")
    org.write()
    assert "ok (2 view(s), 1 rule file(s), 1 matching rule(s)" in cli("validate").stdout
    cli("run", *AS_OF)
    keys = {k for (k,) in working_copy(org).execute("SELECT External_Id__c FROM KPI_Snapshot__c")}
    assert any(k.startswith("by_region:") for k in keys)


# ---- item 9: fields the engine writes ------------------------------------------------------------------------

def test_a_rollup_target_typo_is_an_error_at_its_line_and_the_run_writes_nothing(org, cli):
    """fields: {arr: Hierarchy_ARR_c}: validate and run exit 2 at the config line, suggesting Hierarchy_ARR__c;
    no column is created and nothing is written."""
    small(org).extra = ("views:\n  - name: legal\n    fields: {ultimate_parent: Ultimate_Parent__c,\n"
                        "             arr: Hierarchy_ARR_c}\n    parent_field: ParentId\n")
    org.write()
    line = line_of(org.config, "Hierarchy_ARR_c")
    expected = (f"nrr.yaml:{line}: views[legal].fields.arr: field Hierarchy_ARR_c is not a column of Account.csv; "
                "did you mean Hierarchy_ARR__c?")
    assert expected in cli("validate", expect=2).stderr
    assert expected in cli("run", *AS_OF, expect=2).stderr
    columns = {r[1] for r in working_copy(org).execute("PRAGMA table_info(Account)")}
    assert "Hierarchy_ARR_c" not in columns and "Ultimate_Parent__c" not in columns


def test_the_engines_own_fields_are_added_on_a_first_run(org, cli):
    """An Account.csv without the rollup fields (the demo, a first export): the engine's own fields, the ones
    salesforce/ deploys, become columns of the working copy and are written."""
    small(org).write()
    assert "ok" in cli("validate").stdout
    cli("run", *AS_OF)
    row = working_copy(org).execute("SELECT Hierarchy_ARR__c, Child_Count__c FROM Account WHERE Id = '001A'").fetchone()
    assert row == ("1000.00", "0")


def test_any_other_rollup_target_must_be_a_column_of_the_csv(org, cli):
    """A second view writing to Sales_ARR__c: an error until Account.csv has the column (empty), then written."""
    org.account("001A", "Acme", Sales_Parent__c="")
    org.account("001B", "Acme UK", "001A", Sales_Parent__c="001A")
    org.sub("001B", "2025-01-01", "", "500")
    org.extra = ("views:\n  - {name: legal, parent_field: ParentId}\n"
                 "  - {name: sales, parent_field: Sales_Parent__c, fields: {arr: Sales_ARR__c}}\n")
    org.write()
    err = cli("validate", expect=2).stderr
    assert f"nrr.yaml:{line_of(org.config, 'Sales_ARR__c')}: views[sales].fields.arr: field Sales_ARR__c is not a " \
           "column of Account.csv" in err and "add an empty column to declare it" in err
    for a in org.accounts:
        a["Sales_ARR__c"] = ""
    org.write()
    cli("validate")
    cli("run", *AS_OF)
    assert working_copy(org).execute("SELECT Sales_ARR__c FROM Account WHERE Id = '001A'").fetchone() == ("500.00",)


def test_engine_fields_are_the_metadata_salesforce_deploys():
    """ENGINE_FIELDS / ENGINE_OBJECTS are the custom fields and object shipped in salesforce/ (less the lock
    checkbox, which the engine only reads)."""
    from nrr_engine.config import ENGINE_FIELDS, ENGINE_OBJECTS
    objects = REPO / "salesforce" / "force-app" / "main" / "default" / "objects"
    account = {p.name.split(".")[0] for p in (objects / "Account" / "fields").iterdir()}
    assert set(ENGINE_FIELDS["Account"]) == account - {"Hierarchy_Locked__c"}
    assert set(ENGINE_OBJECTS) == {p.name for p in objects.iterdir() if p.name.endswith("__c")}


# ---- item 10: org-dependent mistakes, all at once, at their lines ----------------------------------------------

def test_validate_reports_every_org_dependent_mistake_at_its_line(org, cli):
    """A rule field Typ, a config field Amount_c and an unknown top-level key on a later line: all three reported
    in one validate, each at its own line, with the close match; the run stops on the first two as well."""
    small(org).rules = {"r.yaml": NAME_RULE + "    child: [{field: Typ, op: equals, value: Subsidiary}]\n"}
    org.write()
    org.config.write_text(org.config.read_text().replace("amount: Amount__c", "amount: Amount_c")
                          + "\n\n# a comment\nschedul: {}\n")
    rule_file = org.root / "rules" / "r.yaml"
    err = cli("validate", expect=2).stderr
    assert f"nrr.yaml:{line_of(org.config, 'schedul:')}: (top level): unknown key 'schedul'; did you mean 'schedule'?" in err
    assert (f"nrr.yaml:{line_of(org.config, 'Amount_c')}: arr.subscriptions.amount: field Amount_c is not a column of "
            "Subscription__c.csv; did you mean Amount__c?") in err
    assert (f"r.yaml:{line_of(rule_file, 'Typ,')}, rule names: field Typ is not a column of Account.csv; "
            "did you mean Type?") in err
    assert "3 problem(s) found" in err
    org.config.write_text(org.config.read_text().replace("schedul: {}", ""))
    err = cli("run", *AS_OF, expect=2).stderr
    assert "field Amount_c is not a column of Subscription__c.csv" in err and "field Typ is not a column" in err


def test_a_config_typo_is_blamed_on_the_config_not_the_csv(org, cli):
    """arr.subscriptions.amount: Amount_c stops the run naming nrr.yaml:line, not Subscription__c.csv:1."""
    small(org).write()
    org.config.write_text(org.config.read_text().replace("amount: Amount__c", "amount: Amount_c"))
    err = cli("run", *AS_OF, expect=2).stderr
    assert f"nrr.yaml:{line_of(org.config, 'Amount_c')}: arr.subscriptions.amount" in err
    assert "Subscription__c.csv:" not in err


def test_a_bad_rule_hides_neither_the_other_rules_nor_the_config(org, cli):
    """A schema error in one rule and a field typo in the next rule of the same file, plus a bad currency in the
    config: all three reported."""
    small(org).rules = {"r.yaml": "kind: match\nrules:\n  - {name: a, type: magic}\n"
                                  "  - name: b\n    type: name\n    candidate: [{field: Industri, op: blank}]\n"}
    org.write()
    org.config.write_text(org.config.read_text().replace("currency: USD", "currency: dollars"))
    err = cli("validate", expect=2).stderr
    assert "r.yaml:3" in err and "'magic' is not allowed" in err
    assert "r.yaml:6, rule b: field Industri is not a column of Account.csv" in err
    assert "nrr.yaml:3: currency: 'dollars' does not match" in err
    assert "3 problem(s) found" in err


def test_a_skipped_rule_is_a_note_not_a_problem(org, cli):
    """A rule with when_fields_missing: skip whose field the org lacks: validate is ok and says it will not run."""
    small(org).rules = {"r.yaml": "kind: match\nrules:\n  - {name: duns, type: key, child_field: Parent_DUNS__c, "
                                  "candidate_field: DunsNumber, when_fields_missing: skip}\n"}
    org.write()
    out = cli("validate").stdout
    assert "note: rule duns" in out and "will not be evaluated on this org: Account has no field Parent_DUNS__c" in out


def test_validate_on_salesforce_describes_the_org_when_credentials_are_set(tmp_path, monkeypatch):
    """With the double's credentials in the environment, validate logs in and checks fields against describe
    (a rule field Industri: did you mean Industry?); a failed login is exit 3; without credentials it says the
    org checks were skipped and exits 0."""
    from test_salesforce import make_project
    p = make_project(tmp_path, monkeypatch)
    (p.root / "rules" / "match-names.yaml").write_text(NAME_RULE + "    child: [{field: Industri, op: blank}]\n")
    with p.double.serve():
        err = p.cli("validate", expect=2).stderr
    assert ("match-names.yaml:5, rule names: field Industri is not a field of Account in Salesforce (or field-level "
            "security hides it from the integration user); did you mean Industry?") in err
    monkeypatch.setenv("SF_PASSWORD", "wrong")
    with p.double.serve():
        err = p.cli("validate", expect=3).stderr
    assert "login" in err and "wrong" not in err
    monkeypatch.delenv("SF_PASSWORD")
    out = p.cli("validate").stdout
    assert "org checks skipped: source.auth needs the password in the environment variable SF_PASSWORD" in out
    assert "org fields not checked (no Salesforce credentials)" in out


# ---- item 13 and the rest: CSVs, jobs, the ledger ---------------------------------------------------------------

def test_a_semicolon_csv_is_said_to_be_one(org, cli):
    """An Excel ';'-separated Account.csv: the separator is named (not 'no Id column'), by validate and by run."""
    small(org).write()
    path = org.org / "Account.csv"
    path.write_text(path.read_text().replace(",", ";"))
    for cmd in (("validate",), ("run", *AS_OF)):
        err = cli(*cmd, expect=2).stderr
        assert "Account.csv:1: the header is separated by ';', not commas" in err and "no Id column" not in err


def test_a_cp1252_csv_names_the_line_and_byte_of_the_bad_byte(org, cli):
    """A bad byte on line 4 of a file larger than the reader's buffer: reported at line 4 with its column and
    byte offset and the fix (it was reported at line 1)."""
    small(org)
    for i in range(600):
        org.account(f"001Z{i:04d}", f"Filler {i}")
    org.write()
    path = org.org / "Account.csv"
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"Filler 0", b"Soci\xe9t\xe9 0")
    path.write_bytes(b"\n".join(lines))
    offset = len(b"\n".join(lines[:3])) + 1 + lines[3].index(b"\xe9")
    err = cli("run", *AS_OF, expect=2).stderr
    column = lines[3].index(b"\xe9") + 1
    assert f"Account.csv:4: not UTF-8: byte 0xe9 at line 4, column {column}, byte offset {offset}" in err
    assert "re-save it as UTF-8" in err


def test_an_unclosed_quote_in_account_csv_names_its_row(org, cli):
    """A quote never closed on line 3 swallowed the rest of the file into one value (the last accounts
    vanished); now it stops the run at line 3."""
    small(org)
    org.account("001C", "Gamma")
    org.write()
    path = org.org / "Account.csv"
    lines = path.read_text().split("\n")
    lines[2] = lines[2].replace("Acme UK", '"Acme UK')
    path.write_text("\n".join(lines))
    err = cli("run", *AS_OF, expect=2).stderr
    assert "Account.csv:3: a quoted value in the row that starts on line 3 is never closed" in err


def test_an_unclosed_quote_in_a_mapping_table_is_a_validate_error(org, cli):
    """rules/mappings.csv with a quote left open on line 2: validate exits 2 naming mappings.csv:2."""
    small(org).rules = {**{k: v for k, v in shipped_rules().items() if k == "match-mapping.yaml"},
                        "mappings.csv": 'child,parent,note\n"Hulu, LLC,The Walt Disney Company,acquired\nFox,Disney,x\n'}
    org.write()
    err = cli("validate", expect=2).stderr
    assert "mappings.csv:2, rule acquisitions: a quoted value is never closed" in err


def test_export_skips_a_csv_that_is_no_object(org, cli, tmp_path):
    """A copy of rules/mappings.csv in the org folder: export succeeds and lists it as skipped (it stopped)."""
    small(org).write()
    (org.org / "mappings.csv").write_text(shipped_rules()["mappings.csv"])
    cli("run", *AS_OF)
    out = cli("export", "--out", str(tmp_path / "x")).stdout
    assert "skipped mappings.csv: not an object export (no Id column in its header)" in out
    assert not (tmp_path / "x" / "full" / "mappings.csv").exists() and (tmp_path / "x" / "full" / "Account.csv").exists()


def test_an_unknown_job_is_an_error_listing_the_jobs(org, cli):
    """run/plan --job weekly: exit 2 listing the configured jobs, nothing recorded; --job nightly runs."""
    small(org).write()
    for cmd in ("run", "plan"):
        err = cli(cmd, "--job", "weekly", *AS_OF, expect=2).stderr
        assert "--job weekly: no such job" in err and "(jobs: nightly" in err
    assert cli.json("runs", "list", "--format", "json") == []
    cli("run", "--job", "nightly", *AS_OF)


def test_runs_list_has_a_header_and_speaks_on_an_empty_ledger(org, cli):
    """runs list: a sentence on an empty ledger; then a header row over the runs."""
    small(org).write()
    assert "no runs recorded yet" in cli("runs", "list").stdout
    cli("run", *AS_OF)
    lines = cli("runs", "list").stdout.splitlines()
    assert lines[0].split() == ["RUN", "JOB", "MODE", "STATUS", "AS", "OF", "CHANGES"]
    assert re.match(r"\d{8}T\d{6}Z-\w+ +nightly +run +succeeded +2026-11-15 +applied \d+", lines[1])


def test_runs_show_is_a_table_by_default_and_json_on_request(org, cli):
    """runs show prints a readable run (status, changes by status, NRR, the first changes); --format json the
    recorded fields."""
    small(org).write()
    run_id = cli("run", *AS_OF).stdout.split()[1]
    out = cli("runs", "show", run_id, "--changes", "2").stdout
    assert out.startswith(f"run {run_id}: succeeded (run, job nightly, as of 2026-11-15)")
    assert "changes by status: applied" in out and "first 2 of" in out and "OLD -> NEW" in out
    assert "legal 2026-10 last month: NRR" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)
    assert cli.json("runs", "show", run_id, "--format", "json")["status"] == "succeeded"


def test_ratios_are_rounded_once(org, cli):
    """30,000 / 55,000 = 54.545 %: the run summary and the report say 54.5 % (not 54.6 %), the JSON 0.545455."""
    org.account("001A", "Acme")
    org.sub("001A", "2025-01-01", "2026-09-30", "55000")
    org.sub("001A", "2026-10-01", "", "30000")
    org.write()
    out = cli("run", *AS_OF).stdout
    assert "legal 2026-10 last month: NRR 54.5 % GRR 54.5 %" in out
    table = cli("report", "nrr", "--period", "2026-10", *AS_OF).stdout
    assert re.search(r"^nrr +54\.5 % +54\.5 %$", table, re.M), table
    fig = cli.json("report", "nrr", "--period", "2026-10", "--format", "json", *AS_OF)
    assert (fig["family"]["nrr"], fig["family"]["grr"]) == ("0.545455", "0.545455")


def test_init_then_validate_checks_the_example_org(tmp_path):
    """`init` and validate: ok against the example org's headers, the skipped key rules named in notes."""
    Cli(None)("init", str(tmp_path / "p"))
    out = Cli(tmp_path / "p" / "config" / "nrr.yaml")("validate").stdout
    assert "fields checked against the CSV headers in" in out and "note: rule parent-duns" in out


def test_unknown_keys_in_a_rule_suggest_the_setting(org, cli):
    """A misspelt kind setting (child_feild) names the setting it is close to."""
    small(org).rules = {"r.yaml": "kind: match\nrules:\n  - name: k\n    type: key\n    child_feild: X\n"
                                  "    child_field: Parent_DUNS__c\n    candidate_field: DunsNumber\n"}
    org.write()
    assert "r.yaml:5: rules[k]: unknown key 'child_feild'; did you mean 'child_field'?" in cli("validate", expect=2).stderr


def test_terminal_output_escapes_control_characters():
    """A value with an escape sequence or a newline prints as visible text on one line (runs show, review list)."""
    from nrr_engine.cli import _short
    assert _short("Acme\x1b[31m\nCorp", 40) == "Acme\\x1b[31m Corp"


# ---- records, checked as a run loads them --------------------------------------------------------------------

def test_validate_finds_a_duplicate_id_at_its_line_and_leaves_the_state_alone(org, cli, tmp_path, monkeypatch):
    """An Account.csv whose Id repeats: validate exits 2 at the repeated line (as the run would), writes no state
    store and leaves no temporary copy; with --headers-only it checks the headers alone and says ok."""
    import tempfile
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    small(org).write()
    path = org.org / "Account.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([*lines, lines[1]]) + "\n", encoding="utf-8")
    out = cli("validate", expect=2)
    assert f"{path}:{len(lines) + 1}: duplicate Id 001A" in out.stderr, out.stderr
    assert "1 problem(s) found" in out.stderr
    assert not (org.root / "state").exists(), "validate wrote a state store"
    assert list(scratch.iterdir()) == [], "validate left its throwaway working copy behind"
    assert "ok (" in cli("validate", "--headers-only").stdout
    cli("run", *AS_OF, expect=2)   # the run stops on the same record


def test_validate_counts_the_records_it_checked(org, cli):
    """A clean org: the ok line names every CSV a run loads and how many records each holds."""
    small(org).write()
    out = cli("validate").stdout
    assert "records checked as a run loads them: Account.csv 2, Subscription__c.csv 2" in out, out


def test_validate_reports_a_row_of_the_wrong_width(org, cli):
    """A subscription row with one value too many is an error at its line, not an ok."""
    small(org).write()
    path = org.org / "Subscription__c.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([*lines, lines[1] + ",extra"]) + "\n", encoding="utf-8")
    out = cli("validate", expect=2)
    assert f"{path}:{len(lines) + 1}:" in out.stderr, out.stderr


def test_the_summary_says_how_many_snapshots_were_written(org, cli):
    """The summary's snapshot count names its month and how many of them the run wrote: all on a first run,
    none on a rerun that changes nothing, and a plan says how many it would write."""
    small(org).write()
    first = cli("run", *AS_OF).stdout
    n = int(re.search(r"KPI snapshots of 2026-10: (\d+) \((\d+) written\)", first).group(1))
    assert n > 0 and f"KPI snapshots of 2026-10: {n} ({n} written)" in first, first
    assert f"KPI snapshots of 2026-10: {n} (0 written)" in cli("run", *AS_OF).stdout
    org.sub("001A", "2025-06-01", "", "250")   # one family's ARR moves: its snapshot (only) changes
    org.write()
    out = cli("plan", *AS_OF, "--out", str(org.root / "p.json")).stdout
    assert f"KPI snapshots of 2026-10: {n} (1 to write)" in out, out


def test_runs_list_says_why_a_failed_run_stopped(org, cli):
    """A run stopped by a bad input shows the start of its error in `runs list`, not a bare '-'."""
    small(org).write()
    path = org.org / "Account.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([*lines, lines[1]]) + "\n", encoding="utf-8")
    cli("run", *AS_OF, expect=2)
    row = cli("runs", "list").stdout.splitlines()[1]
    assert re.search(r" failed +2026-11-15 +error: .*Account\.csv:\d+: duplicate Id 001A", row), row


def test_validate_lists_every_bad_row_of_every_file_in_one_pass(org, cli):
    """A repeated account (an exact copy), a row with a stray value and a repeated subscription Id whose lines
    differ: one validate lists all three, each at its line, where a run stops at the first."""
    small(org).write()
    acc, sub = org.org / "Account.csv", org.org / "Subscription__c.csv"
    a = acc.read_text(encoding="utf-8").splitlines()
    acc.write_text("\n".join([*a, a[1], a[2] + ",stray"]) + "\n", encoding="utf-8")
    s = sub.read_text(encoding="utf-8").splitlines()
    sub.write_text("\n".join([*s, s[1].replace("1000", "999")]) + "\n", encoding="utf-8")
    err = cli("validate", expect=2).stderr
    assert f"{acc}:{len(a) + 1}: duplicate Id 001A (first on line 2; an exact copy of that line)" in err, err
    assert f"{acc}:{len(a) + 2}: {len(a[2].split(',')) + 1} values but the header has" in err, err
    assert f"{sub}:{len(s) + 1}: duplicate Id" in err and "; the lines differ)" in err, err
    assert "3 problem(s) found" in err


def test_validate_lists_the_problems_of_a_file_large_enough_to_load_aside(org, cli):
    """An Account.csv big enough to load in a process of its own (as a run loads it), with a repeated Id far
    down: validate names it at its line, and the small subscription file's own problem too."""
    from nrr_engine.sources.local_org import ASIDE_MIN_BYTES
    small(org).write()
    acc, sub = org.org / "Account.csv", org.org / "Subscription__c.csv"
    lines = acc.read_text(encoding="utf-8").splitlines()
    width = len(lines[0].split(","))
    filler = [f"001F{k:011d}," + f"Filler Company Number {k} With A Long Name".ljust(120, "x")
              + "," * (width - 2) for k in range(ASIDE_MIN_BYTES // 130 + 1000)]
    body = [*lines, *filler, filler[7]]
    acc.write_text("\n".join(body) + "\n", encoding="utf-8")
    assert acc.stat().st_size >= ASIDE_MIN_BYTES
    s = sub.read_text(encoding="utf-8").splitlines()
    sub.write_text("\n".join([*s, s[1] + ",stray"]) + "\n", encoding="utf-8")
    err = cli("validate", expect=2).stderr
    assert f"{acc}:{len(body)}: duplicate Id 001F{7:011d} (first on line {len(lines) + 8}; an exact copy" in err, err
    assert f"{sub}:{len(s) + 1}: " in err and "2 problem(s) found" in err, err


def test_runs_list_says_when_a_successful_run_left_data_out(org, cli):
    """A run that succeeds with an error-severity finding (an amount it cannot read, left out of ARR) says so in
    `runs list`; a clean run says nothing more."""
    small(org).write()
    cli("run", *AS_OF)
    assert "data-quality error" not in cli("runs", "list").stdout
    org.sub("001B", "2025-03-01", "", "$5.00")   # a new subscription whose amount the run cannot read
    org.write()
    cli("run", *AS_OF)
    rows = cli("runs", "list").stdout.splitlines()
    assert re.search(r" succeeded +2026-11-15 +.*; 1 data-quality error$", rows[1]), rows[1]
    assert "data-quality error" not in rows[2]
