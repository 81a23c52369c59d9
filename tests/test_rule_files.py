"""Rule files are checked like code: every problem with file:line and what was expected; never a traceback."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest

from nrr_engine.hierarchy.match import Proposal
from nrr_engine.rules import KINDS, MatchRule

from conftest import Cli
from test_matching import AS_OF, parents, shipped_rules


def write_rules(org, text: str, name: str = "r.yaml", **more):
    org.account("001A", "Acme", BillingCountry="US")
    org.rules = {name: text, **more}
    return org.write()


@pytest.mark.parametrize("text, line, expected", [
    ("kind: match\nrules:\n  - {name: a, type: magic}\n", 3, "'magic' is not allowed; expected one of: key, domain, name, mapping"),
    ("kind: match\nrules:\n  - name: a\n    type: key\n    child_field: Parent_DUNS__c\n", 3, "'candidate_field' is a required property"),
    ("kind: match\nrules:\n  - name: a\n    type: name\n    child:\n      - {field: Type, op: like, value: x}\n", 6,
     "'like' is not allowed"),
    ("kind: match\nrules:\n  - name: a\n    type: name\n    threshold: 80\n", 5, "only fuzzy name rules take a threshold"),
    ("kind: match\nrules:\n  - name: a\n    type: key\n    child_field: X\n    candidate_field: Y\n    method: fuzzy\n", 7,
     "method: not a setting of key rules"),
    ("kind: match\nrules:\n  - {name: a, type: name, view: sales}\n", 3, "view: 'sales' is not a lookup view"),
    ("kind: match\nrules:\n  - {name: a, type: name, confidence: 1.5}\n", 3, "confidence"),
    ("kind: signals\nrules: []\n", 1, "kind: 'signals' is not a rule kind this version reads"),
    ("kind: match\nrules:\n  - {name: a, type: name\n", 4, "YAML syntax error"),
    ("kind: match\nrules:\n  - {name: a, type: name}\n  - {name: a, type: domain}\n", 4, "rule name 'a' is used twice"),
    ("kind: match\nrules:\n  - {name: a, type: mapping, table: missing.csv}\n", 3, "table: file"),
    ("kind: match\nkind: match\nrules: []\n", 2, "duplicate key 'kind'"),
    ("- just a list\n", 1, "expected a mapping with kind: match"),
])
def test_validate_points_at_the_rule_line(org, cli, text, line, expected):
    """`validate` reports a bad rule file with its file:line and what was expected, and exits 2."""
    write_rules(org, text)
    err = cli("validate", expect=2).stderr
    assert f"r.yaml:{line}" in err and expected in err


def test_validate_collects_every_rule_problem_at_once(org, cli):
    """Two bad rules in two files: both reported in one `validate`."""
    write_rules(org, "kind: match\nrules:\n  - {name: a, type: magic}\n",
                **{"s.yaml": "kind: match\nrules:\n  - {name: b, type: name, method: wild}\n"})
    err = cli("validate", expect=2).stderr
    assert "r.yaml:3" in err and "s.yaml:3" in err and "2 problem(s) found" in err


def test_mapping_table_rows_are_checked_with_their_line(org, cli):
    """A mapping CSV with a bad header or an empty side names the table's file:line."""
    write_rules(org, "kind: match\nrules:\n  - {name: m, type: mapping, table: links.csv}\n",
                **{"links.csv": "from,to\nA,B\n"})
    (org.root / "rules" / "links.csv").write_text("from,to\nA,B\n")
    assert "links.csv:1" in cli("validate", expect=2).stderr
    (org.root / "rules" / "links.csv").write_text("child,parent\nHulu,\nFox,Fox\n")
    err = cli("validate", expect=2).stderr
    assert "links.csv:2, rule m: mapping entry needs both child and parent" in err
    assert "links.csv:3, rule m: mapping entry maps 'Fox' to itself" in err


def test_run_stops_on_a_rule_field_the_org_lacks(org, cli):
    """A rule that reads a field the org does not have stops the run (exit 2) naming the rule's file:line."""
    write_rules(org, "kind: match\nrules:\n  - {name: duns, type: key, child_field: Parent_DUNS__c, "
                     "candidate_field: DunsNumber}\n")
    err = cli("run", *AS_OF, expect=2).stderr
    assert "r.yaml:3, rule duns: field Parent_DUNS__c is not a column of Account" in err
    assert "when_fields_missing: skip" in err


