"""The write side's fast paths (issue 13) give exactly what the plain ones give, awkward inputs included."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nrr_engine import money
from nrr_engine.metrics import snapshot


def _reference_json(key, values) -> str:
    """A snapshot record as json.dumps writes each value: what to_json has always written."""
    return "{" + ", ".join(f'"{f}": {json.dumps(v)}' for f, v in zip((snapshot.KEY, *snapshot.FIELDS), (key, *values))) + "}"


AWKWARD = ["", "a b", 'say "hi"', "back\\slash", "tab\there", "line\nbreak", "Zürich", "日本", "\x7f", "\x1f", "😀",
           "-", "1.0000", "a:b_c-d.e", None]


@pytest.mark.parametrize("value", AWKWARD)
def test_to_json_matches_json_dumps_for_awkward_values(value):
    """to_json writes each value as json.dumps does: quotes, backslashes, controls, non-ASCII, None."""
    values = ("legal", "001A", "2026-10", value, "1.00", "0.00", "0.00", "0.00", value, None, "3")
    key = f"legal:{value}:2026-10"
    assert snapshot.to_json(key, values) == _reference_json(key, values)
    assert json.loads(snapshot.to_json(key, values))[snapshot.FIELDS[3]] == value


def _set(views_roots: dict[str, list[str]], seed: int = 5, big: bool = False) -> snapshot.SnapshotSet:
    rng = np.random.default_rng(seed)
    snaps = snapshot.SnapshotSet(24316)
    for view, roots in views_roots.items():
        n = len(roots)
        top = 2**62 // 4 if big else 10**10
        f0 = rng.integers(0, top, n) * (rng.random(n) > 0.2)
        f1 = rng.integers(0, top, n) * (rng.random(n) > 0.2)
        snaps.add(view, roots, f0, f1, rng.integers(1, 50, n))
    return snaps


@pytest.mark.parametrize("views_roots", [
    {"legal": [f"001{i:015d}" for i in range(3000)]},
    {"legal": [f"001{i:015d}" for i in range(500)], "by region": [f"001{i:015d}" for i in range(400)]},
    {"legal": ["001A", 'quo"te', "Zürich", "tab\t", "back\\", "plain"]},
    {"vüe": ["001A", "001B"], "legal": ["001C"]},
])
@pytest.mark.parametrize("big", [False, True])
def test_first_run_snapshot_json_matches_json_dumps(views_roots, big):
    """A first run's snapshot JSON (made a chunk at a time) is byte for byte json.dumps of each value, in key
    order, whether or not a view or root needs escaping and for huge amounts."""
    snaps = _set(views_roots, big=big)
    changes = snapshot.diff(snaps, snapshot.ExistingSnapshots(), "KPI_Snapshot__c")
    rows = list(snaps.rows())
    assert changes.keys == [k for k, _ in rows] == sorted(k for k, _ in rows)
    assert changes.new == [_reference_json(k, v) for k, v in rows]
    assert changes.ids == [None] * len(rows) and changes.old == [None] * len(rows)


def test_first_run_json_small_chunks_match():
    """The chunked JSON is the same whatever the chunk size (the first chunk clean, a later one not)."""
    snaps = _set({"legal": [f"001{i:05d}" for i in range(50)] + ['zz"quoted']})
    whole = [t for keys, cols in snaps._chunks(10_000) for t in snapshot._json_rows(keys, cols)]
    small = [t for keys, cols in snaps._chunks(7) for t in snapshot._json_rows(keys, cols)]
    assert whole == small == [_reference_json(k, v) for k, v in snaps.rows()]


def test_changed_snapshot_json_matches_first_run_json():
    """A snapshot that differs from the org's record is written with the same JSON a first run writes."""
    snaps = _set({"legal": [f"001{i:015d}" for i in range(200)]})
    first = snapshot.diff(snaps, snapshot.ExistingSnapshots(), "KPI_Snapshot__c")
    rows = list(snaps.rows())
    stored = [(f"a{i:017d}", k, *v[:3], "1.00", *v[4:]) for i, (k, v) in enumerate(rows)]
    later = snapshot.diff(snaps, snapshot.ExistingSnapshots.from_rows(24316, stored), "KPI_Snapshot__c")
    assert later.new == [t for t, (_, v) in zip(first.new, rows) if v[3] != "1.00"]
    assert later.old == [_reference_json(r[1], r[2:]) for r, (_, v) in zip(stored, rows) if v[3] != "1.00"]


EDGES = [0, 1, -1, 49, 50, 51, 149, 150, 151, 250, -50, -150, 99, 100, 9999, 10_000, -10_000, 2**62, -2**62,
         2**63 - 1, -2**63 + 1, 10**18, 10**17 - 1] + [s * (10**k + d) for k in range(19) for d in (-50, -1, 0, 50)
                                                         for s in (1, -1) if abs(10**k + d) < 2**63]


def test_fmt_many_matches_fmt_at_the_edges():
    """The vectorised money text is exactly fmt's: half-even rounding, signs, -0.00, int64's extremes."""
    rng = np.random.default_rng(3)
    values = EDGES + rng.integers(-2**63 + 1, 2**63 - 1, 5000, dtype=np.int64).tolist() \
        + rng.integers(-10**9, 10**9, 5000).tolist()
    assert money.fmt_many(np.array(values, dtype=np.int64)) == [money.fmt(v) for v in values]
    assert money.fmt_many(np.zeros(0, dtype=np.int64)) == []
    assert money.fmt_many(np.zeros(3, dtype=np.int64)) == ["0.00"] * 3


