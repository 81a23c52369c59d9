"""Shared fixtures: build small local orgs in a temp dir and drive the real CLI against them."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from nrr_engine.cli import main

CONFIG = """\
source: {{kind: local, path: ../org}}
state: ../state/nrr.db
currency: USD
arr:
{arr}
views:
  - name: legal
    parent_field: ParentId
rules: {rules}
schedule: {{nightly: "0 2 * * *"}}
report: {{segments: [Region__c]}}
{extra}"""

SUBS_ARR = """\
  source: subscriptions
  subscriptions: {object: Subscription__c, account: Account__c, start: Start_Date__c, end: End_Date__c,
                  amount: Amount__c, amount_period: annual, product: Product__c}"""

# the plain name rule (qualifier after the parent's name), for tests of what a name link does
NAME_RULE = "kind: match\nrules:\n  - name: names\n    type: name\n"

FIELD_ARR = """\
  source: account_field
  account_field: ARR__c"""


@dataclass
class Org:
    """A small local org on disk: accounts and subscriptions as rows, plus its config."""

    root: Path
    accounts: list[dict] = field(default_factory=list)
    subs: list[dict] = field(default_factory=list)
    arr: str = SUBS_ARR
    rules: dict[str, str] = field(default_factory=dict)   # file name in rules/ -> text
    extra: str = ""                                        # more top-level config (hierarchy:, views: ...)

    @property
    def config(self) -> Path:
        return self.root / "config" / "nrr.yaml"

    @property
    def org(self) -> Path:
        return self.root / "org"

    def account(self, rid: str, name: str, parent: str = "", **extra) -> str:
        self.accounts.append({"Id": rid, "Name": name, "ParentId": parent, "Region__c": extra.pop("region", "NA"),
                              **extra})
        return rid

    def sub(self, account: str, start: str, end: str, amount: str, product: str = "Core") -> None:
        self.subs.append({"Id": f"a0S{len(self.subs) + 1:015d}", "Account__c": account, "Start_Date__c": start,
                          "End_Date__c": end, "Amount__c": amount, "Product__c": product})

    def write(self) -> "Org":
        self.org.mkdir(parents=True, exist_ok=True)
        (self.root / "config").mkdir(parents=True, exist_ok=True)
        rules = "[]"
        if self.rules:
            (self.root / "rules").mkdir(parents=True, exist_ok=True)
            for name, text in self.rules.items():
                (self.root / "rules" / name).write_text(text, encoding="utf-8")
            rules = "[../rules/*.yaml]"
        config = CONFIG.format(arr=self.arr, rules=rules, extra=self.extra)
        if ("\n" + self.extra).count("\nviews:"):  # the test defines its own views
            config = config.replace("views:\n  - name: legal\n    parent_field: ParentId\n", "")
        self.config.write_text(config, encoding="utf-8")
        write_csv(self.org / "Account.csv", self.accounts)
        if self.subs or self.arr == SUBS_ARR:
            write_csv(self.org / "Subscription__c.csv", self.subs,
                      ["Id", "Account__c", "Start_Date__c", "End_Date__c", "Amount__c", "Product__c"])
        return self


def empty_init_project(tmp_path: Path, monkeypatch) -> Path:
    """`nrr-engine init proj` in tmp_path (the working folder) with the example org's CSVs removed: the org
    folder, for a test to fill."""
    monkeypatch.chdir(tmp_path)
    Cli(None)("init", "proj")
    org = tmp_path / "proj" / "org"
    for f in org.iterdir():
        f.unlink()
    return org


def links_to_review(root: Path) -> None:
    """Make a project (config/ and rules/ under `root`) put every link it finds in the review queue, none applied
    on its own: for tests of what approving, running and rolling back links do, whatever matching finds."""
    config = root / "config" / "nrr.yaml"
    text = config.read_text(encoding="utf-8")
    assert "auto_apply: 0.95" in text
    config.write_text(text.replace("auto_apply: 0.95", "auto_apply: 1.0"), encoding="utf-8")
    mapping = root / "rules" / "match-mapping.yaml"
    text = mapping.read_text(encoding="utf-8")
    assert "confidence: 1.0" in text
    mapping.write_text(text.replace("confidence: 1.0", "confidence: 0.99"), encoding="utf-8")


def write_csv(path: Path, rows: list[dict], header: list[str] | None = None) -> None:
    header = header or list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, header)
        w.writeheader()
        w.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def zeta_family(org: "Org") -> "Org":
    """"Zeta US" and "Zeta UK" with no account named Zeta, under the name rule: a placeholder parent "Zeta" to
    propose (and, approved, to create)."""
    org.account("001A", "Zeta US", BillingCountry="US")
    org.account("001B", "Zeta UK", BillingCountry="United Kingdom")
    org.sub("001A", "2025-01-01", "", "1000")
    org.rules = {"r.yaml": NAME_RULE}
    org.write()
    return org


@pytest.fixture(autouse=True)
def _secret_registry_per_test():
    """Values a test registers as secrets (a double's consumer key, a session id) stay that test's: the
    redactor's registry is the process's, and a value left in it would redact the words of later tests."""
    from nrr_engine import log as log_mod
    saved_vars, saved_values = set(log_mod._secret_vars), set(log_mod._secret_values)
    yield
    log_mod._secret_vars.clear(), log_mod._secret_vars.update(saved_vars)
    log_mod._secret_values.clear(), log_mod._secret_values.update(saved_values)
    getattr(log_mod, "_compiled", {}).clear()
    log_mod._registered += 1   # a redactor made before now is stale


@pytest.fixture
def org(tmp_path) -> Org:
    """An empty org builder rooted in a temp dir."""
    return Org(tmp_path)


@dataclass
class Cli:
    """Runs `nrr-engine --config <org config> ...` in-process and returns the click Result."""

    config: Path | None = None

    def __call__(self, *args: str, expect: int | None = 0):
        argv = (["--config", str(self.config)] if self.config else []) + list(args)
        result = CliRunner().invoke(main, argv, catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, (
                f"exit {result.exit_code} != {expect}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    def json(self, *args: str):
        return json.loads(self(*args).stdout)


@pytest.fixture
def cli(org) -> Cli:
    """The CLI bound to the `org` fixture's config."""
    return Cli(org.config)
