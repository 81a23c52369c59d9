"""Reads of changes on Salesforce: after a full read, a run reads only the records changed since the mirror's
high-water mark (SystemModstamp, queryAll for deletes and merges), in full again weekly or on demand; against
the test double driven by the real simple-salesforce client."""
from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3

import pytest

from test_salesforce import AS_OF, ROOT, SfProject, acme_on_the_double, make_project, stored_months
from test_salesforce_strict import client
from nrr_engine.testing.salesforce_double import SalesforceDouble

START = dt.datetime(2026, 11, 15, 2, 0, tzinfo=dt.timezone.utc)
BULK = ", bulk_write_min: 300, bulk_query_min: 1000, page_size: 1000"
SUB = "a0S000000000001EAA"          # Acme's subscription of 300,000.00 (the demo org)
LEAF = "00100000000000EAAQ"         # an account with no children and no subscription


class Clock:
    """The org's clock, moved by the test (the double stamps changes and dates its answers with it)."""

    def __init__(self, now: dt.datetime = START):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **kw) -> None:
        self.now += dt.timedelta(**kw)


@pytest.fixture
def clock() -> Clock:
    """The org's clock at START."""
    return Clock()


@pytest.fixture
def sf(tmp_path, monkeypatch, clock):
    """The demo org served by the double on the test's clock; REST reads (it is small)."""
    p = make_project(tmp_path, monkeypatch, clock=clock)
    with p.double.serve():
        yield p


@pytest.fixture
def sf_bulk(tmp_path, monkeypatch, clock):
    """The demo org on the test's clock, with thresholds low enough that large reads go through Bulk API 2.0."""
    p = make_project(tmp_path, monkeypatch, BULK, clock=clock)
    with p.double.serve():
        yield p


def usage(p: SfProject, mode: str = "run") -> dict:
    """The API usage the ledger recorded for the last run of `mode`."""
    return json.loads(p.ledger("SELECT api_usage FROM runs WHERE mode = ? ORDER BY started DESC, rowid DESC LIMIT 1",
                               mode)[0][0])


def mirror(p: SfProject) -> sqlite3.Connection:
    return sqlite3.connect(p.root / "state" / "salesforce-mirror.db")


def mirror_tables(p: SfProject) -> dict[str, list[tuple]]:
    """Every row of every table of the mirror (the records read and the marks), sorted."""
    db = mirror(p)
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {n: sorted(db.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr) for n in names}
    finally:
        db.close()


def records(p: SfProject, obj: str) -> dict[str, dict]:
    """The mirror's records of `obj` by Id, as {field: value} (column order aside)."""
    db = mirror(p)
    db.row_factory = sqlite3.Row
    try:
        return {r["Id"]: dict(r) for r in db.execute(f'SELECT * FROM "{obj}"')}
    finally:
        db.close()


def reads(p: SfProject, mode: str = "run") -> dict[str, str]:
    """How each object was read by the last run of `mode`: full or changes."""
    return {obj: r["read"] for obj, r in usage(p, mode)["reads"].items()}


def new_queries(p: SfProject, before: int) -> list[str]:
    return p.double.queries[before:]


OBJECTS = ("Account", "KPI_Snapshot__c", "Subscription__c")


# ---- the read of changes ------------------------------------------------------------------------------------

