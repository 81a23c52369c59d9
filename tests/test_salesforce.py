"""Salesforce as source and sink, against the test double driven by the real simple-salesforce client."""
from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

import nrr_engine
from nrr_engine import history_files
from nrr_engine.demo import write_demo_config
from nrr_engine.testing.salesforce_double import SalesforceDouble

from conftest import Cli, links_to_review

ROOT = Path(__file__).resolve().parent.parent
DEMO_ORG = Path(nrr_engine.__file__).parent / "demo" / "org"
AS_OF = "2026-11-15"
ROLLUPS = ["ParentId", "Ultimate_Parent__c", "Hierarchy_Depth__c", "Hierarchy_ARR__c", "Child_Count__c"]
SNAPSHOT = ["External_Id__c", "Starting_ARR__c", "Ending_ARR__c", "NRR__c", "GRR__c", "Account_Count__c"]


@dataclass
class SfProject:
    """A demo project whose source is Salesforce (the double), with its double and CLI."""

    root: Path
    double: SalesforceDouble
    cli: Cli

    def ledger(self, sql: str, *args):
        return sqlite3.connect(self.root / "state" / "nrr.db").execute(sql, args).fetchall()


def make_project(root: Path, monkeypatch, source: str = "", org: Path = DEMO_ORG, **double_kw) -> SfProject:
    shutil.copytree(org, root / "org")
    cfg = write_demo_config(root)
    opts = "kind: salesforce, auth: password, poll_s: 0.001, backoff_s: 0.001, api_reserve: 100" + source
    cfg.write_text(cfg.read_text().replace("source: {kind: local, path: ../org}", "source: {" + opts + "}"))
    SalesforceDouble.seed(root / "sf.db", root / "org")
    double = SalesforceDouble(root / "sf.db", metadata=ROOT / "salesforce", **double_kw)
    use_credentials(monkeypatch, double)
    return SfProject(root, double, Cli(cfg))


def use_credentials(monkeypatch, double: SalesforceDouble) -> None:
    """The integration user's secrets in the environment variables the config names."""
    monkeypatch.setenv("SF_USERNAME", double.username)
    monkeypatch.setenv("SF_PASSWORD", double.password)
    monkeypatch.setenv("SF_SECURITY_TOKEN", double.security_token)


@pytest.fixture
def sf(tmp_path, monkeypatch):
    """The demo org served by the double; REST reads and Collections writes (it is small)."""
    p = make_project(tmp_path, monkeypatch)
    with p.double.serve():
        yield p


@pytest.fixture
def sf_bulk(tmp_path, monkeypatch):
    """The demo org served by the double, with thresholds low enough that reads and writes go through Bulk API 2.0."""
    p = make_project(tmp_path, monkeypatch, ", bulk_write_min: 300, bulk_query_min: 1000, page_size: 1000")
    with p.double.serve():
        yield p


@pytest.fixture(scope="module")
def local_end_state(tmp_path_factory):
    """Account rollups and KPI snapshots after the nightly job on the local demo org."""
    root = tmp_path_factory.mktemp("local")
    shutil.copytree(DEMO_ORG, root / "org")
    cfg = write_demo_config(root)
    Cli(cfg)("run", "--as-of", AS_OF, expect=0)
    db = sqlite3.connect(root / "state" / "local-org.db")
    accounts = {r[0]: tuple(r[1:]) for r in db.execute(f"SELECT Id, {', '.join(ROLLUPS)} FROM Account")}
    snaps = {r[0]: tuple(r[1:]) for r in db.execute(f"SELECT {', '.join(SNAPSHOT)} FROM KPI_Snapshot__c")}
    return accounts, snaps


def end_state(p: SfProject):
    accounts = p.double.records("Account", ROLLUPS)
    snaps = {r[0]: tuple(r[1:]) for r in p.double.records("KPI_Snapshot__c", SNAPSHOT).values()}
    return accounts, snaps


def ingest_jobs(p: SfProject) -> list[dict]:
    return [j for j in p.double.jobs.values() if "data" in j]


