"""The stages called directly with data: DESIGN §5's worked examples on the repair + NRR stages with no CLI, org
or ledger; recorded membership as data; the snapshot stage deletes the snapshot of an absorbed family."""
from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
from hypothesis import given, settings as hypothesis_settings, strategies as st

from nrr_engine import money, months
from nrr_engine.config import ArrSettings, Settings, View
from nrr_engine.hierarchy.membership import Membership
from nrr_engine.hierarchy.repair import Decisions
from nrr_engine.metrics.monthly import MonthlyArr
from nrr_engine.metrics.snapshot import ExistingSnapshots
from nrr_engine.model import Accounts
from nrr_engine.pipeline import stages
from nrr_engine.rules import RuleSet
from nrr_engine.state import RunContext, State

AS_OF = dt.date(2026, 11, 15)
CUR = months.of(AS_OF)                 # 2026-11: the runs' month; 2026-10 is the last closed month
FIRST = CUR - 24


def settings() -> Settings:
    return Settings(config_file=Path("nrr.yaml"), source_kind="local", org_path=None, working_copy=None,
                    state=Path("nrr.db"), currency="USD", timezone="UTC", arr=ArrSettings(source="history"),
                    views=(View("legal", "ParentId"),), rule_files=(), schedule={})


def world(accounts: dict[str, str], arr: dict[str, dict[str, str]], segments=()) -> State:
    """A fetched State by hand: accounts {Id: ParentId}, ARR {Id: {YYYY-MM: amount}} held until the next
    month given, recorded membership segments (account, start, end, root)."""
    ids = list(accounts)
    acc = Accounts(ids, {"ParentId": [accounts[i] or None for i in ids], "Name": ids})
    matrix = np.zeros((len(ids), CUR - FIRST + 1), dtype=np.int64)
    for k, rid in enumerate(ids):
        for month, amount in sorted(arr.get(rid, {}).items()):
            matrix[k, months.parse(month) - FIRST:] = money.parse_units(amount)
    return State(accounts=acc, ruleset=RuleSet(), first=FIRST, matrix=MonthlyArr.from_dense(matrix), arr_rows_changed=np.zeros(0, np.int64),
                 membership={"legal": Membership.from_segments("legal", segments, acc.index, len(segments))},
                 decisions=Decisions(), existing_snapshots=ExistingSnapshots)


def run_stages(state: State, until: str = "gates") -> State:
    ctx = RunContext.new(lambda: dt.datetime(2026, 11, 15, tzinfo=dt.timezone.utc), AS_OF)
    for name, stage in stages(settings()):
        state = stage(ctx, state)
        if name == until:
            break
    return state


def fig(state: State, window: int = 1) -> tuple[dict, dict]:
    f = state.nrr["legal"][window]
    return f["family"].as_json(), f["naive"].as_json(naive=True)


def test_example_1_on_the_nrr_stage():
    """Start 1,000,000; expansion 80k; contraction 20k; churn 30k -> NRR 103.0 %, GRR 95.0 %."""
    s = run_stages(world({"A": "", "B": "", "C": "", "D": ""},
                         {"A": {"2025-01": "500000", "2026-10": "580000"}, "B": {"2025-01": "300000", "2026-10": "280000"},
                          "C": {"2025-01": "30000", "2026-10": "0"}, "D": {"2025-01": "170000"}}))
    f, _ = fig(s)
    assert (f["start"], f["end"], f["expansion"], f["contraction"], f["churn"]) == (
        "1000000.00", "1030000.00", "80000.00", "20000.00", "30000.00")
    assert (f["nrr"], f["grr"]) == ("1.03", "0.95")


def test_example_2_on_the_nrr_stage():
    """Hulu 100k -> 0 and Fox 0 -> 100k within Disney: family NRR 100 %, transfer 100k; naive churn + new logo."""
    s = run_stages(world({"DIS": "", "HUL": "DIS", "FOX": "DIS"},
                         {"DIS": {"2025-01": "500000"}, "HUL": {"2025-01": "100000", "2026-10": "0"},
                          "FOX": {"2026-10": "100000"}}))
    f, n = fig(s)
    assert (f["nrr"], f["grr"], f["internal_transfers"], f["churn"], f["new_logo"]) == ("1", "1", "100000.00", "0.00",
                                                                                          "0.00")
    assert (n["churn"], n["new_logo"]) == ("100000.00", "100000.00")


