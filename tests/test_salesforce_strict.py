"""The Salesforce double as strict as an org (field rules, permissions, auth, soft delete, order, numbers), and the
engine against it: the shipped permission set is exactly enough, logins say why they fail, /limits may be refused."""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from simple_salesforce import Salesforce, SalesforceLogin
from simple_salesforce.exceptions import SalesforceAuthenticationFailed

from conftest import write_csv
from test_salesforce import AS_OF, DEMO_ORG, ROOT, make_project
from nrr_engine.testing.salesforce_double import Permissions, SalesforceDouble, java_double

SHIPPED = ROOT / "salesforce" / "force-app" / "main" / "default" / "permissionsets" / \
    "NRR_Engine_Integration.permissionset-meta.xml"
DEMO_READS = ROOT / "tests" / "files" / "salesforce" / "Demo_Org_Reads.permissionset-meta.xml"
ACME, ACME_UK = "001A00000000001AAA", "001A00000000002AAA"


def least_privilege() -> Permissions:
    """The integration user of the README: the shipped permission set plus the demo org's own reads."""
    return Permissions.from_files(SHIPPED, DEMO_READS)


def small_double(tmp_path: Path, **kw) -> SalesforceDouble:
    """Two accounts and one snapshot in a double over the shipped metadata."""
    org = tmp_path / "org"
    org.mkdir(parents=True)
    write_csv(org / "Account.csv", [{"Id": ACME, "Name": "Acme", "ParentId": ""},
                                    {"Id": ACME_UK, "Name": "Acme UK", "ParentId": ACME}])
    write_csv(org / "KPI_Snapshot__c.csv", [{"Id": "a0K000000000001AAA", "External_Id__c": f"legal:{ACME}:2026-09",
                                             "Month__c": "2026-09"}])
    SalesforceDouble.seed(tmp_path / "sf.db", org)
    return SalesforceDouble(tmp_path / "sf.db", metadata=ROOT / "salesforce", **kw)


def client(double: SalesforceDouble, version: str = "59.0") -> Salesforce:
    """The real simple-salesforce client, logged in (SOAP) as the double's integration user."""
    session_id, instance = SalesforceLogin(username=double.username, password=double.password,
                                           security_token=double.security_token, sf_version=version)
    return Salesforce(instance_url=f"https://{instance}", session_id=session_id, version=version)


def upsert_snapshots(sf: Salesforce, records: list[dict]) -> list[dict]:
    body = {"allOrNone": False, "records": [{"attributes": {"type": "KPI_Snapshot__c"}, **r} for r in records]}
    return sf.restful("composite/sobjects/KPI_Snapshot__c/External_Id__c", method="PATCH", data=json.dumps(body))


def update_accounts(sf: Salesforce, records: list[dict]) -> list[dict]:
    body = {"allOrNone": False, "records": [{"attributes": {"type": "Account"}, **r} for r in records]}
    return sf.restful("composite/sobjects", method="PATCH", data=json.dumps(body))


def error_of(result: dict) -> tuple[str, str]:
    e = result["errors"][0]
    return e["statusCode"], e["message"]


# ---- field rules ----------------------------------------------------------------------------------------

def test_a_date_in_the_text_7_month_field_is_string_too_long_as_on_a_real_org(tmp_path):
    """KPI_Snapshot__c.Month__c is Text(7) in the shipped metadata: "2026-10-01" fails with STRING_TOO_LONG (REST and
    Bulk), "2026-10" is stored; describe gives the length the metadata declares."""
    double = small_double(tmp_path)
    with double.serve():
        sf = client(double)
        assert {f["name"]: f["length"] for f in sf.KPI_Snapshot__c.describe()["fields"]}["Month__c"] == 7
        bad, good = upsert_snapshots(sf, [{"External_Id__c": f"legal:{ACME}:2026-10", "Month__c": "2026-10-01"},
                                          {"External_Id__c": f"legal:{ACME}:2026-11", "Month__c": "2026-11"}])
        assert error_of(bad) == ("STRING_TOO_LONG", "Month: data value too large: 2026-10-01 (max length=7)")
        assert bad["errors"][0]["fields"] == ["Month__c"] and good["success"]
        job = sf.bulk2.KPI_Snapshot__c.upsert(records=[{"External_Id__c": f"legal:{ACME}:2026-12", "Month__c": "2026-12-01"}],
                                               external_id_field="External_Id__c", wait=0.001)
        failed = sf.bulk2.KPI_Snapshot__c.get_failed_records(job[0]["job_id"])
        assert "STRING_TOO_LONG:Month: data value too large: 2026-12-01 (max length=7):Month__c --" in failed
    months = {v[0] for v in double.records("KPI_Snapshot__c", ["Month__c"]).values()}
    assert months == {"2026-09", "2026-11"}


