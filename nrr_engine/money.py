"""Money as exact fixed point: parsed as Decimal, held as integer units of 1/10,000, printed as Decimal.

Array math (sums over a million accounts) runs on int64 units, so no float ever touches money. One reading
policy for every amount the engine reads (subscription amounts, an Account ARR field, history CSVs): a plain
decimal number as Salesforce and Data Loader write it (NUMBER_FORMAT); anything else is unreadable, never guessed.
"""
from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal, DecimalException, InvalidOperation

SCALE = 10_000
_SCALE_D = Decimal(SCALE)
_CENT = Decimal("0.01")
# int64 holds 9.2e18 units = 9.2e14 in currency: far above any company's ARR, checked on parse anyway.
_MAX_UNITS = 2**62


# Digits with an optional sign, decimal point and exponent (APIs print large doubles as 1.5E+7); surrounding
# spaces are ignored. No thousands separators, currency signs, suffixes (12k), underscores or non-ASCII digits:
# "1,200" is twelve hundred in one locale and 1.2 in another, and "12k" is whatever its author meant.
_PLAIN = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
NUMBER_FORMAT = ("a plain decimal number such as 1200.50: digits with an optional sign, '.' and exponent; no "
                 "thousands separators, currency signs or suffixes such as k")


class MoneyError(ValueError):
    """A value is not a usable amount of money."""


