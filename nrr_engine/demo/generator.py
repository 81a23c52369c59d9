"""Deterministic synthetic orgs: realistic families with name variants, missing links and ARR movements.

`generate(folder, accounts=N, seed=S)` writes Account.csv, Subscription__c.csv and User.csv, and the truth
(true parent of every account and what reveals it) to truth.csv beside the org folder. The demo org shipped
in the package is generate(folder, families=500, seed=7); a test keeps it so.
"""
from __future__ import annotations

import csv
import datetime as dt
import random
from pathlib import Path

from .. import months
from ..ids import sf_id
from ..safe_output import atomic_file, private_bytes, private_dir

DEMO_AS_OF = dt.date(2026, 11, 15)

_SYL = ["ac", "me", "no", "va", "ter", "ra", "lu", "men", "zen", "ix", "or", "bit", "cor", "tex", "vi", "sta", "qua",
        "ly", "gen", "tri", "pol", "ar", "is", "on", "ex", "dy", "nam", "ka", "ro", "sol"]
_WORDS = ["Systems", "Labs", "Group", "Holdings", "Industries", "Partners", "Networks", "Foods", "Energy", "Logistics",
          "Health", "Capital", "Media", "Motors", "Pharma", "Retail", "Software", "Telecom"]
_SUFFIX = ["Inc.", "LLC", "Ltd", "GmbH", "S.A.", "Corp.", "AG", "S.r.l.", "Pty Ltd", "K.K.", "AB", "B.V.", ""]
_QUAL = [("US", "United States", "NA"), ("UK", "United Kingdom", "EMEA"), ("Germany", "Germany", "EMEA"),
         ("France", "France", "EMEA"), ("Japan", "Japan", "APAC"), ("Singapore", "Singapore", "APAC"),
         ("Brasil", "Brazil", "LATAM"), ("Canada", "Canada", "NA"), ("eComm", "United States", "NA"),
         ("Retail Division", "United States", "NA"), ("Australia", "Australia", "APAC"), ("Mexico", "Mexico", "LATAM")]
_PRODUCTS = ["Core", "Analytics", "Support", "API", "Seats", "Security"]
_INDUSTRY = ["Media", "Energy", "Retail", "Technology", "Healthcare", "Finance", "Manufacturing"]

ACCOUNT_FIELDS = ["Id", "Name", "ParentId", "Website", "BillingCountry", "Region__c", "Industry", "OwnerId", "DunsNumber"]
SUB_FIELDS = ["Id", "Account__c", "Product__c", "Start_Date__c", "End_Date__c", "Amount__c", "CurrencyIsoCode"]


def _month_end(m: int) -> str:
    return (months.first_day(m + 1) - dt.timedelta(days=1)).isoformat()


def _month_start(m: int) -> str:
    return months.first_day(m).isoformat()


class _Org:
    def __init__(self, as_of: dt.date, history: int):
        self.accounts: list[list] = []
        self.subs: list[list] = []
        self.truth: list[tuple[str, str, str]] = []
        self.stems: list[str] = []
        self.cur = months.of(as_of)
        self.first = self.cur - history
        self.n_acc = 0
        self.n_sub = 0

    def account(self, name, parent_id, true_parent, country, region, industry="Technology", website="",
                owner="005000000000001AAA", duns="", evidence="name") -> str:
        self.n_acc += 1
        rid = sf_id("001", self.n_acc)
        self.accounts.append([rid, name, parent_id or "", website, country, region, industry, owner, duns])
        self.truth.append((rid, true_parent or "", evidence if true_parent else ""))
        return rid

    def sub(self, account, product, start_m, end_m, annual) -> None:
        """ARR `annual` from month start_m through end_m (inclusive, end of month); end_m None = open-ended."""
        self.n_sub += 1
        self.subs.append([sf_id("a0S", self.n_sub), account, product, _month_start(start_m),
                          _month_end(end_m) if end_m is not None else "", f"{annual}.00", "USD"])


