"""Names, qualifiers and websites reduced to comparable keys: legal forms, accents, punctuation, suffix lists."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from nrr_engine.hierarchy.normalise import classify, country_code, name_key, qualifier_cuts, site


@pytest.mark.parametrize("name", [
    "Acme", "ACME, Inc.", "Acme Incorporated", "Acme LLC", "Acme Ltd.", "Acme Limited", "Acme GmbH",
    "Acme GmbH & Co. KG", "Acme S.A. de C.V.", "Acme K.K.", "Acme Pty Ltd", "Acme AB", "Acme S.r.l.", "Acme S.A.",
    "Acme B.V.", "Acme AG", "Acme Corp.", "Acme Corporation", "Acme Co.", "acme plc", "Acme Oy", "Acme SAS",
    "  Acme   Inc  ", "ACMÉ", "Ａｃｍｅ Ltd", "The Acme Company",
])
def test_legal_suffix_case_accent_and_width_variants_share_one_key(name):
    """Legal forms in many languages, case, accents, full-width letters and a leading "The" all fold away."""
    assert name_key(name) == ("acme",)


@pytest.mark.parametrize("name, key", [
    ("United Oil & Gas Corp.", ("united", "oil", "and", "gas")),
    ("United Oil and Gas", ("united", "oil", "and", "gas")),
    ("United Oil & Gas, UK", ("united", "oil", "and", "gas", "uk")),
    ("Société Générale S.A.", ("societe", "generale")),
    ("Müller GmbH & Co. KG", ("muller",)),
    ("O'Neil & Sons, Ltd.", ("oneil", "and", "sons")),
    ("Acme-US", ("acme", "us")),
    ("Acme UK Ltd", ("acme", "uk")),          # cleanco lists "UK" as a legal form; in names it is a country
    ("株式会社トヨタ", ("株式会社トヨタ",)),
    ("", ()), (None, ()), ("Ltd", ("ltd",)),
])
def test_name_keys(name, key):
    """What a name becomes: folded tokens, "&" read as "and", at least one token kept."""
    assert name_key(name) == key


def test_very_long_names_are_cut_not_choked_on():
    """A 10,000-character name yields a bounded key."""
    assert len(name_key("Acme " * 2000)) == 12


@pytest.mark.parametrize("words, kind, country", [
    (("uk",), "country", "GB"), (("united", "kingdom"), "country", "GB"), (("deutschland",), "country", "DE"),
    (("brasil",), "country", "BR"), (("us",), "code", "US"), (("emea",), "region", None),
    (("north",), "region", None), (("ecomm",), "division", None), (("retail", "division"), "division", None),
    (("gmbh", "germany"), "country", "DE"), (("sa", "north"), "region", None),
    (("dental",), "unknown", None), (("air", "lines"), "unknown", None), (("hq",), "head", None),
])
def test_qualifiers(words, kind, country):
    """The words a subsidiary adds: country, ISO code, region, division, head word or unknown."""
    q = classify(words)
    assert (q.kind, q.country) == (kind, country)


def test_qualifier_cuts_list_every_reading_shortest_first():
    """"acmee labs uk" can end in "uk" or "labs uk"."""
    assert qualifier_cuts(("acmee", "labs", "uk")) == [1, 2]
    assert qualifier_cuts(("delta", "dental")) == []


@pytest.mark.parametrize("value, code", [("United States", "US"), ("USA", "US"), ("us", "US"),
                                         ("United Kingdom", "GB"), ("UK", "GB"), ("GBR", "GB"),
                                         ("Deutschland", "DE"), ("Brazil", "BR"), ("", None), ("Atlantis", None)])
def test_country_field_values(value, code):
    """BillingCountry as names, codes or local names all map to ISO alpha-2."""
    assert country_code(value) == code


@pytest.mark.parametrize("url, domain, apex", [
    ("https://www.acme.com", "acme.com", True), ("acme.com", "acme.com", True), ("us.acme.com/en", "acme.com", False),
    ("https://shop.acme.co.uk/x?y", "acme.co.uk", False), ("HTTP://User@Www.Acme.COM:8080/p", "acme.com", True),
    ("foo.github.io", "foo.github.io", True), ("https://www.acme.com.", "acme.com", True),
])
def test_registrable_domains_use_the_public_suffix_list(url, domain, apex):
    """Public-suffix aware (co.uk, github.io), offline; apex means the site is the domain itself."""
    s = site(url)
    assert (s.domain, s.apex) == (domain, apex)


@pytest.mark.parametrize("url", ["", "acme", "192.168.0.1", "not a url", "http://", "https://.com", "x.bd"])
def test_values_without_a_registrable_domain(url):
    """IPs, bare words and suffix-only hosts have no domain."""
    assert site(url) is None


@given(st.text(max_size=300))
def test_name_keys_never_fail_and_are_stable(text):
    """Any text yields a tuple of non-empty tokens, and folding is idempotent on the folded form."""
    key = name_key(text)
    assert all(isinstance(t, str) and t for t in key)
    assert name_key(" ".join(key)) == key or not key or key[0] == "the" or any(
        t in ("ltd", "inc", "llc", "and") for t in key)
