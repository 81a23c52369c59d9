"""The shapes that keep a million-account run's memory down hold the same values as the plain ones."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
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


def test_first_run_snapshot_records_are_made_as_read_and_hold_the_json_of_each_row():
    """A first run's snapshot records (JsonRows) read in order, at random, by slice and by a writer a chunk at a
    time are the JSON of each row, and a chunk is formatted once however many of its records are read in order."""
    from nrr_engine.metrics import snapshot
    snaps = snapshot.SnapshotSet(24316)
    roots = [f"001{i:015d}" for i in range(2_500)] + ['zz"quoted']
    snaps.add("legal", roots, np.arange(len(roots)) * 100, np.arange(len(roots)) * 90, np.ones(len(roots), int))
    plain = [snapshot.to_json(k, v) for k, v in snaps.rows()]
    changes = snapshot.diff(snaps, snapshot.ExistingSnapshots(), "KPI_Snapshot__c")
    rows = changes.new
    assert isinstance(rows, snapshot.JsonRows) and rows.nones == 0 and len(rows) == len(plain)
    rows._chunk = 700
    made = []
    real = snapshot._json_rows
    try:
        snapshot._json_rows = lambda keys, cols: made.append(len(keys)) or real(keys, cols)
        assert [rows[i] for i in range(len(rows))] == plain
        assert made == [700, 700, 700, 401]          # each chunk once, in order
        assert list(rows) == plain and rows == plain and rows[-1] == plain[-1] and rows[5:9] == plain[5:9]
        for cut in (slice(0, 2501), slice(650, 1500), slice(699, 701), slice(2400, 9999), slice(3, 3), slice(None, None, 2),
                    slice(-5, None)):
            assert rows[cut] == plain[cut]
    finally:
        snapshot._json_rows = real
    with pytest.raises(IndexError):
        rows[len(plain)]
    assert changes.keys == sorted(changes.keys) and changes.deletes() == []
    written = []
    assert changes.write(lambda ids: pytest.fail("nothing to delete"),
                         lambda recs: written.extend(recs) or [(3, "DUPLICATE_VALUE")]) == {3: "DUPLICATE_VALUE"}
    assert written == plain


def test_reading_snapshot_records_as_rows_counts_their_json_size_exactly():
    """A writer that takes a first run's snapshots as rows (the local org) leaves their packed JSON size counted,
    as a read of the JSON would, so the change file after it packs them in one pass: ASCII records, records
    with a quote or non-ASCII text, and a NRR that is null (a family with no starting ARR)."""
    from nrr_engine.metrics import snapshot
    for odd in ([], ['zz"quoted'], ["Zürich"], ["back\\slash"]):
        snaps = snapshot.SnapshotSet(24316)
        roots = [f"001{i:015d}" for i in range(1_500)] + odd
        snaps.add("legal", roots, np.arange(len(roots)) * 100, np.arange(len(roots)) * 90 + 5, np.ones(len(roots), int))
        rows = snapshot.diff(snaps, snapshot.ExistingSnapshots(), "KPI_Snapshot__c").new
        rows._chunk = 700
        got = list(rows.rows())
        assert [snapshot.to_json(r[0], r[1:]) for r in got] == list(rows)
        texts = list(rows)
        assert None in [r[snapshot.FIELDS.index("NRR__c") + 1] for r in got]   # root 0 starts at 0: NRR null
        assert rows.packed_size() == len("\x00".join(texts).encode("utf-8")), odd


def test_a_change_file_of_records_made_as_read_holds_them_exactly(tmp_path):
    """Snapshot records made as they are read go to a change file (counted, then packed a part at a time)
    byte for byte as a list of the same texts does, and read back as those texts."""
    from nrr_engine import change_files
    from nrr_engine.metrics import snapshot
    snaps = snapshot.SnapshotSet(24316)
    roots = [f"001{i:015d}" for i in range(3_000)] + ["Zürich"]
    snaps.add("legal", roots, np.arange(len(roots)) * 7, np.arange(len(roots)) * 9, np.ones(len(roots), int))
    changes = snapshot.diff(snaps, snapshot.ExistingSnapshots(), "KPI_Snapshot__c")
    run = "20261202T000000Z-abcdef"
    lazy = {"ids": changes.ids, "keys": changes.keys, "old": changes.old, "new": changes.new}
    assert changes.new.packed_size() is None
    name, sha = change_files.write(tmp_path, run, 1, lazy)              # counted, then packed
    texts = list(changes.new)
    assert changes.new.packed_size() == len("\x00".join(texts).encode())  # a full read counts them
    name2, _ = change_files.write(tmp_path, run, 2, {**lazy, "new": texts})
    name3, _ = change_files.write(tmp_path, run, 3, lazy)               # packed once, from the count
    assert change_files.read(tmp_path, name, sha, len(roots), run)["new"] == texts
    assert (tmp_path / name).read_bytes() == (tmp_path / name2).read_bytes() == (tmp_path / name3).read_bytes()


def test_counting_a_column_finds_what_packing_finds():
    """The length a change file's header is written with is the packed buffer's, for ASCII, non-ASCII, None,
    numbers and a NUL (which keeps the batch as rows)."""
    from nrr_engine import packed
    for cells in (["a", "bc", None, ""], ["é", None, "日本"], [None, None], [], ["x", 12, None], ["a\x00b"], ["é\x00"]):
        got = packed._packed(list(cells))
        assert packed._counted(list(cells)) == (None if got is None else (len(got[0]), got[1]))
        parts = packed.pack_column_parts(cells, chunk=2)
        if got is None:
            assert parts is None
        else:
            gen, size, bits = parts
            assert b"\x00".join(p.tobytes() for p in gen) == got[0].tobytes() and size == len(got[0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.none(), st.just(""), st.text(max_size=12), st.integers(-5, 5)), max_size=40),
       st.integers(min_value=1, max_value=6))
def test_a_column_packed_a_part_at_a_time_is_the_one_buffer(cells, chunk):
    """A long column packed part by part into its buffer is byte for byte the buffer one join makes (None as
    '', numbers as their text, a NUL refused)."""
    from nrr_engine import packed
    whole = packed._packed(list(cells))
    parted = packed._assembled(list(cells), chunk)
    assert (whole is None) == (parted is None)
    if whole is not None:
        assert parted[0].tobytes() == whole[0].tobytes() and parted[1] == whole[1]


def test_a_link_batch_packed_after_matching_reads_back_as_its_tuples():
    """A link batch's (rule, confidence, evidence), packed once matching is over, iterates and indexes as the
    tuples did: the same rule names, the same confidences (floats, an int, None), the evidence's JSON and dict."""
    meta = [("name-qualifier", 0.97, match.KeyEvidence("DunsNumber", f"{i:09d}", "DunsNumber")) for i in range(25_003)]
    meta[5] = ("domain", 1, {"domain": "acme.com", "nul": "a\x00b"})
    meta[7] = ("mapping", None, None)
    meta[9] = ("raw", 0.5, match.EvidenceJson('{"id": "a\x00b"}'))   # a NUL in the text: its chunk kept as texts
    packed = match.PackedMeta(meta)
    assert isinstance(packed._chunks[0], list) and not isinstance(packed._chunks[1], list)
    assert len(packed) == len(meta)
    expected = [(r, c, match.compacted(ev) if not isinstance(ev, dict) else json.dumps(ev, sort_keys=True))
                for r, c, ev in meta]
    got = list(packed)
    assert [(r, c) for r, c, _ in got] == [(r, c) for r, c, _ in meta]
    assert all(type(a[1]) is type(b[1]) for a, b in zip(got, meta))
    assert [None if ev is None else ev.to_json() for _, _, ev in got] == [e for _, _, e in expected]
    assert got[5][2].as_dict() == {"domain": "acme.com", "nul": "a\x00b"} and got[7][2] is None
    assert got[9][2] == '{"id": "a\x00b"}' 
    assert packed[20_001] == got[20_001] and packed[-1] == got[-1] and packed == got
    assert list(packed.json_rows()) == [(r, c, None if ev is None else match.to_json(ev)) for r, c, ev in got]
    assert all(type(t) is str for _, _, t in packed.json_rows() if t is not None)
    with pytest.raises(IndexError):
        packed[len(meta)]