def _reference_stories(org: _Org) -> None:
    p = org.cur - 1      # the last closed month: where the stories' moves land
    s = org.first        # history start
    d = org.account("The Walt Disney Company", "", "", "United States", "NA", "Media", "https://thewaltdisneycompany.com")
    org.sub(d, "Core", s, p - 1, 300_000)         # 300k ARR until the month before the period
    org.sub(d, "Core", p, None, 280_000)          # then 280k: Disney contracts by 20k
    hulu = org.account("Hulu, LLC", d, d, "United States", "NA", "Media", "https://hulu.com")
    org.sub(hulu, "Analytics", s, p - 1, 100_000) # 100k ARR moves ...
    fox = org.account("Fox Entertainment", d, d, "United States", "NA", "Media", "https://foxentertainment.com")
    org.sub(fox, "Analytics", p, None, 100_000)   # ... to Fox in the same month: an internal transfer
    hulu2 = org.account("Hulu", "", d, "United States", "NA", "Media", "https://www.hulu.com",
                        evidence="mapping")
    org.sub(hulu2, "Seats", p, None, 60_000)      # 60k deal on an unlinked Hulu record: looks like a new logo
    acme = org.account("Acme HQ", "", "", "United States", "NA", "Retail", "https://acme.com")
    org.sub(acme, "Core", s, None, 200_000)
    us = org.account("Acme US", "", acme, "United States", "NA", "Retail", "https://us.acme.com")
    org.sub(us, "Seats", s + 3, None, 50_000)
    ecomm = org.account("Acme eComm", "", acme, "United States", "NA", "Retail", "https://shop.acme.com")
    org.sub(ecomm, "API", s + 6, None, 30_000)
    ent = org.account("Enterprise Holdings", "", "", "United States", "NA", "Finance")
    org.sub(ent, "Core", s, None, 60_000)
    east = org.account("Enterprise East", ent, ent, "United States", "NA", "Finance")
    org.sub(east, "Core", s, p - 1, 100_000)
    org.sub(east, "Core", p, None, 150_000)       # East grows ...
    west = org.account("Enterprise West", ent, ent, "United States", "NA", "Finance")
    org.sub(west, "Core", s, p - 1, 40_000)       # ... while West churns
    uog = org.account("United Oil & Gas Corp.", "", "", "United States", "NA", "Energy", "https://uog.com")
    org.sub(uog, "Core", s, None, 300_000)
    uk = org.account("United Oil & Gas, UK", uog, uog, "United Kingdom", "EMEA", "Energy", "https://uog.co.uk")
    org.sub(uk, "Support", s, None, 80_000)
    sg = org.account("United Oil & Gas (Singapore)", "", uog, "Singapore", "APAC", "Energy", "https://uog.com.sg")
    org.sub(sg, "Support", s + 12, None, 40_000)


_SUB = ["North", "South", "East", "West", "Central"]
_TRAP_WORDS = ["Dental", "Air Lines", "Bakery", "Realty", "Marine", "Textiles", "Aviation", "Hotels", "Brewing", "Optics"]
_TYPO = {"a": "e", "e": "a", "o": "u", "i": "y", "n": "m", "r": "l", "t": "d"}


def _base(k: int, rnd: random.Random) -> str:
    """A family name unique to k: a random syllable, then k spelled in syllables (no two families collide
    by accident; the collisions the matcher must survive are made on purpose, as traps)."""
    out = [rnd.choice(_SYL)]
    while True:
        k, r = divmod(k, len(_SYL))
        out.append(_SYL[r])
        if k == 0:
            break
    return "".join(out).capitalize()


def _typo(word: str, rnd: random.Random) -> str:
    spots = [i for i in range(2, len(word)) if word[i] in _TYPO]
    if not spots:
        return word + "e"
    i = rnd.choice(spots)
    return word[:i] + _TYPO[word[i]] + word[i + 1:]


