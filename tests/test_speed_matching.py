"""Matching's fast paths (issue 13) give what the one-at-a-time paths give: bulk name keys and sites, the
single-proposal decision in consolidate, the single-candidate domain proposal."""
from __future__ import annotations

import gc
import json
import weakref

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nrr_engine.errors import Location
from nrr_engine.hierarchy import normalise
from nrr_engine.hierarchy.link import Guards, consolidate
from nrr_engine.hierarchy.match import Population, Proposal, index_of, match_domain
from nrr_engine.hierarchy.repair import cycles_uncollected
from nrr_engine.rules.kinds import DomainRule, MappingRule
from nrr_engine.rules.model import Condition

AWKWARD_NAMES = [
    None, "", " ", "   ", "---", "&", "& &", "Acme &", "A & B", "AT&T", "The", "the acme", "The Acme Company", "The Inc",
    "Inc", "Ltd", "Acme Inc.", "ACME, INC.", "Acme GmbH & Co. KG", "Acme S.A. de C.V.", "O'Neil & Sons, Ltd.",
    "Acme\tUK", "Acme\r\nUK", "Acme\x0bUK\x1c", "Acme\x1fUK", "  Acme   Inc  ", "Acme-US", "Acme_US", "Acme (UK)",
    "a" * 1000, "Acme " * 2000, " ".join(["w"] * 20) + " inc", "Ａｃｍｅ Ltd", "ACMÉ", "Société Générale S.A.",
    "株式会社トヨタ", "Müller GmbH & Co. KG", "Caisse d’Épargne", "Ｆｕｌｌ＆Ｗｉｄｔｈ", "x\udcffy", "İstanbul A.Ş.",
    "Smith & UK", "the & the", "12345", "Acme.com", "Acme [HQ]", "Acme {Group}", "Acme|Group", "Acme~Group",
]

AWKWARD_URLS = [
    None, "", " ", "http://", "https://", "acme", "acme.com", "www.acme.com", "https://www.acme.com", "https://acme.com/",
    "HTTPS://Shop.Acme.COM/", "https://us.acme.com", "https://a.b.c.acme.com", "http://www.acme.com//", "acme.com/x",
    "https://a.b.c.d.co.uk/x?y#z", "www.acme.co.uk", "shop.acme.co.uk", "co.uk", "www.co.uk", "com", "user@host.com",
    "HTTPS://WWW.ACME.COM:8080/", "http://acme.com:80", "192.168.0.1", "1.2.3.com", "acme.123", ".acme.com.",
    "acme.com.", "a..b.com", "acme .com", "https://acme.com\t", "\thttps://acme.com", " acme.com ", "x.ck", "www.x.ck",
    "foo.bar.ck", "x.s3.amazonaws.com", "bar.kawasaki.jp", "bar.city.kawasaki.jp", "blogspot.com", "foo.blogspot.com",
    "x.github.io", "a.x.github.io", "github.io", "mañana.es", "ÄCME.de", "http://www.acme.com/é", "-.com", "a-.com",
    "acme.c0m", "acme.com?q=1", "acme.com#frag", "ftp://user:pw@files.acme.org:21/path", "acme.com/redirect?u=http://x.com",
    "https://acme.com\nfoo", "x" * 500 + ".com", "www", "www.", "http://www.", "acme.za", "acme.co.za", "acme_x.com",
]


def one_at_a_time_keys(names: list) -> list[str]:
    return [" ".join(normalise.name_key(n)) if n else "" for n in names]


def one_at_a_time_sites(urls: list) -> tuple[list, list]:
    found = [normalise.site(u) if u else None for u in urls]
    return [s.domain if s else None for s in found], [bool(s and s.apex) for s in found]


def test_bulk_name_keys_equal_name_key_on_awkward_names():
    """Blank, whitespace-only, "&", "The", legal forms, control whitespace, long, non-ASCII and surrogate names:
    name_keys gives each what name_key gives it."""
    names = AWKWARD_NAMES * 3
    assert normalise.name_keys(names) == one_at_a_time_keys(names)


def test_a_name_holding_nul_sends_every_name_the_slow_way_with_the_same_keys():
    """A NUL in one name (the bulk path's separator) does not shift the other names' keys."""
    names = ["Acme Inc", "Acme\x00 UK", "Globex GmbH", None, "The Initech"]
    assert normalise.name_keys(names) == one_at_a_time_keys(names)
    assert normalise.name_keys(["\x00"]) == one_at_a_time_keys(["\x00"]) == ["\x00"]   # a lone NUL is not a blank


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.lists(st.sampled_from(
    list("ab &.,'-_()\t\n\x0b\x00") + ["the ", "inc", " co", " kg", "gmbh", " ltd", "é", "Ｋ", "ß"]), max_size=30).map("".join)),
    max_size=25))