def test_numbers_beyond_the_fields_digits_are_number_outside_valid_range(tmp_path):
    """Number(4,0) Hierarchy_Depth__c takes 1234 and refuses 12345; Currency(16,2) takes 14 integer digits, not 15;
    decimals beyond the scale are kept as sent (the API does not round them)."""
    double = small_double(tmp_path)
    with double.serve():
        sf = client(double)
        out = update_accounts(sf, [{"Id": ACME, "Hierarchy_Depth__c": 12345},
                                   {"Id": ACME_UK, "Hierarchy_Depth__c": 1234, "Hierarchy_ARR__c": 12345678901234.5}])
        assert error_of(out[0]) == ("NUMBER_OUTSIDE_VALID_RANGE",
                                    "Hierarchy Depth: value outside of valid range on numeric field: 12345.0")
        assert out[1]["success"]
        [big] = update_accounts(sf, [{"Id": ACME, "Hierarchy_ARR__c": 123456789012345}])
        assert error_of(big)[0] == "NUMBER_OUTSIDE_VALID_RANGE" and "1.23456789012345E14" in error_of(big)[1]
        [fine] = update_accounts(sf, [{"Id": ACME, "Hierarchy_ARR__c": 1.005}])
        assert fine["success"]
    assert double.records("Account", ["Hierarchy_ARR__c"])[ACME] == ("1.005",)


