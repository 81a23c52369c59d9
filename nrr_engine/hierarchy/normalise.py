"""Company names and websites reduced to comparable keys, offline.

Legal suffixes come from cleanco's term list, countries from pycountry, registrable domains from tldextract's
bundled public-suffix snapshot (never fetched). Names are folded (case, accents, punctuation) into tokens.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import NamedTuple

import pycountry
from cleanco.clean import get_unique_terms, normalize_terms
from cleanco.non_nfkd_map import NON_NFKD_MAP

MAX_CHARS = 300     # a 10,000-character "name" is data-entry junk; its first 300 characters decide
_BULK = 50_000      # values a bulk pass takes at once: its transient text and parts stay a few MB at any org size
MAX_TOKENS = 12

# cleanco knows these as legal forms, but in account names they are far more often places ("Acme UK")
_PLACES_NOT_LEGAL = {"uk", "eu", "ca", "at", "ky", "ec", "ee", "et", "private", "cio"}


def _legal_terms() -> dict[int, frozenset[tuple[str, ...]]]:
    by_size: dict[int, set[tuple[str, ...]]] = {}
    for term in normalize_terms(get_unique_terms()):
        parts = tuple(term.replace("&", " & ").split())
        if parts and not (len(parts) == 1 and parts[0] in _PLACES_NOT_LEGAL):
            by_size.setdefault(len(parts), set()).add(parts)
    return {k: frozenset(v) for k, v in sorted(by_size.items(), reverse=True)}


LEGAL = _legal_terms()
# last token -> the term lengths ending in it, longest first ("gmbh & co kg" before "kg")
_LEGAL_BY_LAST: dict[str, tuple[int, ...]] = {}
for _size, _terms in LEGAL.items():
    for _t in _terms:
        _LEGAL_BY_LAST[_t[-1]] = tuple(sorted({*_LEGAL_BY_LAST.get(_t[-1], ()), _size}, reverse=True))
_DROP = str.maketrans("", "", ".,'’`´")          # S.A. -> sa, O'Neil -> oneil
# ASCII fast path: bytes.translate turns every separator into a space in C (a regex split costs 10x more)
_SEPARATORS = b"!\"#$%()*+/:;<=>?@[\\]^_{|}~-\t\r\n"
_ASCII = bytes.maketrans(_SEPARATORS, b" " * len(_SEPARATORS))
_ASCII_DROP = b".,'`"
_SPLIT = re.compile(r"[^\w&]+")


def fold(text: str | None) -> list[str]:
    """Case-, accent- and punctuation-folded tokens ("&" kept as a token)."""
    if not text:
        return []
    s = text[:MAX_CHARS].casefold()
    if s.isascii():
        if "&" in s:
            s = s.replace("&", " & ")
        return s.encode().translate(_ASCII, _ASCII_DROP).decode().split()
    # compatibility forms first (full-width and mathematical letters become plain ones), then case again
    s = "".join(NON_NFKD_MAP.get(c, c) for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))
    s = s.casefold()
    s = s.translate(_DROP).replace("&", " & ").replace("_", " ")
    return [t for t in _SPLIT.split(s) if t]


def strip_legal(tokens: list[str]) -> list[str]:
    """Drop trailing legal-form terms (Inc, GmbH & Co. KG, S.A. de C.V., ...), keeping at least one token."""
    toks = tokens
    while len(toks) > 1 and (sizes := _LEGAL_BY_LAST.get(toks[-1])):
        for size in sizes:
            if size < len(toks) and (size == 1 or tuple(toks[-size:]) in LEGAL[size]):
                toks = toks[:-size]
                break
        else:
            break
    return toks


def name_key(name: str | None) -> tuple[str, ...]:
    """The comparable form of a company name: folded tokens, legal suffixes and a leading "The" removed."""
    return tuple(_key_of(fold(name)))


def _key_of(tokens: list[str]) -> list[str]:
    """name_key of folded tokens."""
    toks = strip_legal(tokens[:MAX_TOKENS])
    if len(toks) > 1 and toks[0] == "the":
        toks = toks[1:]
    if "&" in toks:
        while toks and toks[-1] == "&":
            toks.pop()
        toks = ["and" if t == "&" else t for t in toks]
    return toks


def name_keys(names: list) -> list[str]:
    """`" ".join(name_key(n))` of each name ("" for a blank one), in bulk: the ASCII names are folded as one
    text (case, separators and dropped characters in four C calls, not four a name), then cut apart again;
    _BULK names at a time."""
    if len(names) > _BULK:
        return [k for at in range(0, len(names), _BULK) for k in name_keys(names[at:at + _BULK])]
    out = [""] * len(names)
    at = [i for i, n in enumerate(names) if n and n.isascii()]
    rest = [] if len(at) + names.count(None) + names.count("") == len(names) else \
        [i for i, n in enumerate(names) if n and not n.isascii()]
    text = "\0".join([names[i][:MAX_CHARS] for i in at]).casefold()   # "\0" separates: no name may hold one
    if text.count("\0") != len(at) - 1:
        at, rest = [], [i for i, n in enumerate(names) if n]
    elif at:
        if "&" in text:
            text = text.replace("&", " & ")
        legal = _LEGAL_BY_LAST
        for i, part in zip(at, text.encode().translate(_ASCII, _ASCII_DROP).decode().split("\0")):
            toks = part.split()
            if toks and len(toks) <= MAX_TOKENS and toks[-1] not in legal and toks[0] != "the" and "&" not in part:
                out[i] = " ".join(toks)   # nothing to strip (most names)
            else:
                out[i] = " ".join(_key_of(toks))
    for i in rest:
        out[i] = " ".join(name_key(names[i]))
    return out



# ---- qualifiers: what a subsidiary adds to its parent's name ----------------------------------------

_COUNTRY_ALIASES = {
    "uk": "GB", "great britain": "GB", "britain": "GB", "england": "GB", "scotland": "GB",
    "wales": "GB", "northern ireland": "GB", "usa": "US",
    "america": "US", "united states": "US", "united states of america": "US", "deutschland": "DE",
    "brasil": "BR", "espana": "ES", "italia": "IT", "nippon": "JP", "holland": "NL", "the netherlands": "NL",
    "uae": "AE", "emirates": "AE", "korea": "KR", "south korea": "KR", "russia": "RU", "czech republic": "CZ",
    "turkey": "TR", "vietnam": "VN", "iran": "IR", "taiwan": "TW", "bolivia": "BO", "venezuela": "VE",
    "tanzania": "TZ", "moldova": "MD", "macedonia": "MK", "syria": "SY", "laos": "LA", "hong kong": "HK",
    "schweiz": "CH", "suisse": "CH", "osterreich": "AT", "sverige": "SE", "norge": "NO", "danmark": "DK",
    "suomi": "FI", "polska": "PL", "mexico": "MX", "brazil": "BR",
}
# Three-letter codes worth reading as countries (ISO's full list holds words such as "and", "can", "per").
_ALPHA3 = {"usa", "gbr", "deu", "fra", "jpn", "chn", "aus", "bra", "mex", "esp", "ita", "nld", "che", "swe",
           "nor", "dnk", "fin", "aut", "irl", "sgp", "hkg", "kor", "zaf", "nzl", "are", "sau", "isr", "pol",
           "tur", "rus", "chl", "ind", "idn", "mys", "tha", "phl", "vnm", "twn", "prt", "bel", "lux", "cze"}
REGIONS = {
    "na", "namer", "north america", "latam", "lat am", "latin america", "south america", "americas", "emea",
    "apac", "apj", "asia pacific", "asia", "europe", "african", "africa", "middle east", "mena", "anz", "dach",
    "benelux", "nordics", "nordic", "scandinavia", "iberia", "cee", "sea", "gcc", "oceania", "east", "west",
    "north", "south", "central", "northeast", "northwest", "southeast", "southwest", "midwest", "pacific",
    "international", "intl", "global markets", "region", "eastern", "western", "northern", "southern",
}
DIVISIONS = {
    "ecomm", "ecommerce", "e commerce", "online", "digital", "retail", "retail division", "wholesale",
    "division", "services", "solutions", "consulting", "research", "labs", "cloud", "software", "hardware",
    "government", "public sector", "federal", "enterprise", "commercial", "consumer", "smb", "mid market",
    "operations", "sales", "marketing", "support", "subsidiary", "branch", "office", "unit", "bu", "plant",
    "store", "stores", "mobile", "payments", "ventures", "studios", "studio", "foundation", "academy",
    "education", "healthcare", "insurance", "financial services", "capital", "logistics", "manufacturing",
}
HEAD_MARKERS = {"hq", "headquarters", "global", "worldwide", "ww", "holding", "holdings", "group", "corporate",
                "parent", "world", "corporation", "international holdings"}
FILLER = {"the", "of", "and", "&", "in", "for", "de", "la", "le", "el"}
# Words beyond a name's key that say "the parent" when a family's accounts share one name (match.elect)
HOLDING_WORDS = frozenset({"holding", "holdings", "group", "groep", "gruppe", "groupe", "gruppo", "grupo"})
PARENT_FORMS = frozenset({"corporation", "corp", "incorporated", "inc", "plc", "ag", "se", "nv", "asa", "oyj"})


@functools.cache
def _countries() -> dict[str, str]:
    """Folded country name or code -> ISO 3166 alpha-2."""
    names: dict[str, str] = {}
    for c in pycountry.countries:
        for attr in ("name", "common_name", "official_name"):
            value = getattr(c, attr, None)
            if value:
                names[" ".join(fold(value.split(",")[0]))] = c.alpha_2
    names.update(_COUNTRY_ALIASES)
    return names


@functools.cache
def _codes() -> dict[str, str]:
    codes = {c.alpha_2.lower(): c.alpha_2 for c in pycountry.countries}
    codes.update({c.alpha_3.lower(): c.alpha_2 for c in pycountry.countries if c.alpha_3.lower() in _ALPHA3})
    codes["uk"] = "GB"
    return codes


def country_code(value: str | None) -> str | None:
    """ISO alpha-2 of a country field value ("United Kingdom", "UK", "GBR", "gb"), or None."""
    toks = fold(value)
    if not toks:
        return None
    text = " ".join(toks)
    return _countries().get(text) or _codes().get(text)


@dataclass(frozen=True)
class Qualifier:
    """What the extra words of a subsidiary's name are: a country, a region, a division, or unknown."""

    kind: str                 # country | code | region | division | head | unknown
    country: str | None       # ISO alpha-2 the words name, if any
    words: str