def test_nightly_job_on_salesforce_ends_in_the_local_org_state(sf, local_end_state):
    """The full run against the double (REST + Collections) leaves Salesforce as the local org run leaves the local org."""
    out = sf.cli("run", "--as-of", AS_OF).stdout
    assert "applied 7563" in out
    assert end_state(sf) == local_end_state
    assert all(t is not None for t in sf.double.timeouts), "every HTTP call carries a timeout"


def test_bulk_paths_end_in_the_same_state_and_parent_links_go_in_their_own_job(sf_bulk, local_end_state):
    """Bulk API 2.0 query (several locator pages) and ingest give the same end state; ParentId is a job of its own."""
    sf_bulk.cli("run", "--as-of", AS_OF)
    assert end_state(sf_bulk) == local_end_state
    pages = [path for m, path in sf_bulk.double.calls if path.endswith("/results")]
    assert len(pages) >= 2 + 2 + 1          # Account and subscriptions span pages of 1,000
    headers = [j["data"].split("\n", 1)[0] for j in ingest_jobs(sf_bulk)]
    assert "Id,ParentId" in headers
    assert any("Hierarchy_ARR__c" in h and "ParentId" not in h for h in headers)
    parent_job = next(j for j in ingest_jobs(sf_bulk) if j["data"].startswith("Id,ParentId\n"))
    parents = [line.split(",")[1] for line in parent_job["data"].splitlines()[1:]]
    assert parents == sorted(parents), "children of one parent are written together"
    rollup_job = next(j for j in ingest_jobs(sf_bulk) if "Hierarchy_ARR__c" in j["data"].split("\n", 1)[0])
    final_parent = {rid: v[0] or "" for rid, v in sf_bulk.double.records("Account", ["ParentId"]).items()}
    rollup_parents = [final_parent[line.split(",")[0]] for line in rollup_job["data"].splitlines()[1:]]
    runs = [q for k, q in enumerate(rollup_parents) if q and (k == 0 or q != rollup_parents[k - 1])]
    assert len(runs) == len(set(runs)), "rollup rows are grouped by parent too (and by family: test_salesforce_writes)"
    calls = sf_bulk.ledger("SELECT api_usage FROM runs WHERE mode = 'run'")
    usage = json.loads(calls[0][0])
    assert usage["calls"]["bulk_ingest"] > 0 and usage["calls"]["bulk_query"] > 0 and "record" not in usage["calls"]


def test_collections_send_numbers_as_exact_json_numbers(sf):
    """Collections bodies are typed by describe: rollups go as JSON numbers with their exact decimals, Ids as strings."""
    from decimal import Decimal
    sf.cli("run", "--as-of", AS_OF)
    sent = [json.loads(body, parse_float=Decimal)["records"] for method, path, body in sf.double.bodies
            if method == "PATCH" and path.endswith("/composite/sobjects")]
    records = [r for batch in sent for r in batch if "Hierarchy_ARR__c" in r]
    assert records, "rollups were written through Collections"
    assert all(isinstance(r["Hierarchy_ARR__c"], Decimal) for r in records if r["Hierarchy_ARR__c"] is not None)
    assert any(str(r["Hierarchy_ARR__c"]).endswith(".00") for r in records), "the Decimal text goes out as is"
    assert all(isinstance(r["Id"], str) and isinstance(r.get("Ultimate_Parent__c", ""), (str, type(None))) for r in records)

def test_rerun_writes_nothing_and_opens_no_ingest_job(sf_bulk):
    """A rerun with no changes writes 0 records: no ingest job, no Collections call."""
    sf_bulk.cli("run", "--as-of", AS_OF)
    jobs_before, calls_before = len(ingest_jobs(sf_bulk)), len(sf_bulk.double.calls)
    out = sf_bulk.cli("run", "--as-of", AS_OF).stdout
    assert "planned 0" in out
    new_calls = sf_bulk.double.calls[calls_before:]
    assert len(ingest_jobs(sf_bulk)) == jobs_before
    assert not [c for c in new_calls if "/jobs/ingest" in c[1] or "/composite/" in c[1]]