def test_restricted_picklists_refuse_values_outside_their_list(tmp_path):
    """A restricted picklist from field metadata (valueSet restricted) describes its values and refuses any other
    value with INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST; an unrestricted one takes anything."""
    meta = tmp_path / "meta"
    shutil.copytree(ROOT / "salesforce", meta)
    (meta / "force-app/main/default/objects/Account/fields/Tier__c.field-meta.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><CustomField xmlns="http://soap.sforce.com/2006/04/metadata">'
        "<fullName>Tier__c</fullName><label>Tier</label><type>Picklist</type><valueSet><restricted>true</restricted>"
        "<valueSetDefinition><value><fullName>Gold</fullName><default>false</default><label>Gold</label></value>"
        "<value><fullName>Silver</fullName><default>false</default><label>Silver</label></value>"
        "</valueSetDefinition></valueSet></CustomField>", encoding="utf-8")
    double = small_double(tmp_path)
    double = SalesforceDouble(double.store, metadata=meta)
    with double.serve():
        sf = client(double)
        tier = next(f for f in sf.Account.describe()["fields"] if f["name"] == "Tier__c")
        assert tier["restrictedPicklist"] and [p["value"] for p in tier["picklistValues"]] == ["Gold", "Silver"]
        bronze, gold = update_accounts(sf, [{"Id": ACME, "Tier__c": "Bronze"}, {"Id": ACME_UK, "Tier__c": "Gold"}])
        assert error_of(bronze) == ("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                                    "Tier: bad value for restricted picklist field: Bronze")
        assert gold["success"]
        [any_industry] = update_accounts(sf, [{"Id": ACME, "Industry": "Anything Goes"}])
        assert any_industry["success"]


def test_standard_fields_have_their_documented_sizes(tmp_path):
    """Account.Name is 255 characters, BillingCountry 80, DunsNumber 9: one more is STRING_TOO_LONG (counted in
    UTF-16 code units, as the platform counts)."""
    double = small_double(tmp_path)
    with double.serve():
        sf = client(double)
        sizes = {f["name"]: f["length"] for f in sf.Account.describe()["fields"]}
        assert (sizes["Name"], sizes["BillingCountry"], sizes["DunsNumber"]) == (255, 80, 9)
        out = update_accounts(sf, [{"Id": ACME, "Name": "N" * 256}, {"Id": ACME_UK, "DunsNumber": "1234567890"}])
        assert [error_of(r)[0] for r in out] == ["STRING_TOO_LONG", "STRING_TOO_LONG"]
        [ok] = update_accounts(sf, [{"Id": ACME, "Name": "N" * 255}])
        assert ok["success"]
        [emoji] = update_accounts(sf, [{"Id": ACME, "Name": "\U0001F600" * 128}])   # 256 UTF-16 code units
        assert error_of(emoji)[0] == "STRING_TOO_LONG"


# ---- permissions -----------------------------------------------------------------------------------------

def test_field_level_security_hides_unreadable_fields_and_protects_read_only_ones(tmp_path):
    """Without read access a field is gone from describe and "No such column" in SOQL; without edit access it
    describes as not updateable and a write fails with INVALID_FIELD_FOR_INSERT_UPDATE."""
    double = small_double(tmp_path, permissions=Permissions.from_files(SHIPPED).without(
        "fieldPermissions:Account.Hierarchy_ARR__c:readable", "fieldPermissions:Account.Hierarchy_ARR__c:editable"))
    with double.serve():
        sf = client(double)
        fields = {f["name"]: f for f in sf.Account.describe()["fields"]}
        assert "Hierarchy_ARR__c" not in fields and fields["Hierarchy_Locked__c"]["updateable"] is False
        assert fields["ParentId"]["updateable"] is True
        with pytest.raises(Exception) as err:
            sf.query("SELECT Id, Hierarchy_ARR__c FROM Account")
        assert "INVALID_FIELD" in str(err.value) and "No such column 'Hierarchy_ARR__c' on entity 'Account'" in str(err.value)
        locked, hidden = update_accounts(sf, [{"Id": ACME, "Hierarchy_Locked__c": True},
                                              {"Id": ACME_UK, "Hierarchy_ARR__c": 5}])
        assert error_of(locked)[0] == "INVALID_FIELD_FOR_INSERT_UPDATE"
        assert error_of(locked)[1].startswith("Unable to create/update fields: Hierarchy_Locked__c.")
        assert error_of(hidden) == ("INVALID_FIELD", "No such column 'Hierarchy_ARR__c' on sobject of type Account")


def test_object_permissions_are_enforced_and_described(tmp_path):
    """Without Delete on KPI_Snapshot__c, describe says deletable false and a delete fails with
    INSUFFICIENT_ACCESS_OR_READONLY (the record stays); without Read the object does not exist for the user."""
    double = small_double(tmp_path, permissions=Permissions.from_files(SHIPPED).without(
        "objectPermissions:KPI_Snapshot__c:allowDelete"))
    with double.serve():
        sf = client(double)
        d = sf.KPI_Snapshot__c.describe()
        assert (d["deletable"], d["createable"], d["updateable"]) == (False, True, True)
        [out] = sf.restful("composite/sobjects", method="DELETE", params={"ids": "a0K000000000001AAA", "allOrNone": "false"})
        assert error_of(out) == ("INSUFFICIENT_ACCESS_OR_READONLY", "insufficient access rights on object id")
        assert double.records("KPI_Snapshot__c", ["Id"])
        double.permissions = Permissions.from_files(SHIPPED).without("objectPermissions:KPI_Snapshot__c:allowRead")
        with pytest.raises(Exception) as err:
            sf.query("SELECT Id FROM KPI_Snapshot__c")
        assert "INVALID_TYPE" in str(err.value)


@pytest.mark.parametrize("bulk", [False, True], ids=["rest", "bulk"])
def test_the_nightly_job_with_the_shipped_permission_set_fails_no_record(tmp_path, monkeypatch, bulk):
    """The demo org's full nightly job (plan, run, rerun, rollback) against the strict double as the least-privilege
    user of the README (shipped permission set + the org's own reads, no View Setup): 0 failed records, every
    snapshot's Month__c is YYYY-MM, and the rollback restores the org."""
    opts = ", bulk_write_min: 300, bulk_query_min: 1000, page_size: 1000" if bulk else ""
    p = make_project(tmp_path, monkeypatch, opts, permissions=least_privilege())
    with p.double.serve():
        assert "planned 7563" in p.cli("plan", "--as-of", AS_OF).stdout
        out = p.cli("run", "--as-of", AS_OF).stdout
        assert "applied 7563" in out and "failed" not in out
        assert p.ledger("SELECT count(*) FROM changes WHERE status = 'failed'") == [(0,)]
        months = {v[0] for v in p.double.records("KPI_Snapshot__c", ["Month__c"]).values()}
        assert months and all(re.fullmatch(r"\d{4}-\d{2}", m) for m in months)
        assert "planned 0" in p.cli("run", "--as-of", AS_OF).stdout
        run_id = p.ledger("SELECT id FROM runs WHERE mode = 'run' ORDER BY started LIMIT 1")[0][0]
        p.cli("rollback", run_id)
        assert not p.double.records("KPI_Snapshot__c", ["Id"])
        assert len(p.double.records("KPI_Snapshot__c", ["Id"], deleted=True)) == 450
        assert p.ledger("SELECT count(*) FROM changes WHERE status = 'failed'") == [(0,)]
        assert "planned 7563" in p.cli("plan", "--as-of", AS_OF).stdout


def _expected(grant: str) -> str:
    """What the failure must name for a missing grant."""
    kind, _, rest = grant.partition(":")
    if kind == "userPermissions":
        return "API Enabled"
    name = rest.rpartition(":")[0]
    return {"Account.BillingAddress": "BillingCountry"}.get(name, name.split(".")[-1])


@pytest.mark.parametrize("grant", Permissions.from_files(SHIPPED).grants())
def test_every_grant_of_the_shipped_permission_set_is_needed(tmp_path, monkeypatch, grant):
    """Removing any one grant of NRR_Engine_Integration makes the nightly job stop before writing (exit 2 or 3, the
    message naming the object or field and the fix) or, for a field only a rule reads, report that rule as not
    evaluated naming the field: the permission set grants nothing the engine does not use."""
    p = make_project(tmp_path, monkeypatch, permissions=least_privilege().without(grant))
    with p.double.serve():
        r = p.cli("plan", "--as-of", AS_OF, expect=None)
    name = _expected(grant)
    if r.exit_code == 0:
        noted = [line for line in r.stdout.splitlines() if "not evaluated" in line and name in line]
        assert noted, f"{grant}: the plan neither failed nor reported a rule not evaluated for {name}"
        return
    assert r.exit_code in (2, 3) and "Traceback" not in r.stderr
    error = next(line for line in r.stderr.splitlines() if line.startswith("error:"))
    detail = r.stderr[r.stderr.index(error):]
    assert name in detail and ("grant" in detail or "deploy salesforce/" in detail or "needs" in detail), detail
    assert not [c for c in p.double.calls if "/composite/" in c[1] or "/jobs/ingest" in c[1]]


def test_the_readme_lists_exactly_what_the_permission_set_grants():
    """README's permission table and the shipped permission set name the same object and field grants."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("**Permissions the integration user needs"):]
    section = section[:section.index("\n\n", section.index("| Object"))]
    listed: set[str] = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.fullmatch(r"`\w+`", cells[0]):
            continue
        obj, access, read, edit = cells[0].strip("`"), *cells[1:]
        listed |= {f"objectPermissions:{obj}:allow{a.strip()}" for a in access.split(",")}
        listed |= {f"fieldPermissions:{obj}.{f}:readable" for f in re.findall(r"`(\w+)`", read + edit)}
        listed |= {f"fieldPermissions:{obj}.{f}:editable" for f in re.findall(r"`(\w+)`", edit)}
    assert "API Enabled" in section
    assert listed | {"userPermissions:ApiEnabled"} == set(Permissions.from_files(SHIPPED).grants())


# ---- /limits without View Setup ----------------------------------------------------------------------------

def test_without_view_setup_the_run_starts_on_the_limit_header_and_says_so(tmp_path, monkeypatch):
    """A user without View Setup and Configuration gets 403 on /limits and /limits/recordCount; the run starts anyway
    (budget from Sforce-Limit-Info, counts from SELECT COUNT()), the log and the run summary say so, and the reserve
    is still enforced; with View Setup granted /limits is used."""
    p = make_project(tmp_path, monkeypatch, permissions=least_privilege())
    with p.double.serve():
        r = p.cli("run", "--as-of", AS_OF)
        assert "salesforce.limits_unavailable" in r.stderr and "View Setup and Configuration" in r.stderr
        usage = json.loads(p.ledger("SELECT api_usage FROM runs WHERE mode = 'run'")[0][0])
        assert usage["limits_source"] == "Sforce-Limit-Info" and "View Setup" in usage["limits_note"]
        assert usage["daily_remaining_at_start"] > 0
        summary = json.loads(p.ledger("SELECT summary FROM runs WHERE mode = 'run'")[0][0])
        assert "View Setup" in summary["api_calls"]["limits_note"]
        assert "SELECT COUNT() FROM Account" in p.double.queries
        p.double.api_used = p.double.api_max - 50
        r = p.cli("plan", "--as-of", AS_OF, expect=3)
        assert "daily API requests remain, below the reserve of 100" in r.stderr
        p.double.api_used = 0
        p.double.permissions = least_privilege().plus("userPermissions:ViewSetup")
        p.double.queries.clear()
        p.cli("plan", "--as-of", AS_OF)
        assert "SELECT COUNT() FROM Account" not in p.double.queries
        usage = json.loads(p.ledger("SELECT api_usage FROM runs WHERE mode = 'plan' ORDER BY started DESC")[0][0])
        assert "limits_source" not in usage and usage["daily_remaining_at_start"] > 0


# ---- auth ----------------------------------------------------------------------------------------------------

def _jwt_project(tmp_path, monkeypatch, auth_opts: str, **double_kw):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    tmp_path.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "server.key").write_bytes(pem)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    p = make_project(tmp_path / "p", monkeypatch, public_key=public, **double_kw)
    cfg = p.cli.config
    cfg.write_text(cfg.read_text().replace("auth: password", f"auth: jwt, private_key_file: {tmp_path / 'server.key'}"
                                                              + auth_opts)
                   + f"allowed_paths: [{tmp_path / 'server.key'}]\n")   # the key lives outside the project
    monkeypatch.setenv("SF_CONSUMER_KEY", p.double.consumer_key)
    return p, pem


def test_jwt_audience_is_login_or_test_and_the_my_domain_is_where_it_is_posted(tmp_path, monkeypatch):
    """The double refuses an assertion whose aud is the My Domain (invalid_grant: audience is invalid); the engine
    with domain: acme.my posts to the My Domain with aud https://login.salesforce.com, and a sandbox's My Domain
    gets aud https://test.salesforce.com."""
    import jwt as pyjwt

    p, pem = _jwt_project(tmp_path, monkeypatch, ", domain: acme.my")
    with p.double.serve():
        claims = {"iss": p.double.consumer_key, "sub": p.double.username, "aud": "https://acme.my.salesforce.com",
                  "exp": int(time.time()) + 180}
        r = requests.post("https://acme.my.salesforce.com/services/oauth2/token",
                          data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                "assertion": pyjwt.encode(claims, pem, algorithm="RS256")})
        assert r.status_code == 400 and r.json() == {"error": "invalid_grant", "error_description": "audience is invalid"}
        p.cli("plan", "--as-of", AS_OF)
        assert p.double.token_hosts == ["acme.my.salesforce.com", "acme.my.salesforce.com"]
    sandbox, _ = _jwt_project(tmp_path / "sb", monkeypatch, ", domain: acme--uat.sandbox.my", sandbox=True)
    with sandbox.double.serve():
        sandbox.cli("plan", "--as-of", AS_OF)
        cfg = sandbox.cli.config
        cfg.write_text(cfg.read_text().replace("domain: acme--uat.sandbox.my", "domain: login"))
        r = sandbox.cli("plan", "--as-of", AS_OF, expect=3)
        assert "invalid_grant: audience is invalid; the JWT audience must be https://login.salesforce.com" in r.stderr


