"""Hierarchy from parent links: roots, depth, cycles and self-parents, deep chains; invariants by hypothesis."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from nrr_engine.hierarchy import build_tree
from nrr_engine.metrics.nrr import family_table, movements


def tree_of(parents: dict[str, str | None]):
    ids = sorted(parents)
    index = {k: i for i, k in enumerate(ids)}
    tree, findings = build_tree(ids, index, [parents[k] for k in ids])
    return ids, tree, {f.kind: f for f in findings}


def test_roots_depth_and_ultimate_parent():
    """Each account knows its ultimate parent and depth."""
    ids, t, f = tree_of({"a": None, "b": "a", "c": "b", "d": None})
    assert [ids[r] for r in t.root] == ["a", "a", "a", "d"]
    assert t.depth.tolist() == [0, 1, 2, 0] and not f


def test_cycle_is_reported_with_ids_and_broken_at_smallest_id():
    """A -> B -> C -> A: one finding naming the members, broken deterministically at the smallest Id."""
    ids, t, f = tree_of({"b": "c", "c": "a", "a": "b", "x": "a"})
    assert f["cycle"].records == ("a", "b", "c")
    assert "broken at a" in f["cycle"].message
    assert [ids[r] for r in t.root] == ["a", "a", "a", "a"]
    assert t.parent[ids.index("a")] == -1


def test_self_parent_and_dangling_parent_become_roots():
    """Self-parents and parents that match no account are findings, and those accounts are roots."""
    ids, t, f = tree_of({"a": "a", "b": "zzz"})
    assert f["self_parent"].records == ("a",) and f["dangling_parent"].records == ("b",)
    assert t.parent.tolist() == [-1, -1]


def test_ten_thousand_deep_chain():
    """A 10,000-deep chain resolves (depth and subtree sums) without recursion limits."""
    n = 10_000
    ids = [f"{i:05d}" for i in range(n)]
    tree, _ = build_tree(ids, {k: i for i, k in enumerate(ids)}, [None] + ids[:-1])
    assert int(tree.depth.max()) == n - 1 and int(tree.root.max()) == 0
    assert int(tree.subtree_sum(np.ones(n, dtype=np.int64))[0]) == n


def test_deep_chain_is_a_finding_in_a_run(org, cli):
    """Chains deeper than hierarchy.max_depth are reported in the run summary."""
    prev = ""
    for i in range(150):
        prev = org.account(f"001C{i:04d}", f"Chain {i}", prev)
    org.write()
    assert "[too_deep]" in cli("plan", "--as-of", "2026-11-15").stdout


@st.composite
def forests(draw, max_n=40):
    """Random forests as parent arrays (parent index always smaller: no cycles) with ARR per node."""
    n = draw(st.integers(1, max_n))
    parents = [None] + [draw(st.one_of(st.none(), st.integers(0, i - 1))) for i in range(1, n)]
    arr = draw(st.lists(st.integers(0, 10**9), min_size=n, max_size=n))
    return parents, arr


@settings(max_examples=150, deadline=None)
@given(forests())
def test_rollup_of_a_tree_equals_the_sum_of_its_members(forest):
    """Each root's subtree ARR equals the sum over the accounts whose ultimate parent it is."""
    parents, arr = forest
    ids = [f"{i:03d}" for i in range(len(parents))]
    tree, _ = build_tree(ids, {k: i for i, k in enumerate(ids)}, [None if p is None else ids[p] for p in parents])
    values = np.array(arr, dtype=np.int64)
    sub = tree.subtree_sum(values)
    for r in np.flatnonzero(tree.parent < 0):
        assert sub[r] == values[tree.root == r].sum()
    assert sub[tree.parent < 0].sum() == values.sum()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 10**8), st.integers(0, 10**8)), min_size=1, max_size=30),
       st.data())
def test_moving_arr_inside_a_family_never_changes_family_nrr(accounts, data):
    """Reassigning end-of-window ARR among a family's accounts leaves family figures unchanged."""
    family = np.array([a[0] for a in accounts])
    a0 = np.array([a[1] for a in accounts], dtype=np.int64)
    a1 = np.array([a[2] for a in accounts], dtype=np.int64)
    moved = a1.copy()
    for fam in set(family.tolist()):
        members = np.flatnonzero(family == fam)
        total = int(a1[members].sum())
        shares = data.draw(st.lists(st.integers(0, total), min_size=len(members) - 1, max_size=len(members) - 1))
        cuts = sorted(shares)
        moved[members] = np.diff([0, *cuts, total])
    prior = np.zeros(len(a0), dtype=bool)
    before, after = movements(family_table(a0, a1, prior, family)), movements(family_table(a0, moved, prior, family))
    for key in ("start", "end", "expansion", "contraction", "churn", "new_logo"):
        assert getattr(before, key) == getattr(after, key)
    assert before.nrr == after.nrr and before.grr == after.grr


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 10**8), st.integers(0, 10**8)), min_size=1, max_size=30))
def test_movements_always_add_up(accounts):
    """start + expansion - contraction - churn == end, at family and naive level."""
    family = np.array([a[0] for a in accounts])
    a0 = np.array([a[1] for a in accounts], dtype=np.int64)
    a1 = np.array([a[2] for a in accounts], dtype=np.int64)
    prior = np.zeros(len(a0), dtype=bool)
    assert movements(family_table(a0, a1, prior, family)).balanced()
    assert movements(family_table(a0, a1, prior, np.arange(len(a0)))).balanced()


def test_cycle_in_source_data_through_a_run(org, cli):
    """A ParentId cycle in Account.csv: the run succeeds, reports the cycle's Ids, and rolls up one family."""
    org.sub(org.account("001A", "Alpha", "001C"), "2025-01-01", "", "300")
    org.sub(org.account("001B", "Beta", "001A"), "2025-01-01", "", "200")
    org.sub(org.account("001C", "Gamma", "001B"), "2025-01-01", "", "100")
    org.write()
    out = cli("run", "--as-of", "2026-11-15").stdout
    assert "[cycle]" in out and "broken at 001A" in out
    import sqlite3
    db = sqlite3.connect(org.root / "state" / "local-org.db")
    rows = dict(db.execute("SELECT Id, Hierarchy_ARR__c FROM Account").fetchall())
    assert rows == {"001A": "600.00", "001B": "300.00", "001C": "100.00"}


def test_ten_thousand_deep_chain_through_a_run(org, cli):
    """A 10,000-deep chain runs to the end: a too_deep finding, the root carries all the ARR."""
    prev = ""
    for i in range(10_000):
        prev = org.account(f"001D{i:05d}", f"Deep {i}", prev)
    org.sub("001D00000", "2025-01-01", "", "1")
    org.sub("001D09999", "2025-01-01", "", "2")
    org.write()
    r = cli("run", "--as-of", "2026-11-15")
    assert "[too_deep]" in r.stdout and "deepest 9999" in r.stdout and "Traceback" not in r.stderr
    import sqlite3
    db = sqlite3.connect(org.root / "state" / "local-org.db")
    assert db.execute("SELECT Hierarchy_ARR__c FROM Account WHERE Id = '001D00000'").fetchone()[0] == "3.00"
