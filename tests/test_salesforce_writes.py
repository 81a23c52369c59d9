"""The Salesforce write path and its waits, against the double driven by the real simple-salesforce client:
values checked against describe before they are sent, only safe calls retried, bounded waits, uploads
measured in bytes, rows ordered against lock contention, amounts and the record's currency."""
from __future__ import annotations

import json
import shutil
import signal
import sqlite3
from decimal import Decimal
from contextlib import contextmanager

import pytest

from nrr_engine.config import SalesforceSettings
from nrr_engine.demo import write_demo_config
from nrr_engine.sources import salesforce as sf_source
from nrr_engine.sources.salesforce import SalesforceOrg

from conftest import Cli
from test_salesforce import AS_OF, DEMO_ORG, end_state, ingest_jobs, local_end_state, make_project, sf, sf_bulk

FIXTURES = (sf, sf_bulk, local_end_state)   # shared with test_salesforce: the demo org on the double, the local run

MONTH = "2026-10"          # the snapshot month of a run as of AS_OF
EUR_ACCOUNT = "001000000000002AAA"


@contextmanager
def deadline(seconds: int):
    """Fail (TimeoutError) instead of hanging when the code under test waits longer than `seconds`."""
    def expired(*_):
        raise TimeoutError(f"still waiting after {seconds} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def resize(double, obj: str, field: str, **spec) -> None:
    """Describe obj.field with other sizes, as an admin who edited the field would have left it."""
    double.schema[obj][field.lower()].update(spec)
    getattr(double, "_views", {}).clear()


def direct_org(p, **kw) -> SalesforceOrg:
    """A SalesforceOrg on the project's double, for calling the write path directly."""
    settings = SalesforceSettings(auth="password", poll_s=0.001, backoff_s=0.001, api_reserve=100,
                                  **{k: v for k, v in kw.items() if k in SalesforceSettings.__dataclass_fields__})
    extra = {k: v for k, v in kw.items() if k not in SalesforceSettings.__dataclass_fields__}
    return SalesforceOrg(settings, p.root / "direct-mirror.db", p.cli.config, **extra)


def ingest_calls(p, method: str, suffix: str = "") -> list[str]:
    return [path for m, path in p.double.calls if m == method and "/jobs/ingest/" in path and path.endswith(suffix)]


# ---- item 1: KPI snapshots fit the shipped metadata; every value is checked before it is sent ------------------

@pytest.mark.parametrize("bulk", [False, True], ids=["collections", "bulk"])
def test_snapshot_month_is_yyyy_mm_and_fits_the_shipped_text7_field(tmp_path, monkeypatch, bulk):
    """Every KPI snapshot is written with Month__c = YYYY-MM (the key's month), which fits Text(7); none fails."""
    p = make_project(tmp_path, monkeypatch, ", bulk_write_min: 300" if bulk else "")
    with p.double.serve():
        out = p.cli("run", "--as-of", AS_OF).stdout
        assert "failed" not in out
    snaps = p.double.records("KPI_Snapshot__c", ["External_Id__c", "Month__c"])
    assert snaps and all(month == MONTH and key.endswith(":" + month) for key, month in snaps.values())
    assert not p.ledger("SELECT count(*) FROM changes WHERE status = 'failed'")[0][0]
    data = [json.loads(d) for (d,) in p.ledger("SELECT data FROM snapshots")]
    assert data and all(d["Month__c"] == MONTH for d in data), "the ledger holds what was written"


def test_local_org_and_ledger_with_date_months_converge_in_place(tmp_path):
    """A working copy and ledger written with Month__c = YYYY-MM-01 (every month) are rewritten in place: same
    records, same Ids, one per key, Month__c = YYYY-MM; the run after writes nothing."""
    shutil.copytree(DEMO_ORG, tmp_path / "org")
    cli = Cli(write_demo_config(tmp_path))
    cli("run", "--as-of", "2026-10-15")
    cli("run", "--as-of", AS_OF)
    wc, state = sqlite3.connect(tmp_path / "state" / "local-org.db"), sqlite3.connect(tmp_path / "state" / "nrr.db")
    with wc:  # what earlier releases left: the month's first day (and no write token: they kept none)
        wc.execute("UPDATE KPI_Snapshot__c SET Month__c = substr(External_Id__c, -7) || '-01'")
        wc.execute("DROP TABLE _nrr_meta")
    with state:
        state.execute("UPDATE snapshots SET data = json_set(data, '$.Month__c', month || '-01')")
    before = dict(wc.execute("SELECT Id, External_Id__c FROM KPI_Snapshot__c"))
    assert {k[-7:] for k in before.values()} == {"2026-09", MONTH}, "two months of snapshots"

    out = cli("run", "--as-of", AS_OF).stdout
    assert "failed" not in out
    rows = wc.execute("SELECT Id, External_Id__c, Month__c FROM KPI_Snapshot__c")
    after = {rid: (key, month) for rid, key, month in rows}
    assert {rid: key for rid, (key, _) in after.items()} == before, "the same records, none added or lost"
    assert all(month == key[-7:] for key, month in after.values()), "every month, the older one too"
    assert all(json.loads(d)["Month__c"] == m for d, m in state.execute("SELECT data, month FROM snapshots"))
    assert "planned 0" in cli("run", "--as-of", AS_OF).stdout


def test_a_value_longer_than_its_field_is_not_sent_and_fails_its_record(sf):
    """A snapshot whose View__c does not fit the field describe gives is never sent: each such record fails in the
    ledger naming object, field, record, value and size (exit 1); the accounts are still written."""
    resize(sf.double, "KPI_Snapshot__c", "View__c", length=3)
    r = sf.cli("run", "--as-of", AS_OF, expect=1)
    failed = sf.ledger("SELECT record_id, error FROM changes WHERE status = 'failed'")
    prefix = "VALUE_DOES_NOT_FIT: KPI_Snapshot__c.View__c of record legal:"
    assert failed and all(e.startswith(prefix) for _, e in failed)
    assert all("'legal' is 5 characters long; the field (string) holds 3; not sent" in e for _, e in failed)
    assert f"failed {len(failed)}" in r.stdout
    assert not sf.double.records("KPI_Snapshot__c", ["Id"]), "nothing that does not fit reached Salesforce"
    sent = [b for m, path, b in sf.double.bodies if b"KPI_Snapshot__c" in b]
    assert not sent
    arr = sf.double.records("Account", ["Hierarchy_ARR__c"])
    assert any(v is not None for (v,) in arr.values()), "the accounts are written"


@pytest.mark.parametrize("spec, value, problem", [
    ({"type": "string", "length": 5}, "Zürich", "is 6 characters long; the field (string) holds 5"),
    ({"type": "string", "length": 2}, "a\U0001F600", "is 3 characters long; the field (string) holds 2"),
    ({"type": "currency", "precision": 6, "scale": 2}, "12345.00", "has 5 digits before the decimal point; "
     "the field (currency, precision 6, scale 2) holds 4"),
    ({"type": "double", "precision": 8, "scale": 0}, "ten", "is not a number (double field)"),
    ({"type": "picklist", "length": 255, "restrictedPicklist": True,
      "picklistValues": [{"value": "Gold", "active": True}, {"value": "Old", "active": False}]},
     "Old", "is not an active value of the restricted picklist (values: Gold)"),
])
def test_values_are_checked_against_describe_before_they_are_sent(sf, spec, value, problem):
    """Length (in UTF-16 units, as Salesforce counts), precision, scale, number text and restricted picklist
    values are checked per record: the row that does not fit fails with its reason and is not sent; the one
    that fits (same field) is written."""
    double = sf.double
    double.define("Account", "Tier__c", "string")
    resize(double, "Account", "Tier__c", **spec)
    fits = {"string": "ab", "currency": "12.50", "double": "7", "picklist": "Gold"}[spec["type"]]
    org = direct_org(sf)
    job = org.write("Account", "update", ["Id", "Tier__c"],
                    [("001000000000001AAA", fits), ("001000000000002AAA", value)])
    assert job.errors[0] is None
    assert job.errors[1] == (f"VALUE_DOES_NOT_FIT: Account.Tier__c of record 001000000000002AAA: {value!r} "
                             f"{problem}; not sent")
    stored = double.records("Account", ["Tier__c"])
    assert stored["001000000000002AAA"] == (None,)
    assert stored["001000000000001AAA"][0] is not None
    assert value.encode() not in b"".join(b for _, _, b in double.bodies)


def test_more_decimal_places_than_the_scale_are_sent_as_salesforce_stores_them(sf):
    """A value with more decimals than the field's scale fits: through the API Salesforce keeps them as sent
    (only the UI rounds), so the pre-send check does not refuse it and the double stores it unrounded."""
    double = sf.double
    double.define("Account", "Tier__c", "string")
    resize(double, "Account", "Tier__c", type="currency", precision=16, scale=2)
    job = direct_org(sf).write("Account", "update", ["Id", "Tier__c"], [("001000000000001AAA", "10.125")])
    assert job.errors[0] is None
    assert Decimal(str(double.records("Account", ["Tier__c"])["001000000000001AAA"][0])) == Decimal("10.125")


# ---- item 5: money and the record's currency -------------------------------------------------------------------

def test_amounts_are_not_written_into_a_record_of_another_currency_and_snapshots_carry_the_corporate_one(sf):
    """Multi-currency org: an account in EUR gets no USD amount (its record fails, saying there is no exchange-rate
    setting); KPI snapshots, which the engine owns, are written with CurrencyIsoCode = USD."""
    double = sf.double
    for obj in ("Account", "KPI_Snapshot__c"):
        double.define(obj, "CurrencyIsoCode", "picklist")
    double.db.execute("UPDATE Account SET CurrencyIsoCode = 'USD'")
    double.db.execute("UPDATE Account SET CurrencyIsoCode = 'EUR' WHERE Id = ?", (EUR_ACCOUNT,))
    r = sf.cli("run", "--as-of", AS_OF, expect=1)
    failed = sf.ledger("SELECT record_id, field, error FROM changes WHERE status = 'failed'")
    assert {rid for rid, _, _ in failed} == {EUR_ACCOUNT}
    assert "Hierarchy_ARR__c" in {f for _, f, _ in failed}
    assert all(e == (f"CURRENCY_MISMATCH: Account record {EUR_ACCOUNT} is in EUR, but Hierarchy_ARR__c is computed "
                     "in USD (the corporate currency) and nrr-engine has no exchange-rate setting to convert it; "
                     "not sent") for _, _, e in failed)
    assert "failed" in r.stdout
    accounts = double.records("Account", ["Hierarchy_ARR__c"])
    assert accounts[EUR_ACCOUNT] == (None,)
    assert sum(v is not None for (v,) in accounts.values()) > 100, "the USD accounts are written"
    snaps = double.records("KPI_Snapshot__c", ["CurrencyIsoCode"])
    assert snaps and set(snaps.values()) == {("USD",)}


# ---- item 5: only safe calls are retried ------------------------------------------------------------------------

def test_an_unanswered_create_job_leaves_no_orphan_open_job(sf_bulk, local_end_state):
    """POST jobs/ingest made a job but its answer was lost: the engine does not leave that job open; it finds it
    (same user, object, operation, time) and aborts it, and the run ends as a clean one."""
    sf_bulk.double.fault("lost_response", path=r"/jobs/ingest$", method="POST", times=1)
    sf_bulk.cli("run", "--as-of", AS_OF)
    assert end_state(sf_bulk) == local_end_state
    jobs = [j for j in sf_bulk.double.jobs.values() if "data" in j]
    assert not [j for j in jobs if j["state"] == "Open"], "no orphan job left open"
    orphans = [j for j in jobs if j["state"] == "Aborted"]
    assert len(orphans) == 1 and orphans[0]["data"] is None


def test_an_unanswered_upload_is_never_sent_again_to_its_job(sf_bulk, local_end_state):
    """The upload landed but its 201 was lost: that job is abandoned (aborted, never closed, so never processed)
    and the data goes to a new job once; no job gets two uploads; the end state is a clean run's."""
    sf_bulk.double.fault("lost_response", path=r"/batches$", method="PUT", times=1)
    sf_bulk.cli("run", "--as-of", AS_OF)
    assert end_state(sf_bulk) == local_end_state
    puts = ingest_calls(sf_bulk, "PUT", "/batches")
    assert len(puts) == len(set(puts)), "one upload per job"
    aborted = [j for j in ingest_jobs(sf_bulk) if j["state"] == "Aborted"]
    assert len(aborted) == 1 and aborted[0]["data"] and aborted[0]["results"] is None, "the job was never processed"


def test_an_unanswered_close_is_settled_by_the_job_state_not_sent_again(sf_bulk, local_end_state):
    """PATCH UploadComplete timed out after Salesforce took it: the engine reads the job's state instead of closing
    it again, and waits for it as usual."""
    sf_bulk.double.fault("read_timeout", path=r"/jobs/ingest/\w+$", method="PATCH", times=1)
    sf_bulk.cli("run", "--as-of", AS_OF)
    assert end_state(sf_bulk) == local_end_state
    closes = ingest_calls(sf_bulk, "PATCH")
    assert len(closes) == len(set(closes)), "each job closed once"


def test_an_unanswered_query_job_create_leaves_no_orphan_query(sf_bulk, local_end_state):
    """POST jobs/query made a job but its answer was lost: the orphan query job is aborted, not left to run."""
    sf_bulk.double.fault("lost_response", path=r"/jobs/query$", method="POST", times=1)
    sf_bulk.cli("run", "--as-of", AS_OF)
    assert end_state(sf_bulk) == local_end_state
    queries = [j for j in sf_bulk.double.jobs.values() if "table" in j]
    assert [j["state"] for j in queries].count("Aborted") == 1
    assert not [j for j in queries if j["state"] in ("UploadComplete", "InProgress")]


def test_a_replayed_collections_delete_counts_as_deleted(sf):
    """A Collections delete whose answer was lost is retried (idempotent): ENTITY_IS_DELETED then means done."""
    sf.cli("run", "--as-of", AS_OF)
    ids = sorted(sf.double.records("KPI_Snapshot__c", ["Id"]))[:3]
    sf.double.fault("lost_response", path="/composite/sobjects", method="DELETE", times=1)
    results = direct_org(sf).delete("KPI_Snapshot__c", ids)
    assert [(r.ok, r.error) for r in results] == [(True, None)] * 3
    assert not set(ids) & set(sf.double.records("KPI_Snapshot__c", ["Id"]))
    assert [m for m, path in sf.double.calls if m == "DELETE"] == ["DELETE", "DELETE"]


# ---- item 5: every wait bounded -------------------------------------------------------------------------------

def test_a_stuck_bulk_query_is_aborted_after_job_timeout_s(tmp_path, monkeypatch):
    """A Bulk query job that never completes is waited on for source.job_timeout_s, then aborted: exit 3 naming
    the job and the setting (the client alone would wait 24 hours)."""
    p = make_project(tmp_path, monkeypatch, ", bulk_query_min: 1000, page_size: 1000, job_timeout_s: 0.3")
    p.double.fault("job_stuck", path="/jobs/query/", times=10**6)
    with p.double.serve(), deadline(60):
        r = p.cli("run", "--as-of", AS_OF, expect=3)
    assert "Bulk query of Account: job 750" in r.stderr and "(source.job_timeout_s: 0.3); aborted" in r.stderr
    assert "Traceback" not in r.stderr
    assert [j["state"] for j in p.double.jobs.values() if "table" in j] == ["Aborted"]


# ---- item 5: upload size in bytes ------------------------------------------------------------------------------

def test_upload_chunks_are_measured_in_utf8_bytes():
    """CSV chunks hold at most `limit` bytes of UTF-8 (not characters), with the header each, every row once."""
    rows = [(f"001{k:015d}", "Zürich Überseé 東京 " * 3) for k in range(200)]
    chunks = list(sf_source._csv_chunks(["Id", "Name"], rows, limit=2_000))
    assert len(chunks) > 1
    assert all(len(data.encode("utf-8")) <= 2_000 for data, _ in chunks)
    assert all(data.startswith("Id,Name\n") for data, _ in chunks)
    assert [k for _, keys in chunks for k in keys] == [r[0] for r in rows]
    assert "".join(data.split("\n", 1)[1] for data, _ in chunks).count("\n") == len(rows)


def test_bulk_uploads_stay_under_the_limit_in_bytes(sf):
    """Through the double: names with multi-byte characters are sent in jobs whose uploads each hold at most the
    limit in bytes (one that counted characters would overrun it), and every record is written."""
    ids = sorted(sf.double.records("Account", ["Id"]))[:400]
    org = direct_org(sf, bulk_write_min=10, upload_limit=4_000)
    job = org.write("Account", "update", ["Id", "Name"], [(rid, "Société Générale ÉÜÖ 東京") for rid in ids])
    assert job.errors == [None] * len(ids)
    uploads = [j["data"] for j in sf.double.jobs.values() if j.get("data")]
    assert len(uploads) > 1 and all(len(d.encode("utf-8")) <= 4_000 for d in uploads)
    assert max(len(d.encode("utf-8")) for d in uploads) > 3_000, "chunks are filled, not cut short"
    assert {v for (v,) in sf.double.records("Account", ["Name"]).values() if v and "東京" in v} == \
        {"Société Générale ÉÜÖ 東京"}


# ---- item 5: rows ordered against lock contention --------------------------------------------------------------

def test_rollup_rows_are_grouped_by_family_then_parent(sf_bulk):
    """The rollup job's rows come family by family (the root Ultimate_Parent__c locks) and, within a family,
    parent by parent (the ParentId lock), so neither lock is wanted by rows far apart."""
    sf_bulk.cli("run", "--as-of", AS_OF)
    parent = {rid: v[0] or "" for rid, v in sf_bulk.double.records("Account", ["ParentId"]).items()}

    def root(rid: str) -> str:
        while parent.get(rid):
            rid = parent[rid]
        return rid

    job = next(j for j in ingest_jobs(sf_bulk) if "Hierarchy_ARR__c" in j["data"].split("\n", 1)[0])
    rows = [line.split(",")[0] for line in job["data"].splitlines()[1:]]
    keys = [(root(rid), parent[rid]) for rid in rows]

    def grouped(values) -> bool:
        runs = [v for k, v in enumerate(values) if k == 0 or v != values[k - 1]]
        return len(runs) == len(set(runs))

    assert len({r for r, _ in keys}) < len(keys), "families with several rows"
    assert len({k for k in keys if k[1] and k[1] != k[0]}) > 0, "rows whose parent is not the root"
    assert grouped([r for r, _ in keys]), "each family's rows together"
    assert grouped([k for k in keys if k[1]]), "each parent's children together"