def _family(org: _Org, rnd: random.Random, k: int) -> None:
    """One family: a root plus subsidiaries named root + qualifier (country, division), some nested under a
    subsidiary (its name + a region), some acquired under unrelated names, some misspelt; a few families are
    traps that borrow another family's name ("Delta Dental" next to "Delta Air Lines")."""
    trap = org.stems and rnd.random() < 0.03
    if trap:
        other = rnd.choice(org.stems)
        stem = f"{other} {rnd.choice(_TRAP_WORDS)}" if rnd.random() < 0.8 else other
    else:
        base = _base(k, rnd)
        word = rnd.choice(_WORDS) if rnd.random() < 0.5 else ""
        stem = f"{base} {word}".strip()
        org.stems.append(stem)
    industry = rnd.choice(_INDUSTRY)
    q0 = rnd.choice(_QUAL)
    size = 1 if rnd.random() < 0.55 else rnd.choice((2, 2, 3, 3, 4, 5, 6, 8)) if rnd.random() < 0.93 else rnd.randint(10, 40)
    domain = f"{stem.split()[0].lower()}{k}.com"
    root = org.account(f"{stem} {rnd.choice(_SUFFIX)}".strip(), "", "", q0[1], q0[2], industry, f"https://www.{domain}",
                       duns=f"{100000000 + k}", evidence="")
    members = [(root, stem, q0[1])]
    subs_used: dict[int, int] = {}
    for j in range(1, size):
        q = _QUAL[(j + k) % len(_QUAL)]
        roll = rnd.random()
        if j >= len(_QUAL) or (j >= 4 and roll < 0.25):        # nested under an earlier subsidiary
            p = rnd.randrange(1, min(j, len(_QUAL)))
            used = subs_used.get(p, 0)
            if used >= len(_SUB):
                continue
            subs_used[p] = used + 1
            parent_id, parent_name, country = members[p]
            name, true_parent, evidence = f"{parent_name} {_SUB[used]}", parent_id, "name"
            q = (q[0], country, q[2])
        elif roll < 0.05:                                        # acquired: nothing in the name says so
            name, true_parent, evidence = f"{_base(k * 7919 + j, rnd)} {rnd.choice(_WORDS)} {rnd.choice(_SUFFIX)}".strip(), root, "none"
        elif roll < 0.08:                                        # misspelt parent name
            name, true_parent, evidence = f"{_typo(stem, rnd)} {q[0]}", root, "fuzzy"
        else:
            sep = rnd.random()
            name = f"{stem} {q[0]}" if sep < 0.7 else f"{stem}, {q[0]}" if sep < 0.85 else f"{stem} ({q[0]})"
            true_parent, evidence = root, "name"
        linked = true_parent if rnd.random() < 0.6 else ""
        rid = org.account(name, linked, true_parent, q[1], q[2], industry,
                          f"https://{q[0].lower().replace(' ', '')}.{domain}" if rnd.random() < 0.5 else "",
                          evidence=evidence)
        members.append((rid, name, q[1]))
    _revenue(org, rnd, [m[0] for m in members])


