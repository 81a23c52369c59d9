"""ARR from an Account field and from imported monthly history; `history import` is all or nothing."""
from __future__ import annotations

import pytest

from conftest import FIELD_ARR


@pytest.fixture
def field_org(org):
    """ARR read from Account.ARR__c; Acme with a subsidiary."""
    org.arr = FIELD_ARR
    org.account("001A", "Acme", ARR__c="1000")
    org.account("001B", "Acme UK", "001A", ARR__c="500.25")
    return org.write()


def test_account_field_arr_accrues_history_per_run(field_org, cli):
    """Nightly runs store each month's ARR, so NRR can be computed once two months exist."""
    cli("run", "--as-of", "2026-10-20")
    field_org.accounts[1]["ARR__c"] = "700.25"
    field_org.write()
    cli("run", "--as-of", "2026-11-03")
    r = cli.json("report", "nrr", "--period", "2026-11", "--format", "json", "--as-of", "2026-11-20")
    assert (r["family"]["start"], r["family"]["end"], r["family"]["expansion"]) == ("1500.25", "1700.25", "200.00")


def test_history_import_then_report(field_org, cli, tmp_path):
    """Imported monthly ARR feeds the report for past windows."""
    f = tmp_path / "h.csv"
    f.write_text("account_id,month,arr\n001A,2025-10,800\n001B,2025-10,0\n001A,2026-10,1000\n001B,2026-10,500.25\n")
    assert "imported 4 row(s) for 2 account(s)" in cli("history", "import", str(f)).stdout
    r = cli.json("report", "nrr", "--period", "2026-10", "--window", "12", "--format", "json", "--as-of", "2026-11-20")
    assert (r["family"]["start"], r["family"]["end"]) == ("800.00", "1500.25")
    assert r["naive"]["new_logo"] == "500.25"


@pytest.mark.parametrize("body, message", [
    ("account_id,month,arr\n001A,2026-13,5\n", "h.csv:2: '2026-13' is not a month"),
    ("account_id,month,arr\n001A,2026-10,five\n", "h.csv:2: 'five' is not a number"),
    ("account_id,month,arr\n001A,2026-10,-5\n", "h.csv:2: arr '-5' must be a number >= 0"),
    ("account_id,month,arr,currency\n001A,2026-10,5,EUR\n", "currency EUR differs"),
    ("account_id,month,arr\n001A,2026-10,5\n001A,2026-10,6\n", "h.csv:3: 001A 2026-10 already given on line 2"),
    ("acct,when,value\n", "expected account_id,month,arr[,currency]"),
])
def test_bad_history_rows_import_nothing(field_org, cli, tmp_path, body, message):
    """Every bad row is listed with file:line and nothing is imported."""
    f = tmp_path / "h.csv"
    f.write_text(body)
    r = cli("history", "import", str(f), expect=2)
    assert message in r.stderr.replace(str(tmp_path) + "/", "")
    assert "nothing imported" in r.stderr or "expected account_id" in r.stderr


def test_history_import_refused_for_subscription_source(org, cli, tmp_path):
    """With ARR from subscriptions an import would be overwritten each run: refused with the reason."""
    org.account("001A", "Acme")
    org.write()
    f = tmp_path / "h.csv"
    f.write_text("account_id,month,arr\n001A,2026-10,5\n")
    assert "rebuilt from the subscriptions" in cli("history", "import", str(f), expect=2).stderr


def test_history_import_of_non_utf8_file(field_org, cli, tmp_path):
    """A Latin-1 history file is a clear error, not a traceback."""
    f = tmp_path / "h.csv"
    f.write_bytes("account_id,month,arr\n001\xc9,2026-10,5\n".encode("latin-1"))
    assert "not UTF-8" in cli("history", "import", str(f), expect=2).stderr
