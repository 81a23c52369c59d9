"""The NRR definitions as plain SQL (nrr_engine/sql/nrr.sql), for orgs that outgrow one machine: run on the state
store's own history tables (Parquet files) in an existing engine, it gives the figures `report nrr` gives, family
and naive, monthly and T12M: on DuckDB reading the files where they are, and on SQLite with the files loaded."""
from __future__ import annotations

import re
import sqlite3
from decimal import Decimal
from importlib import resources

import duckdb
import pyarrow.parquet as pq
import pytest

from conftest import Cli
from nrr_engine import history_files, money
from nrr_engine.ledger import Ledger

AS_OF = ("--as-of", "2026-11-15")
FIGURES = ("start", "end", "expansion", "contraction", "churn")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo org after its run (a few months of recorded membership come from one run: its tree)."""
    root = tmp_path_factory.mktemp("sql") / "d"
    Cli(None)("demo", "--dir", str(root))
    return root


def files(demo) -> tuple[str, list[str]]:
    """The ARR history file and the membership files (one per view) the demo's ledger names now."""
    led = Ledger(demo / "state" / "nrr.db")
    named = led.history_files()
    led.close()
    return str(named.pop(history_files.ARR)), [str(p) for p in named.values()]


def on_duckdb(demo, sql: str, params: dict) -> list[tuple]:
    """DuckDB reads the Parquet files where they are (its parameters are $name where SQLite's are :name)."""
    arr, membership = files(demo)
    con = duckdb.connect()
    con.execute(f"CREATE VIEW arr_history AS SELECT * FROM read_parquet('{arr}')")
    con.execute(f"CREATE VIEW membership AS SELECT * FROM read_parquet({membership!r})")
    return con.execute(re.sub(r":(view|m0|m1)\b", r"$\1", sql), params).fetchall()


def on_sqlite(demo, sql: str, params: dict) -> list[tuple]:
    """SQLite with the files loaded into tables of the same columns, as a warehouse loads Parquet."""
    arr, membership = files(demo)
    db = sqlite3.connect(":memory:")
    for name, paths in (("arr_history", [arr]), ("membership", membership)):
        for path in paths:
            table = pq.read_table(path)
            cols = ", ".join(table.column_names)
            db.execute(f"CREATE TABLE IF NOT EXISTS {name} ({cols})")
            db.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' * table.num_columns)})",
                           history_files.tuples(table))
    return db.execute(sql, params).fetchall()


@pytest.mark.parametrize("engine", [on_duckdb, on_sqlite], ids=["duckdb", "sqlite"])
@pytest.mark.parametrize("m0, m1, window", [("2026-09", "2026-10", "1"), ("2025-10", "2026-10", "12"),
                                            ("2026-07", "2026-10", "3")])
def test_the_sql_gives_the_reports_figures(demo, engine, m0, m1, window):
    """nrr.sql over the arr_history and membership files equals `report nrr --format json`, family and naive."""
    sql = resources.files("nrr_engine").joinpath("sql/nrr.sql").read_text()
    rows = {r[0]: r[1:] for r in engine(demo, sql, {"view": "legal", "m0": m0, "m1": m1})}
    assert set(rows) == {"family", "naive"}
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
