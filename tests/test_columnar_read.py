"""ARR read straight from Subscription__c.csv with Arrow (sources/columnar.py) gives exactly what reading the
working copy's rows gives: the matrix, every finding (same records, same examples) and the records left out,
for clean and hostile files alike; it is used only while the working copy holds that very file."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from conftest import Cli
from nrr_engine.config import SubscriptionSource
from nrr_engine.metrics import arr as arr_mod
from nrr_engine.sources import LocalOrg
from nrr_engine.sources.columnar import Changed

CFG = SubscriptionSource(object="Subscription__c", account="Account__c", start="Start_Date__c", end="End_Date__c",
                         amount="Amount__c", amount_period="annual", currency="CurrencyIsoCode")
INDEX = {"001A": 0, "001B": 1, "001C": 2}
FIELDS = {"Id": "Id", "account": "Account__c", "start": "Start_Date__c", "end": "End_Date__c", "amount": "Amount__c",
          "currency": "CurrencyIsoCode"}
FIRST, COUNT = 24300, 25   # 2025-01 .. 2027-01


def _org(tmp_path: Path, text: str, encoding: str = "utf-8") -> LocalOrg:
    (tmp_path / "org").mkdir(exist_ok=True)
    (tmp_path / "org" / "Subscription__c.csv").write_bytes(text.encode(encoding))
    org = LocalOrg(tmp_path / "org", tmp_path / "wc.db")
    org.sync(["Subscription__c"])
    return org


def _both(org: LocalOrg, cfg: SubscriptionSource = CFG):
    """(rows result, columnar result) of the same working copy."""
    where = org.where("Subscription__c")
    rows = org.read("Subscription__c", ["Id", cfg.account, cfg.start, cfg.end, cfg.amount, cfg.currency])
    ref = arr_mod.from_subscriptions(rows, INDEX, cfg, "USD", FIRST, COUNT, where)
    batches = org.csv_batches("Subscription__c", FIELDS, INDEX)
    assert batches is not None, "the working copy holds the file: the columnar read applies"
    return ref, arr_mod.from_subscriptions((), INDEX, cfg, "USD", FIRST, COUNT, where, batches=batches)


def _same(ref, got) -> None:
    assert np.array_equal(ref[0].dense(), got[0].dense()) and ref[0] == got[0]
    assert [(f.kind, f.message, f.records) for f in ref[1]] == [(f.kind, f.message, f.records) for f in got[1]]
    ex = lambda e: sorted(zip(e.units.tolist(), e.first.tolist(), e.last.tolist()))  # noqa: E731
    assert ex(ref[2]) == ex(got[2])


HOSTILE = ("\ufeffId , account__c,Start_Date__c,End_Date__c,Amount__c,CurrencyIsoCode\n"
           "a0S9,001A,2025-01-01,,1000,USD\n"
           " a0S2 ,001B,2025-02-01,2025-06-30,2500.50,usd \n"
           "a0S3,001C,2025-03-01,2025-02-01,10,\n"                  # ends before it starts
           "a0S4,001Z,2025-01-01,,10,USD\n"                         # no such account
           "a0S5,,2025-01-01,,10,USD\n"                             # no account at all
           "a0S6,001A,2025-01-01T00:00:00.000Z,,1.5E+3,USD\n"       # a date-time, an exponent
           "a0S7,001A, 2025-04-01 ,\"2026-02-30\",7,USD\n"          # spaces; a day that does not exist
           "a0S8,001B,2025-01,,8,USD\n"                             # a month only
           "a0S1,001B,2025-01-01,,\"1,200\",USD\n"                  # thousands separator
           "a0T1,001B,2025-01-01,,12k,USD\n"
           "a0T2,001B,2025-01-01,,-5,USD\n"                         # negative
           "a0T3,001B,2025-01-01,,,USD\n"                           # blank amount
           "a0T4,001C,2025-01-01,,5.,USD\n"
           "a0T5,001C,2025-01-01,,.25,USD\n"
           "a0T6,001C,2025-01-01,,+3,USD\n"
           "a0T7,001C,2025-01-01,,0.12345,USD\n"                    # five decimals
           "a0T8,001C,2025-01-01,,99999999999999.9999,USD\n"
           "a0T9,001C,\"2025-01-01\",\"\",\"12\n\",USD\n"           # a cell spanning lines
           "\n"
           "a0U1,001A,0999-01-01,,3,USD\n"
           "a0U2,001A,2025-05-05junk,,3,USD\n")


def test_a_hostile_file_gives_the_same_figures_and_findings_both_ways(tmp_path):
    """A BOM, header spacing and case, spaced Ids, every unreadable amount and date form, orphans, a cell over
    two lines: the columnar read gives the rows read's matrix, findings (same examples) and exclusions."""
    ref, got = _both(_org(tmp_path, HOSTILE))
    _same(ref, got)
    kinds = {f.kind for f in ref[1]}
    assert {"arr_not_a_number", "negative_arr", "bad_date", "orphan_subscription", "ends_before_start"} <= kinds
    assert ref[0].dense()[0, -1] > 0 and len(ref[2]) >= 10