def test_a_skipped_rule_is_reported_as_not_evaluated(org, cli):
    """`when_fields_missing: skip` makes the run go on and say the rule was not evaluated."""
    write_rules(org, "kind: match\nrules:\n  - {name: duns, type: key, child_field: Parent_DUNS__c, "
                     "candidate_field: DunsNumber, when_fields_missing: skip}\n")
    out = cli("run", *AS_OF).stdout
    assert "rule duns (" in out and "r.yaml:3) not evaluated: Account has no field Parent_DUNS__c, DunsNumber" in out
    assert "data quality not evaluated [rule_not_evaluated]" in out
    run_id = out.split()[1]
    found = [f for f in cli.json("runs", "show", run_id, "--format", "json")["findings"] if f["kind"] == "rule_not_evaluated"]
    assert [(f["outcome"], f["severity"]) for f in found] == [("not_evaluated", "warning")]


def test_schema_command_prints_the_rule_schema():
    """`schema match` prints the JSON Schema of matching-rule files."""
    out = json.loads(Cli(None)("schema", "match").stdout)
    assert out["properties"]["kind"] == {"const": "match", "description": "the kind of rule file: match (parent-link repair)"}
    assert set(out["$defs"]["rule"]["properties"]["type"]["enum"]) == {"key", "domain", "name", "mapping"}


def test_shipped_rules_validate(org, cli):
    """The rule files `init` copies are valid as shipped."""
    write_rules(org, shipped_rules()["match-names.yaml"], "match-names.yaml", **shipped_rules())
    assert "6 matching rule(s)" in cli("validate").stdout


def test_init_copies_the_shipped_rules(tmp_path):
    """`nrr-engine init` writes the matching rules and mapping table next to the config."""
    Cli(None)("init", str(tmp_path / "x"))
    assert sorted(p.name for p in (tmp_path / "x" / "rules").iterdir()) == sorted(
        [*shipped_rules(), "README.md"])
    out = Cli(tmp_path / "x" / "config" / "nrr.yaml")("validate").stdout
    assert "6 matching rule(s)" in out


@pytest.mark.parametrize("name", ["", " ", "x" * 10_000, "<script>alert('x')</script> Acme",
                                  "Robert'); DROP TABLE Account;--", "\u202eemca", "😀 Emoji Co", "A\tB\nC"])
def test_hostile_names_never_break_a_run(org, cli, tmp_path, name):
    """Empty, 10,000-character, HTML- and SQL-looking names: the run completes; such names link to nothing."""
    org.account("001A", "Acme Inc.", BillingCountry="US")
    org.account("001H", name, BillingCountry="US")
    org.account("001U", "Acme UK", BillingCountry="United Kingdom")
    org.rules = shipped_rules()
    org.write()
    cli("plan", *AS_OF, "--out", str(tmp_path / "p.json"))
    plan = json.loads((tmp_path / "p.json").read_text())
    assert {(c["id"], c["new"]) for c in plan["changes"] if c["field"] == "ParentId"} == {("001U", "001A")}
    cli("run", *AS_OF)
    assert parents(org)["Acme UK"] == "Acme Inc."


def test_a_new_rule_kind_is_one_class_in_the_registry(org, cli, monkeypatch):
    """A kind registered in rules.KINDS gets its YAML setting schema-checked, its typed field built and its own
    proposals applied by a run: nothing else changes (here: a toy kind linking accounts that name their parent)."""
    @dataclass(frozen=True)
    class NamedParentRule(MatchRule):
        type: ClassVar[str] = "named_parent"
        settings: ClassVar[dict] = {"parent_name_field": {"$ref": "#/$defs/fieldName"}}
        required: ClassVar[tuple] = ("parent_name_field",)
        parent_name_field: str = ""

        @classmethod
        def build(cls, common, raw, src):
            return cls(**common, parent_name_field=raw["parent_name_field"])

        def own_fields(self):
            return [self.parent_name_field, "Name"]

        def propose(self, pop, placeholders):
            by_name = {n: j for j, n in enumerate(pop.col("Name"))}
            return [Proposal(i, by_name[v], self, 0.99, {"named": v}) for i, v in enumerate(pop.col(self.parent_name_field))
                    if v in by_name and pop.eligible[i]], [], []

    monkeypatch.setitem(KINDS, "named_parent", NamedParentRule)
    org.account("001P", "Parent Co")
    org.account("001C", "Subsidiary Ltd", Parent_Name__c="Parent Co")
    org.rules = {"r.yaml": "kind: match\nrules:\n  - {name: np, type: named_parent}\n"}
    org.write()
    err = cli("validate", expect=2).stderr
    assert "r.yaml:3" in err and "'parent_name_field' is a required property" in err
    org.rules = {"r.yaml": "kind: match\nrules:\n  - {name: np, type: named_parent, parent_name_field: Parent_Name__c}\n"}
    org.write()
    cli("validate")
    cli("run", *AS_OF)
    assert parents(org) == {"Parent Co": None, "Subsidiary Ltd": "Parent Co"}
    assert "named_parent" in json.dumps(cli.json("schema", "match"))