def _revenue(org: _Org, rnd: random.Random, members: list[str]) -> None:
    first, last = org.first, org.cur
    for acc in members:
        if rnd.random() < 0.15:
            continue                                   # no revenue (prospect)
        start = rnd.randint(first - 12, last)
        amount = 12 * rnd.choice((100, 250, 500, 800, 1_200, 2_000, 3_500, 5_000, 9_000))
        product = rnd.choice(_PRODUCTS)
        event = rnd.random()
        mid = rnd.randint(max(start + 1, first), last) if start + 1 <= last else None
        if mid is None or event < 0.45:
            org.sub(acc, product, start, None, amount)                  # steady
        elif event < 0.62:                                              # expansion: add a product
            org.sub(acc, product, start, None, amount)
            org.sub(acc, rnd.choice(_PRODUCTS), mid, None, amount // 2)
        elif event < 0.74:                                              # contraction
            org.sub(acc, product, start, mid - 1, amount)
            org.sub(acc, product, mid, None, amount * 2 // 3)
        elif event < 0.84:                                              # churn
            org.sub(acc, product, start, mid - 1, amount)
        elif event < 0.92 and len(members) > 1:                         # transfer to a sibling
            other = rnd.choice([m for m in members if m != acc])
            org.sub(acc, product, start, mid - 1, amount)
            org.sub(other, product, mid, None, amount)
        else:                                                           # churn then reactivation
            back = rnd.randint(mid, last) if mid < last else None
            org.sub(acc, product, start, mid - 1, amount)
            if back is not None and back > mid:
                org.sub(acc, product, back + 1 if back < last else back, None, amount)


def generate(folder: Path, accounts: int | None = None, seed: int = 7, as_of: dt.date = DEMO_AS_OF,
             history: int = 24, families: int | None = None) -> dict:
    """Write a synthetic org (reference stories + families) to `folder`; truth.csv goes beside it."""
    rnd = random.Random(seed)
    org = _Org(as_of, history)
    _reference_stories(org)
    k = 0
    while (families is not None and k < families) or (families is None and org.n_acc < (accounts or 1500)):
        k += 1
        _family(org, rnd, k)
    if accounts is not None and families is None and org.n_acc > accounts:
        keep = {row[0] for row in org.accounts[:accounts]}
        org.accounts = org.accounts[:accounts]
        org.truth = org.truth[:accounts]
        org.subs = [s for s in org.subs if s[1] in keep]
        for row, (rid, tp, _) in zip(org.accounts, org.truth):
            if row[2] and row[2] not in keep:
                row[2] = ""
    folder = private_dir(Path(folder))  # customer-like data: 0600 in 0700 folders, whatever the umask
    _write(folder / "Account.csv", ACCOUNT_FIELDS, org.accounts)
    _write(folder / "Subscription__c.csv", SUB_FIELDS, org.subs)
    _write(folder / "User.csv", ["Id", "Name", "Email"], [["005000000000001AAA", "Demo Owner", "owner@example.com"]])
    keep = {row[0] for row in org.accounts}
    # Evidence: what reveals the true parent — name (name + qualifier), fuzzy (a misspelt name), mapping, none
    _write(folder.parent / "truth.csv", ["Id", "TrueParentId", "Evidence"],
           [(a, t, e) if t in keep else (a, "", "") for a, t, e in org.truth])
    return {"accounts": len(org.accounts), "subscriptions": len(org.subs), "families": k + 5,
            "as_of": as_of.isoformat()}


def _write(path: Path, header: list[str], rows) -> None:
    with atomic_file(path, "w", newline="", encoding="utf-8") as fh:  # 0600, through a fresh temporary file
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


DEMO_CONFIG = """\
# nrr-engine config, as `nrr-engine demo` writes it for the demo org (`nrr-engine init` writes one to start
# from for your own org). Paths are relative to this file. `nrr-engine validate` checks it, the rules and every
# field they name against the org; `nrr-engine schema` prints its JSON Schema.
source: {{kind: local, path: ../org}}     # a folder of Data Loader CSVs: Account.csv, Subscription__c.csv, ...
state: ../state/nrr.db                  # the SQLite ledger (ARR history and membership: nrr-history/ beside it)
currency: USD                           # the corporate currency (ISO 4217)
timezone: UTC                           # for schedules and "today"
arr:
  source: subscriptions                 # account_field | subscriptions | history
  history_months: {history}                    # months of monthly ARR kept and rebuilt
  subscriptions: {{object: Subscription__c, account: Account__c, start: Start_Date__c, end: End_Date__c,
                  amount: Amount__c, amount_period: annual, product: Product__c, currency: CurrencyIsoCode}}
views:
  - name: legal                         # the ParentId tree; its rollups are written to these Account fields
    parent_field: ParentId
    fields: {{ultimate_parent: Ultimate_Parent__c, depth: Hierarchy_Depth__c, arr: Hierarchy_ARR__c,
             child_count: Child_Count__c}}
  # - {{name: by_region, partition_of: legal, by: Region__c}}   # each legal family split by region
rules: [../rules/*.yaml]                # matching rules (parent-link repair): `nrr-engine schema match`
hierarchy: {{auto_apply: 0.95, child_limit: 10000, max_depth: 100, missing_parents: placeholder}}
guards: {{max_shrink: 0.2}}               # an input that lost more of its accounts or ARR stops the run
schedule: {{nightly: "0 2 * * *", month_close: "0 4 1 * *"}}   # jobs for `schedule` and `run --job`
snapshots: {{enabled: true, object: KPI_Snapshot__c}}          # one record per (view, family root, month)
report: {{segments: [Region__c]}}         # root fields the run summary can break NRR down by
"""


# What `nrr-engine init` writes: the demo's config made to fit any Data Loader export (no field beyond the ones a
# subscription export has, nothing only the demo org has), with how to point it at your own export.
INIT_CONFIG = """\
# nrr-engine config, as `nrr-engine init` writes it. Paths are relative to this file. `nrr-engine validate`
# checks it, the rules and every field they name against the org; `nrr-engine schema` prints its JSON Schema.
# Your own org: set source.path to the folder of your Data Loader (or `sf data export`) CSVs, Account.csv and
# Subscription__c.csv (quoted values, CRLF and a BOM are fine), or replace the example org's CSVs in ../org
# with them; then name your subscription object's fields under arr.subscriptions and run validate.
# Every path here stays inside this project (the folder that holds config/) unless its folder is listed under
# allowed_paths:, e.g. an export in /data/exports/2026-11 or a key in /run/secrets:
# allowed_paths: [/data/exports]
source: {kind: local, path: ../org}     # a folder of Data Loader CSVs: Account.csv, Subscription__c.csv, ...
state: ../state/nrr.db                  # the SQLite ledger (ARR history and membership: nrr-history/ beside it)
currency: USD                           # the corporate currency (ISO 4217)
timezone: UTC                           # for schedules and "today"
arr:
  source: subscriptions                 # account_field | subscriptions | history
  history_months: 36                    # months of monthly ARR kept and rebuilt
  # amount_period: annual (the amount is a year's) or monthly (ARR = 12 x amount). Each amount is in the
  # currency of the record's CurrencyIsoCode when the export has that column (add currency: FIELD for another)
  subscriptions: {object: Subscription__c, account: Account__c, start: Start_Date__c, end: End_Date__c,
                  amount: Amount__c, amount_period: annual, product: Product__c}
views:
  - name: legal                         # the ParentId tree; its rollups are written to these Account fields
    parent_field: ParentId
    fields: {ultimate_parent: Ultimate_Parent__c, depth: Hierarchy_Depth__c, arr: Hierarchy_ARR__c,
             child_count: Child_Count__c}
  # - {name: by_region, partition_of: legal, by: Region__c}   # each legal family split by region
rules: [../rules/*.yaml]                # matching rules (parent-link repair): `nrr-engine schema match`
hierarchy: {auto_apply: 0.95, child_limit: 10000, max_depth: 100, missing_parents: placeholder}
guards: {max_shrink: 0.2}               # an input that lost more of its accounts or ARR stops the run
schedule: {nightly: "0 2 * * *", month_close: "0 4 1 * *"}   # jobs for `schedule` and `run --job`
snapshots: {enabled: true, object: KPI_Snapshot__c}          # one record per (view, family root, month)
# report: {segments: [Region__c]}       # Account fields (columns of Account.csv) the run summary breaks NRR down by
# Salesforce instead of CSVs (README "Salesforce"; secrets from the environment): after the first run a run
# reads only what changed, and every object in full again every full_read_days:
# source: {kind: salesforce, auth: jwt, instance_url: https://acme.my.salesforce.com, username: integration@acme.com,
#          private_key_file: ../secrets/server.key, full_read_days: 7}
"""

# init's mapping table: the header only (the demo's row, "Hulu, LLC" -> The Walt Disney Company, would name
# accounts no other org has and be reported unresolved on every run); match-mapping.yaml shows a row
INIT_MAPPINGS = "child,parent,note\n"


def scaffold(root: Path, force: bool = False) -> list[str]:
    """`nrr-engine init`: config/nrr.yaml (INIT_CONFIG), the shipped rules/ with an empty mapping table, and the
    demo org as an example in org/; returns what to print (what was written and how to use your own export).

    Every folder it creates is 0700 and every file 0600, whatever the umask: the config and rules steer what the
    engine reads and writes (allowed_paths, source.path, the links it makes), so no other local user may edit them."""
    from importlib import resources

    target = root / "config" / "nrr.yaml"
    private_dir(root)
    copy_rules(root / "rules", force)
    mappings = root / "rules" / "mappings.csv"
    if force or not mappings.exists() or mappings.read_bytes() == \
            resources.files("nrr_engine").joinpath("scaffold/rules/mappings.csv").read_bytes():
        private_bytes(mappings, INIT_MAPPINGS.encode("utf-8"))
    private_bytes(target, INIT_CONFIG.encode("utf-8"))
    org = root / "org"
    copy_demo_org(org, force)
    # the SFDX project to deploy (fields, KPI object, permission sets): an installed package has no checkout
    _copy_tree(resources.files("nrr_engine").joinpath("scaffold/salesforce"), root / "salesforce", force)
    return [f"created {target}, {root / 'rules'}/ and an example org in {org}/ (the demo's)",
            f"Salesforce metadata to deploy (fields, KPI_Snapshot__c, permission sets): {root / 'salesforce'}/",
            f"your own org: set source.path in {target} to the folder of your Data Loader CSVs (Account.csv, "
            f"Subscription__c.csv, ...; a folder outside {root}/ also goes under allowed_paths:), or replace the "
            f"CSVs in {org}/ with them (and delete the example's other files, e.g. User.csv); map arr.subscriptions to your "
            f"subscription object's fields; known links go in {mappings} (child,parent[,note])",
            f"next: nrr-engine --config {target} validate && nrr-engine --config {target} plan"]


def copy_demo_org(org: Path, force: bool = True) -> None:
    """The shipped demo org's CSVs into `org` (0600 in a 0700 folder); without `force`, files already there stay."""
    from importlib import resources

    private_dir(org)
    for item in resources.files("nrr_engine").joinpath("demo/org").iterdir():
        if item.name.endswith(".csv") and (force or not (org / item.name).exists()):
            private_bytes(org / item.name, item.read_bytes())


def _copy_tree(source, target: Path, force: bool) -> None:
    """Copy a package folder (importlib Traversable) into `target`, keeping files the user already has."""
    private_dir(target)
    for item in source.iterdir():
        if item.is_dir():
            _copy_tree(item, target / item.name, force)
        elif force or not (target / item.name).exists():
            private_bytes(target / item.name, item.read_bytes())


def write_demo_config(folder: Path, history: int = 36, overwrite_rules: bool = True) -> Path:
    """config/nrr.yaml + the shipped rules/ (matching rules, mapping table) for an org in folder/org; 0600 in
    0700 folders, whatever the umask (as `scaffold`)."""
    private_dir(folder)
    copy_rules(folder / "rules", overwrite_rules)
    path = folder / "config" / "nrr.yaml"
    private_bytes(path, DEMO_CONFIG.format(history=history).encode("utf-8"))
    return path


def copy_rules(target: Path, overwrite: bool = True) -> list[Path]:
    """Copy the shipped rule files (the repository's rules/ folder) into `target`."""
    from importlib import resources

    private_dir(target)
    written = []
    for item in resources.files("nrr_engine").joinpath("scaffold/rules").iterdir():
        dest = target / item.name
        if item.is_file() and (overwrite or not dest.exists()):
            private_bytes(dest, item.read_bytes())
            written.append(dest)
    return written
