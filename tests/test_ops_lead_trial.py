"""Findings of the second new user's trial (an ops lead working from the README only)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from nrr_engine.ids import sf_id

REPO = Path(__file__).resolve().parents[1]
AS_OF = ("--as-of", "2026-11-15")


def shipped_rules() -> dict[str, str]:
    """The rule files `init` copies (the repository's rules/ folder)."""
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((REPO / "rules").iterdir())
            if p.suffix in (".yaml", ".csv")}


def test_mapping_rows_of_ids_link_under_the_default_match_by_name(org, cli):
    """A mappings.csv row of Account Ids (18- and 15-character) links under the default match_by: name, and a
    child named like an Id-free string still matches by name in the same table."""
    parent, child, child15, named = sf_id("001", 1), sf_id("001", 2), sf_id("001", 3), sf_id("001", 4)
    org.account(parent, "Northwind Traders, Inc.", BillingCountry="United States")
    org.account(child, "Zeta Handels GmbH", BillingCountry="Germany")
    org.account(child15, "Omega Retail KK", BillingCountry="Japan")
    org.account(named, "Quux Holdings", BillingCountry="France")
    org.rules = shipped_rules()
    org.rules["mappings.csv"] = (f"child,parent,note\n{child},{parent},by 18-char Ids\n"
                                 f"{child15[:15]},{parent[:15]},by 15-char Ids\n"
                                 f"Quux Holdings,\"Northwind Traders, Inc.\",by names\n")
    org.write()
    out = cli("run", *AS_OF).stdout
    db = sqlite3.connect(org.root / "state" / "local-org.db")
    got = dict(db.execute("SELECT Id, ParentId FROM Account"))
    assert got[child] == parent and got[child15] == parent and got[named] == parent
    assert "mapping_unresolved" not in out and "legal repair: 3 link(s) applied" in out


def _segmented(org):
    """Three families in two regions (the test config's report.segments: [Region__c]); Beta (EMEA) churns."""
    org.account("001A", "Alpha", region="AMER")
    org.account("001B", "Beta", region="EMEA")
    org.account("001C", "Gamma", region="AMER")
    org.sub("001A", "2025-01-01", "", "1000")
    org.sub("001B", "2025-01-01", "2026-09-30", "500")
    org.sub("001C", "2025-01-01", "", "2000")
    return org.write()


def test_configured_segments_appear_in_the_run_summary_and_report_nrr(org, cli):
    """report.segments feeds the run summary (a line per value) and `report nrr` without --by; --by replaces it."""
    _segmented(org)
    out = cli("plan", *AS_OF).stdout
    assert "    Region__c AMER: NRR 100.0 % GRR 100.0 % (start 3000.00, end 3000.00, 2 families)" in out
    assert "    Region__c EMEA: NRR 0.0 % GRR 0.0 % (start 500.00, end 0.00, 1 family)" in out
    fig = cli.json("report", "nrr", "--window", "12", "--format", "json", *AS_OF)
    got = {(s["by"], s["value"]): (s["family"]["start"], s["family"]["end"]) for s in fig["segments"]}
    assert got == {("Region__c", "EMEA"): ("500.00", "0.00"),
                   ("Region__c", "AMER"): ("3000.00", "3000.00")}
    table = cli("report", "nrr", "--window", "12", *AS_OF).stdout
    assert "Region__c=EMEA: start 500.00 end 0.00" in table
    by_cohort = cli.json("report", "nrr", "--window", "12", "--by", "cohort", "--format", "json", *AS_OF)
    assert {s["by"] for s in by_cohort["segments"]} == {"cohort"}


def test_summary_lists_the_largest_segment_values_and_counts_the_rest(org, cli):
    """More segment values than the summary shows: the largest by start ARR, then how many more."""
    for k in range(8):
        org.account(f"001S{k}", f"Shop {k}", region=f"Region {k}")
        org.sub(f"001S{k}", "2025-01-01", "", str(100 * (k + 1)))
    org.write()
    out = cli("plan", *AS_OF).stdout
    monthly = out.split("last month:")[1].split("trailing 12 months")[0]
    shown = [line.split(":")[0].strip() for line in monthly.splitlines() if line.startswith("    Region__c ")]
    assert shown == [f"Region__c Region {k}" for k in (7, 6, 5, 4, 3)]
    assert "    Region__c: 3 more value(s) (`nrr-engine report nrr` lists them all)" in monthly


def test_least_privilege_limits_refusal_is_info_with_salesforces_code_apart(tmp_path, monkeypatch):
    """A user without View Setup and Configuration: the refused /limits is logged at info (not warning), its reason
    says plainly what it means and the fallback, and Salesforce's code and text sit in fields of their own."""
    import json

    from test_first_steps import ROOT, SHIPPED
    from test_salesforce import AS_OF as SF_AS_OF, make_project
    from nrr_engine.testing.salesforce_double import Permissions

    p = make_project(tmp_path, monkeypatch, permissions=Permissions.from_files(
        SHIPPED, ROOT / "tests" / "files" / "salesforce" / "Demo_Org_Reads.permissionset-meta.xml"))
    with p.double.serve():
        r = p.cli("plan", "--as-of", SF_AS_OF)
    events = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    refused = [e for e in events if e["event"].endswith(("limits_unavailable", "record_count_unavailable"))]
    assert [e["event"] for e in refused] == ["salesforce.limits_unavailable"]
    e = refused[0]
    assert e["level"] == "info" and e["least_privilege"] is True
    assert e["reason"] == ("/limits needs View Setup and Configuration, which the integration user does not need; "
                           "using the Sforce-Limit-Info header / SELECT COUNT() instead")
    assert e["salesforce_code"] == "API_DISABLED_FOR_ORG" and "not enabled" in e["salesforce_error"]
    assert not [x for x in events if x.get("level") == "warning" and "View Setup" in json.dumps(x)]


def test_double_connect_to_a_missing_socket_is_a_clear_exit_3(tmp_path, capsys):
    """The double's `connect` to a socket nothing serves on: a one-line error naming it, exit 3, no traceback."""
    from nrr_engine.testing.salesforce_double import main

    sock = tmp_path / "none.sock"
    assert main(["connect", str(sock), "--", "validate"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: connect {sock}: no such socket") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