def parse_units(text: str | None) -> int | None:
    """Parse a decimal string into exact units; None for blank. Raises MoneyError on garbage."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    if not _PLAIN.fullmatch(text):
        raise MoneyError(f"{text[:40]!r} is not a number")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise MoneyError(f"{text[:40]!r} is not a number") from None
    if not value.is_finite():
        raise MoneyError(f"{text[:40]!r} is not a finite number")
    if value.adjusted() > 18:
        raise MoneyError(f"{text[:40]!r} is too large")
    try:
        scaled = value * _SCALE_D
        units = int(scaled.to_integral_value(rounding=ROUND_HALF_EVEN))
    except DecimalException:
        raise MoneyError(f"{text[:40]!r} is not a usable amount") from None
    if scaled != units:
        raise MoneyError(f"{text[:40]!r} has more than 4 decimal places")
    if abs(units) > _MAX_UNITS:
        raise MoneyError(f"{text[:40]!r} is too large")
    return units


def parse_units_fast(text: str | None) -> int | None:
    """parse_units for bulk data: one C-level Decimal parse on the common path, the full checks otherwise."""
    # Decimal() also reads "1_000" and non-ASCII digits, which the policy refuses: those take the full checks
    if text and text.isascii() and "_" not in text:
        try:
            scaled = Decimal(text).scaleb(4)
            if scaled.is_finite():
                units = int(scaled)
                if units == scaled and abs(units) <= _MAX_UNITS:
                    return units
        except (InvalidOperation, DecimalException):
            pass
    return parse_units(text)


def to_decimal(units: int) -> Decimal:
    """Exact Decimal of a unit count."""
    return Decimal(int(units)) / _SCALE_D


def fmt(units: int) -> str:
    """Money for output: rounded half-even to cents, once, here (integer arithmetic: hot path)."""
    units = int(units)
    sign = "-" if units < 0 else ""
    cents, rest = divmod(abs(units), SCALE // 100)
    if rest > SCALE // 200 or (rest == SCALE // 200 and cents % 2):
        cents += 1
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def fmt_many(units) -> list[str]:
    """fmt over an int64 array (vectorised rounding; the texts built as one ASCII buffer)."""
    import numpy as np

    u = np.asarray(units, dtype=np.int64)
    if len(u) and u.min() == np.iinfo(np.int64).min:   # its abs() overflows: value by value, as before
        return _fmt_many_slow(u)
    step = SCALE // 100
    cents, rest = np.divmod(np.abs(u), step)
    cents = cents + ((rest > step // 2) | ((rest == step // 2) & (cents % 2 == 1)))
    whole, frac = np.divmod(cents, 100)
    return _texts(whole, frac, 2, u < 0)


def _fmt_many_slow(u) -> list[str]:
    """fmt_many one f-string a value (an array holding the lowest int64)."""
    import numpy as np

    step = SCALE // 100
    cents, rest = np.divmod(np.abs(u), step)
    cents = cents + ((rest > step // 2) | ((rest == step // 2) & (cents % 2 == 1)))
    whole, frac = np.divmod(cents, 100)
    signs = np.where(u < 0, "-", "")
    return [f"{s}{w}.{f:02d}" for s, w, f in zip(signs.tolist(), whole.tolist(), frac.tolist())]


def _texts(whole, frac, places: int, negative) -> list[str]:
    """f"{'-' if negative else ''}{whole}.{frac:0{places}d}" over arrays of non-negative int64 `whole` and `frac`
    (frac < 10**places), a million in a fraction of the time of a million f-strings: the digits are written
    right-aligned a column at a time into one row of bytes a value, the leading cells dropped, and the bytes
    decoded and split once."""
    import numpy as np

    n = len(whole)
    if n == 0:
        return []
    whole = whole.astype(np.int64, copy=False)
    most = len(str(int(whole.max())))
    ndigits = np.ones(n, dtype=np.int64)
    for k in range(1, most):
        ndigits += whole >= 10 ** k
    width = 1 + most + 1 + places + 1                 # sign, digits, '.', decimals, newline
    cells = np.empty((n, width), dtype=np.uint8)
    cells[:, -1] = ord("\n")
    rest = frac.astype(np.int64, copy=True)
    for k in range(places):
        cells[:, -2 - k] = rest % 10 + ord("0")
        rest //= 10
    cells[:, -2 - places] = ord(".")
    rest = whole.copy()
    for k in range(most):
        cells[:, -3 - places - k] = rest % 10 + ord("0")
        rest //= 10
    start = width - 2 - places - ndigits              # the column of each value's first character
    if negative.any():
        start = start - negative
        cells[np.flatnonzero(negative), start[negative]] = ord("-")
    out = cells[np.arange(width)[None, :] >= start[:, None]].tobytes().decode("ascii").split("\n")
    out.pop()
    return out


def ratio_many(numerators, denominators) -> list[str | None]:
    """ratio_text over int64 arrays; exact in int64 while |numerator| < 9.2e14 units, else per value."""
    import numpy as np

    num = np.asarray(numerators, dtype=np.int64)
    den = np.asarray(denominators, dtype=np.int64)
    if len(num) == 0:
        return []
    if np.abs(num).max() >= 9 * 10**14 or (num < 0).any() or (den < 0).any():
        return [ratio_text(a, b) for a, b in zip(num.tolist(), den.tolist())]
    safe = np.where(den == 0, 1, den)
    q, r = np.divmod(num * 10_000, safe)
    q = q + ((2 * r > safe) | ((2 * r == safe) & (q % 2 == 1)))
    whole, frac = np.divmod(q, 10_000)
    out: list[str | None] = _texts(whole, frac, 4, np.zeros(len(q), dtype=bool))
    for i in np.flatnonzero(den == 0).tolist():
        out[i] = None
    return out


def ratio(numerator: int, denominator: int, places: int = 4) -> Decimal | None:
    """A ratio such as NRR as an exact Decimal rounded to `places`; None when undefined."""
    if denominator == 0:
        return None
    q = Decimal(int(numerator)) / Decimal(int(denominator))
    return q.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)


def same(old: str | None, new: str | None) -> bool:
    """Two stored values are equal up to formatting ("1000" == "1000.00"; Decimal-exact for numbers)."""
    if old == new:
        return True
    if old is None or new is None:
        return False
    # Called for every stored value that differs in text only, which on Salesforce is nearly every number (an
    # org prints 300000.00 as 300000.0 or 3.0E5): an exact compare in C, without parse_units' unit checks.
    a, b = old.strip(), new.strip()
    if not a or not b:
        return not a and not b
    if not (_PLAIN.fullmatch(a) and _PLAIN.fullmatch(b)):
        return False
    return Decimal(a) == Decimal(b)


def ratio_text(numerator: int, denominator: int) -> str | None:
    """numerator / denominator rounded half-even to 4 places, as text ("1.0300"); exact integer arithmetic."""
    if denominator == 0:
        return None
    num, den = int(numerator), int(denominator)
    sign = "-" if (num < 0) != (den < 0) and num != 0 else ""
    q, r = divmod(abs(num) * 10_000, abs(den))
    if 2 * r > abs(den) or (2 * r == abs(den) and q % 2):
        q += 1
    return f"{sign}{q // 10_000}.{q % 10_000:04d}"


def percent(ratio) -> str:
    """A ratio (an exact Decimal, or a decimal string) as a percentage rounded once, half-even, to 0.1 %; to as
    many more places as it takes not to read 100.0 % when it is not (99.97 %: a contraction, not flat)."""
    if ratio is None:
        return "n/a"
    exact = Decimal(ratio) * 100
    step = Decimal("0.1")
    shown = exact.quantize(step)
    while shown == 100 and exact != 100 and step > Decimal("0.0001"):
        step /= 10
        shown = exact.quantize(step)
    return f"{shown} %"