def test_run_summary_records_api_calls_by_kind(sf):
    """The run summary and the ledger carry the calls used, by kind, and the org's limit header."""
    sf.cli("run", "--as-of", AS_OF)
    usage = json.loads(sf.ledger("SELECT api_usage FROM runs WHERE mode = 'run'")[0][0])
    assert usage["calls"]["auth"] == 1 and usage["calls"]["limits"] == 1 and usage["calls"]["describe"] == 3
    assert usage["total"] == sum(usage["calls"].values()) == len(sf.double.calls)
    assert usage["limit_info"].startswith("api-usage=")
    summary = json.loads(sf.ledger("SELECT summary FROM runs WHERE mode = 'run'")[0][0])
    assert summary["api_calls"]["calls"] == usage["calls"]


def test_below_the_api_reserve_the_run_refuses_to_start(sf):
    """Fewer daily API requests left than source.api_reserve: exit 3 before any read or write."""
    sf.double.api_remaining_override = 50
    r = sf.cli("run", "--as-of", AS_OF, expect=3)
    assert "only 50 of 100000 daily API requests remain, below the reserve of 100" in r.stderr
    assert not [c for c in sf.double.calls if "query" in c[1] or "composite" in c[1] or "jobs" in c[1]]


@pytest.mark.parametrize("target, message", [
    ("arr: Hierarchy_ARR__c", None),
    ("arr: Missing_ARR__c", "views[legal].fields.arr: Account.Missing_ARR__c does not exist"),
    ("arr: Name", "views[legal].fields.arr: Account.Name is of type string; expected currency or double"),
    ("depth: CreatedDate", "Account.CreatedDate is not updateable by the integration user; grant edit access"),
])
def test_describe_checks_every_configured_field(sf, target, message):
    """describe at start: an unknown field, a wrong type or a non-updateable target exits 2 naming the field and fix."""
    cfg = sf.cli.config
    text = cfg.read_text()
    a, b = text.index("    fields: {ultimate_parent"), text.index("rules: [")
    cfg.write_text(text[:a] + f"    fields: {{{target}}}\n" + text[b:])
    if message is None:
        sf.cli("plan", "--as-of", AS_OF)
        return
    r = sf.cli("plan", "--as-of", AS_OF, expect=2)
    assert message in r.stderr
    assert not [c for c in sf.double.calls if "query" in c[1]], "nothing is read before the checks pass"


def test_unknown_snapshot_object_names_the_fix(sf):
    """A snapshot object the org lacks: exit 2 pointing at the metadata to deploy."""
    cfg = sf.cli.config
    cfg.write_text(cfg.read_text().replace("object: KPI_Snapshot__c", "object: Missing_Snapshot__c"))
    r = sf.cli("plan", "--as-of", AS_OF, expect=2)
    assert "snapshots.object: object Missing_Snapshot__c does not exist in the org" in r.stderr
    assert "deploy salesforce/" in r.stderr


def test_lock_errors_are_retried_until_written(sf_bulk):
    """UNABLE_TO_LOCK_ROW on some records (Bulk and Collections) is retried with backoff; the run succeeds."""
    locked = {"001000000000002AAA", "001000000000003AAA"}
    sf_bulk.double.fault("lock", records=locked, times=2)
    out = sf_bulk.cli("run", "--as-of", AS_OF).stdout
    assert "applied 7563" in out and "failed" not in out
    assert all(sum(f.hits.values()) >= 2 for f in sf_bulk.double.faults)


def test_5xx_and_request_limit_exceeded_are_retried(sf):
    """500s and REQUEST_LIMIT_EXCEEDED on reads and writes are retried with backoff."""
    sf.double.fault("http_500", path="describe", times=2)
    sf.double.fault("limit_exceeded", path="/query", times=1)
    sf.double.fault("http_500", path="composite", method="PATCH", times=1)
    sf.cli("run", "--as-of", AS_OF)
    usage = json.loads(sf.ledger("SELECT api_usage FROM runs WHERE mode = 'run'")[0][0])
    assert usage["calls"]["describe"] == 5
    assert all(f.times == 0 for f in sf.double.faults)


def test_5xx_that_never_ends_gives_exit_3(sf):
    """A Salesforce that keeps answering 500: exit 3 naming the call, no traceback."""
    sf.double.fault("http_500", path="limits", times=100)
    r = sf.cli("run", "--as-of", AS_OF, expect=3)
    assert "Salesforce limits failed" in r.stderr and "Traceback" not in r.stderr