def test_fmt_many_keeps_its_answer_for_the_lowest_int64():
    """An array holding the lowest int64 (whose abs overflows) is formatted as it always was."""
    values = np.array([-2**63, 5, -7], dtype=np.int64)
    assert money.fmt_many(values) == money._fmt_many_slow(values)
    assert money.fmt_many(values)[1:] == ["0.00", "-0.00"]


def test_ratio_many_matches_ratio_text():
    """The vectorised ratio text is exactly ratio_text's, None for a zero denominator, large and small ones."""
    rng = np.random.default_rng(4)
    num = np.concatenate([rng.integers(0, 9 * 10**14, 4000), rng.integers(0, 100, 4000), [0, 1, 5, 10**14]])
    den = np.concatenate([rng.integers(0, 10**12, 4000), rng.integers(0, 100, 4000), [0, 3, 0, 1]])
    den[::9] = 0
    assert money.ratio_many(num, den) == [money.ratio_text(a, b) for a, b in zip(num.tolist(), den.tolist())]
    assert money.ratio_many(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)) == []


def _reference_pack_column(values):
    """pack_column as it was written before (str() a cell, a generator for the None bits)."""
    texts = ["" if v is None else str(v) for v in values]
    blob = "\x00".join(texts)
    if blob.count("\x00") != max(len(texts) - 1, 0):
        return None
    return (np.frombuffer(blob.encode("utf-8", "surrogatepass"), dtype=np.uint8),
            np.packbits(np.fromiter((v is None for v in values), dtype=bool, count=len(values))))


COLUMNS = [[], [None], [""], ["a"], [None, None, None], ["", None, ""], ["001A", "Zürich", "日本", "😀", "\ud800x"],
           [None, "a", None, "b\n", "tab\t"], [1, None, "x", 2.5], [3, 4], ["a\x00b", None], [None, "\x00"]]


@pytest.mark.parametrize("values", COLUMNS)
@pytest.mark.parametrize("as_array", [False, True])
def test_pack_column_matches_the_cell_by_cell_packing(values, as_array):
    """pack_column packs lists and object arrays byte for byte as before: None, '', non-ASCII, lone surrogates,
    numbers, and a NUL (None: not packable)."""
    from nrr_engine import packed

    column = np.array(values, dtype=object) if as_array else values
    got, want = packed.pack_column(column), _reference_pack_column(values)
    if want is None:
        assert got is None and packed.pack(column) is None
        return
    assert got[0].tobytes() == want[0].tobytes() and got[1].tobytes() == want[1].tobytes()
    assert packed.pack(column).tobytes() == want[0].tobytes()
    assert packed.unpack_column(*got, len(values)) == [None if v is None else str(v) for v in values]


def _as_tuple(changes) -> tuple:
    return list(changes.keys), list(changes.ids), list(changes.old), list(changes.new)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_a_rerun_whose_families_came_and_went_diffs_as_the_merge_join_does(data):
    """Snapshots against stored records that only partly share their keys (families gone, new ones, another
    view's records, a key held twice, values written otherwise but equal, values changed): the lookup diff gives
    the merge join's changes exactly (keys, Ids, old and new JSON, in order)."""
    n = data.draw(st.integers(1, 40))
    rng = np.random.default_rng(data.draw(st.integers(0, 10**6)))
    snaps = snapshot.SnapshotSet(24316)
    roots = [f"001{i:015d}" for i in range(n)]
    snaps.add("legal", roots, rng.integers(0, 10**6, n) * (rng.random(n) > 0.2), rng.integers(0, 10**6, n),
              rng.integers(1, 9, n))
    rows = list(snaps.rows())
    stored = []
    for i, (key, values) in enumerate(rows):
        fate = data.draw(st.sampled_from(["same", "gone", "changed", "otherwise", "twice"]))
        if fate == "gone":        # the family is new this run: no record
            continue
        v = list(values)
        if fate == "changed":
            v[4] = "1.00"
        elif fate == "otherwise" and v[3] and "." in v[3]:
            v[3] = v[3] + "0"      # the same amount, written otherwise: kept
        stored.append((f"a0K{i:015d}", key, *v))
        if fate == "twice":
            stored.append((f"a0K{i + 500:015d}", key, *v))
    for k in range(data.draw(st.integers(0, 3))):   # families that no longer exist, in the covered view or not
        view = data.draw(st.sampled_from(["legal", "zz_other"]))
        stored.append((f"a0K{900 + k:015d}", f"{view}:001X{k:014d}:2026-04", view, f"001X{k:014d}", "2026-04",
                       *["1"] * 8))
    existing = snapshot.ExistingSnapshots.from_rows(24316, sorted(stored, key=lambda r: r[1]))
    want = snapshot._diff_merged(snaps, existing, "KPI_Snapshot__c")
    joined = snapshot._diff_joined(snaps, existing, "KPI_Snapshot__c")
    assert joined is not None and _as_tuple(joined) == _as_tuple(want)
    assert _as_tuple(snapshot._diff_month(snaps, existing, "KPI_Snapshot__c")) == _as_tuple(want)


def test_the_lookup_diff_refuses_records_out_of_key_order():
    """Stored records not in key order are an error, as in the merge join, not a silent wrong diff."""
    snaps = snapshot.SnapshotSet(24316)
    snaps.add("legal", ["001A", "001B"], np.array([1, 2]), np.array([1, 2]), np.array([1, 1]))
    rows = [(f"a0K{i}", k, *v) for i, (k, v) in enumerate(snaps.rows())]
    existing = snapshot.ExistingSnapshots.from_rows(24316, rows[::-1])
    with pytest.raises(RuntimeError, match="not in key order"):
        snapshot._diff_joined(snaps, existing, "KPI_Snapshot__c")