def test_example_3_hierarchy_expansion_from_recorded_membership():
    """Disney -20k while a 60k deal closes on Hulu, recorded alone in September and under Disney in October:
    family expansion 40k (hierarchy expansion 60k); naive contraction 20k and a 60k new logo."""
    segments = [("DIS", "2026-09", "2026-09", "DIS"), ("HUL", "2026-09", "2026-09", "HUL"),
                ("DIS", "2026-10", None, "DIS"), ("HUL", "2026-10", None, "DIS")]
    s = run_stages(world({"DIS": "", "HUL": "DIS"}, {"DIS": {"2025-01": "300000", "2026-10": "280000"},
                                                     "HUL": {"2026-10": "60000"}}, segments))
    f, n = fig(s)
    assert (f["expansion"], f["hierarchy_expansion"], f["contraction"], f["new_logo"]) == (
        "40000.00", "60000.00", "0.00", "0.00")
    assert (n["contraction"], n["new_logo"]) == ("20000.00", "60000.00")


def test_example_4_trailing_twelve_months():
    """Steady Co 100k all year, its linked subsidiary 0 -> 20k: family T12M NRR 120 %, naive 100 % + 20k new logo."""
    s = run_stages(world({"STC": "", "SUK": "STC"}, {"STC": {"2025-01": "100000"}, "SUK": {"2026-03": "20000"}}))
    f, n = fig(s, 12)
    assert (f["nrr"], f["new_logo"]) == ("1.2", "0.00")
    assert (n["nrr"], n["new_logo"]) == ("1", "20000.00")


def test_a_runs_own_month_supersedes_what_earlier_runs_of_it_recorded():
    """Membership recorded earlier in this month (Hulu alone) does not hold back this run's tree (Hulu under
    Disney): the run's figures use its own tree, and what it records is the change."""
    segments = [("DIS", "2026-11", None, "DIS"), ("HUL", "2026-11", None, "HUL")]
    s = run_stages(world({"DIS": "", "HUL": "DIS"}, {"DIS": {"2025-01": "500000"},
                                                     "HUL": {"2025-01": "100000", "2026-10": "0"}}, segments))
    f, _ = fig(s)
    assert (f["churn"], f["internal_transfers"]) == ("0.00", "0.00")
    assert f["contraction"] == "100000.00"      # one family of 600k that became 500k
    assert s.membership_changes == {"legal": [("HUL", "DIS")]}


def test_past_months_keep_the_families_seen_then():
    """A month recorded by its own runs keeps the family it had then, whatever today's tree says."""
    segments = [("DIS", "2026-09", None, "DIS"), ("HUL", "2026-09", "2026-10", "HUL"), ("HUL", "2026-11", None, "DIS")]
    s = run_stages(world({"DIS": "", "HUL": "DIS"}, {"DIS": {"2025-01": "500000"}, "HUL": {"2025-01": "100000"}},
                         segments), until="hierarchy")
    labels = s.labels_at("legal", CUR - 1, CUR)
    assert labels.tolist() == [0, 1]             # October: Hulu was its own family
    assert s.labels_at("legal", CUR, CUR).tolist() == [0, 0]
    assert s.membership_changes == {"legal": []}


