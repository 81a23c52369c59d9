"""Ids for the records the engine creates (trial 12, F1): valid 18-character Ids with the key prefix, unique
against every Id of the org whatever its shape, the same on every rerun, never handed out twice."""
from __future__ import annotations

import json
import re
import sqlite3

import pytest

from conftest import NAME_RULE, write_csv
from nrr_engine.ids import id18, sf_id
from nrr_engine.sources.local_org import LocalOrg
from test_matching import AS_OF, parents

REAL = ["0015g00000N2AAAAA3", "001Hx00000Hh001IAB", "001Dn00000Ab014IAB"]  # Ids as Salesforce exports them
TOP = [id18("001zzzzzzzzzzzz"), "001zzzzzzzzzzzy", id18("001ZZZZZZZZZZZZ")]  # the top of the base-62 range


def _valid(rid: str) -> bool:
    return bool(re.fullmatch(r"001[0-9A-Za-z]{15}", rid)) and id18(rid[:15]) == rid


def _zeta(org, ids: list[str]):
    """Zeta US and Zeta UK (no account named Zeta) plus other accounts, with the given Ids."""
    org.account(ids[0], "Zeta US", BillingCountry="United States")
    org.account(ids[1], "Zeta UK", BillingCountry="United Kingdom")
    for k, rid in enumerate(ids[2:]):
        org.account(rid, f"Other {k}")
    org.sub(ids[0], "2025-01-01", "", "1000")
    org.sub(ids[1], "2025-01-01", "", "2000")
    org.rules = {"r.yaml": NAME_RULE}
    return org.write()


def _approve_placeholder_then_run(org, cli) -> str:
    """Run, approve the placeholder Zeta, run again (exit 0 asserted by cli); the new parent's Id."""
    cli("run", *AS_OF)
    [item] = cli.json("review", "list", "--format", "json")
    assert item["parent_ref"] == "placeholder:name:zeta"
    cli("review", "approve", str(item["id"]), "--by", "tester")
    cli("run", *AS_OF)
    db = sqlite3.connect(org.root / "state" / "local-org.db")
    [(pid,)] = db.execute("SELECT Id FROM Account WHERE Name = 'Zeta'")
    return pid


@pytest.mark.parametrize("ids", [REAL, REAL[1:] + REAL[:1] + TOP, [*TOP, *REAL]],
                         ids=["salesforce-ids", "salesforce-and-top-ids", "top-ids-first"])
def test_approved_placeholder_is_created_and_linked_in_an_org_of_real_salesforce_ids(org, cli, ids):
    """With Ids as Salesforce gives them (and Ids at the top of the base-62 range) the approved placeholder is
    created with a valid new 18-character 001 Id, both children are linked to it, and the rerun plans 0."""
    _zeta(org, ids)
    pid = _approve_placeholder_then_run(org, cli)
    assert _valid(pid) and pid[:15] not in {i[:15] for i in ids}
    assert parents(org) == {"Zeta US": "Zeta", "Zeta UK": "Zeta", "Zeta": None,
                            **{f"Other {k}": None for k in range(len(ids) - 2)}}
    assert "changes: planned 0" in cli("run", *AS_OF).stdout


def test_a_full_engine_range_is_numbered_in_its_lowest_free_counters(org, cli):
    """An Id at the very top of the engine's own counter range (below 2**63) leaves no room above it: the new
    Id is the lowest counter no record holds in either shape (15 or 18 characters), and the rerun plans 0."""
    held = [sf_id("001", 1), sf_id("001", 2), sf_id("001", 3)[:15], sf_id("001", 2 ** 63 - 1)]
    _zeta(org, held)
    pid = _approve_placeholder_then_run(org, cli)
    assert pid == sf_id("001", 4) and _valid(pid)
    assert parents(org)["Zeta US"] == "Zeta" and parents(org)["Zeta UK"] == "Zeta"
    assert "changes: planned 0" in cli("run", *AS_OF).stdout


def test_plan_names_the_id_the_run_creates(org, cli, tmp_path):
    """`plan` (read-only) and the run after it give the placeholder the same Id, so a rerun (after a kill
    before the write) creates what the plan showed."""
    _zeta(org, REAL)
    cli("run", *AS_OF)
    [item] = cli.json("review", "list", "--format", "json")
    cli("review", "approve", str(item["id"]), "--by", "tester")
    cli("plan", *AS_OF, "--out", str(tmp_path / "p1.json"))
    cli("plan", *AS_OF, "--out", str(tmp_path / "p2.json"))
    plans = [json.loads((tmp_path / p).read_text())["changes"] for p in ("p1.json", "p2.json")]
    named = [[c["id"] for c in changes if c["field"] == "__insert__"] for changes in plans]
    links = [{c["new"] for c in changes if c["field"] == "ParentId"} for changes in plans]
    [planned] = named[0]
    assert named[1] == [planned] and links == [{planned}, {planned}] and _valid(planned)
    db = sqlite3.connect(org.root / "state" / "local-org.db")
    assert db.execute("SELECT count(*) FROM Account WHERE Name = 'Zeta'").fetchone()[0] == 0
    cli("run", *AS_OF)
    assert db.execute("SELECT Id FROM Account WHERE Name = 'Zeta'").fetchone()[0] == planned


