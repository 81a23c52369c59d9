"""Each rule kind, the guards, ties, locks, placeholders and views — and that no repair ever makes a cycle."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nrr_engine.errors import Location
from nrr_engine.hierarchy import build_tree
from nrr_engine.hierarchy.link import Approved, Guards, repair
from nrr_engine.hierarchy.match import Population, Proposal
from nrr_engine.rules.kinds import KeyRule, MappingRule
from conftest import NAME_RULE, zeta_family
from test_matching import AS_OF, parents



def rules_text(body: str) -> dict[str, str]:
    return {"r.yaml": "kind: match\nrules:\n" + body}


# ---- rule kinds ---------------------------------------------------------------------------------

def test_key_rule_links_by_parent_duns_and_breaks_ties(org, cli, tmp_path):
    """Parent_DUNS__c = DunsNumber links the child; two candidates with that DUNS are settled by largest_arr."""
    org.account("001P1", "Big Parent", DunsNumber="111", Parent_DUNS__c="")
    org.account("001P2", "Big Parent Dup", DunsNumber="111", Parent_DUNS__c="")
    org.account("001C", "Some Child", DunsNumber="222", Parent_DUNS__c=" 111 ")
    org.sub("001P2", "2025-01-01", "", "90000")
    org.rules = rules_text("  - {name: duns, type: key, child_field: Parent_DUNS__c, candidate_field: DunsNumber, "
                           "confidence: 0.99, tie_break: [largest_arr]}\n")
    org.write()
    cli("plan", *AS_OF, "--out", str(tmp_path / "p.json"))
    [link] = [c for c in json.loads((tmp_path / "p.json").read_text())["changes"] if c["field"] == "ParentId"]
    assert (link["id"], link["new"], link["rule"]) == ("001C", "001P2", "duns")
    assert link["evidence"] == {"field": "Parent_DUNS__c", "value": "111", "candidate_field": "DunsNumber",
                                "tie_break": ["largest_arr"]}


def test_unbroken_tie_goes_to_review_with_every_candidate(org, cli):
    """Two accounts carry the parent's name and nothing decides (no children, both roots, neither name's form
    says parent): both go to review, none is applied."""
    org.account("001A", "Acme GmbH", BillingCountry="Germany")
    org.account("001B", "ACME LLC", BillingCountry="Canada")
    org.account("001C", "Acme UK", BillingCountry="United Kingdom")
    org.rules = {"r.yaml": NAME_RULE}
    org.write()
    cli("run", *AS_OF)
    assert parents(org)["Acme UK"] is None
    items = cli.json("review", "list", "--format", "json")
    assert sorted(i["parent_id"] for i in items) == ["001A", "001B"]
    assert all(i["reason"] == "tie" and i["evidence"]["tie"] == ["001A", "001B"] for i in items)


def test_same_as_child_tie_break_prefers_the_childs_country(org, cli):
    """tie_break same_as_child: BillingCountry picks the namesake in the child's country."""
    org.account("001A", "Acme Inc.", BillingCountry="United States")
    org.account("001B", "ACME LLC", BillingCountry="United Kingdom")
    org.account("001C", "Acme UK", BillingCountry="United Kingdom")
    org.rules = rules_text("  - {name: names, type: name, tie_break: [{same_as_child: BillingCountry}]}\n")
    org.write()
    cli("run", *AS_OF)
    assert parents(org)["Acme UK"] == "ACME LLC"


def test_domain_rule_links_subdomains_to_the_registrable_domain(org, cli):
    """us.acme.com and shop.acme.co.uk... only the same registrable domain counts; webmail domains never."""
    org.account("001A", "Acme", Website="https://www.acme.com")
    org.account("001B", "Acme North America", Website="us.acme.com/en")
    org.account("001C", "Acme Britain", Website="https://shop.acme.co.uk")
    org.account("001G", "Someone", Website="gmail.com")
    org.account("001H", "Someone Else", Website="https://mail.gmail.com")
    org.rules = rules_text("  - {name: web, type: domain}\n")
    org.write()
    cli("run", *AS_OF)
    p = parents(org)
    assert p["Acme North America"] == "Acme" and p["Acme Britain"] is None and p["Someone Else"] is None