_RANK = {"country": 4, "code": 3, "region": 2, "division": 1, "head": 0}


def classify(tokens: tuple[str, ...] | list[str]) -> Qualifier:
    """Segment the extra words into known phrases (longest first); any unknown word makes it unknown."""
    return _classify(tuple(tokens))


@functools.lru_cache(maxsize=100_000)
def classify_words(words: str) -> Qualifier:
    """classify() of space-separated words, cached by the text."""
    return _classify(tuple(words.split()))


@functools.lru_cache(maxsize=100_000)   # qualifiers repeat ("uk", "emea", "retail division") across accounts
def _classify(tokens: tuple[str, ...]) -> Qualifier:
    words = " ".join(tokens)
    countries, codes = _countries(), _codes()
    best, country, i, n = None, None, 0, len(tokens)
    found_any = False
    while i < n:
        for size in range(min(4, n - i), 0, -1):
            phrase = " ".join(tokens[i:i + size])
            kind = None
            if phrase in countries:
                kind, country = "country", countries[phrase]
            elif (size == 1 and phrase in FILLER) or tuple(tokens[i:i + size]) in LEGAL.get(size, ()):
                kind = "filler"   # a legal form before the qualifier ("Acme S.A. North", "Pty Ltd"), not Saudi Arabia
            elif size == 1 and phrase in codes:
                kind, country = "code", codes[phrase]
            elif phrase in REGIONS:
                kind = "region"
            elif phrase in DIVISIONS:
                kind = "division"
            elif phrase in HEAD_MARKERS:
                kind = "head"
            if kind:
                if kind != "filler":
                    found_any = True
                    if best is None or _RANK[kind] > _RANK[best]:
                        best = kind
                i += size
                break
        else:
            return Qualifier("unknown", None, words)
    if not found_any:
        return Qualifier("unknown", None, words)
    return Qualifier(best, country, words)


