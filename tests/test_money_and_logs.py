"""Money is exact (Decimal in, int units inside, Decimal out); logs are structured and never leak secrets."""
from __future__ import annotations

import io
import json
from decimal import Decimal

import pytest
import structlog

from nrr_engine import log as log_mod, money


@pytest.mark.parametrize("text, units", [("100000", 1_000_000_000), ("0.01", 100), ("42000.50", 420_005_000),
                                         ("1.5E+3", 15_000_000), (" 7 ", 70_000), ("", None), (None, None)])
def test_parse_units_is_exact(text, units):
    """Decimal strings become exact integer units of 1/10,000."""
    assert money.parse_units(text) == units


@pytest.mark.parametrize("text", ["abc", "1e999999", "NaN", "1.23456", "Infinity", "1,234.5", "12k", "$100,000.00",
                                  "1_000", "\u0661\u0662"])
def test_parse_units_rejects_garbage(text):
    """Non-numbers, non-finite values, more than 4 decimals and anything but a plain decimal are refused."""
    with pytest.raises(money.MoneyError):
        money.parse_units(text)


def test_fmt_rounds_half_even_once():
    """Output rounding is half-even to cents and matches Decimal's quantize."""
    for units in (5_000, 15_000, 25, 50, 150, 250, -150, 123_456_789):
        expected = str((Decimal(units) / 10_000).quantize(Decimal("0.01"), rounding="ROUND_HALF_EVEN"))
        assert money.fmt(units) == expected


def test_json_logs_carry_run_id_and_redact_secrets(monkeypatch):
    """Non-TTY logs are JSON lines with run_id bound, and secret env values never appear."""
    monkeypatch.setenv("SF_PASSWORD", "hunter2-very-secret")
    stream = io.StringIO()
    log_mod.configure("info", json_logs=True, stream=stream)
    structlog.contextvars.bind_contextvars(run_id="R1")
    try:
        structlog.get_logger().info("auth.failed", detail="login with hunter2-very-secret refused")
    finally:
        structlog.contextvars.unbind_contextvars("run_id")
    event = json.loads(stream.getvalue().splitlines()[-1])
    assert event["run_id"] == "R1" and event["event"] == "auth.failed"
    assert "hunter2" not in stream.getvalue() and "[redacted]" in event["detail"]


from hypothesis import given, strategies as st  # noqa: E402
import numpy as np  # noqa: E402


@given(st.lists(st.integers(-10**15, 10**15), max_size=50))
def test_vectorised_fmt_equals_scalar_fmt(values):
    """fmt_many gives exactly what fmt gives, value by value (same half-even rounding)."""
    assert money.fmt_many(np.array(values, dtype=np.int64)) == [money.fmt(v) for v in values]


@given(st.lists(st.tuples(st.integers(0, 10**15), st.integers(0, 10**15)), max_size=50))
def test_vectorised_ratio_equals_scalar_ratio(pairs):
    """ratio_many gives exactly what ratio_text gives, including None for a zero denominator."""
    num = np.array([p[0] for p in pairs], dtype=np.int64)
    den = np.array([p[1] for p in pairs], dtype=np.int64)
    assert money.ratio_many(num, den) == [money.ratio_text(a, b) for a, b in pairs]
    assert [money.ratio_text(a, b) for a, b in pairs] == [None if b == 0 else str(money.ratio(a, b)) for a, b in pairs]


@pytest.mark.parametrize("old, new, equal", [
    ("3.0E5", "300000.00", True), ("300000.0", "300000.00", True), ("1.2345678E7", "12345678.00", True),
    ("300000.0", "300000.01", False), ("", None, False), (" ", "", True), ("12k", "12000.00", False),
    ("1,200.50", "1200.50", False), ("NaN", "NaN", True), ("NaN", "0", False), ("1_000", "1000", False),
])
def test_stored_values_are_the_same_up_to_formatting_only(old, new, equal):
    """A number as an org prints it (300000.0, 3.0E5) equals the engine's 300000.00; text that is not a plain
    number (12k, 1,200.50, 1_000) equals nothing but itself; blank equals blank."""
    assert money.same(old, new) is equal


@given(st.decimals(min_value=-10**12, max_value=10**12, places=2, allow_nan=False))
def test_same_agrees_with_exact_decimal_equality(d):
    """same() on any two spellings of an amount (fixed point, exponent form, trailing zeros) is Decimal equality."""
    text = f"{d:.2f}"
    assert money.same(f"{d:E}", text) and money.same(f"{d:.4f}", text)
    assert not money.same(f"{d + Decimal('0.01'):.2f}", text)