def test_a_rerun_with_no_change_reads_only_changes_in_eight_calls(sf, clock):
    """After the first run (full reads) and a rerun that reads back what the first one wrote, a rerun with no change
    in the org makes 8 calls: login, /limits, three describes and one REST queryAll per object, each asking only
    for records stamped after the last read less the overlap; no record count, no Bulk job, nothing written."""
    sf.cli("run", "--as-of", AS_OF)
    assert reads(sf) == dict.fromkeys(OBJECTS, "full")
    clock.advance(hours=1)
    sf.cli("run", "--as-of", AS_OF)
    assert reads(sf) == dict.fromkeys(OBJECTS, "changes")
    back = usage(sf)["reads"]
    assert back["Account"]["records"] == 1665 and back["Subscription__c"]["records"] == 0, "the first run's writes"
    clock.advance(hours=1)
    before = len(sf.double.queries)
    out = sf.cli("run", "--as-of", AS_OF).stdout
    assert "planned 0" in out and "accounts read: 1665" in out
    u = usage(sf)
    assert u["calls"] == {"auth": 1, "limits": 1, "describe": 3, "rest_query": 3} and u["total"] == 8
    assert {obj: (r["read"], r["records"], r["deleted"]) for obj, r in u["reads"].items()} == \
        dict.fromkeys(OBJECTS, ("changes", 0, 0))
    since = (clock.now - dt.timedelta(hours=1, seconds=300)).strftime("%Y-%m-%dT%H:%M:%SZ")   # the last read less 300 s
    queries = new_queries(sf, before)
    assert sorted(q.split(" FROM ")[1] for q in queries) == [f"{obj} WHERE SystemModstamp > {since}" for obj in OBJECTS]


def test_an_edit_in_the_org_between_runs_is_read_and_planned(sf, clock):
    """A subscription amount edited through the API after a run is the one record the next read returns; the mirror
    holds the new amount and the plan writes the rollups it changes."""
    sf.cli("run", "--as-of", AS_OF)
    clock.advance(hours=1)
    sf.cli("run", "--as-of", AS_OF)
    clock.advance(hours=1)
    client(sf.double).Subscription__c.update(SUB, {"Amount__c": 360000})
    clock.advance(minutes=1)
    out = sf.cli("plan", "--as-of", AS_OF).stdout
    r = usage(sf, "plan")["reads"]["Subscription__c"]
    assert (r["read"], r["records"]) == ("changes", 1)
    assert records(sf, "Subscription__c")[SUB]["Amount__c"] in ("360000", "360000.0")
    planned = int(re.search(r"planned (\d+)", out).group(1))
    assert planned > 0, out


def test_a_deleted_record_leaves_the_mirror(sf, clock):
    """An account deleted in the org (recycle bin) comes back from queryAll with IsDeleted true and is removed from
    the mirror: the next plan reads one account fewer."""
    sf.cli("run", "--as-of", AS_OF)
    clock.advance(hours=1)
    sf.cli("run", "--as-of", AS_OF)
    clock.advance(hours=1)
    [done] = client(sf.double).restful("composite/sobjects", method="DELETE", params={"ids": LEAF, "allOrNone": "false"})
    assert done["success"]
    out = sf.cli("plan", "--as-of", AS_OF).stdout
    assert "accounts read: 1664" in out
    r = usage(sf, "plan")["reads"]["Account"]
    assert (r["read"], r["deleted"], r["records"]) == ("changes", 1, 0)
    assert LEAF not in records(sf, "Account")


def test_a_merge_seen_by_an_earlier_read_still_carries_history_to_the_survivor(org, tmp_path, monkeypatch):
    """Acme Labs merged into Acme (merge(): the loser to the recycle bin with MasterRecordId): a plan's read of
    changes sees it; a run days later, whose read returns nothing (the merge is long past the overlap), still
    carries the loser's stored ARR history to the survivor, so the merge is no churn, naive or family."""
    clock = Clock()
    double, cli = acme_on_the_double(org, tmp_path, monkeypatch, clock=clock)

    with double.serve():
        cli("run", "--as-of", "2026-10-20")
        assert stored_months(org, "001A00000000003AAA") > 0
        clock.advance(hours=1)
        double.tick()
        double.merge("001A00000000001AAA", "001A00000000003AAA")
        double.db.execute("UPDATE Account SET ARR__c = '1300' WHERE Id = '001A00000000001AAA'")
        clock.advance(minutes=5)
        assert "merged_accounts" in cli("plan", "--as-of", "2026-11-03").stdout
        clock.advance(days=2)
        out = cli("run", "--as-of", "2026-11-03").stdout
        u = json.loads(sqlite3.connect(org.root / "state" / "nrr.db").execute(
            "SELECT api_usage FROM runs WHERE mode = 'run' ORDER BY started DESC LIMIT 1").fetchone()[0])
        assert (u["reads"]["Account"]["read"], u["reads"]["Account"]["returned"]) == ("changes", 0)
        assert "merged_accounts" in out
        report = cli.json("report", "nrr", "--period", "2026-11", "--format", "json", "--as-of", "2026-11-20")
    fam, naive = report["family"], report["naive"]
    assert (fam["start"], fam["end"], fam["churn"], fam["expansion"]) == ("1800.00", "1800.00", "0.00", "0.00")
    assert (naive["start"], naive["churn"], naive["new_logo"]) == ("1800.00", "0.00", "0.00")
    assert stored_months(org, "001A00000000003AAA") == 0, "the loser's history now lives under the survivor"