def test_an_expired_session_is_refreshed_once(sf):
    """The session expires mid-run: the engine logs in again once and finishes."""
    sf.double.fault("expire_session", path="composite", times=1)
    sf.cli("run", "--as-of", AS_OF)
    assert sf.double.count("/Soap/u/") == 2


def test_record_failures_are_recorded_not_raised_and_the_next_run_retries(sf_bulk):
    """Per-record failures (Bulk) land in the ledger with Salesforce's code and message; exit 1; a rerun repairs."""
    bad = {"001000000000002AAA"}
    sf_bulk.double.fault("record_error", records=bad, times=1)
    r = sf_bulk.cli("run", "--as-of", AS_OF, expect=1)
    assert "failed" in r.stdout
    rows = sf_bulk.ledger("SELECT record_id, error FROM changes WHERE status = 'failed'")
    assert rows and {rid for rid, _ in rows} == bad
    assert all(err == "FIELD_CUSTOM_VALIDATION_EXCEPTION:rejected by a validation rule" for _, err in rows)
    changed = sf_bulk.ledger("SELECT field FROM changes WHERE record_id = ? ORDER BY field", *bad)
    failed = sf_bulk.ledger("SELECT field FROM changes WHERE status = 'failed' ORDER BY field")
    assert len(changed) > 1 and failed == changed, "every change of the rejected record is failed, no other"
    out = sf_bulk.cli("run", "--as-of", AS_OF).stdout
    assert f"planned {len(rows)}" in out


def test_a_failed_job_loses_nothing(sf_bulk, local_end_state):
    """An ingest job that fails midway: its unprocessed records are recorded as failed; the next run completes."""
    sf_bulk.double.fault("job_failed", after=100)
    r = sf_bulk.cli("run", "--as-of", AS_OF, expect=1)
    failed = sf_bulk.ledger("SELECT count(*), min(error) FROM changes WHERE status = 'failed'")[0]
    assert failed[0] > 0 and failed[1].startswith("JOB_FAILED: InternalServerError")
    assert f"failed {failed[0]}" in r.stdout
    sf_bulk.cli("run", "--as-of", AS_OF, expect=0)
    assert end_state(sf_bulk) == local_end_state


def test_secrets_never_reach_the_log(sf):
    """Password, token and session id never appear in logs, even in a failed login or an echoed response body."""
    sf.double.fault("expire_session", path="composite", times=1)
    r = sf.cli("run", "--as-of", AS_OF)
    assert sf.double.password not in r.stderr and sf.double.security_token not in r.stderr
    assert not any(tok in r.stderr for tok in sf.double.tokens)
    import io
    import structlog
    from nrr_engine import log as log_mod
    buf = io.StringIO()
    log_mod.configure("info", json_logs=True, stream=buf, secrets=["SF_PASSWORD"])
    structlog.get_logger("t").warning("echo", body=f"<xml>{sf.double.password}</xml>",
                                      note=f"pw={sf.double.password}")
    assert sf.double.password not in buf.getvalue()
    assert '"body": "[body redacted' in buf.getvalue()


def test_wrong_password_exits_3_without_echoing_it(sf, monkeypatch):
    """A failed login is exit 3 with Salesforce's code; the password is not in the message."""
    monkeypatch.setenv("SF_PASSWORD", "wrong-password-123")
    r = sf.cli("run", "--as-of", AS_OF, expect=3)
    assert "Salesforce login (password) failed: INVALID_LOGIN" in r.stderr and "wrong-password-123" not in r.stderr


def test_missing_secret_names_the_environment_variable(sf, monkeypatch):
    """No password in the environment: exit 2 naming the variable to set."""
    monkeypatch.delenv("SF_PASSWORD")
    r = sf.cli("plan", "--as-of", AS_OF, expect=2)
    assert "environment variable SF_PASSWORD, which is not set" in r.stderr