@pytest.fixture
def local(tmp_path):
    """A LocalOrg over an Account.csv of Salesforce Ids, 15- and 18-character ones, engine-range ones too."""
    folder = tmp_path / "org"
    folder.mkdir()
    rows = [{"Id": rid, "Name": f"A{k}"} for k, rid in enumerate(
        [*REAL, *TOP, sf_id("001", 1), sf_id("001", 2)[:15], sf_id("001", 5)])]
    write_csv(folder / "Account.csv", rows)
    org = LocalOrg(folder, tmp_path / "state" / "wc.db")
    org.sync(["Account"])
    yield org
    org.close()


def test_free_ids_are_valid_unique_in_any_shape_and_the_same_until_written(local):
    """free_ids gives valid 18-character Ids whose 15-character form no record holds, the same ones on every
    call until they are written."""
    held = {rid[:15] for rid in local.read_columns("Account", ["Id"])[0]}
    first = local.free_ids("Account", "001", 3)
    assert first == local.free_ids("Account", "001", 3)
    assert len(set(first)) == 3 and all(_valid(r) for r in first) and not {r[:15] for r in first} & held


def test_an_id_handed_out_is_never_handed_out_again_even_after_its_record_is_deleted(local):
    """Once a created record is deleted (a rollback), its Id stays used: the next free Id is a new one."""
    [rid] = local.free_ids("Account", "001", 1)
    assert local.insert("Account", [{"Id": rid, "Name": "Placeholder"}]) == []
    [after] = local.free_ids("Account", "001", 1)
    assert after != rid
    assert [r.ok for r in local.delete("Account", [rid])] == [True]
    assert local.free_ids("Account", "001", 1) == [after]


def test_inserting_records_with_salesforce_ids_keeps_the_sequence_in_range(local):
    """Records inserted with Ids outside the engine's range (Salesforce's own, the base-62 top) are stored and
    leave the sequence an SQLite INTEGER; the next free Id is still valid and unused."""
    new = [id18("001Hx00000Zz999"), id18("001zzzzzzzzzzzx")]
    assert local.insert("Account", [{"Id": rid, "Name": "X"} for rid in new]) == []
    [rid] = local.free_ids("Account", "001", 1)
    assert _valid(rid) and rid[:15] not in {r[:15] for r in local.read_columns("Account", ["Id"])[0]}


def test_snapshot_upserts_number_above_ids_the_export_already_holds(tmp_path):
    """New snapshot records get Ids no record of the object holds, even when its CSV holds engine-range Ids the
    sequence has not seen (an export of an earlier working copy): no duplicate-Id crash."""
    folder = tmp_path / "org"
    folder.mkdir()
    write_csv(folder / "KPI_Snapshot__c.csv", [{"Id": sf_id("a0K", k), "External_Id__c": f"old:{k}"}
                                               for k in (1, 2, 3)] + [{"Id": "a0K5g00000AbCdE", "External_Id__c": "sf"}])
    org = LocalOrg(folder, tmp_path / "state" / "wc.db")
    try:
        org.sync(["KPI_Snapshot__c"])
        recs = [json.dumps({"External_Id__c": f"new:{k}", "Ending_ARR__c": "1.00"}) for k in range(3)]
        assert org.upsert_json("KPI_Snapshot__c", "External_Id__c", ["Ending_ARR__c"], recs, "a0K") == []
        ids = dict(org.db.execute("SELECT External_Id__c, Id FROM KPI_Snapshot__c"))
        assert len(set(ids.values())) == 7
        assert all(re.fullmatch(r"a0K[0-9A-Za-z]{15}", ids[f"new:{k}"]) for k in range(3))
    finally:
        org.close()


def test_a_new_record_never_takes_an_id_a_dangling_reference_names(org, cli):
    """A ParentId and a subscription's Account__c pointing at engine-range Ids no record holds (99 and 100): the
    approved placeholder is numbered above them, so it does not silently become that child's parent or that
    subscription's account; the dangling child stays a root and the orphan stays out of ARR."""
    _zeta(org, [sf_id("001", 1), sf_id("001", 2), sf_id("001", 3)])
    org.account(sf_id("001", 4), "Lonely Child", parent=sf_id("001", 99))
    org.sub(sf_id("001", 100), "2025-01-01", "", "50")   # small: the input guard lets it through
    org.write()
    pid = _approve_placeholder_then_run(org, cli)
    assert pid == sf_id("001", 101) and _valid(pid)
    assert parents(org)["Lonely Child"] is None
    out = cli("run", *AS_OF).stdout
    assert "changes: planned 0" in out and "orphan" in out
