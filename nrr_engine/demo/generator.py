"""Deterministic synthetic orgs: realistic families with name variants, missing links and ARR movements.

`generate(folder, accounts=N, seed=S)` writes Account.csv, Subscription__c.csv and User.csv, and the truth
(true parent of every account) to truth.csv beside the org folder, for tests and benchmarks.
"""
from __future__ import annotations

import csv
import datetime as dt
import random
from pathlib import Path

from .. import months
from ..sources.local_org import sf_id

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
        self.truth: list[tuple[str, str]] = []
        self.cur = months.of(as_of)
        self.first = self.cur - history
        self.n_acc = 0
        self.n_sub = 0

    def account(self, name, parent_id, true_parent, country, region, industry="Technology", website="",
                owner="005000000000001AAA", duns="") -> str:
        self.n_acc += 1
        rid = sf_id("001", self.n_acc)
        self.accounts.append([rid, name, parent_id or "", website, country, region, industry, owner, duns])
        self.truth.append((rid, true_parent or ""))
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
    hulu2 = org.account("Hulu", "", d, "United States", "NA", "Media", "https://www.hulu.com")
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


def _family(org: _Org, rnd: random.Random, k: int) -> None:
    base = "".join(rnd.choice(_SYL) for _ in range(rnd.randint(2, 3))).capitalize()
    word = rnd.choice(_WORDS) if rnd.random() < 0.5 else ""
    stem = f"{base} {word}".strip()
    industry = rnd.choice(_INDUSTRY)
    q0 = rnd.choice(_QUAL)
    size = 1 if rnd.random() < 0.55 else rnd.choice((2, 2, 3, 3, 4, 5, 6, 8)) if rnd.random() < 0.93 else rnd.randint(10, 40)
    domain = f"{base.lower()}{k}.com"
    root = org.account(f"{stem} {rnd.choice(_SUFFIX)}".strip(), "", "", q0[1], q0[2], industry, f"https://www.{domain}",
                       duns=f"{100000000 + k}")
    members = [root]
    for j in range(1, size):
        q = _QUAL[(j + k) % len(_QUAL)]
        true_parent = members[0] if j < 4 or rnd.random() < 0.7 else rnd.choice(members[1:])
        name = f"{stem} {q[0]}" if rnd.random() < 0.7 else f"{stem}, {q[0]}" if rnd.random() < 0.5 else f"{stem} ({q[0]})"
        linked = true_parent if rnd.random() < 0.6 else ""
        members.append(org.account(name, linked, true_parent, q[1], q[2], industry,
                                   f"https://{q[0].lower().replace(' ', '')}.{domain}" if rnd.random() < 0.5 else ""))
    _revenue(org, rnd, members)


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
        for row, (rid, tp) in zip(org.accounts, org.truth):
            if row[2] and row[2] not in keep:
                row[2] = ""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "Account.csv", ACCOUNT_FIELDS, org.accounts)
    _write(folder / "Subscription__c.csv", SUB_FIELDS, org.subs)
    _write(folder / "User.csv", ["Id", "Name", "Email"], [["005000000000001AAA", "Demo Owner", "owner@example.com"]])
    keep = {row[0] for row in org.accounts}
    _write(folder.parent / "truth.csv", ["Id", "TrueParentId"], [(a, t if t in keep else "") for a, t in org.truth])
    return {"accounts": len(org.accounts), "subscriptions": len(org.subs), "families": k + 5,
            "as_of": as_of.isoformat()}


def _write(path: Path, header: list[str], rows) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    tmp.replace(path)


DEMO_CONFIG = """\
# nrr-engine config for the demo org. Paths are relative to this file.
source: {{kind: local, path: ../org}}   # a folder of Data Loader CSVs: Account.csv, Subscription__c.csv, ...
state: ../state/nrr.db                  # ledger, ARR history, family membership
currency: USD
timezone: UTC
arr:
  source: subscriptions                 # account_field | subscriptions | history
  history_months: {history}
  subscriptions: {{object: Subscription__c, account: Account__c, start: Start_Date__c, end: End_Date__c,
                  amount: Amount__c, amount_period: annual, product: Product__c, currency: CurrencyIsoCode}}
views:
  - name: legal
    parent_field: ParentId
    fields: {{ultimate_parent: Ultimate_Parent__c, depth: Hierarchy_Depth__c, arr: Hierarchy_ARR__c,
             child_count: Child_Count__c}}
rules: [../rules/*.yaml]
schedule: {{nightly: "0 2 * * *", month_close: "0 4 1 * *"}}
snapshots: {{enabled: true, object: KPI_Snapshot__c}}
report: {{segments: [Region__c]}}
"""


def write_demo_config(folder: Path, history: int = 36) -> Path:
    """config/nrr.yaml + empty rules/ for an org generated into folder/org."""
    (folder / "config").mkdir(parents=True, exist_ok=True)
    (folder / "rules").mkdir(parents=True, exist_ok=True)
    path = folder / "config" / "nrr.yaml"
    path.write_text(DEMO_CONFIG.format(history=history), encoding="utf-8")
    return path