_cell = st.sampled_from(["", " ", "0", "1", "10.5", "-2", "1e3", "1,5", "x", "2025-01-31", "2025-13-01", "2026-02-29",
                         "2024-02-29", "2025-01-31T10:00:00Z", "2025-1-3", "001A", "001B", "001Q", "usd", "EUR ",
                         "12.0001", "1.23456", "\"q\"", "é", "9" * 16, "."])


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["001A", "001B", "001C", "001Q", ""]), _cell, _cell, _cell),
                min_size=1, max_size=30))
def test_any_file_gives_the_same_result_both_ways(tmp_path_factory, records):
    """Random cells from a hostile alphabet: the columnar read equals the rows read, or declines (another
    currency) so the run reads the rows."""
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(FIELDS.values())
    for k, (account, start, end, amount) in enumerate(records):
        w.writerow([f"a0S{k:04d}", account, start, end, amount, "USD"])
    try:
        ref, got = _both(_org(tmp_path_factory.mktemp("h"), buf.getvalue()))
    except arr_mod.NotFast:
        return
    _same(ref, got)


def test_another_currency_declines_so_the_rows_name_the_first_record(tmp_path):
    """Amounts in EUR: the columnar read declines (NotFast) and the rows read raises the error naming the
    first record in Id order, as before."""
    org = _org(tmp_path, "Id,Account__c,Start_Date__c,End_Date__c,Amount__c,CurrencyIsoCode\n"
                         "a0S2,001A,2025-01-01,,1,EUR\na0S1,001A,2025-01-01,,1,EUR\n")
    with pytest.raises(arr_mod.NotFast):
        arr_mod.from_subscriptions((), INDEX, CFG, "USD", FIRST, COUNT, "x",
                                   batches=org.csv_batches("Subscription__c", FIELDS, INDEX))
    with pytest.raises(Exception, match="first: record a0S1"):
        arr_mod.from_subscriptions(org.read("Subscription__c", ["Id", "Account__c", "Start_Date__c", "End_Date__c",
                                                                "Amount__c", "CurrencyIsoCode"]),
                                   INDEX, CFG, "USD", FIRST, COUNT, "x")


def test_a_file_changed_since_its_load_is_not_read_columnar(tmp_path):
    """The CSV edited after the working copy loaded it: no columnar read (the run reads what it loaded); edited
    while the columnar read runs: Changed, so the caller reads the working copy."""
    org = _org(tmp_path, "Id,Account__c,Start_Date__c,End_Date__c,Amount__c\na0S1,001A,2025-01-01,,1\n")
    path = tmp_path / "org" / "Subscription__c.csv"
    batches = org.csv_batches("Subscription__c", FIELDS, INDEX)
    next(batches)
    path.write_text(path.read_text() + "a0S2,001A,2025-01-01,,2\n")
    with pytest.raises(Changed):
        list(batches)
    assert org.csv_batches("Subscription__c", FIELDS, INDEX) is None
    os.utime(path, ns=(1, 1))
    assert org.csv_batches("Subscription__c", FIELDS, INDEX) is None


def test_a_table_the_engine_wrote_is_never_read_from_its_csv(org, cli):
    """Account (the engine writes rollups into it) is read from the working copy, never from Account.csv."""
    org.sub(org.account("001A", "Acme"), "2025-01-01", "", "1000")
    org.write()
    cli("run", "--as-of", "2026-11-15")
    wc = LocalOrg(org.org, org.root / "state" / "local-org.db")
    assert wc.csv_batches("Account", {"Id": "Id"}, {}) is None
    assert wc.csv_batches("Subscription__c", FIELDS, INDEX) is not None


def test_a_run_reads_a_hostile_file_columnar_and_names_its_records_by_line(org):
    """End to end: a run on the hostile subscriptions file reads it columnar (no `arr.rows` fallback in the log)
    and its findings name each record by its CSV line, as the rows read does."""
    for rid in ("001A", "001B", "001C"):
        org.account(rid, f"Acme {rid}")
    org.write()
    (org.org / "Subscription__c.csv").write_text(HOSTILE.replace("CurrencyIsoCode", "Product__c").replace(",USD", ",Core")
                                                 .replace("99999999999999.9999", "9.9999"))
    out = Cli(org.config)("--log-level", "info", "run", "--as-of", "2026-11-15", expect=None)
    assert out.exit_code == 0, out.stdout + out.stderr
    assert "arr.rows" not in out.stderr
    assert "Subscription__c.csv:8 (Id a0S7) End_Date__c '2026-02-30'" in out.stdout
    assert "Subscription__c.csv:10 (Id a0S1) Amount__c '1,200'" in out.stdout
