"""Memory a stage freed handed back to the system, so the next stage's peak does not sit on top of it.

glibc's malloc keeps freed memory for reuse: after the first large block is freed it raises its mmap threshold
(up to 32 MB), so a stage's temporary numpy arrays land in the heap and stay in the run's RSS once freed.
A fixed threshold maps every block of 1 MiB or more and unmaps it on free; a trim after each stage returns the
heap's free pages. Elsewhere (musl, macOS) both are no-ops. The approach Dask documents for its workers.
"""
from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # mallopt parameters, <malloc.h>
MMAP_THRESHOLD = 1 << 20

_libc = None


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL("libc.so.6")
                lib.gnu_get_libc_version   # glibc itself, not a look-alike without mallopt's parameters
                _libc = lib
            except (OSError, AttributeError):
                pass
    return _libc or None


def configure() -> bool:
    """Map blocks of MMAP_THRESHOLD or more (released on free) and trim the heap above twice that; True where
    applied (glibc)."""
    lib = _glibc()
    if lib is None:
        return False
    return bool(lib.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(lib.mallopt(_M_TRIM_THRESHOLD,
                                                                                    2 * MMAP_THRESHOLD))


def release() -> bool:
    """Return the heap's free pages to the system (a few ms); True where applied (glibc)."""
    lib = _glibc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True