def test_a_nul_found_while_streaming_a_counted_column_keeps_the_batch_as_rows(tmp_path):
    """Values that said their packed size but hold a NUL when packed: the change file is not written (the
    batch stays rows) and nothing of it is left on disk."""
    from nrr_engine import change_files

    class Counted(list):
        nones = 0

        def packed_size(self):
            return 7

    run = "20261202T000000Z-abcdef"
    assert change_files.write(tmp_path, run, 1, {"ids": ["a", "b"], "new": Counted(["ok", "b\x00c"])}) is None
    assert not list((tmp_path / run).glob("*.npz"))


def test_a_first_runs_rollup_batches_share_their_rows_and_hold_no_none_per_account():
    """Fields no account has a value in yet: every account changes, the batches share one rows array, their old
    values are one None seen n times, and the changes read as the plain ones (old None, the new text)."""
    from nrr_engine.config import View
    from nrr_engine.hierarchy.tree import build_tree
    from nrr_engine.metrics.rollup import rollup_changes
    from nrr_engine.model import Accounts
    ids = ["001A", "001B", "001C"]
    accounts = Accounts(ids, {"ParentId": [None, "001A", "001A"], "Ultimate_Parent__c": [None] * 3,
                              "Hierarchy_Depth__c": [None] * 3, "Hierarchy_ARR__c": [None] * 3,
                              "Child_Count__c": [None] * 3})
    tree, _ = build_tree(ids, accounts.index, accounts.column("ParentId"), "ParentId")
    view = View("legal", "ParentId", {"ultimate_parent": "Ultimate_Parent__c", "depth": "Hierarchy_Depth__c",
                                      "arr": "Hierarchy_ARR__c", "child_count": "Child_Count__c"})
    batches = rollup_changes(view, tree, np.array([10_000, 20_000, 0], dtype=np.int64), accounts)
    assert [b.field for b in batches] == ["Ultimate_Parent__c", "Hierarchy_Depth__c", "Hierarchy_ARR__c",
                                          "Child_Count__c"]
    assert all(b.rows is batches[0].rows for b in batches) and batches[0].rows.tolist() == [0, 1, 2]
    assert all(b.old.strides == (0,) and list(b.old) == [None] * 3 for b in batches)
    assert [(c.id, c.old, c.new) for c in batches[2]] == [("001A", None, "3.00"), ("001B", None, "2.00"),
                                                         ("001C", None, "0.00")]
    accounts.fields["Hierarchy_Depth__c"] = ["0", "1", None]   # values stored: compared, not assumed None
    again = rollup_changes(view, tree, np.array([10_000, 20_000, 0], dtype=np.int64), accounts)
    assert [(c.id, c.old, c.new) for c in again[1]] == [("001C", None, "1")]