def test_client_credentials_login_from_the_environment(tmp_path, monkeypatch):
    """auth: client_credentials logs in on the My Domain with SF_CONSUMER_KEY / SF_CONSUMER_SECRET (never logged);
    a wrong secret says why (exit 3); without a My Domain the config is refused (exit 2) naming the fix."""
    p = make_project(tmp_path, monkeypatch)
    cfg = p.cli.config
    cfg.write_text(cfg.read_text().replace("auth: password", "auth: client_credentials, domain: acme.my"))
    monkeypatch.delenv("SF_PASSWORD")
    monkeypatch.setenv("SF_CONSUMER_KEY", p.double.consumer_key)
    monkeypatch.setenv("SF_CONSUMER_SECRET", p.double.consumer_secret)
    with p.double.serve():
        r = p.cli("plan", "--as-of", AS_OF)
        assert p.double.count("/oauth2/token") == 1 and p.double.count("/Soap/") == 0
        assert p.double.consumer_secret not in r.stderr and p.double.consumer_secret not in r.stdout
        monkeypatch.setenv("SF_CONSUMER_SECRET", "not-the-secret")
        r = p.cli("plan", "--as-of", AS_OF, expect=3)
        assert "Salesforce login (client_credentials) failed: invalid_client: invalid client credentials" in r.stderr
        assert "not-the-secret" not in r.stderr
        cfg.write_text(cfg.read_text().replace("domain: acme.my", "domain: login"))
        r = p.cli("validate", expect=2)
        assert "client_credentials needs the org's My Domain" in r.stderr


