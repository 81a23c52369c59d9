"""Salesforce record Ids: the 18-character form, key prefixes, and Ids for records the engine creates.

Plain functions over strings, imported by sources, transforms and the test double alike.
"""
from __future__ import annotations

KEY_PREFIXES = {"Account": "001", "Contact": "003", "Opportunity": "006", "Task": "00T", "User": "005",
                "Case": "500", "Lead": "00Q"}
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_UPPER_BITS = {c: ord("1") if "A" <= chr(c) <= "Z" else ord("0") for c in range(128)}
# The counters the engine numbers its new records with stay below 2**63, so a counter fits an SQLite INTEGER
# (the working copy's sequence table). That is Ids whose characters 4-5 run from 00 to 0A; Salesforce puts the
# code of the instance that created a record there (5g, Hx, Dn, 30, ...), so its own Ids read as far larger
# counters and are never where the engine numbers the next record.
COUNTER_LIMIT = 2 ** 63


def _body(n: int) -> str:
    body = ""
    while n:
        n, r = divmod(n, 62)
        body = B62[r] + body
    return body.rjust(12, "0")


def sf_id(prefix: str, n: int) -> str:
    """An 18-character Salesforce-style Id: 3-char key prefix, 12 base-62 digits, 3-char case checksum."""
    id15 = prefix + _body(n)
    if len(id15) != 15 or n < 0:
        raise ValueError(f"Id counter too large for prefix {prefix}")
    return id18(id15)


def sf_ids(prefix: str, first: int, count: int) -> list[str]:
    """sf_id(prefix, n) for n in first .. first + count - 1, a whole range at once (numpy: a first run's
    300,000 new snapshot records' Ids in a fraction of a second, not a base-62 loop and a checksum each)."""
    import numpy as np
    if count <= 0:
        return []
    if first < 0 or len(prefix) != 3 or len(prefix + _body(first + count - 1)) != 15:
        raise ValueError(f"Id counter too large for prefix {prefix}")
    # 12 base-62 digits of each counter, most significant first (in two halves: a counter may pass 2**63)
    digits = np.zeros((count, 12), dtype=np.int64)
    hi, lo = divmod(first, 62 ** 6)
    lo = lo + np.arange(count, dtype=np.int64)
    hi = hi + lo // 62 ** 6
    lo %= 62 ** 6
    for k in range(6):
        digits[:, 11 - k], lo = lo % 62, lo // 62
        digits[:, 5 - k], hi = hi % 62, hi // 62
    table = np.frombuffer(B62.encode(), dtype=np.uint8)
    chars = np.empty((count, 18), dtype=np.uint8)
    chars[:, :3] = np.frombuffer(prefix.encode(), dtype=np.uint8)
    chars[:, 3:15] = table[digits]
    upper = (chars[:, :15] >= ord("A")) & (chars[:, :15] <= ord("Z"))
    weights = 1 << np.arange(5)
    suffix = np.frombuffer(_SUFFIX.encode(), dtype=np.uint8)
    for k in range(3):
        chars[:, 15 + k] = suffix[(upper[:, 5 * k:5 * k + 5] * weights).sum(axis=1)]
    text = chars.tobytes().decode("ascii")
    return [text[i:i + 18] for i in range(0, 18 * count, 18)]


def id18(id15: str) -> str:
    """The 18-character form of a 15-character Id: one checksum letter per 5 characters (upper-case bits)."""
    flags = id15.translate(_UPPER_BITS)  # "1" for A-Z, "0" otherwise; bit i of a chunk is its i-th character
    return id15 + "".join(_SUFFIX[int(flags[k:k + 5][::-1], 2)] for k in (0, 5, 10))


def looks_like_id(text: str, prefix: str) -> bool:
    """`text` reads as a record Id with this key prefix: 15 letters and digits, or 18 whose last three are the
    case checksum of the first 15 (so a name that merely starts with the prefix is not taken for an Id)."""
    if len(text) not in (15, 18) or not text.startswith(prefix) or not text.isascii() or not text.isalnum():
        return False
    return len(text) == 15 or id18(text[:15]) == text


def counter(rid: str) -> int:
    """The counter inside an Id made by sf_id."""
    n = 0
    for ch in rid[3:15]:
        n = n * 62 + B62.index(ch)
    return n


def is_counter_id(rid: str | None) -> bool:
    """An Id whose 12 middle characters are base-62 digits (so `counter` can read it)."""
    return bool(rid) and len(rid) >= 15 and all(c in B62 for c in rid[3:15])


def counter_range(prefix: str) -> tuple[str, str]:
    """Bounds (low inclusive, high exclusive, as strings in byte order) of the Ids with `prefix` whose counter
    is below COUNTER_LIMIT, whatever their length: base-62 digits sort like their values in byte order."""
    return prefix + "0" * 12, prefix + _body(COUNTER_LIMIT)


def engine_counter(rid: str | None) -> int | None:
    """The counter of an Id in the engine's range (below COUNTER_LIMIT), else None."""
    if not is_counter_id(rid):
        return None
    n = counter(rid)
    return n if n < COUNTER_LIMIT else None