_CELLS = st.lists(st.one_of(st.none(), st.text(alphabet=st.sampled_from("ab é日\t-"), max_size=6)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(_CELLS, st.integers(1, 7))
def test_texts_hold_the_cells_of_the_list_and_the_stores_buffer(cells, chunk):
    """packed.Texts reads back every cell (None, '', non-ASCII) by index, slice and iteration, packs to the very
    buffer pack() makes, and reads that buffer back (the store's), '' as None where asked."""
    from nrr_engine.packed import Texts, pack
    texts = Texts.of_parts([cells[at:at + chunk] for at in range(0, len(cells), chunk)])
    assert len(texts) == len(cells) and list(texts) == cells and texts == cells
    assert [texts[i] for i in range(len(cells))] == cells and texts[1:4] == cells[1:4]
    assert texts.nones == cells.count(None)
    assert texts.packed().tobytes() == pack(cells).tobytes()
    assert texts.nonempty().tolist() == [i for i, c in enumerate(cells) if c]
    assert list(Texts.from_packed(pack(cells), len(cells), none_when_empty=True)) == [c or None for c in cells]
    assert list(Texts.from_packed(pack(cells), len(cells))) == [c or "" for c in cells]
    assert Texts.of(["a\x00b"]) is None and Texts.from_packed(pack(["a", "b"]), 3) is None


_KEYS = st.lists(st.lists(st.sampled_from(["acme", "uk", "hq", "group", "us", "beta", "and"]), max_size=4)
                 .map(" ".join), max_size=30)


@settings(max_examples=200, deadline=None)
@given(_KEYS)
def test_the_name_index_answers_as_the_dict_of_the_names_did(keys):
    """NameIndex.get, `in`, texts and shared give what a dict of key -> account (a list when shared) gives, and
    the longest-prefix search finds for each account what looking each prefix up in turn finds."""
    from nrr_engine.packed import Texts
    pop = match.Population(list(map(str, range(len(keys)))), lambda name: keys, np.full(len(keys), -1),
                           np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=np.int64),
                           np.zeros(len(keys), dtype=np.int64), np.ones(len(keys), dtype=bool),
                           np.ones(len(keys), dtype=bool), _cache={("keys", "Name"): Texts.of(keys)})
    full, head = pop.name_index("Name")
    want: dict = {}
    for i, k in enumerate(keys):
        if k:
            want.setdefault(k, []).append(i)
    for k in {*keys, "acme", "nobody"}:
        got = want.get(k)
        as_dict = None if got is None else got[0] if len(got) == 1 else got
        assert full.get(k) == as_dict and (k in full) == (as_dict is not None)
    assert full.texts() == set(want)
    assert full.shared() == [(k, v) for k, v in want.items() if len(v) > 1]
    expected = []
    for i, key in enumerate(keys):   # the loop matching ran before: each prefix, longest first, full then head
        cut = key.rfind(" ")
        while cut > 0:
            hit = full.get(key[:cut])
            hit = head.get(key[:cut]) if hit is None else hit
            if hit is not None:
                expected.append((i, cut, hit))
                break
            cut = key.rfind(" ", 0, cut)
    got = list(match.longest_prefix_hits(pop.keys("Name"), list(range(len(keys))), full, head))
    assert [(i, cut, hit) for i, _, cut, hit in got] == expected and all(key == keys[i] for i, key, _, _ in got)


def test_a_hash_shared_by_other_names_never_links_them():
    """Entries whose hashes collide are told apart by their text: only the account of the same name is given."""
    keys = ["acme", "beta", "acme", "gamma"]
    index = match.NameIndex(keys, np.zeros(4, dtype=np.int64), np.arange(4))   # every hash the same
    lo, hi = index.find(np.zeros(1, dtype=np.int64))
    assert (int(lo[0]), int(hi[0])) == (0, 4)
    assert index.at(0, 4, "acme") == [0, 2] and index.at(0, 4, "beta") == 1 and index.at(0, 4, "delta") is None
    assert index.shared() == [("acme", [0, 2])]


def test_an_account_column_without_a_value_is_held_as_n_nones():
    """A column no account has a value in reads as n Nones (index, slice, iteration, count, equality) and becomes
    a list when a placeholder parent is appended to the accounts."""
    from nrr_engine.model import Accounts, Nones
    col = Nones(3)
    assert list(col) == [None] * 3 and col == [None, None, None] and col[2] is None and col[-3] is None
    assert col[1:] == [None, None] and col.count(None) == 3 and col.count("x") == 0 and col.nones == 3
    with pytest.raises(IndexError):
        col[3]
    accounts = Accounts(["001A", "001B", "001C"], {"Name": ["a", "b", "c"], "Hierarchy_ARR__c": col})
    accounts.append("001D", {"Name": "d", "Hierarchy_ARR__c": "5.00"})
    assert accounts.column("Hierarchy_ARR__c") == [None, None, None, "5.00"]
    assert isinstance(accounts.fields["Hierarchy_ARR__c"], list)