@pytest.mark.parametrize("overlap, seen", [(300, True), (60, False)])
def test_a_change_that_committed_late_is_read_within_the_overlap(tmp_path, monkeypatch, clock, overlap, seen):
    """A change stamped two minutes before the last read began but committed after it (a long transaction) is read
    by the next run when source.read_overlap_s covers it (the default, 300 s); with 60 s it is missed until a full
    read (here --full-read) reads it."""
    p = make_project(tmp_path, monkeypatch, f", read_overlap_s: {overlap}", clock=clock)
    with p.double.serve():
        p.cli("run", "--as-of", AS_OF)
        clock.advance(hours=1)
        p.cli("run", "--as-of", AS_OF)
        read_began = clock.now
        clock.advance(minutes=1)
        p.double.tick()
        p.double.db.execute("UPDATE Subscription__c SET Amount__c = '360000.00' WHERE Id = ?", (SUB,))
        p.double.backdate("Subscription__c", SUB, read_began - dt.timedelta(minutes=2))
        clock.advance(hours=1)
        p.cli("plan", "--as-of", AS_OF)
        amount = records(p, "Subscription__c")[SUB]["Amount__c"]
        assert (amount in ("360000", "360000.0")) is seen
        if not seen:
            p.cli("plan", "--as-of", AS_OF, "--full-read")
            assert records(p, "Subscription__c")[SUB]["Amount__c"] in ("360000", "360000.0")


def _fail_second_results_page(double: SalesforceDouble) -> None:
    """From the second Bulk results page on, every call answers 500 (a read that fails midway)."""
    real, pages = double.handle, []

    def handle(method, url, headers, body):
        if "/jobs/query/" in url and url.split("?")[0].endswith("/results"):
            pages.append(url)
            if len(pages) == 2:
                double.fault("http_500", path="/services/data/", times=100_000)
        return real(method, url, headers, body)

    double.handle = handle


def touch_every_subscription(double: SalesforceDouble) -> None:
    """Every subscription updated (a data load): 2,022 changed records, more than a REST page holds, so their read
    of changes goes through a Bulk queryAll job."""
    double.tick()
    double.db.execute("UPDATE Subscription__c SET Amount__c = Amount__c")


READ_FAULTS = {
    "the Bulk query job fails": lambda d: d.fault("query_job_failed", message="InternalServerError", times=1),
    "500 from the second results page on": _fail_second_results_page,
    "500 on the first REST query": lambda d: d.fault("http_500", path="/queryAll/", times=100),
}


