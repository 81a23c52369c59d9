"""The shapes that keep a million-account run's memory down hold the same values as the plain ones."""
from __future__ import annotations

import json
import os

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nrr_engine.hierarchy import match, normalise
from nrr_engine.hierarchy.link import LinkEvidence
from nrr_engine.hierarchy.membership import FamilyChanges
from nrr_engine.sources import columnar


def _csv(tmp_path, rows: list[list[str]]):
    path = tmp_path / "Account.csv"
    lines = ["Id,Name,Region__c,OwnerId,ParentId"] + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    st_ = os.stat(path)
    return path, (st_.st_size, st_.st_mtime_ns)


def test_a_column_with_few_values_holds_one_object_per_value_and_the_same_text(tmp_path):
    """Region and owner cells read as shared objects (one per distinct value), blanks as None, values unchanged."""
    rows = [[f"001{i:015d}", f"Acme {i}", ["NA", "EMEA", ""][i % 3], "005000000000001AAA",
             "" if i % 4 else "001000000000000000"] for i in range(3000)]
    path, sig = _csv(tmp_path, rows)
    ids, names, regions, owners, parents = columnar.read_columns(path, ["Id", "Name", "Region__c", "OwnerId",
                                                                        "ParentId"], sig)
    assert regions == [r[2] or None for r in rows]
    assert owners == [r[3] for r in rows]
    assert parents == [r[4] or None for r in rows]
    assert names == [r[1] for r in rows]
    assert len({id(v) for v in regions if v is not None}) == 2
    assert len({id(v) for v in owners}) == 1
    assert len({id(v) for v in names}) == 3000        # a column of distinct values is read as it is


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.none(), st.just(""), st.text(max_size=30),
                          st.sampled_from(["Acme GmbH", "The Acme Co.", "acme & sons ltd", "https://www.acme.co.uk",
                                           "shop.acme.com/", "ACME.DE", "Fabrik Süd AG"])), max_size=60),
       st.integers(min_value=1, max_value=7))
def test_bulk_name_keys_and_sites_a_slice_at_a_time_equal_all_at_once(values, bulk):
    """name_keys and sites cut into slices (as a million values are) give what one pass gives."""
    whole_keys, whole_sites = normalise.name_keys(values), normalise.sites(values)
    was = normalise._BULK
    normalise._BULK = bulk
    try:
        assert normalise.name_keys(values) == whole_keys
        assert normalise.sites(values) == whole_sites
    finally:
        normalise._BULK = was
    assert whole_keys == [" ".join(normalise.name_key(v)) if v else "" for v in values]


def test_compacted_evidence_writes_and_explains_as_the_evidence_did():
    """Evidence kept as JSON text gives the ledger the same JSON and plan.json the same fields."""
    lead = {"rule": "names", "matched": "acme", "score": 0.97}
    ev = LinkEvidence(lead, None, ("001000000000000001", "domains", 0.9), (("001000000000000002", "names", 0.5),))
    packed = match.compacted(ev)
    assert isinstance(packed, match.EvidenceJson)
    assert match.to_json(packed) == match.to_json(ev) and type(match.to_json(packed)) is str
    assert match.explain(packed) == json.loads(match.to_json(ev))
    assert match.explain(packed)["more_specific_than"] == {"parent": "001000000000000001", "rule": "domains",
                                                            "confidence": 0.9}
    assert match.compacted(packed) is packed and match.compacted(None) is None
    assert match.explain(match.compacted(lead)) == lead


def test_family_changes_are_the_pairs_they_hold():
    """The membership a run records reads as (account, root) pairs, equal to the list of them."""
    ch = FamilyChanges(["a", "b", "c"], ["r", "r", "c"])
    assert list(ch) == [("a", "r"), ("b", "r"), ("c", "c")] and ch == [("a", "r"), ("b", "r"), ("c", "c")]
    assert len(ch) == 3 and ch[1] == ("b", "r") and bool(ch) and not FamilyChanges([], [])
    assert np.array_equal(np.array([a for a, _ in ch]), np.array(["a", "b", "c"]))


def test_a_change_file_streamed_a_part_at_a_time_holds_the_one_buffer_packing(tmp_path):
    """A change file's columns, written part by part, read back as written and as pack_column packs them."""
    from nrr_engine import change_files, packed
    n = 250_001   # more than two parts
    cols = {"ids": [f"001{i:015d}" for i in range(n)], "old": [None if i % 3 else "x" * (i % 7) for i in range(n)],
            "new": ["é" * (i % 5) for i in range(n)]}
    run = "20261201T000000Z-abcdef"
    name, sha = change_files.write(tmp_path, run, 1, cols)
    assert change_files.read(tmp_path, name, sha, n, run) == cols
    z = np.load(tmp_path / name)
    for col in cols:
        buf, bits = packed.pack_column(cols[col])
        assert np.array_equal(z[col], buf) and np.array_equal(z[f"{col}_none"], bits)
    assert change_files.write(tmp_path, run, 2, {"ids": ["a", "b\x00c"]}) is None    # a NUL: kept as rows
    assert change_files.read(tmp_path, *change_files.write(tmp_path, run, 3, {"ids": []}), 0, run) == {"ids": []}
