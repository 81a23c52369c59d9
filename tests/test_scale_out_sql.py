"""The NRR definitions as plain SQL (nrr_engine/sql/nrr.sql), for orgs that outgrow one machine: run on the state
store's own history tables, it gives the figures `report nrr` gives, family and naive, monthly and T12M."""
from __future__ import annotations

import sqlite3
from decimal import Decimal
from importlib import resources

import pytest

from conftest import Cli
from nrr_engine import money

AS_OF = ("--as-of", "2026-11-15")
FIGURES = ("start", "end", "expansion", "contraction", "churn")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo org after its run (a few months of recorded membership come from one run: its tree)."""
    root = tmp_path_factory.mktemp("sql") / "d"
    Cli(None)("demo", "--dir", str(root))
    return root


@pytest.mark.parametrize("m0, m1, window", [("2026-09", "2026-10", "1"), ("2025-10", "2026-10", "12"),
                                            ("2026-07", "2026-10", "3")])
def test_the_sql_gives_the_reports_figures(demo, m0, m1, window):
    """nrr.sql over arr_history and membership equals `report nrr --format json`, family and naive."""
    sql = resources.files("nrr_engine").joinpath("sql/nrr.sql").read_text()
    db = sqlite3.connect(demo / "state" / "nrr.db")
    rows = {r[0]: r[1:] for r in db.execute(sql, {"view": "legal", "m0": m0, "m1": m1})}
    report = Cli(demo / "config" / "nrr.yaml").json("report", "nrr", "--format", "json", "--period", m1,
                                                     "--window", window, *AS_OF)
    for level in ("family", "naive"):
        got = dict(zip((*FIGURES, "new_business"), (money.fmt(v) for v in rows[level])))
        want = {k: report[level][k] for k in FIGURES}
        want["new_business"] = money.fmt(money.parse_units(report[level]["new_logo"])
                                         + money.parse_units(report[level]["reactivation"]))
        assert got == want, level
    start, end, _, contraction, churn, _ = (Decimal(v) for v in rows["family"])
    six = Decimal("0.000001")
    assert Decimal(report["family"]["nrr"]) == (end / start).quantize(six)
    assert Decimal(report["family"]["grr"]) == ((start - contraction - churn) / start).quantize(six)
