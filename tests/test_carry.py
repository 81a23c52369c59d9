"""Matching's proposals carried to the next run (issue 13, reruns cost what changed): taken again only for the
same code, rule and inputs, for children allowed then; equal to matching again, in unit and end to end."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from hypothesis import given, settings, strategies as st

from nrr_engine import store
from nrr_engine.hierarchy import build_tree, carry, match
from nrr_engine.rules import loader
from test_matching import AS_OF

RULES = """\
kind: match
rules:
  - {name: names, type: name, country_field: BillingCountry}
  - {name: fuzzy, type: name, method: fuzzy, threshold: 85, confidence: 0.85}
  - {name: sites, type: domain, field: Website}
  - {name: duns, type: key, child_field: Parent_DUNS__c, candidate_field: DunsNumber,
     tie_break: [most_children, largest_arr]}
  - {name: roots-only, type: name, candidate: [{field: $is_root, op: equals, value: true}]}
  - name: table
    type: mapping
    entries: [{child: Beta Labs, parent: Acme}, {child: Nobody Here, parent: Acme}]
"""

NAMES = ["Acme", "Acme UK", "Acme US", "Acme Germany", "Acmee France", "Beta Labs", "Zeta US", "Zeta UK", "Zeta DE",
         "Shop One", "Shop Two", "Omega Corp", "Omega Corp", "Omega Corp Canada", None, "Kappa Ltd"]
COUNTRY = ["US", "United Kingdom", "US", "Germany", "France", "US", "US", "UK", "Germany", "US", "US", "US", "US",
           "Canada", None, "UK"]
SITES = ["acme.com", "uk.acme.com", None, "de.acme.com", None, "beta.io", "zeta.com", None, None, "us.shops.com",
         "eu.shops.com", None, None, None, "x.kappa.co.uk", "y.kappa.co.uk"]
PDUNS = [None, "1", None, None, None, None, None, None, None, "9", "9", None, None, "7", None, None]
DUNS = ["1", None, None, None, None, None, None, None, None, None, None, "7", "7", None, None, None]


def _rules(tmp_path: Path, text: str = RULES):
    (tmp_path / "r.yaml").write_text(text)
    return loader.load([tmp_path / "r.yaml"], ["legal"]).for_view("legal")


def _population(columns: dict, parent: list[int] | None = None, eligible=None) -> match.Population:
    n = len(columns["Name"])
    ids = [f"001{i:015d}" for i in range(n)]
    parent = parent or [-1] * n
    tree, _ = build_tree(ids, {r: i for i, r in enumerate(ids)}, [ids[p] if p >= 0 else "" for p in parent])
    elig = (tree.parent < 0) if eligible is None else np.asarray(eligible, dtype=bool)
    return match.Population(ids, lambda name: list(columns[name]), tree.parent, np.arange(n, dtype=np.int64) * 100,
                            tree.child_count(), tree.depth, eligible=elig, unlocked=np.ones(n, dtype=bool))


def _columns(**over) -> dict:
    cols = {"Name": NAMES, "BillingCountry": COUNTRY, "Website": SITES, "Parent_DUNS__c": PDUNS, "DunsNumber": DUNS}
    return {**cols, **over}


def _output(got) -> tuple:
    """Proposals, placeholders and notes as comparable data (the rule object by name, evidence as JSON)."""
    proposals, holders, notes = got
    return ([(p.child, p.parent, p.rule.name, p.confidence, match.to_json(p.evidence)) for p in proposals],
            [(h.key, h.name, h.members, h.rule.name, h.confidence, json.dumps(h.evidence, sort_keys=True),
              h.qualifiers) for h in holders], notes)




def _carried_through_file(tmp_path: Path, carried: carry.Carried) -> carry.Carried:
    path = tmp_path / "proposals.npz"
    store.write_proposals(path, carried)
    return store.read_proposals(path)


def test_carried_proposals_equal_matching_again(tmp_path):
    """A rerun with the same columns takes every rule's proposals, placeholders and notes from the file, and they
    are what matching again gives."""
    rules = _rules(tmp_path)
    first = carry.Carried()
    fresh = first.propose(_population(_columns()), "legal", rules, True)
    assert fresh[0] and fresh[1] and fresh[2]   # the case holds proposals, placeholder families and a note
    again = _carried_through_file(tmp_path, first)
    pop = _population(_columns())
    got = again.propose(pop, "legal", rules, True)
    assert _output(got) == _output(match.propose(_population(_columns()), rules, True)) == _output(fresh)
    assert set(again.reused) == {r.name for r in rules}
    assert not again.changed()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=len(NAMES), max_size=len(NAMES)))
def test_fewer_children_allowed_take_the_proposals_and_families_of_those_still_allowed(tmp_path_factory, keep):
    """Children linked since (no longer eligible) drop out of the carried proposals and placeholder families,
    exactly as matching again over the children still eligible gives them, in the same order."""
    tmp_path = tmp_path_factory.mktemp("carry")
    rules = [r for r in _rules(tmp_path) if r.name != "roots-only"]   # $is_root reads the tree, which differs
    first = carry.Carried()
    first.propose(_population(_columns()), "legal", rules, True)
    again = _carried_through_file(tmp_path, first)
    got = again.propose(_population(_columns(), eligible=keep), "legal", rules, True)
    assert _output(got) == _output(match.propose(_population(_columns(), eligible=keep), rules, True))
    assert set(again.reused) == {r.name for r in rules}


def test_an_edited_name_matches_the_rules_that_read_names_again(tmp_path):
    """Renaming one account invalidates every rule reading Name (the qualifier, fuzzy and mapping rules), not the
    domain and key rules; the result is matching's over the new names."""
    rules = _rules(tmp_path)
    first = carry.Carried()
    first.propose(_population(_columns()), "legal", rules, True)
    again = _carried_through_file(tmp_path, first)
    names = list(NAMES)
    names[0] = "Acme Holdings"
    got = again.propose(_population(_columns(Name=names)), "legal", rules, True)
    assert _output(got) == _output(match.propose(_population(_columns(Name=names)), rules, True))
    assert set(again.reused) == {"sites", "duns"}
    assert again.changed()