def test_password_login_past_api_65_logs_in_at_64_and_warns_of_the_retirement(tmp_path, monkeypatch):
    """SOAP login() is not available from API 65.0 (the double refuses it there): with api_version 65.0 the engine
    logs in at 64.0 and warns that auth: password is being retired; an org with SOAP login disabled says why."""
    double = small_double(tmp_path / "d")
    with double.serve(), pytest.raises(SalesforceAuthenticationFailed) as err:
        client(double, version="65.0")
    assert err.value.code == "INVALID_OPERATION"
    p = make_project(tmp_path / "p", monkeypatch, api_version="65.0")
    cfg = p.cli.config
    cfg.write_text(cfg.read_text().replace("auth: password", "auth: password, api_version: \"65.0\""))
    with p.double.serve():
        r = p.cli("plan", "--as-of", AS_OF)
        assert [path for m, path in p.double.calls if "/Soap/u/" in path] == ["/services/Soap/u/64.0"]
        assert "salesforce.soap_login_retiring" in r.stderr and "Summer '27" in r.stderr
        p.double.soap_login = False
        r = p.cli("plan", "--as-of", AS_OF, expect=3)
        assert ("Salesforce login (password) failed: INVALID_OPERATION: SOAP API login() is disabled by default in "
                "this org") in r.stderr
        assert "use auth: client_credentials or jwt" in r.stderr