_GEO = ("country", "code", "region")


@functools.cache
def geo_last_tokens() -> frozenset[str]:
    """Every word a geographic qualifier can end with (a cheap first test before segmenting)."""
    phrases = [*_countries(), *_codes(), *REGIONS]
    return frozenset(p.split()[-1] for p in phrases)


def qualifier_cuts(tokens: tuple[str, ...], geographic: bool = False) -> list[int]:
    """Lengths of the trailing token runs that form a known qualifier, shortest first:
    "acmee labs uk" -> [1, 2] ("uk", "labs uk"). `geographic`: only countries, codes and regions."""
    if geographic and (not tokens or tokens[-1] not in geo_last_tokens()):
        return []
    kinds = _GEO if geographic else ("country", "code", "region", "division")
    return [len(tokens) - cut for cut in range(len(tokens) - 1, 0, -1) if classify(tokens[cut:]).kind in kinds]


# ---- websites -----------------------------------------------------------------------------------

class _PublicSuffixes(NamedTuple):
    extract: object           # tldextract's extractor, for the rare wildcard rules
    suffixes: frozenset[str]  # every plain rule (com, co.uk, s3.amazonaws.com)
    wild: frozenset[str]      # what a "*." rule stands on (*.ck -> ck)
    tails: frozenset[str]     # every tail of every rule (s3.amazonaws.com -> amazonaws.com, com): a longer
                              # suffix may still follow