def test_a_child_allowed_now_but_not_then_matches_again(tmp_path):
    """An entry made while some child could not take a parent is never used once it can: it was never matched."""
    rules = _rules(tmp_path)
    first = carry.Carried()
    first.propose(_population(_columns(), eligible=[i != 1 for i in range(len(NAMES))]), "legal", rules, True)
    again = _carried_through_file(tmp_path, first)
    got = again.propose(_population(_columns()), "legal", rules, True)
    assert not again.reused
    assert _output(got) == _output(match.propose(_population(_columns()), rules, True))


def test_a_tree_read_by_a_rule_invalidates_it_when_it_changes(tmp_path):
    """A rule whose conditions or tie-breakers read the hierarchy ($is_root, most_children, largest_arr) matches
    again when the tree changed; the others are carried."""
    rules = _rules(tmp_path)
    first = carry.Carried()
    first.propose(_population(_columns()), "legal", rules, True)
    again = _carried_through_file(tmp_path, first)
    parent = [-1] * len(NAMES)
    parent[2] = 0   # Acme US now under Acme
    pop = _population(_columns(), parent=parent, eligible=[i != 2 for i in range(len(NAMES))])
    got = again.propose(pop, "legal", rules, True)
    assert set(again.reused) == {"names", "fuzzy", "sites", "table"}
    expected = match.propose(_population(_columns(), parent=parent, eligible=[i != 2 for i in range(len(NAMES))]),
                             rules, True)
    assert _output(got) == _output(expected)


def test_a_changed_rule_setting_other_accounts_or_placeholders_now_wanted_match_again(tmp_path):
    """Another confidence, another account list, or placeholders wanted where none were kept: no entry fits."""
    rules = _rules(tmp_path)
    first = carry.Carried()
    first.propose(_population(_columns()), "legal", rules, False)
    path = tmp_path / "proposals.npz"
    store.write_proposals(path, first)
    changed = _rules(tmp_path, RULES.replace("confidence: 0.85", "confidence: 0.8"))
    again = store.read_proposals(path)
    again.propose(_population(_columns()), "legal", changed, False)
    assert "fuzzy" not in again.reused and "names" in again.reused
    longer = {k: [*v, None] for k, v in _columns().items()}
    again = store.read_proposals(path)
    again.propose(_population(longer), "legal", rules, False)
    assert not again.reused
    again = store.read_proposals(path)
    again.propose(_population(_columns()), "legal", rules, True)
    assert not again.reused


def test_none_and_empty_text_and_numbers_are_different_inputs():
    """A column digest tells None from '', text from a number and keeps the order of the values."""
    digests = {carry.column_digest(v) for v in ([None, "a"], ["", "a"], ["1", "a"], [1, "a"], ["a", None], ["a\x00"],
                                                ["a"], [1.0, "a"])}
    assert len(digests) == 8


