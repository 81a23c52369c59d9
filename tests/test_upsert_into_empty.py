"""A first run's bulk writes: upserts into an empty object skip lookups and build the key index after the inserts,
and new Ids are made a range at once; both end exactly where the one-at-a-time paths do."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from conftest import write_csv
from nrr_engine.ids import sf_id, sf_ids
from nrr_engine.sources.local_org import LocalOrg


def _upsert_all(tmp_path, name, seed_rows, batches, chunk):
    folder = tmp_path / name
    folder.mkdir()
    write_csv(folder / "KPI_Snapshot__c.csv", seed_rows, ["Id", "External_Id__c", "Ending_ARR__c"])
    org = LocalOrg(folder, tmp_path / f"{name}.db")
    org.sync(["KPI_Snapshot__c"])
    for recs in batches:
        assert org.upsert_json("KPI_Snapshot__c", "External_Id__c", ["Ending_ARR__c"], recs, "a0K", chunk=chunk) == []
    rows = sorted(org.db.execute("SELECT External_Id__c, Ending_ARR__c, Id FROM KPI_Snapshot__c"))
    index = org.db.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = '_nrr_key_KPI_Snapshot__c'"
                           ).fetchone()
    seq = org.db.execute("SELECT n FROM _nrr_sequences WHERE prefix = 'a0K'").fetchone()
    org.close()
    return rows, index, seq


def _recs(keys, value):
    return [json.dumps({"External_Id__c": k, "Ending_ARR__c": value}) for k in keys]


def test_upserts_into_an_empty_object_match_the_looked_up_path(tmp_path):
    """An empty object, a key repeated in a later chunk of the same call (found, updated: the lookup resumes) and
    a second call: the same records, Ids, key index and Id sequence as the path that looks every key up."""
    first = _recs([f"legal:{k}" for k in range(7)] + ["legal:2"], "1.00")
    second = _recs(["legal:3", "legal:9"], "2.00")
    empty = _upsert_all(tmp_path, "empty", [], [first, second], chunk=3)
    # the same upserts with every key looked up: the object holds a record from the start, deleted after
    filled = _upsert_all(tmp_path, "filled", [{"Id": "a0K5g00000AbCdEAAA", "External_Id__c": "zz", "Ending_ARR__c": ""}],
                         [first, second], chunk=3)
    assert empty[1] is not None and empty[1] == filled[1]
    assert [r for r in filled[0] if r[0] != "zz"] == empty[0] and empty[2] == filled[2]
    values = {k: v for k, v, _ in empty[0]}
    assert values["legal:3"] == "2.00" and values["legal:9"] == "2.00" and len(empty[0]) == 8


@settings(max_examples=200, deadline=None)
@given(first=st.one_of(st.integers(0, 62 ** 7), st.integers(0, 62 ** 12 - 400)), count=st.integers(0, 300),
       prefix=st.sampled_from(["a0K", "001", "00T"]))
def test_a_range_of_new_ids_is_made_at_once_exactly_as_one_at_a_time(first, count, prefix):
    """sf_ids (numpy, a first run's 300,000 snapshot Ids at once) equals sf_id counter by counter, carries
    across the two halves of the 12 digits included, and refuses a range past the last 15-character Id."""
    assert sf_ids(prefix, first, count) == [sf_id(prefix, first + k) for k in range(count)]
    with pytest.raises(ValueError, match="too large"):
        sf_ids(prefix, 62 ** 12 - 1, 2)


@pytest.mark.parametrize("odd", ["", "a\x1eb", "a\x1fb", "\x1e\x1f"])
def test_packed_reads_are_exact_and_a_separator_inside_a_value_becomes_a_space(tmp_path, odd):
    """read_packed (the org's snapshot records, read as buffers) reads values as they are, blank as empty, and a
    value holding a record or field separator with that separator as a space, the fast read or not."""
    folder = tmp_path / "org"
    folder.mkdir()
    rows = [{"Id": "a0K000000000001", "External_Id__c": "legal:b:2026-10", "Ending_ARR__c": "1.00"},
            {"Id": "a0K000000000002", "External_Id__c": "legal:a:2026-10", "Ending_ARR__c": odd},
            {"Id": "a0K000000000003", "External_Id__c": "legal:c:2026-09", "Ending_ARR__c": "3.00"}]
    write_csv(folder / "KPI_Snapshot__c.csv", rows, ["Id", "External_Id__c", "Ending_ARR__c"])
    org = LocalOrg(folder, tmp_path / "wc.db")
    org.sync(["KPI_Snapshot__c"])
    got = org.read_packed("KPI_Snapshot__c", [["Id"], ["External_Id__c", "Ending_ARR__c", "Nope__c"]],
                          order_by="External_Id__c", like=("External_Id__c", "%:2026-10"))
    texts = [[blob[at[i]:at[i + 1] - 1].decode() for i in range(len(at) - 1)] for blob, at in got]
    clean = odd.replace("\x1e", " ").replace("\x1f", " ")
    assert texts == [["a0K000000000002", "a0K000000000001"],
                     [f"legal:a:2026-10\x1f{clean}\x1f", "legal:b:2026-10\x1f1.00\x1f"]]
    none = org.read_packed("KPI_Snapshot__c", [["Id"]], order_by="Id", like=("Id", "nothing%"))
    assert none[0][0] == b"" and list(none[0][1]) == [0]
    org.close()