def test_fuzzy_rule_sends_misspelt_parents_to_review(org, cli):
    """"Acmee Robotics UK" is within the threshold of "Acme Robotics": proposed with its score, for review."""
    org.account("001A", "Acme Robotics GmbH", BillingCountry="Germany")
    org.account("001B", "Acmee Robotics UK", BillingCountry="United Kingdom")
    org.rules = rules_text("  - {name: fuzzy, type: name, method: fuzzy, threshold: 90, confidence: 0.85}\n")
    org.write()
    cli("run", *AS_OF)
    [item] = cli.json("review", "list", "--format", "json")
    assert (item["child_id"], item["parent_id"], item["confidence"]) == ("001B", "001A", 0.85)
    assert item["evidence"]["similar_to"] == "acme robotics" and item["evidence"]["score"] >= 90


def test_mapping_by_id_accepts_15_character_ids(org, cli):
    """A mapping table may name accounts by Id, in the 15- or 18-character form."""
    org.account("001000000000001AAA", "Parent Co")
    org.account("001000000000002AAA", "Bought Co")
    (org.root / "rules").mkdir(parents=True)
    (org.root / "rules" / "links.yaml").write_text("- {child: '001000000000002', parent: '001000000000001AAA'}\n")
    org.rules = rules_text("  - {name: ids, type: mapping, table: links.yaml, match_by: id}\n")
    org.write()
    cli("run", *AS_OF)
    assert parents(org)["Bought Co"] == "Parent Co"


def _mapping_org(org, rows: str):
    org.account("001000000000001AAA", "Northwind Traders, Inc.")
    org.account("001000000000002AAA", "Northwind Traders GmbH")
    (org.root / "rules").mkdir(parents=True)
    (org.root / "rules" / "links.csv").write_text("child,parent\n" + rows)
    org.rules = rules_text("  - {name: known, type: mapping, table: links.csv}\n")
    org.write()


def test_a_mapping_row_between_names_that_normalise_alike_links_the_accounts_it_names(org, cli):
    """"Northwind Traders GmbH" -> "Northwind Traders, Inc." (both normalise to "northwind traders"): the GmbH
    goes under the Inc., never the head under its subsidiary (it did, and the cycle guard refused the other)."""
    _mapping_org(org, '"Northwind Traders GmbH","Northwind Traders, Inc."\n')
    out = cli("run", *AS_OF).stdout
    assert parents(org) == {"Northwind Traders, Inc.": None, "Northwind Traders GmbH": "Northwind Traders, Inc."}
    assert "cycle guard" not in out


def test_a_mapping_row_whose_names_match_the_same_accounts_links_nothing_and_says_so(org, cli):
    """"Northwind Traders AG" names no account exactly and normalises like both: the row links nothing and the
    finding says both sides match the same accounts and to write exact names or Ids."""
    _mapping_org(org, '"Northwind Traders AG","Northwind Traders, Inc."\n')
    out = cli("run", *AS_OF).stdout
    assert set(parents(org).values()) == {None}
    assert "links.csv:2 'Northwind Traders AG' -> 'Northwind Traders, Inc.': both names match the same accounts" in out
    assert "write each account's exact name or its Id" in out


def test_conditions_limit_children_and_candidates(org, cli):
    """Rule conditions: only children with Type = Subsidiary, only candidates that are roots."""
    org.account("001A", "Acme", Type="Customer")
    org.account("001B", "Acme US", Type="Subsidiary", BillingCountry="US")
    org.account("001C", "Acme UK", Type="Partner", BillingCountry="UK")
    org.rules = rules_text("  - name: names\n    type: name\n"
                           "    child: [{field: Type, op: in, value: [Subsidiary]}]\n"
                           "    candidate: [{field: $is_root, op: equals, value: true}]\n")
    org.write()
    cli("run", *AS_OF)
    p = parents(org)
    assert p["Acme US"] == "Acme" and p["Acme UK"] is None


