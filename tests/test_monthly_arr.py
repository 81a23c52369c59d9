"""MonthlyArr, monthly ARR held as runs: every operation the stages use gives what the dense matrix gives."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nrr_engine.metrics.monthly import MonthlyArr

AMOUNTS = st.sampled_from([0, 0, 0, 5, 7, -3, 10**15])   # runs of equal values are common: draw few values


@st.composite
def dense(draw, rows=st.integers(0, 7), cols=st.integers(1, 6)):
    n, c = draw(rows), draw(cols)
    flat = draw(st.lists(AMOUNTS, min_size=n * c, max_size=n * c))
    return np.array(flat, dtype=np.int64).reshape(n, c)


def _events(d: np.ndarray):
    """The changes that make `d`: each row's value changes, and back to 0 after the last month."""
    rows, cols, deltas = [], [], []
    for r, line in enumerate(d.tolist()):
        prev = 0
        for j, v in enumerate([*line, 0]):
            if v != prev:
                rows.append(r)
                cols.append(j)
                deltas.append(v - prev)
            prev = v
    return rows, cols, deltas


@settings(max_examples=200, deadline=None)
@given(dense())
def test_runs_read_back_as_the_dense_matrix(d):
    """from_dense then dense gives the matrix; columns, totals, earlier ARR and first ARR month match it."""
    m = MonthlyArr.from_dense(d)
    assert m.shape == d.shape and np.array_equal(m.dense(), d)
    assert not (m.units == 0).any()
    for j in range(d.shape[1]):
        assert np.array_equal(m.column(j), d[:, j])
        assert m.total(j) == int(d[:, j].sum())
        assert np.array_equal(m.positive_before(j), (d[:, :j] > 0).any(axis=1))
    has = d > 0
    assert np.array_equal(m.first_positive(), np.where(has.any(axis=1), has.argmax(axis=1), -1))
    if len(d) > 1:
        assert np.array_equal(m.dense(np.array([len(d) - 1, 0])), d[[len(d) - 1, 0]])


@settings(max_examples=200, deadline=None)
@given(dense(), st.randoms(use_true_random=False))
def test_changes_in_any_order_and_split_into_parts_give_the_same_runs(d, rnd):
    """from_events in any order, over several parts (subscription chunks), equals from_dense: runs are canonical."""
    rows, cols, deltas = _events(d)
    # split an amount in two (two subscriptions of one account starting the same month)
    ev = list(zip(rows, cols, deltas))
    ev += [(r, c, 0) for r, c, _ in ev[:2]]
    rnd.shuffle(ev)
    cut = rnd.randint(0, len(ev))
    parts = [tuple(np.array(x, dtype=t) for x, t in zip(zip(*chunk), (np.int32, np.int32, np.int64)))
             for chunk in (ev[:cut], ev[cut:]) if chunk]
    got = MonthlyArr.from_events(len(d), d.shape[1], parts)
    want = MonthlyArr.from_dense(d)
    assert np.array_equal(got.dense(), d)
    assert got == want
    assert [np.array_equal(getattr(got, k), getattr(want, k)) for k in ("row", "start", "end", "units")] == [True] * 4


@settings(max_examples=200, deadline=None)
@given(dense(rows=st.integers(1, 7)), dense(rows=st.integers(1, 7)), st.randoms(use_true_random=False))
def test_changed_copies_equal_the_dense_edits(d, other, rnd):
    """replace_rows, with_column and placed give the runs of the same edit on the dense matrix; differs names
    exactly the rows that differ."""
    m = MonthlyArr.from_dense(d)
    n, c = d.shape
    rows = np.array(sorted(rnd.sample(range(n), rnd.randint(0, n))), dtype=np.int64)
    block = np.resize(other, (len(rows), c)) if other.size else np.zeros((len(rows), c), dtype=np.int64)
    edited = d.copy()
    edited[rows] = block
    changed = m.replace_rows(rows, block)
    assert changed == MonthlyArr.from_dense(edited) and np.array_equal(changed.dense(), edited)
    assert np.array_equal(m.differs(changed), np.flatnonzero((d != edited).any(axis=1)))
    assert np.array_equal(m.dense(), d)   # immutable: the original is unchanged
    j = rnd.randrange(c)
    values = np.array([rnd.choice([0, 5, 7]) for _ in range(n)], dtype=np.int64)
    col = d.copy()
    col[:, j] = values
    assert m.with_column(j, values) == MonthlyArr.from_dense(col)
    pos = np.array(rnd.sample(range(n), n), dtype=np.int64)
    moved = np.empty_like(d)
    moved[pos] = d
    assert m.placed(pos) == MonthlyArr.from_dense(moved)


def test_runs_are_listed_per_row_in_row_order():
    """runs() gives (row, start, end, units) of every run, or of the rows asked for, in row order."""
    m = MonthlyArr.from_dense(np.array([[0, 5, 5, 7], [0, 0, 0, 0], [3, 3, 0, 3]]))
    assert list(m.runs()) == [(0, 1, 2, 5), (0, 3, 3, 7), (2, 0, 1, 3), (2, 3, 3, 3)]
    assert list(m.runs(np.array([2]))) == [(2, 0, 1, 3), (2, 3, 3, 3)]
    assert m.differs(None).tolist() == [0, 2]


def test_a_million_accounts_are_held_in_a_fraction_of_the_dense_matrix():
    """ARR that changes twice in 26 months at a million accounts: runs of a few MB, not the 208 MB matrix."""
    n, c = 1_000_000, 26
    acc = np.arange(n, dtype=np.int32)
    start = (acc % 7).astype(np.int32)
    parts = [(np.concatenate([acc, acc, acc]), np.concatenate([start, start + 10, np.full(n, c, np.int32)]),
              np.concatenate([np.full(n, 100), np.full(n, 50), np.full(n, -150)]).astype(np.int64))]
    m = MonthlyArr.from_events(n, c, parts)
    assert len(m.row) == 2 * n and m.nbytes <= 2 * n * 24
    assert m.nbytes * 4 < n * c * 8
    assert m.total(0) == 100 * int((start == 0).sum()) and m.total(c - 1) == 150 * n


def test_wrong_shapes_are_refused():
    """A column outside the months, rows of another width and a comparison of other shapes raise."""
    m = MonthlyArr.from_dense(np.array([[1, 2]]))
    with pytest.raises(IndexError, match="month offset 2 outside 0..1"):
        m.column(2)
    with pytest.raises(ValueError, match="rows for 1 accounts x 2 months"):
        m.replace_rows(np.array([0]), np.zeros((1, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="shapes differ"):
        m.differs(MonthlyArr(2, 2))