@functools.cache
def _psl() -> _PublicSuffixes:
    """tldextract's bundled public-suffix snapshot (never fetched), read on the first website looked at: a
    command that looks at none (report, runs, review) pays neither the import (it brings requests) nor the
    tables."""
    import tldextract
    extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True)
    suffixes = frozenset(t for t in extract.tlds if not t.startswith(("*", "!")))
    wild = frozenset(t[2:] for t in extract.tlds if t.startswith("*."))
    tails = frozenset(".".join(t.split(".")[i:]) for t in (*suffixes, *wild) for i in range(t.count(".") + 1))
    return _PublicSuffixes(extract, suffixes, wild, tails)


class Site(NamedTuple):
    domain: str   # registrable domain, e.g. acme.co.uk
    apex: bool    # the site is the domain itself (or www.), not a subdomain such as shop.acme.com


def site(url: str | None) -> Site | None:
    """The registrable domain of a Website value (public-suffix aware), or None when it has none."""
    if not url:
        return None
    text = url.strip()[:MAX_CHARS].lower()
    i = text.find("://")
    host = text[i + 3:] if i >= 0 else text
    for sep in "/?#":
        j = host.find(sep)
        if j >= 0:
            host = host[:j]
    if "@" in host:
        host = host[host.rfind("@") + 1:]
    if ":" in host:
        host = host[:host.find(":")]
    host = host.strip(".")
    labels = host.split(".")
    n = len(labels)
    if n < 2 or " " in host or "" in labels or labels[-1].isdigit():
        return None       # no dot, an empty label, a space, or an IP address
    # The longest public suffix the host ends with (tldextract's bundled list), walking label by label from
    # the right; wildcard rules, which are rare, go through tldextract itself.
    psl = _psl()
    best, tail = 0, labels[-1]
    for k in range(1, n + 1):
        if tail not in psl.tails:
            break
        if tail in psl.wild:
            r = psl.extract(host)
            return Site(f"{r.domain}.{r.suffix}", r.subdomain in ("", "www")) if r.domain and r.suffix else None
        if tail in psl.suffixes:
            best = k
        if k < n:
            tail = labels[-k - 1] + "." + tail
    if not best or best == n:
        return None       # no known suffix, or the host is itself a public suffix
    sub = labels[:n - best - 1]
    return Site(".".join(labels[n - best - 1:]), not sub or sub == ["www"])


# A Website as most are written (https://www.acme.com, acme.co, us.acme.com/): scheme, host labels, at most a
# "/". Lowercased, one a line; groups: the labels before the last two ("www."), the last two.
_PLAIN_URL = re.compile(r"^(?:https?://)?((?:[a-z0-9-]+\.)*)([a-z0-9-]+)\.([a-z0-9-]+)/?$|^.*$", re.MULTILINE)


def sites(urls: list) -> tuple[list[str | None], list[bool]]:
    """site() of each value as (domains, apex) (None and False where it has none), in bulk: one regex pass over
    every plain ASCII website finds the host labels; a site whose last label is a public suffix one label long
    (.com, .de) is decided there, any other goes through site(). _BULK values at a time."""
    if len(urls) > _BULK:
        domains, apex = [], []
        for at in range(0, len(urls), _BULK):
            d, a = sites(urls[at:at + _BULK])
            domains.extend(d)
            apex.extend(a)
        return domains, apex
    n = len(urls)
    domains: list[str | None] = [None] * n
    apex = [False] * n
    at = [i for i, u in enumerate(urls) if u and len(u) <= MAX_CHARS and u.isascii()]
    text = "\n".join([urls[i] for i in at]).lower()   # a value holding a line break fails the count: site() each
    found = _PLAIN_URL.findall(text) if at and text.count("\n") == len(at) - 1 else []
    if len(found) != len(at):
        at, found = [], []
    _, suffixes, wild, tails = _psl() if at else (None, frozenset(), frozenset(), frozenset())
    slow: list[int] = []
    for i, (sub, name, last) in zip(at, found):
        if last in suffixes and last not in wild and (domain := f"{name}.{last}") not in tails:
            domains[i], apex[i] = domain, sub == "" or sub == "www."
        else:
            slow.append(i)
    if len(at) + urls.count(None) + urls.count("") < n:   # a long, non-ASCII or multi-line value: site() each
        fast = set(at)
        slow.extend(i for i, u in enumerate(urls) if u and i not in fast)
    for i in slow:
        s = site(urls[i])
        if s is not None:
            domains[i], apex[i] = s
    return domains, apex