def test_a_damaged_or_foreign_file_is_no_entry(tmp_path):
    """A torn proposals file, or one of another version, leaves every rule to match (a warning, no error)."""
    rules = _rules(tmp_path)
    path = tmp_path / "proposals.npz"
    first = carry.Carried()
    first.propose(_population(_columns()), "legal", rules, True)
    store.write_proposals(path, first)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    again = store.read_proposals(path)
    got = again.propose(_population(_columns()), "legal", rules, True)
    assert not again.reused and _output(got) == _output(match.propose(_population(_columns()), rules, True))
    path.write_bytes(b"not a zip")
    assert not store.read_proposals(path).previous
    assert not store.read_proposals(tmp_path / "none.npz").previous


def test_the_same_rules_written_elsewhere_keep_their_entries_but_a_mapping_table_moved_does_not(tmp_path):
    """A project copied or moved: where a rule is written is no input (no proposal says it), where a mapping
    entry is written is (its evidence quotes file:line)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    here, there = _rules(tmp_path / "a"), _rules(tmp_path / "b")
    digests = {r.name: (carry.rule_digest("legal", r), carry.rule_digest("legal", s)) for r, s in zip(here, there)}
    assert all(a == b for name, (a, b) in digests.items() if name != "table")
    assert digests["table"][0] != digests["table"][1]


def test_a_rerun_takes_the_proposals_and_plans_what_matching_again_plans(org, cli, tmp_path):
    """End to end on a small org: after a run, the next run says it reused matching's proposals, and its plan is
    the plan made with the proposals file removed; after a rename the name rules (and the duplicate check, which
    reads names) match again."""
    org.account("001A", "Acme Inc.", BillingCountry="United States", Website="acme.com")
    org.account("001B", "Acme UK", BillingCountry="United Kingdom")
    org.account("001C", "Acme eComm", BillingCountry="United States", Website="shop.acme.com")
    org.account("001D", "Zeta US", BillingCountry="United States")
    org.account("001E", "Zeta UK", BillingCountry="United Kingdom")
    org.account("001F", "Acme Canada", BillingCountry="Germany")
    org.sub("001B", "2025-01-01", "", "1000")
    org.rules = {"r.yaml": "kind: match\nrules:\n  - {name: names, type: name}\n"
                           "  - {name: sites, type: domain, field: Website}\n"}
    org.write()
    cli("run", *AS_OF)
    proposals = org.root / "state" / "proposals.npz"
    assert proposals.exists()
    result = cli("--log-level", "info", "plan", *AS_OF, "--out", str(tmp_path / "carried.json"))
    [reused] = [json.loads(line) for line in result.stderr.splitlines() if "matching's proposals" in line]
    assert set(reused["rules"]) == {"names", "sites", "duplicates"}
    proposals.unlink()
    cli("plan", *AS_OF, "--out", str(tmp_path / "fresh.json"))
    strip = lambda p: re.sub(r'"run_id": "[^"]+"', "", p.read_text())  # noqa: E731
    assert strip(tmp_path / "carried.json") == strip(tmp_path / "fresh.json")
    assert json.loads((tmp_path / "fresh.json").read_text())["review"]   # there is something to plan
    cli("run", *AS_OF)
    text = (org.org / "Account.csv").read_text().replace("Zeta UK", "Zeta United Kingdom")
    (org.org / "Account.csv").write_text(text)
    result = cli("--log-level", "info", "plan", *AS_OF, "--out", str(tmp_path / "renamed.json"))
    [reused] = [json.loads(line) for line in result.stderr.splitlines() if "matching's proposals" in line]
    assert set(reused["rules"]) == {"sites"} and reused["matched_again"] == ["names", "duplicates"]
    proposals.unlink()
    cli("plan", *AS_OF, "--out", str(tmp_path / "renamed_fresh.json"))
    assert strip(tmp_path / "renamed.json") == strip(tmp_path / "renamed_fresh.json")


def test_a_garbage_proposals_file_is_a_plain_warning_and_the_run_writes_it_anew(org, cli):
    """Random bytes in place of proposals.npz: the run warns that it is no proposals file (never numpy's advice
    to unpickle it), matches every rule, succeeds, and leaves a readable file for the next run."""
    org.account("001A", "Acme Inc.", BillingCountry="United States")
    org.account("001B", "Acme UK", BillingCountry="United Kingdom")
    org.rules = {"r.yaml": "kind: match\nrules:\n  - {name: names, type: name}\n"}
    org.write()
    cli("run", *AS_OF)
    proposals = org.root / "state" / "proposals.npz"
    proposals.write_bytes(bytes(range(256)) * 20)
    result = cli("--log-level", "info", "run", *AS_OF)
    [warning] = [json.loads(line) for line in result.stderr.splitlines() if "store.unreadable" in line]
    assert "not a proposals file" in warning["error"] and "pickle" not in result.stderr
    assert store.read_proposals(proposals).previous