def test_a_failed_login_says_why(tmp_path, monkeypatch):
    """A refused password login quotes Salesforce's code and message and the fix, never "failed: None"."""
    p = make_project(tmp_path, monkeypatch)
    monkeypatch.setenv("SF_PASSWORD", "wrong-password-123")
    with p.double.serve():
        r = p.cli("run", "--as-of", AS_OF, expect=3)
    assert ("Salesforce login (password) failed: INVALID_LOGIN: Invalid username, password, security token; or user "
            "locked out.; check the username") in r.stderr
    assert "wrong-password-123" not in r.stderr and "None" not in r.stderr


def test_a_fault_without_detail_still_says_why():
    """A SOAP fault that simple-salesforce reads no code from (code None, the body as message) gives its faultcode and
    faultstring, and an HTTP status code is named as such."""
    from nrr_engine.config import SalesforceSettings
    from nrr_engine.sources.salesforce import login_failure

    s = SalesforceSettings(auth="password")
    body = ('<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
            '<soapenv:Body><soapenv:Fault><faultcode>sf:INVALID_OPERATION</faultcode><faultstring>INVALID_OPERATION: '
            'The SOAP Login operation is not available in the API version specified (65.0).</faultstring>'
            '</soapenv:Fault></soapenv:Body></soapenv:Envelope>')
    text = login_failure(SalesforceAuthenticationFailed(None, body), s)
    assert text.startswith("INVALID_OPERATION: The SOAP Login operation is not available in the API version specified")
    assert "use auth: client_credentials or jwt" in text
    assert login_failure(SalesforceAuthenticationFailed(400, "<html>Bad</html>"), s).startswith("HTTP 400: ")