def test_jwt_bearer_login(tmp_path, monkeypatch):
    """JWT bearer: the assertion is signed with the private key file and verified by the double."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "server.key").write_bytes(pem)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    p = make_project(tmp_path / "p", monkeypatch, public_key=public)
    cfg = p.cli.config
    cfg.write_text(cfg.read_text().replace("auth: password", f"auth: jwt, private_key_file: {tmp_path / 'server.key'}")
                   + f"allowed_paths: [{tmp_path / 'server.key'}]\n")   # the key lives outside the project
    monkeypatch.setenv("SF_CONSUMER_KEY", p.double.consumer_key)
    with p.double.serve():
        p.cli("plan", "--as-of", AS_OF)
        assert p.double.count("/oauth2/token") == 1
        monkeypatch.setenv("SF_CONSUMER_KEY", "someone-else")
        r = p.cli("plan", "--as-of", AS_OF, expect=3)
        assert "Salesforce login (jwt) failed" in r.stderr


def test_session_id_login(tmp_path, monkeypatch):
    """instance_url + session id from the environment: no login call; an expired session cannot refresh: exit 3."""
    p = make_project(tmp_path, monkeypatch)
    cfg = p.cli.config
    cfg.write_text(cfg.read_text().replace("auth: password", "auth: session, instance_url: https://acme.my.salesforce.com"))
    monkeypatch.setenv("SF_SESSION_ID", p.double.issue_token())
    with p.double.serve():
        p.cli("plan", "--as-of", AS_OF)
        assert p.double.count("/Soap/") == 0 and p.double.count("/oauth2/") == 0
        p.double.tokens.clear()
        r = p.cli("plan", "--as-of", AS_OF, expect=3)
        assert "INVALID_SESSION_ID" in r.stderr


def test_rollback_restores_salesforce(sf_bulk):
    """Rolling back a Salesforce run restores the old values there; a plan then shows the changes again."""
    sf_bulk.cli("run", "--as-of", AS_OF)
    before = sf_bulk.ledger("SELECT id FROM runs WHERE mode = 'run'")[0][0]
    sf_bulk.cli("rollback", before)
    accounts = sf_bulk.double.records("Account", ["ParentId", "Hierarchy_ARR__c"])
    assert all(arr is None for _, arr in accounts.values())
    assert not sf_bulk.double.records("KPI_Snapshot__c", ["External_Id__c"])
    assert "planned 7563" in sf_bulk.cli("plan", "--as-of", AS_OF).stdout


def test_merged_accounts_are_not_live_and_are_reported(sf):
    """An account merged away (queryAll: IsDeleted + MasterRecordId) is not a live account; it is reported."""
    db = sf.double.db
    db.execute("UPDATE Account SET IsDeleted = 'true', MasterRecordId = '001000000000001AAA' WHERE Id = '001000000000009AAA'")
    out = sf.cli("plan", "--as-of", AS_OF).stdout
    assert "merged_accounts" in out or "merged-away" in out
    assert "accounts read: 1664" in out


def test_placeholder_parent_is_created_first_then_linked_with_its_salesforce_id(tmp_path, monkeypatch):
    """An approved placeholder parent is upserted on Family_Key__c, then its members link to the Id Salesforce gave it."""
    org = tmp_path / "org"
    shutil.copytree(DEMO_ORG, org)
    with open(org / "Account.csv", "a", encoding="utf-8") as fh:
        fh.write("001Z00000000001AAA,Zeta US,,,US,NA,,,\n001Z00000000002AAA,Zeta UK,,,United Kingdom,EMEA,,,\n")
    p = make_project(tmp_path / "p", monkeypatch, org=org)
    with p.double.serve():
        p.cli("run", "--as-of", AS_OF)
        items = p.cli.json("review", "list", "--format", "json")
        [zeta] = [i for i in items if i["parent_ref"] == "placeholder:name:zeta"]
        p.cli("review", "approve", str(zeta["id"]))
        p.cli("run", "--as-of", AS_OF)
        made = [(rid, v) for rid, v in p.double.records("Account", ["Name", "Family_Key__c"]).items() if v[0] == "Zeta"]
        [(zid, (_, key))] = made
        assert key == "placeholder:name:zeta" and not zid.startswith("001zzzzzzzzz")
        links = p.double.records("Account", ["ParentId", "Ultimate_Parent__c"])
        assert links["001Z00000000001AAA"] == (zid, zid) and links["001Z00000000002AAA"] == (zid, zid)
        recorded = p.ledger("SELECT record_id FROM changes WHERE field = '__insert__'")
        assert recorded == [(zid,)]
        p.cli("run", "--as-of", AS_OF)
        assert sum(1 for v in p.double.records("Account", ["Name"]).values() if v[0] == "Zeta") == 1


def acme_on_the_double(org, tmp_path: Path, monkeypatch, **double_kw) -> tuple[SalesforceDouble, Cli]:
    """Acme (1000), Acme UK under it (500) and Acme Labs (300), ARR from an Account field, served by the double:
    the org the merge tests merge Acme Labs into Acme in."""
    from conftest import FIELD_ARR
    org.arr = FIELD_ARR
    org.account("001A00000000001AAA", "Acme", ARR__c="1000")
    org.account("001A00000000002AAA", "Acme UK", "001A00000000001AAA", ARR__c="500")
    org.account("001A00000000003AAA", "Acme Labs", ARR__c="300")
    org.write()
    cfg = org.config
    cfg.write_text(cfg.read_text().replace(
        "source: {kind: local, path: ../org}",
        "source: {kind: salesforce, auth: password, poll_s: 0.001, backoff_s: 0.001, api_reserve: 100}"))
    SalesforceDouble.seed(tmp_path / "sf.db", org.org)
    double = SalesforceDouble(tmp_path / "sf.db", metadata=ROOT / "salesforce", **double_kw)
    double.define("Account", "ARR__c", "currency")
    use_credentials(monkeypatch, double)
    return double, Cli(cfg)


def stored_months(org, rid: str) -> int:
    """The ARR history segments the state store keeps for an account."""
    arr = history_files.named(org.root / "state" / "nrr.db").get(history_files.ARR)
    return sum(1 for r in history_files.tuples(arr, ["account_id"]) if r[0] == rid)


def test_merged_away_history_moves_to_the_survivor_so_the_merge_is_not_churn(org, tmp_path, monkeypatch):
    """ARR from an Account field: after Acme Labs is merged into Acme, its stored months count under Acme (no churn)."""
    double, cli = acme_on_the_double(org, tmp_path, monkeypatch)

    with double.serve():
        cli("run", "--as-of", "2026-10-20")
        assert stored_months(org, "001A00000000003AAA") > 0
        # the merge in Salesforce: the loser goes to the recycle bin pointing at the survivor, which takes its ARR
        double.db.execute("UPDATE Account SET IsDeleted = 'true', MasterRecordId = '001A00000000001AAA' "
                          "WHERE Id = '001A00000000003AAA'")
        double.db.execute("UPDATE Account SET ARR__c = '1300' WHERE Id = '001A00000000001AAA'")
        out = cli("run", "--as-of", "2026-11-03").stdout
        assert "merged_accounts" in out
        report = cli.json("report", "nrr", "--period", "2026-11", "--format", "json", "--as-of", "2026-11-20")
    fam, naive = report["family"], report["naive"]
    assert (fam["start"], fam["end"], fam["churn"], fam["expansion"]) == ("1800.00", "1800.00", "0.00", "0.00")
    assert (naive["start"], naive["churn"], naive["new_logo"]) == ("1800.00", "0.00", "0.00")
    assert stored_months(org, "001A00000000003AAA") == 0, "the loser's history now lives under the survivor, outliving the recycle bin"


def test_the_double_serves_another_process_over_a_socket(tmp_path, monkeypatch):
    """`serve` runs the double alone and `connect` runs nrr-engine against it: the run lands in the double's store."""
    import subprocess
    import sys
    import time
    p = make_project(tmp_path, monkeypatch)
    p.double.db.close()
    socket = str(tmp_path / "sf.sock")
    module = [sys.executable, "-m", "nrr_engine.testing.salesforce_double"]
    server = subprocess.Popen([*module, "serve", str(tmp_path / "sf.db"), str(ROOT / "salesforce"), socket])
    try:
        for _ in range(300):
            if Path(socket).exists() or server.poll() is not None:
                break
            time.sleep(0.05)
        run = subprocess.run([*module, "connect", socket, "--", "--config", str(p.cli.config), "run", "--as-of", AS_OF],
                             capture_output=True, text=True, timeout=300)
    finally:
        server.kill()
        server.wait()
    assert run.returncode == 0, run.stderr
    assert "applied 7563" in run.stdout
    served = SalesforceDouble(tmp_path / "sf.db")
    assert len(served.records("KPI_Snapshot__c", ["External_Id__c"])) == 450