# ---- guards -------------------------------------------------------------------------------------

def test_locked_accounts_are_never_touched(org, cli):
    """Hierarchy_Locked__c = true freezes the account's parent, even for an override rule or an approval."""
    org.account("001A", "Acme Inc.", Hierarchy_Locked__c="false", BillingCountry="US")
    org.account("001B", "Acme US", Hierarchy_Locked__c="true", BillingCountry="US")
    org.account("001C", "Acme Germany", Hierarchy_Locked__c="", BillingCountry="DE")
    org.rules = rules_text("  - {name: names, type: name, override: true}\n")
    org.write()
    out = cli("run", *AS_OF).stdout
    p = parents(org)
    assert p["Acme US"] is None and p["Acme Germany"] == "Acme Inc."
    assert "1 locked account(s) (Hierarchy_Locked__c) left untouched" in out


def test_existing_parent_is_kept_unless_the_rule_says_override(org, cli):
    """A child with another parent keeps it; `override: true` re-parents it."""
    org.account("001A", "Acme Inc.", BillingCountry="US")
    org.account("001X", "Other Holding", BillingCountry="US")
    org.account("001B", "Acme US", "001X", BillingCountry="US")
    org.rules = {"r.yaml": NAME_RULE}
    org.write()
    cli("run", *AS_OF)
    assert parents(org)["Acme US"] == "Other Holding"
    org.rules = rules_text("  - {name: names, type: name, override: true}\n")
    org.write()
    cli("run", *AS_OF)
    assert parents(org)["Acme US"] == "Acme Inc."


def test_child_limit_keeps_the_most_confident_links(org, cli):
    """child_limit 2: of three subsidiaries only two are linked (most confident first); the third is refused."""
    org.account("001A", "Acme Inc.", BillingCountry="US")
    org.account("001B", "Acme UK", BillingCountry="United Kingdom")      # country: 0.97
    org.account("001C", "Acme US", BillingCountry="US")                  # code: 0.96
    org.account("001D", "Acme eComm", BillingCountry="US")               # unit, same country: 0.95
    org.rules = {"r.yaml": NAME_RULE}
    org.extra = "hierarchy: {child_limit: 2}\n"
    org.write()
    out = cli("run", *AS_OF).stdout
    p = parents(org)
    assert (p["Acme UK"], p["Acme US"], p["Acme eComm"]) == ("Acme Inc.", "Acme Inc.", None)
    assert "1 proposed link(s) refused by the child_limit guard" in out


def test_max_depth_refuses_links_that_would_go_too_deep(org, cli):
    """max_depth 2: a chain A <- B <- C exists; linking D under C (depth 3) is refused."""
    org.account("001A", "Root Co")
    org.account("001B", "Mid Co", "001A")
    org.account("001C", "Leaf Co", "001B", BillingCountry="US")
    org.account("001D", "Leaf Co UK", BillingCountry="United Kingdom")
    org.rules = {"r.yaml": NAME_RULE}
    org.extra = "hierarchy: {max_depth: 2}\n"
    org.write()
    out = cli("run", *AS_OF).stdout
    assert parents(org)["Leaf Co UK"] is None
    assert "refused by the max_depth guard" in out


def test_a_link_that_would_close_a_cycle_is_refused(org, cli):
    """Mapping says the group belongs under its own subsidiary: refused by the cycle guard."""
    org.account("001A", "Acme Group")
    org.account("001B", "Acme Sub", "001A")
    org.rules = rules_text("  - name: links\n    type: mapping\n    override: true\n"
                           "    entries: [{child: Acme Group, parent: Acme Sub}]\n")
    org.write()
    out = cli("run", *AS_OF).stdout
    assert parents(org) == {"Acme Group": None, "Acme Sub": "Acme Group"}
    assert "refused by the cycle guard" in out