@pytest.mark.parametrize("name", list(READ_FAULTS))
def test_a_read_of_changes_that_fails_leaves_the_mirror_and_marks_as_they_were(sf_bulk, clock, name):
    """A read of changes that fails (a failed Bulk query job, a 500 midway through the results, a 500 on the REST
    query) is exit 3 without a traceback, leaves every table of the mirror and every mark as they were, and the
    next run reads the changes since the old mark."""
    sf_bulk.cli("run", "--as-of", AS_OF)
    clock.advance(hours=1)
    touch_every_subscription(sf_bulk.double)
    before = mirror_tables(sf_bulk)
    READ_FAULTS[name](sf_bulk.double)
    r = sf_bulk.cli("run", "--as-of", AS_OF, expect=3)
    assert "Traceback" not in r.stderr and "Salesforce" in r.stderr and "internal error" not in r.stderr
    assert mirror_tables(sf_bulk) == before, "nothing half-applied"
    sf_bulk.double.handle = type(sf_bulk.double).handle.__get__(sf_bulk.double)
    sf_bulk.double.faults.clear()
    clock.advance(minutes=1)
    queries = len(sf_bulk.double.queries)
    sf_bulk.cli("run", "--as-of", AS_OF)
    since = (START - dt.timedelta(seconds=300)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"FROM Account WHERE SystemModstamp > {since}" in " ".join(new_queries(sf_bulk, queries))
    assert usage(sf_bulk)["reads"]["Account"]["records"] == 1665, "the first run's writes, read back after all"


# ---- full reads ---------------------------------------------------------------------------------------------

def test_a_changed_field_list_reads_that_object_in_full(sf, clock):
    """A config that reads one more Account field (a report segment) reads Account in full, the other objects only
    their changes; the next plan reads Account's changes again."""
    sf.cli("run", "--as-of", AS_OF)
    clock.advance(hours=1)
    cfg = sf.cli.config
    cfg.write_text(cfg.read_text().replace("segments: [Region__c]", "segments: [Region__c, Industry]"))
    sf.cli("plan", "--as-of", AS_OF)
    r = usage(sf, "plan")["reads"]
    assert (r["Account"]["read"], r["Account"]["why"]) == ("full", "the fields read changed")
    assert r["Subscription__c"]["read"] == r["KPI_Snapshot__c"]["read"] == "changes"
    assert "Industry" in next(iter(records(sf, "Account").values()))
    clock.advance(hours=1)
    sf.cli("plan", "--as-of", AS_OF)
    assert reads(sf, "plan") == dict.fromkeys(OBJECTS, "changes")


def test_full_read_forces_a_full_read_of_every_object(sf, clock):
    """`plan --full-read` and `run --full-read` read every object in full (no WHERE), and say so in --help; the next
    plan reads changes again."""
    sf.cli("run", "--as-of", AS_OF)
    clock.advance(hours=1)
    before = len(sf.double.queries)
    sf.cli("plan", "--as-of", AS_OF, "--full-read")
    assert {o: r["why"] for o, r in usage(sf, "plan")["reads"].items()} == dict.fromkeys(OBJECTS, "--full-read")
    assert not [q for q in new_queries(sf, before) if "WHERE" in q]
    sf.cli("run", "--as-of", AS_OF, "--full-read")
    assert reads(sf) == dict.fromkeys(OBJECTS, "full")
    clock.advance(hours=1)
    sf.cli("plan", "--as-of", AS_OF)
    assert reads(sf, "plan") == dict.fromkeys(OBJECTS, "changes")
    for command in ("run", "plan"):
        assert "--full-read" in sf.cli(command, "--help").stdout


def test_the_weekly_full_read_drops_what_was_purged_from_the_recycle_bin(sf, clock):
    """A subscription purged from the recycle bin never shows in a read of changes (queryAll cannot see it), so the
    mirror keeps it; once the last full read is source.full_read_days (7) old, by Salesforce's clock, the next read
    is full and it is gone."""
    sf.cli("run", "--as-of", AS_OF)
    sf.double.db.execute("DELETE FROM Subscription__c WHERE Id = ?", (SUB,))    # hard-deleted: purged
    clock.advance(days=6, hours=23)
    sf.cli("plan", "--as-of", AS_OF)
    assert reads(sf, "plan")["Subscription__c"] == "changes" and SUB in records(sf, "Subscription__c")
    clock.advance(hours=1)
    sf.cli("plan", "--as-of", AS_OF)
    r = usage(sf, "plan")["reads"]["Subscription__c"]
    assert (r["read"], r["why"]) == ("full", "the last full read was 7 days ago (source.full_read_days: 7)")
    assert SUB not in records(sf, "Subscription__c")


def test_an_unreadable_mirror_is_set_aside_and_every_object_read_in_full(sf, clock):
    """A mirror that is not a database any more is moved to <mirror>.unreadable with a warning, and the run reads
    every object in full into a new one."""
    sf.cli("run", "--as-of", AS_OF)
    path = sf.root / "state" / "salesforce-mirror.db"
    for part in path.parent.glob("salesforce-mirror.db-*"):
        part.unlink()
    path.write_bytes(b"not a database " * 100)
    clock.advance(hours=1)
    r = sf.cli("plan", "--as-of", AS_OF)
    assert "salesforce.mirror_unreadable" in r.stderr and "accounts read: 1665" in r.stdout
    assert reads(sf, "plan") == dict.fromkeys(OBJECTS, "full")
    assert (path.parent / "salesforce-mirror.db.unreadable").read_bytes().startswith(b"not a database")


def test_figures_from_reads_of_changes_equal_those_of_a_full_read(sf_bulk, clock, tmp_path):
    """After edits, a delete, a new account and a merge in the org, the plan from reads of changes (Bulk for the big
    delta) is the plan from full reads of the same org, and the mirror holds the same records either way."""
    sf_bulk.cli("run", "--as-of", AS_OF)
    clock.advance(hours=1)
    sf = client(sf_bulk.double)
    sf.Subscription__c.update(SUB, {"Amount__c": 360000})
    sf.restful("composite/sobjects", method="DELETE", params={"ids": "a0S000000000002EAA", "allOrNone": "false"})
    sf.Account.create({"Name": "Acme Robotics"})
    sf_bulk.double.merge("001000000000001AAA", LEAF)
    touch_every_subscription(sf_bulk.double)
    clock.advance(minutes=1)
    sf_bulk.cli("plan", "--as-of", AS_OF, "--out", str(tmp_path / "changes.json"))
    assert reads(sf_bulk, "plan") == dict.fromkeys(OBJECTS, "changes")
    assert usage(sf_bulk, "plan")["reads"]["Subscription__c"]["api"] == "bulk", "a large delta"
    from_changes = {obj: records(sf_bulk, obj) for obj in OBJECTS}
    sf_bulk.cli("plan", "--as-of", AS_OF, "--full-read", "--out", str(tmp_path / "full.json"))
    assert reads(sf_bulk, "plan") == dict.fromkeys(OBJECTS, "full")
    assert {obj: records(sf_bulk, obj) for obj in OBJECTS} == from_changes

    def plan(name: str) -> dict:
        doc = json.loads((tmp_path / name).read_text())
        doc.pop("run_id")
        return doc

    a, b = plan("changes.json"), plan("full.json")
    assert a == b and a["changes"], "the same plan, and not an empty one"


# ---- the double, as Salesforce ------------------------------------------------------------------------------

def test_the_double_stamps_every_change_and_refuses_writes_of_the_stamp(tmp_path, clock):
    """SystemModstamp is set by the server on insert, update and delete (the org's clock, which the Date header
    gives too), read-only through the API (INVALID_FIELD_FOR_INSERT_UPDATE), and SOQL compares it with unquoted
    dateTime literals in REST query and queryAll (deleted rows with IsDeleted true) and Bulk API 2.0 queryAll;
    a quoted one is INVALID_FIELD, as on an org."""
    from test_salesforce_strict import small_double
    from simple_salesforce.exceptions import SalesforceMalformedRequest
    double = small_double(tmp_path, clock=clock)
    seeded = double.stamp("Account", "001A00000000001AAA")
    assert seeded == "2026-11-14T02:00:00.000+0000", "seeded records were last changed before the store was served"
    with double.serve():
        sf = client(double)
        clock.advance(hours=1)
        made = sf.Account.create({"Name": "Acme Labs"})["id"]
        clock.advance(hours=1)
        sf.Account.update("001A00000000002AAA", {"Name": "Acme United Kingdom"})
        clock.advance(hours=1)
        sf.restful("composite/sobjects", method="DELETE", params={"ids": "001A00000000001AAA", "allOrNone": "false"})
        assert double.stamp("Account", made) == "2026-11-15T03:00:00.000+0000"
        assert double.stamp("Account", "001A00000000002AAA") == "2026-11-15T04:00:00.000+0000"
        assert double.stamp("Account", "001A00000000001AAA") == "2026-11-15T05:00:00.000+0000"
        rows = sf.query_all("SELECT Id, IsDeleted, SystemModstamp FROM Account WHERE SystemModstamp > "
                            "2026-11-15T03:30:00Z", include_deleted=True)["records"]
        assert sorted((r["Id"], r["IsDeleted"], r["SystemModstamp"]) for r in rows) == [
            ("001A00000000001AAA", True, "2026-11-15T05:00:00.000+0000"),
            ("001A00000000002AAA", False, "2026-11-15T04:00:00.000+0000")]
        live = sf.query("SELECT Id FROM Account WHERE SystemModstamp >= 2026-11-15T04:00:00+01:00")["records"]
        assert {r["Id"] for r in live} == {made, "001A00000000002AAA"}, "an offset is from UTC"
        pages = sf.bulk2.Account.query_all("SELECT Id, IsDeleted FROM Account WHERE SystemModstamp > 2026-11-15T03:30:00Z",
                                           wait=0.001)
        assert sorted(line for page in pages for line in page.splitlines()[1:]) == \
            ['"001A00000000001AAA","true"', '"001A00000000002AAA","false"']
        with pytest.raises(SalesforceMalformedRequest, match="must be of type dateTime and should not be enclosed"):
            sf.query("SELECT Id FROM Account WHERE SystemModstamp > '2026-11-15T03:30:00Z'")
        with pytest.raises(SalesforceMalformedRequest, match="must be of type dateTime"):
            sf.query("SELECT Id FROM Account WHERE SystemModstamp > 2026-11-15")
        result = sf.restful("composite/sobjects", method="PATCH", data=json.dumps({"allOrNone": False, "records": [
            {"attributes": {"type": "Account"}, "Id": made, "SystemModstamp": "2020-01-01T00:00:00.000+0000"}]}))
        assert result[0]["errors"][0]["statusCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
        response = sf.session.get(f"https://{sf.sf_instance}/services/data/v59.0/limits",
                                  headers={"Authorization": f"Bearer {sf.session_id}"})
        assert response.headers["Date"] == "Sun, 15 Nov 2026 05:00:00 GMT"


def test_a_reseed_stamps_only_the_records_it_changes(tmp_path, clock):
    """Reseeding the double's store from edited CSVs is a change in the org: the record whose row changed (and a new
    one) get a new SystemModstamp, the others keep theirs, so a read of changes finds exactly them."""
    from conftest import write_csv
    org = tmp_path / "org"
    org.mkdir()
    rows = [{"Id": "001A00000000001AAA", "Name": "Acme"}, {"Id": "001A00000000002AAA", "Name": "Acme UK"}]
    write_csv(org / "Account.csv", rows)
    SalesforceDouble.seed(tmp_path / "sf.db", org)
    double = SalesforceDouble(tmp_path / "sf.db", metadata=ROOT / "salesforce", clock=clock)
    kept = double.stamp("Account", "001A00000000001AAA")
    double.db.close()
    rows[1]["Name"] = "Acme United Kingdom"
    write_csv(org / "Account.csv", [*rows, {"Id": "001A00000000003AAA", "Name": "Acme Labs"}])
    SalesforceDouble.seed(tmp_path / "sf.db", org)
    double = SalesforceDouble(tmp_path / "sf.db", metadata=ROOT / "salesforce", clock=clock)
    assert double.stamp("Account", "001A00000000001AAA") == kept
    assert double.stamp("Account", "001A00000000002AAA") > kept and double.stamp("Account", "001A00000000003AAA") > kept