# ---- soft delete, order, numbers ------------------------------------------------------------------------------

def test_deleted_records_go_to_the_recycle_bin_seen_by_query_all_only(tmp_path):
    """A delete sets IsDeleted: query no longer returns the record, queryAll does (IsDeleted true); an update of it is
    ENTITY_IS_DELETED and an upsert of its key creates a new record (the recycle bin is not matched)."""
    double = small_double(tmp_path)
    with double.serve():
        sf = client(double)
        [out] = sf.restful("composite/sobjects", method="DELETE", params={"ids": "a0K000000000001AAA", "allOrNone": "false"})
        assert out["success"]
        assert sf.query("SELECT Id FROM KPI_Snapshot__c")["totalSize"] == 0
        rows = sf.query_all("SELECT Id, IsDeleted FROM KPI_Snapshot__c", include_deleted=True)["records"]
        assert [(r["Id"], r["IsDeleted"]) for r in rows] == [("a0K000000000001AAA", True)]
        [again] = update_accounts(sf, [{"Id": "a0K000000000001AAA", "Month__c": "2026-08"}])
        assert error_of(again)[0] == "ENTITY_IS_DELETED"
        [new] = upsert_snapshots(sf, [{"External_Id__c": f"legal:{ACME}:2026-09", "Month__c": "2026-09"}])
        assert new["success"] and new["created"] and new["id"] != "a0K000000000001AAA"


def test_a_long_query_all_pages_through_query_locators_and_keeps_its_deleted_records(tmp_path):
    """queryAll of more than 2,000 records: the next pages are under /query/ (as Salesforce's nextRecordsUrl is,
    REST API QueryAll) and still hold the deleted records that matched the first request."""
    from nrr_engine.ids import sf_ids
    org = tmp_path / "org"
    org.mkdir(parents=True)
    write_csv(org / "Account.csv", [{"Id": ACME, "Name": "Acme", "ParentId": ""}])
    ids = sf_ids("a0K", 1, 2500)
    write_csv(org / "KPI_Snapshot__c.csv", [{"Id": rid, "External_Id__c": f"legal:{k}:2026-09", "Month__c": "2026-09"}
                                            for k, rid in enumerate(ids)])
    SalesforceDouble.seed(tmp_path / "sf.db", org)
    double = SalesforceDouble(tmp_path / "sf.db", metadata=ROOT / "salesforce")
    with double.serve():
        sf = client(double)
        gone = [r for r in sf.restful("composite/sobjects", method="DELETE",
                                      params={"ids": ",".join(ids[-3:]), "allOrNone": "false"})]
        assert all(r["success"] for r in gone)
        first = sf.query("SELECT Id, IsDeleted FROM KPI_Snapshot__c ORDER BY Id", include_deleted=True)
        assert not first["done"] and "/query/" in first["nextRecordsUrl"] and "queryAll" not in first["nextRecordsUrl"]
        rows = sf.query_all("SELECT Id, IsDeleted FROM KPI_Snapshot__c ORDER BY Id", include_deleted=True)["records"]
        assert [r["Id"] for r in rows] == sorted(ids) and [r["Id"] for r in rows if r["IsDeleted"]] == sorted(ids[-3:])


def test_query_results_come_in_no_particular_order_unless_ordered(tmp_path, monkeypatch):
    """Without ORDER BY, REST and Bulk query results are not in insertion (or Id) order; ORDER BY sorts them."""
    p = make_project(tmp_path, monkeypatch)
    with p.double.serve():
        sf = client(p.double)
        ids = [r["Id"] for r in sf.query_all("SELECT Id FROM Account")["records"]]
        assert len(ids) == 1665 and ids != sorted(ids)
        named = [r["Name"] for r in sf.query_all("SELECT Id, Name FROM Account ORDER BY Name")["records"]]
        assert named == sorted(named)
        pages = sf.bulk2.Account.query("SELECT Id FROM Account", max_records=1000, wait=0.001)
        bulk = [row["Id"] for page in pages for row in csv.DictReader(io.StringIO(page))]
        assert sorted(bulk) == sorted(ids) and bulk != sorted(bulk)