def test_bulk_name_keys_equal_name_key_on_generated_names(names):
    """Any mix of blank, ASCII and non-ASCII names: the bulk keys are name_key's, position by position."""
    assert normalise.name_keys(names) == one_at_a_time_keys(names)


def test_bulk_sites_equal_site_on_awkward_urls():
    """Schemes, ports, users, paths, IPs, trailing dots, spaces, wildcard and private suffixes, line breaks and
    non-ASCII hosts: sites gives each value what site gives it."""
    urls = AWKWARD_URLS * 2
    assert normalise.sites(urls) == one_at_a_time_sites(urls)
    plain = [u for u in AWKWARD_URLS if u and u.isascii() and "\n" not in u and len(u) <= 300]
    assert normalise.sites(plain) == one_at_a_time_sites(plain)   # every value on the bulk pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.builds(
    lambda scheme, labels, tail: scheme + ".".join(labels) + tail,
    st.sampled_from(["", "http://", "https://", "HTTPS://", "ftp://", " "]),
    st.lists(st.sampled_from(["www", "us", "acme", "co", "uk", "com", "ck", "jp", "kawasaki", "city", "github", "io",
                              "", "1", "a-b", "Ä", "x y"]), min_size=1, max_size=5),
    st.sampled_from(["", "/", "//", "/p?q", ":8080", "#f", ".", "\n"]))), max_size=25))
def test_bulk_sites_equal_site_on_generated_urls(urls):
    """Generated websites, plain and odd: the bulk domains and apex flags are site()'s, position by position."""
    assert normalise.sites(urls) == one_at_a_time_sites(urls)


@pytest.mark.parametrize("keys", [[], ["a"], ["a", "b", "a"], ["", "x", "", "x", "y", "x"], ["k"] * 4])
def test_index_of_builds_what_adding_one_at_a_time_builds(keys):
    """index_of: each key's position, or positions (ascending) when several share it, keys in first-seen order."""
    want: dict = {}
    for i, k in enumerate(keys):   # one at a time: an int, then a list once a second position shares the key
        have = want.get(k)
        want[k] = i if have is None else have + [i] if isinstance(have, list) else [have, i]
    got = index_of(keys, range(len(keys)))
    assert got == want and list(got) == list(want)


RULE = MappingRule("map", "legal", Location("r.yaml", 1, rule="map"), confidence=0.97)
REVIEW = MappingRule("low", "legal", Location("r.yaml", 2, rule="low"), confidence=0.8)
OVERRIDE = MappingRule("over", "legal", Location("r.yaml", 3, rule="over"), confidence=0.99, override=True)
STRICT = MappingRule("strict", "legal", Location("r.yaml", 4, rule="strict"), confidence=0.96, auto_apply=0.99)


def _pop(parent: list[int]) -> Population:
    n = len(parent)
    ids = [f"001{i:06d}" for i in range(n)]
    par = np.array(parent, dtype=np.int64)
    return Population(ids, lambda name: [None] * n, par, np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
                      np.zeros(n, dtype=np.int64), eligible=par < 0, unlocked=np.ones(n, dtype=bool))


def _links(links) -> list[tuple]:
    return [(l.child, l.parent, l.rule, l.confidence, l.evidence, l.old_parent, l.reason) for l in links]


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 12).flatmap(lambda n: st.tuples(
    st.lists(st.integers(-1, n - 1), min_size=n, max_size=n),
    st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.sampled_from([RULE, REVIEW, OVERRIDE, STRICT]),
                       st.booleans()), max_size=20))))
def test_a_single_proposal_is_decided_as_the_general_path_decides_it(case):
    """A child with one proposal (the fast path) gets the link, reason and review place that the general path
    gives it: every proposal twice sends every child the general path, which must decide alike."""
    parent, raw = case
    pop = _pop([p if p != i else -1 for i, p in enumerate(parent)])
    props = [Proposal(c, p, rule, rule.confidence, {"tie": [], "tie_count": 2} if tied else {"n": k})
             for k, (c, p, rule, tied) in enumerate(raw) if c != p]
    guards = Guards(auto_apply=0.95)
    fast = consolidate(pop, props, guards, set())
    general = consolidate(pop, props + props, guards, set())   # every child has 2+ proposals: no fast path
    # a repeated proposal changes nothing for a child that has several (one per rule type and parent counts)
    assert _links(fast[0]) == _links(general[0]) and _links(fast[1]) == _links(general[1]) and fast[2] == general[2]


def test_consolidate_with_nothing_proposed():
    """No proposals: nothing to apply or review, nothing kept."""
    assert consolidate(_pop([-1, -1]), [], Guards(), set()) == ([], [], 0)


