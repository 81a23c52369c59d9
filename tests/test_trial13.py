"""What a new user's trial of the columnar work found (trial 13): a CSV rewritten while it loads, an empty file
met by the careful re-read, and an export that lost a tenth of its ARR without a word."""
from __future__ import annotations

import os

import pytest

from nrr_engine.errors import DataError, SourceUnavailable
from nrr_engine.sources import LocalOrg

AS_OF = ("--as-of", "2026-11-15")
HEADER = "Id,Account__c,Start_Date__c,End_Date__c,Amount__c\n"


def test_a_csv_rewritten_while_it_loads_is_not_loaded_and_says_so(tmp_path):
    """A file whose size or mtime moved between the start and the end of its load (a save still writing it) is
    refused with a message saying so (exit 3), and the working copy keeps what it had."""
    (tmp_path / "org").mkdir()
    path = tmp_path / "org" / "Subscription__c.csv"
    path.write_text(HEADER + "a0S1,001A,2025-01-01,,1\n")
    org = LocalOrg(tmp_path / "org", tmp_path / "wc.db")
    org.sync(["Subscription__c"])
    before = path.stat()
    path.write_text(HEADER + "a0S1,001A,2025-01-01,,1\na0S2,001A,2025-01-01,,2\n")
    with pytest.raises(SourceUnavailable, match=r"Subscription__c.csv changed while it was being read .*working copy "
                                                r"is as it was"):
        org._load("Subscription__c", path, before)
    assert list(org.read("Subscription__c", ["Id"])) == [("a0S1",)]


def test_a_ragged_file_that_is_empty_by_the_careful_reread_is_a_data_error(tmp_path):
    """The careful re-read of a file that became empty meanwhile names the problem (no StopIteration, exit 70)."""
    (tmp_path / "org").mkdir()
    path = tmp_path / "org" / "Subscription__c.csv"
    path.write_text("")
    org = LocalOrg(tmp_path / "org", tmp_path / "wc.db")
    with pytest.raises(DataError, match="empty file"):
        org._load_checked(path, "INSERT INTO x VALUES (?)", ["Id"], 0)


def test_a_ragged_row_in_a_file_written_meanwhile_is_reported_as_a_file_being_written(tmp_path):
    """A load whose fast path meets a short row of a file that changed since the load began says the file was
    being written, not that its line is wrong."""
    (tmp_path / "org").mkdir()
    path = tmp_path / "org" / "Subscription__c.csv"
    path.write_text(HEADER + "a0S1,001A,2025-01-01,,1\n")
    st = path.stat()
    path.write_text(HEADER + "a0S1,001A,2025-01-01,,1\na0S2,001A\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    org = LocalOrg(tmp_path / "org", tmp_path / "wc.db")
    with pytest.raises(SourceUnavailable, match="changed while it was being read"):
        org._load("Subscription__c", path, st)


def test_an_export_that_lost_a_tenth_of_its_arr_is_a_warning(org, cli):
    """Below guards.max_shrink (20 %) the run goes on, but a loss of more than a quarter of that (here 10 % of
    the ARR: a truncated subscriptions export) is an input_smaller warning naming the figures."""
    for k in range(10):
        org.sub(org.account(f"001{k:03d}", f"Company {k}"), "2025-01-01", "", "1000")
    org.write()
    cli("run", *AS_OF)
    lines = (org.org / "Subscription__c.csv").read_text().splitlines()
    (org.org / "Subscription__c.csv").write_text("\n".join(lines[:-1]) + "\n")   # the last subscription cut off
    out = cli("run", *AS_OF).stdout
    assert "[input_smaller]" in out and "ARR 10000.00 -> 9000.00 (-10.0 %)" in out, out
    assert "[input_smaller]" not in cli("run", *AS_OF).stdout   # the next night compares with this one