def test_the_double_command_without_its_arguments_prints_its_usage(capsys):
    """A wrong command line exits 2 with the three ways to call it."""
    from nrr_engine.testing.salesforce_double import main
    assert main(["serve", "only-a-store"]) == 2
    assert "connect SOCKET -- <nrr-engine arguments>" in capsys.readouterr().err


def test_report_reads_no_snapshot_records(sf):
    """`report nrr --recompute` on Salesforce reads accounts and subscriptions, not the KPI snapshot records it
    never uses; without it, right after a run, the report reads the run's columnar store: no API call at all,
    and the same figures."""
    sf.cli("run", "--as-of", AS_OF)
    assert any("FROM KPI_Snapshot__c" in q for q in sf.double.queries), "a run reads them"
    sf.double.queries.clear()
    calls = len(sf.double.calls)
    stored = sf.cli.json("report", "nrr", "--period", "2026-10", "--format", "json", "--as-of", AS_OF)
    assert stored.pop("from_run") and sf.double.queries == [] and len(sf.double.calls) == calls  # not even a login
    report = sf.cli.json("report", "nrr", "--period", "2026-10", "--format", "json", "--as-of", AS_OF, "--recompute")
    assert report["family"]["start"] != "0.00" and report == stored
    assert [q.split(" FROM ")[1].split()[0] for q in sf.double.queries] == ["Account", "Subscription__c"]