def _population(parent: list[int]) -> Population:
    n = len(parent)
    ids = [f"001{i:06d}" for i in range(n)]
    tree, _ = build_tree(ids, {r: i for i, r in enumerate(ids)}, [ids[p] if p >= 0 else "" for p in parent])
    return Population(ids, lambda name: [None] * n, tree.parent, np.zeros(n, dtype=np.int64), tree.child_count(),
                      tree.depth, eligible=tree.parent < 0, unlocked=np.ones(n, dtype=bool))


RULE = MappingRule("prop", "legal", Location("r.yaml", 1, rule="prop"), confidence=0.99, override=True)


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 30).flatmap(lambda n: st.tuples(
    st.lists(st.integers(-1, n - 1), min_size=n, max_size=n),
    st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.floats(0.5, 1.0)), max_size=60),
    st.integers(1, 6), st.integers(1, 5))))
def test_no_repair_ever_creates_a_cycle_or_breaks_a_limit(case):
    """Whatever links rules propose (override included), the repaired hierarchy has no cycle, no new link
    deeper than max_depth and no parent over child_limit from repair."""
    parent, links, max_depth, child_limit = case
    pop = _population([p if p != i else -1 for i, p in enumerate(parent)])
    proposals = [Proposal(c, p, RULE, round(conf, 2), {}) for c, p, conf in links if c != p]
    guards = Guards(auto_apply=0.5, max_depth=max_depth, child_limit=child_limit)
    rep = repair("legal", pop, proposals, [], guards, [], set())
    par = rep.parent
    for start in range(len(par)):  # walking up always ends
        seen, node = set(), start
        while node >= 0:
            assert node not in seen
            seen.add(node)
            node = par[node]
    tree, findings = build_tree(pop.ids, {r: i for i, r in enumerate(pop.ids)},
                                [pop.ids[p] if p >= 0 else "" for p in par])
    assert not [f for f in findings if f.kind == "cycle"]
    before = np.bincount(pop.parent[pop.parent >= 0], minlength=len(par))
    after = np.bincount(par[par >= 0], minlength=len(par))
    for link in rep.applied:
        assert after[link.parent] <= max(child_limit, before[link.parent])
    assert tree.depth.max() <= max(max_depth, pop.depth.max() + 0)


def test_approved_link_still_passes_the_guards():
    """An approval that would now close a cycle is blocked, not applied."""
    pop = _population([-1, 0])
    rep = repair("legal", pop, [], [], Guards(), [Approved(7, 0, 1, "names", 0.6, {})], set())
    assert not rep.applied and [(b.review_id, b.reason) for b in rep.blocked] == [(7, "cycle")]


def test_rejected_pairs_are_not_proposed_again():
    """A pair a person rejected is dropped before any decision."""
    pop = _population([-1, -1])
    rep = repair("legal", pop, [Proposal(1, 0, RULE, 0.99, {})], [], Guards(), [], {("001000001", "001000000")})
    assert not rep.applied and not rep.review


# ---- placeholders, views ----------------------------------------------------------------------------

def test_missing_parent_is_proposed_as_a_placeholder_and_created_on_approval(org, cli):
    """"Zeta US" and "Zeta UK" share a family no account holds: a placeholder "Zeta" goes to review; once
    approved the next run creates it (with its family key) and links both; rollback deletes it again."""
    zeta_family(org)
    cli("run", *AS_OF)
    [item] = cli.json("review", "list", "--format", "json")
    assert (item["parent_ref"], item["placeholder_name"], item["members"]) == ("placeholder:name:zeta", "Zeta",
                                                                               ["001A", "001B"])
    assert "NEW Zeta" in cli("review", "list").stdout
    cli("review", "approve", str(item["id"]))
    cli("run", *AS_OF)
    db = sqlite3.connect(org.root / "state" / "local-org.db")
    [(pid, key, arr)] = db.execute("SELECT Id, Family_Key__c, Hierarchy_ARR__c FROM Account WHERE Name = 'Zeta'")
    assert pid.startswith("001") and len(pid) == 18 and key == "placeholder:name:zeta" and arr == "1000.00"
    assert parents(org) == {"Zeta US": "Zeta", "Zeta UK": "Zeta", "Zeta": None}
    cli("run", *AS_OF)  # created once: the next run finds it by its key
    assert db.execute("SELECT count(*) FROM Account WHERE Name = 'Zeta'").fetchone()[0] == 1
    runs = [r["id"] for r in cli.json("runs", "list", "--format", "json")]
    cli("rollback", runs[1])
    assert db.execute("SELECT count(*) FROM Account WHERE Name = 'Zeta'").fetchone()[0] == 0
    assert parents(org) == {"Zeta US": None, "Zeta UK": None}