def test_snapshot_stage_deletes_the_snapshot_of_an_absorbed_family():
    """The org holds an October snapshot of Hulu's own family; Hulu is now under Disney: the stage deletes it
    and updates Disney's, so the month's records sum to the month's ARR."""
    existing = ExistingSnapshots.from_rows(CUR - 1, [
        ("a0K1", "legal:DIS:2026-10", "legal", "DIS", "2026-10-01", "500000.00", "500000.00", "0.00", "0.00",
         "0.00", "1", "1", "1"),
        ("a0K2", "legal:HUL:2026-10", "legal", "HUL", "2026-10-01", "100000.00", "100000.00", "0.00", "0.00",
         "0.00", "1", "1", "1")])
    s = dataclasses.replace(world({"DIS": "", "HUL": "DIS"}, {"DIS": {"2025-01": "500000"},
                                                              "HUL": {"2025-01": "100000"}}), existing_snapshots=lambda: existing)
    sc = run_stages(s).snapshot_changes
    assert sc.keys == ["legal:DIS:2026-10", "legal:HUL:2026-10"]
    assert sc.ids == ["a0K1", "a0K2"] and sc.new[1] is None and sc.deletes() == [(1, "a0K2")]
    assert '"Ending_ARR__c": "600000.00"' in sc.new[0]


@st.composite
def monthly_hierarchies(draw):
    """A few accounts and, for three consecutive months, one to three runs, each with a parent for every account
    (an earlier account or none: no cycles)."""
    n = draw(st.integers(2, 7))
    ids = [f"A{i}" for i in range(n)]
    tree = st.builds(lambda *ps: list(ps), *[st.one_of(st.none(), st.integers(0, i - 1)) if i else st.none()
                                             for i in range(n)])
    return ids, [draw(st.lists(tree, min_size=1, max_size=3)) for _ in range(3)]


@given(monthly_hierarchies())
@hypothesis_settings(max_examples=80, deadline=None)
def test_recording_a_month_keeps_the_past_and_a_rerun_records_nothing(tmp_path_factory, case):
    """Runs in three months, several a month: a run's figures for months no run saw use its own tree (never an
    earlier run's of the same month); a month keeps the families its last run saw; a rerun records nothing."""
    from nrr_engine.hierarchy.tree import build_tree
    from nrr_engine.ledger import Ledger

    ids, runs_by_month = case
    index = {r: i for i, r in enumerate(ids)}
    ledger = Ledger(tmp_path_factory.mktemp("m") / "nrr.db")

    def recorded() -> Membership:
        segs = list(ledger.membership_segments("legal"))
        return Membership.from_segments("legal", segs, index, len(segs))

    seen: dict[int, list[int]] = {}
    for k, runs in enumerate(runs_by_month):
        month = CUR - 2 + k
        for r, parents in enumerate(runs):
            tree, _ = build_tree(ids, index, [ids[p] if p is not None else None for p in parents])
            m = recorded()
            for past, labels in seen.items():
                assert m.labels_at(past, tree, month).tolist() == labels, f"month {past} changed"
            if not seen:  # no month before this one was seen: the run's own tree stands for it
                assert m.labels_at(month - 1, tree, month).tolist() == tree.families().tolist()
            ledger.commit_membership(f"run{k}.{r}", "legal", months.fmt(month), months.fmt(month - 1),
                                     m.changed(tree, ids))
            assert recorded().changed(tree, ids) == []          # a rerun of the same tree records nothing
        assert recorded().labels_at(month, tree, month + 1).tolist() == tree.families().tolist()
        seen[month] = tree.families().tolist()
    ledger.close()


def test_findings_are_data_with_a_severity_and_not_evaluated_is_its_own_outcome():
    """A finding's kind is known (a misspelt kind fails where it is made); a skipped rule is not_evaluated."""
    import pytest

    from nrr_engine.model import CheckOutcome, Finding, Severity

    f = Finding("rule_not_evaluated", "rule x not evaluated", (), CheckOutcome.NOT_EVALUATED)
    assert f.severity is Severity.WARNING and f.as_dict()["outcome"] == "not_evaluated"
    assert Finding("link_blocked_cycle", "m").as_dict()["severity"] == "info"
    assert Finding("cycle", "m").as_dict() | {"message": ""} == {"kind": "cycle", "severity": "error", "outcome": "found",
                                                                "message": "", "records": [], "record_count": 0}
    with pytest.raises(ValueError, match="unknown finding kind 'cylce'"):
        Finding("cylce", "m")