def _site_pop(sites: list[str | None], names: list[str]) -> Population:
    n = len(sites)
    cols = {"Website": sites, "Name": names}
    return Population([f"001{i:06d}" for i in range(n)], lambda name: cols.get(name, [None] * n), np.full(n, -1),
                      np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
                      eligible=np.ones(n, dtype=bool), unlocked=np.ones(n, dtype=bool))


def test_domain_rule_single_candidate_fast_path_matches_the_conditioned_path():
    """A domain rule without conditions (one head: proposed directly) proposes what the same rule with a condition
    every candidate passes proposes (every head through _decide): links, ties, ignored domains, orphans."""
    sites = ["https://acme.com", "https://us.acme.com", "https://shop.acme.com", "https://globex.com",
             "https://www.globex.com", "https://eu.globex.com", "https://eu.initech.com", "https://us.initech.com",
             "https://gmail.com", "https://x.gmail.com", None, "https://de.acme.com"]
    names = [f"Account {i}" for i in range(len(sites))]
    plain = DomainRule("d", "legal", Location("r.yaml", 1, rule="d"), confidence=0.96)
    conditioned = DomainRule("d", "legal", Location("r.yaml", 1, rule="d"), confidence=0.96,
                             candidate=(Condition("Name", "not_blank"),))
    fast, fast_holders = match_domain(_site_pop(sites, names), plain)
    slow, slow_holders = match_domain(_site_pop(sites, names), conditioned)
    assert [(p.child, p.parent, p.confidence, p.evidence) for p in fast] == \
        [(p.child, p.parent, p.confidence, p.evidence) for p in slow]
    assert [(h.key, h.members) for h in fast_holders] == [(h.key, h.members) for h in slow_holders]
    assert [(p.child, p.parent, isinstance(p.evidence, dict)) for p in fast] == \
        [(1, 0, False), (2, 0, False), (5, 3, True), (5, 4, True), (11, 0, False)]   # globex has two heads: a tie
    assert [(h.key, h.members) for h in fast_holders] == [("domain:initech.com", (6, 7))]


class _Node:
    me: object = None


def test_cycle_collector_is_paused_inside_and_restored_after():
    """Matching runs with the cycle collector off and leaves it as it found it (on, or off when it was off); what
    it made is frozen after (no collection walks it again during the run), and a cycle made inside is collected
    once the run unfreezes it (Engine.close)."""
    assert gc.isenabled()
    with cycles_uncollected():
        assert not gc.isenabled()
        kept, cycle = [1, 2], _Node()
        cycle.me = cycle
        gone = weakref.ref(cycle)
        del cycle
    assert gc.isenabled() and gc.get_freeze_count() > 0
    assert not any(o is kept for g in range(3) for o in gc.get_objects(g)), "walked by the collector again"
    gc.unfreeze()
    gc.collect()
    assert gone() is None
    gc.disable()
    try:
        with cycles_uncollected():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(ZeroDivisionError):
        with cycles_uncollected():
            1 / 0
    assert gc.isenabled()


def test_a_run_leaves_nothing_frozen(org, cli):
    """What a run's matching froze is the collector's again once the command ends (a scheduler runs many jobs in
    one process: a cycle among a run's leftovers is collected after it)."""
    from conftest import zeta_family
    zeta_family(org)
    gc.unfreeze()
    cli("run", "--as-of", "2026-11-15")
    assert gc.get_freeze_count() == 0


AWKWARD_TEXT = ["", "plain", 'quote " inside', "back\\slash", "tab\tnew\nline", "\x00\x1f", "é ü 株式会社", "\udcff",
                "</script>", "emoji 🙂", "x" * 300]


@pytest.mark.parametrize("text", AWKWARD_TEXT)
def test_direct_evidence_json_is_what_json_dumps_wrote(text):
    """Key, domain and mapping evidence written directly equals json.dumps of the explained evidence with sorted
    keys (the ledger's bytes before), for quotes, backslashes, control characters, non-ASCII and surrogates."""
    from nrr_engine.hierarchy.match import DomainEvidence, KeyEvidence, MappingEvidence, explain, to_json
    for ev in (KeyEvidence(text, text + "v", "DunsNumber"), DomainEvidence("Website", text, text + "/x"),
               MappingEvidence(text, text + " child", "parent " + text)):
        assert to_json(ev) == json.dumps(explain(ev), sort_keys=True)


@pytest.mark.parametrize("value", [*AWKWARD_TEXT, 12, 1.5, None, True])
def test_text_json_quotes_as_json_dumps_does(value):
    """The quoting evidence JSON uses is json.dumps's, for text and for anything else."""
    from nrr_engine.hierarchy.match import _text_json
    assert _text_json(value) == json.dumps(value)