def test_partition_view_splits_families_by_a_field(org, cli):
    """A partition view has its own roots and snapshots: Acme's EMEA accounts form their own family."""
    a = org.account("001A", "Acme", region="NA")
    org.account("001B", "Acme UK", a, region="EMEA")
    org.account("001C", "Acme DE", a, region="EMEA")
    org.account("001D", "Acme US", a, region="NA")
    for rid, amount in (("001A", "100"), ("001B", "200"), ("001C", "300"), ("001D", "400")):
        org.sub(rid, "2025-01-01", "", amount)
    org.extra = ("views:\n  - {name: legal, parent_field: ParentId}\n"
                 "  - {name: by_region, partition_of: legal, by: Region__c}\n")
    org.write()
    cli("run", *AS_OF)
    db = sqlite3.connect(org.root / "state" / "local-org.db")
    snaps = dict(db.execute("SELECT External_Id__c, Ending_ARR__c FROM KPI_Snapshot__c"))
    assert snaps == {"legal:001A:2026-10": "1000.00", "by_region:001A:2026-10": "500.00",
                     "by_region:001B:2026-10": "500.00"}


def test_partition_view_must_name_an_earlier_lookup_view(org, cli):
    """partition_of an unknown view is a config error with file:line."""
    org.account("001A", "Acme")
    org.extra = "views:\n  - {name: legal, parent_field: ParentId}\n  - {name: r, partition_of: sales, by: Region__c}\n"
    org.write()
    err = cli("validate", expect=2).stderr
    assert "nrr.yaml:" in err and "partition_of 'sales' must name a lookup view" in err


def test_virtual_root_groups_a_family_for_nrr_without_writing(org, cli):
    """missing_parents: virtual_root: "Zeta US" -> "Zeta UK" revenue moving within the family no account holds
    is an internal transfer, not churn plus a new logo; no parent link and no snapshot record is written."""
    org.account("001A", "Zeta US", BillingCountry="US")
    org.account("001B", "Zeta UK", BillingCountry="United Kingdom")
    org.sub("001A", "2025-01-01", "2026-09-30", "1000")
    org.sub("001B", "2026-10-01", "", "1000")
    org.rules = {"r.yaml": NAME_RULE}
    org.extra = "hierarchy: {missing_parents: virtual_root}\n"
    org.write()
    cli("run", *AS_OF)
    assert parents(org) == {"Zeta US": None, "Zeta UK": None}
    assert cli.json("review", "list", "--format", "json") == []
    fig = cli.json("report", "nrr", "--period", "2026-10", "--window", "1", "--format", "json", "--as-of", "2026-11-15")
    assert fig["family"]["churn"] == "0.00" and fig["family"]["internal_transfers"] == "1000.00"
    assert fig["naive"]["churn"] == "1000.00" and fig["naive"]["new_logo"] == "1000.00"
    db = sqlite3.connect(org.root / "state" / "local-org.db")
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "KPI_Snapshot__c" not in tables  # the only family is virtual: no record to hang a snapshot on


