"""Calendar months as integers (year * 12 + month - 1) so month arithmetic is plain subtraction."""
from __future__ import annotations

import datetime as dt
import re

_MONTH = re.compile(r"^([0-9]{4})-([0-9]{2})$")  # ASCII digits only: \d would read "２０２６-１０"


def parse(text: str) -> int:
    """'2026-10' -> month index; ValueError with the expected form otherwise."""
    m = _MONTH.match(text.strip()) if isinstance(text, str) else None
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"{text!r} is not a month; expected YYYY-MM")
    return int(m.group(1)) * 12 + int(m.group(2)) - 1


def of(day: dt.date) -> int:
    """Month index of a date."""
    return day.year * 12 + day.month - 1


def fmt(index: int) -> str:
    """Month index -> 'YYYY-MM'."""
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def first_day(index: int) -> dt.date:
    """First calendar day of the month."""
    return dt.date(index // 12, index % 12 + 1, 1)