GLOBEX = ROOT.parent / "shared" / "data" / "globex"


def globex_project(tmp_path, monkeypatch):
    """The hand-built Globex org (../shared/data/globex) served by the double, with its mapping table, every link
    to review (the tests approve them)."""
    if not GLOBEX.is_dir():
        pytest.skip(f"the hand-built Globex org is not at {GLOBEX} (it ships in ../shared/data)")
    org = tmp_path / "globex"
    org.mkdir()
    for name in ("Account.csv", "Subscription__c.csv"):
        shutil.copy(GLOBEX / name, org / name)
    p = make_project(tmp_path / "p", monkeypatch, org=org)
    shutil.copy(GLOBEX / "mappings.csv", tmp_path / "p" / "rules" / "mappings.csv")
    links_to_review(tmp_path / "p")
    return p


def test_absorbed_family_snapshots_are_deleted_in_salesforce_and_rollback_restores_them(tmp_path, monkeypatch):
    """On the hand-built Globex org served by the double: once Initech and Globex Japan join Globex Corporation,
    their 2026-10 KPI_Snapshot__c records are deleted in Salesforce (the month's records sum to 482,000); a
    rollback of that run puts them back as they were."""
    p = globex_project(tmp_path, monkeypatch)

    def october():
        rows = p.double.records("KPI_Snapshot__c", ["External_Id__c", "Ending_ARR__c"]).values()
        return {k: float(v) for k, v in rows if k.endswith(":2026-10")}

    with p.double.serve():
        p.cli("run", "--as-of", AS_OF)
        before = october()
        assert "legal:001000000000G05AAA:2026-10" in before and "legal:001000000000G06AAA:2026-10" in before
        items = p.cli.json("review", "list", "--format", "json")
        true = {"001000000000G02AAA", "001000000000G05AAA", "001000000000G06AAA"}
        p.cli("review", "approve", *[str(i["id"]) for i in items
                                     if i["child_id"] in true and i["parent_id"] == "001000000000G01AAA"])
        run_id = p.cli("run", "--as-of", AS_OF).stdout.split()[1]
        after = october()
        assert sum(after.values()) == 482_000 and len(after) == 6
        assert "legal:001000000000G05AAA:2026-10" not in after and "legal:001000000000G06AAA:2026-10" not in after
        assert "changes: planned 0" in p.cli("run", "--as-of", AS_OF).stdout
        p.cli("rollback", run_id)
        assert october() == before