def test_rules_repair_the_lookup_view_they_name(org, cli):
    """A rule with view: sales repairs Sales_Parent__c and leaves ParentId alone; each view has its own roots."""
    org.account("001A", "Acme Inc.", Sales_Parent__c="", BillingCountry="US")
    org.account("001B", "Acme UK", Sales_Parent__c="", BillingCountry="United Kingdom")
    org.sub("001B", "2025-01-01", "", "500")
    org.rules = rules_text("  - {name: names, type: name, view: sales}\n")
    org.extra = ("views:\n  - {name: legal, parent_field: ParentId}\n"
                 "  - {name: sales, parent_field: Sales_Parent__c}\n")
    org.write()
    cli("run", *AS_OF)
    db = sqlite3.connect(org.root / "state" / "local-org.db")
    assert db.execute("SELECT ParentId, Sales_Parent__c FROM Account WHERE Id = '001B'").fetchone() == (None, "001A")
    snaps = dict(db.execute("SELECT External_Id__c, Ending_ARR__c FROM KPI_Snapshot__c"))
    assert snaps == {"legal:001B:2026-10": "500.00", "sales:001A:2026-10": "500.00"}


@pytest.mark.parametrize("op, value, raw, expected", [
    ("equals", "Subsidiary", " subsidiary ", True), ("equals", True, "TRUE", True), ("equals", True, "", False),
    ("not_equals", "Partner", None, True), ("in", ["A", "B"], "b", True), ("not_in", ["A", "B"], "C", True),
    ("blank", None, "  ", True), ("not_blank", None, "x", True), ("contains", "dent", "Delta Dental", True),
    ("not_contains", "dent", "Delta Air", True), ("starts_with", "del", "Delta", True),
    ("gt", 100, "100.5", True), ("gte", 100, "100", True), ("lt", 100, "abc", False), ("lte", 5, "", False),
    ("equals", 12, "12.00", True),
])
def test_conditions_compare_text_numbers_and_booleans(op, value, raw, expected):
    """Rule conditions read org text: case-insensitive text, numbers as Decimals, checkboxes as booleans;
    a blank or non-numeric value fails a numeric comparison."""
    from nrr_engine.rules.model import Condition
    assert Condition("F", op, value).test(raw) is expected


def _pop_with(values: dict[str, list], children: list[int]) -> Population:
    n = len(children)
    ids = [f"001{i:06d}" for i in range(n)]
    return Population(ids, lambda name: values.get(name, [None] * n), np.full(n, -1), np.array([0, 5, 9, 9]),
                      np.array(children), np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool), np.ones(n, dtype=bool))


@pytest.mark.parametrize("tie_break, expected", [
    (["largest_arr"], [2, 3]), (["largest_arr", "most_children"], [3]), (["most_children"], [3]),
    (["oldest"], [1]), ([{"field": "Tier__c", "order": "desc"}], [2]), ([{"field": "Tier__c"}], [3]),
    ([{"same_as_child": "BillingCountry"}], [1, 3]),
])
def test_tie_breakers_narrow_the_candidates(tie_break, expected):
    """Each tie-breaker keeps the best candidates; the next one decides among those left."""
    from nrr_engine.hierarchy.match import choose
    from nrr_engine.rules.loader import _tie_break
    pop = _pop_with({"Tier__c": [None, "2", "10", "1"], "BillingCountry": ["DE", "DE", "US", "de"],
                     "CreatedDate": [None, "2019-01-01", "2020-01-01", "2021-01-01"]}, [0, 1, 2, 5])
    rule = KeyRule("t", "legal", Location("r.yaml", 1), tie_break=tuple(_tie_break(t) for t in tie_break))
    assert choose(pop, rule, 0, [1, 2, 3])[0] == expected


def test_a_configured_locked_field_must_exist(org, cli):
    """hierarchy.locked_field named in config but absent from Account: exit 2 naming the field."""
    org.account("001A", "Acme")
    org.rules = {"r.yaml": NAME_RULE}
    org.extra = "hierarchy: {locked_field: Frozen__c}\n"
    org.write()
    assert "hierarchy.locked_field: field Frozen__c is not a column of Account.csv" in cli("run", *AS_OF, expect=2).stderr