def test_numbers_come_back_as_an_org_prints_its_doubles_and_the_engine_reads_them(tmp_path, monkeypatch):
    """REST JSON and Bulk CSV give 12,345,678 as 1.2345678E7 and 300,000.00 as 300000.0 (Salesforce's doubles); the
    engine reads them exactly: a family above 10 million ARR is written once and a rerun plans no change."""
    org = tmp_path / "org"
    shutil.copytree(DEMO_ORG, org)
    subs = list(csv.DictReader(open(org / "Subscription__c.csv", encoding="utf-8")))
    for s in subs:
        if s["Account__c"] == "001000000000001AAA":
            s["Amount__c"] = str(float(s["Amount__c"]) * 100)
    write_csv(org / "Subscription__c.csv", subs)
    p = make_project(tmp_path / "p", monkeypatch, org=org)
    assert java_double("12345678") == "1.2345678E7" and java_double("300000.00") == "300000.0"
    with p.double.serve():
        p.cli("run", "--as-of", AS_OF)
        arr = p.double.records("Account", ["Hierarchy_ARR__c"])["001000000000001AAA"][0]
        assert float(arr) >= 1e7
        sf = client(p.double)
        raw = requests.get(f"https://{'acme.my.salesforce.com'}/services/data/v59.0/query",
                           params={"q": "SELECT Id, Hierarchy_ARR__c FROM Account WHERE Id = '001000000000001AAA'"},
                           headers={"Authorization": f"Bearer {sf.session_id}"}).text
        assert f'"Hierarchy_ARR__c": {java_double(arr)}' in raw and "E7" in raw
        page = next(sf.bulk2.Account.query("SELECT Id, Hierarchy_ARR__c FROM Account", max_records=5000, wait=0.001))
        assert f'"001000000000001AAA","{java_double(arr)}"' in page
        assert "planned 0" in p.cli("run", "--as-of", AS_OF).stdout


# ---- serve survives dying clients ------------------------------------------------------------------------------

_DYING_CLIENT = """
import os, signal, sys
from multiprocessing.connection import Client
conn = Client(sys.argv[1], family="AF_UNIX")
conn.recv()
conn.send(("POST", "https://login.salesforce.com/services/Soap/u/59.0", {}, b"<login/>" * 200000, None))
os.kill(os.getpid(), signal.SIGKILL)      # killed mid-request: the answer finds no one to read it
"""


def test_serve_survives_clients_that_die_at_any_point(tmp_path, monkeypatch):
    """The socket double outlives a client killed before reading its answer, one that dies mid-message and one
    that sends garbage; the next client runs the full nightly job."""
    p = make_project(tmp_path, monkeypatch)
    p.double.db.close()
    address = str(tmp_path / "sf.sock")
    module = [sys.executable, "-m", "nrr_engine.testing.salesforce_double"]
    server = subprocess.Popen([*module, "serve", str(tmp_path / "sf.db"), str(ROOT / "salesforce"), address])
    try:
        for _ in range(300):
            if Path(address).exists() or server.poll() is not None:
                break
            time.sleep(0.05)
        killed = subprocess.run([sys.executable, "-c", _DYING_CLIENT, address], timeout=60)
        assert killed.returncode == -signal.SIGKILL
        for payload in (struct.pack("!i", 1 << 20) + b"half a message", struct.pack("!i", 8) + b"garbage!"):
            s = socket.socket(socket.AF_UNIX)
            s.connect(address)
            s.recv(4096)                                  # the credentials
            s.sendall(payload)
            s.close()
        run = subprocess.run([*module, "connect", address, "--", "--config", str(p.cli.config), "run", "--as-of", AS_OF],
                             capture_output=True, text=True, timeout=300)
        assert server.poll() is None, "the double died"
    finally:
        server.kill()
        server.wait()
    assert run.returncode == 0, run.stderr
    assert "applied 7563" in run.stdout
