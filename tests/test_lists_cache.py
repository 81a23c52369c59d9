"""The folded gazetteer and word lists kept between processes: the same lists as made fresh, and a cache that is
missing, torn, read-only, off or of another version never changes what matching reads."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from nrr_engine.hierarchy import lists_cache, normalise


@given(st.lists(st.text(max_size=40) | st.sampled_from(["Société Générale", "ＡＣＭＥ Ｋ.Ｋ.", "Straße & Söhne",
                                                         "İstanbul", "ﬁnance", "Ǆemal", "O'Neil_Co", "Kelvin"]),
                max_size=30))
@settings(max_examples=300, deadline=None)
def test_folding_in_bulk_equals_folding_each(texts):
    assert normalise.fold_many(texts) == [normalise.fold(t) for t in texts]


def test_the_real_lists_fold_the_same_in_bulk():
    from wordfreq import get_frequency_dict
    for lang in ("en", "de", "ru", "el"):
        words = list(get_frequency_dict(lang, wordlist="small"))
        assert normalise.fold_many(words) == [normalise.fold(w) for w in words], lang


def _lists(cache: str | os.PathLike, *langs: str) -> dict:
    """places() and zipf tables as a fresh process reads them with NRR_ENGINE_CACHE_DIR=cache (by word, not by the
    process's string hashes)."""
    code = ("import json, sys\nfrom nrr_engine.hierarchy import normalise as n\n"
            "p = n.places()\n"
            "z = {l: {w: n._zipf(w, l) for w in ('the', 'und', 'sparkasse', 'jinkosolar', 'banco', 'zzqx')}"
            " for l in sys.argv[1:]}\n"
            "print(json.dumps({'places': len(p), 'chuxiong': p.get('chuxiong'), 'london': p.get('london'),"
            " 'zipf': z}))")
    env = {**os.environ, lists_cache.ENV_VAR: str(cache)}
    r = subprocess.run([sys.executable, "-c", code, *langs], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def fresh():
    return _lists("off", "en", "de")


def test_a_kept_list_reads_as_the_one_made_fresh(tmp_path, fresh):
    assert fresh["places"] > 20_000 and fresh["chuxiong"] == ["CN"] and "GB" in fresh["london"]
    assert fresh["zipf"]["de"]["und"] > 6 and fresh["zipf"]["en"]["zzqx"] == 0.0
    made = _lists(tmp_path, "en", "de")
    kept = sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.glob("*.json"))
    assert kept == ["places", "zipf-de", "zipf-en"]
    assert made == fresh
    assert _lists(tmp_path, "en", "de") == fresh   # read back from the files this time


def test_a_torn_or_foreign_file_is_made_again(tmp_path, fresh):
    stale = tmp_path / "zipf-en-0000000000000000.json"   # an older version's, left before an upgrade
    stale.write_text(json.dumps({"the": 1.0}))
    assert _lists(tmp_path, "en", "de") == fresh
    assert not stale.exists()   # the new version's replaced it
    places = next(tmp_path.glob("places-*.json"))
    places.write_text('{"chuxiong": ["C')   # torn by a disk that filled
    assert _lists(tmp_path, "en", "de") == fresh
    json.loads(places.read_text())   # whole again


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_cache_only_costs_time(tmp_path, fresh):
    tmp_path.chmod(0o500)
    try:
        assert _lists(tmp_path, "en", "de") == fresh
        assert not list(tmp_path.iterdir())
    finally:
        tmp_path.chmod(0o700)


def test_a_cache_that_is_a_file_only_costs_time(tmp_path, fresh):
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    assert _lists(blocker, "en", "de") == fresh
    assert blocker.read_text() == "not a directory"


def test_off_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(lists_cache.ENV_VAR, "off")
    assert lists_cache.directory() is None
    assert lists_cache.cached("probe", lambda: {"a": 1}) == {"a": 1}
    monkeypatch.setenv(lists_cache.ENV_VAR, str(tmp_path))
    assert lists_cache.cached("probe", lambda: {"a": 2}) == {"a": 2}
    assert lists_cache.cached("probe", lambda: {"a": 3}) == {"a": 2}   # kept: build not called again
    monkeypatch.delenv(lists_cache.ENV_VAR)
    assert lists_cache.directory().name == "nrr-engine"
