"""A new user's first steps with their own org (a RevOps analyst with only the README): the Salesforce double's
seed holds only what an org would hold and says what it loaded, its command line (help, query, dump, a socket
that outlives nothing), the fixes the least-privilege integration user is told, and the `init` scaffold on a
plain Data Loader export."""
from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from simple_salesforce import Salesforce, SalesforceLogin

from conftest import Cli
from test_salesforce import AS_OF, make_project, use_credentials
from nrr_engine.errors import DataError
from nrr_engine.testing.salesforce_double import Permissions, SalesforceDouble, main

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "salesforce" / "force-app" / "main" / "default" / "permissionsets" / \
    "NRR_Engine_Integration.permissionset-meta.xml"
READS = ROOT / "salesforce" / "examples" / "NRR_Engine_Reads.permissionset-meta.xml"
DOUBLE = [sys.executable, "-m", "nrr_engine.testing.salesforce_double"]

# The trial's hand-made org, as Data Loader writes it: every value quoted, CRLF, a BOM; a thousands separator in
# one amount (line 10); no Region__c, no CurrencyIsoCode
ACCOUNTS = [["Id", "Name", "ParentId", "Website", "DunsNumber", "BillingCountry", "Industry", "OwnerId", "CreatedDate"],
            ["0015g00000N1AAAAA3", "Northwind Traders, Inc.", "", "https://www.northwind.com", "111111111",
             "United States", "Retail", "0055g00000AAAAAAA5", "2019-03-04T10:00:00.000Z"],
            ["0015g00000N2AAAAA3", "Northwind Traders UK Ltd", "", "http://northwind.co.uk", "", "United Kingdom",
             "Retail", "0055g00000AAAAAAA5", "2021-06-01T10:00:00.000Z"],
            ["0015g00000C1AAAAA3", "Contoso Ltd", "", "https://contoso.com", "222222222", "United States",
             "Manufacturing", "0055g00000AAAAAAA5", "2018-01-10T10:00:00.000Z"]]
SUBSCRIPTIONS = [["Id", "Account__c", "Product__c", "Start_Date__c", "End_Date__c", "Amount__c"],
                 ["a0S5g00000S1AAAEA3", "0015g00000N1AAAAA3", "Core", "2024-01-01", "", "10000.00"],
                 ["a0S5g00000S2AAAEA3", "0015g00000N2AAAAA3", "Core", "2024-06-01", "2026-03-31", "5000.00"],
                 ["a0S5g00000S3AAAEA3", "0015g00000C1AAAAA3", "Core", "2023-01-01", "", "8000.00"],
                 ["a0S5g00000S4AAAEA3", "0015g00000C1AAAAA3", "Support", "2026-01-01", "", "1,500"]]


def data_loader_csv(path: Path, rows: list[list[str]]) -> Path:
    """A CSV as Data Loader writes it: a BOM, every value quoted, CRLF line ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(",".join('"' + v.replace('"', '""') + '"' for v in row) + "\r\n" for row in rows)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    return path


def northwind(folder: Path, amount: str = "1,500", subscriptions: list[list[str]] | None = None) -> Path:
    """The trial's export in `folder`, with `amount` in the last subscription's Amount__c."""
    subs = [list(r) for r in (subscriptions or SUBSCRIPTIONS)]
    subs[-1][-1] = amount
    data_loader_csv(folder / "Account.csv", ACCOUNTS)
    data_loader_csv(folder / "Subscription__c.csv", subs)
    return folder


def client(double: SalesforceDouble) -> Salesforce:
    """The real simple-salesforce client, logged in as the double's integration user."""
    session_id, instance = SalesforceLogin(username=double.username, password=double.password,
                                           security_token=double.security_token, sf_version="59.0")
    return Salesforce(instance_url=f"https://{instance}", session_id=session_id, version="59.0")


# ---- item 7: the double holds only values an org would hold ------------------------------------------------------

def test_seed_refuses_an_amount_with_a_thousands_separator_naming_line_field_and_type(tmp_path):
    """The trial's raw export ("1,500" in the currency Amount__c, quoted, CRLF, BOM): the seed refuses it as an
    org's import would, naming Subscription__c.csv:5, the Id, the field, the value and the type, and seeds nothing."""
    org = northwind(tmp_path / "org")
    with pytest.raises(DataError) as err:
        SalesforceDouble.seed(tmp_path / "sf.db", org)
    msg = str(err.value)
    assert "Subscription__c.csv:5 (Id a0S5g00000S4AAAEA3): Amount__c '1,500': INVALID_TYPE_ON_FIELD_IN_RECORD" in msg
    assert "currency(18,2)" in msg and "nothing was seeded" in msg and "--types" in msg
    assert not (tmp_path / "sf.db").exists() and not list(tmp_path.glob("sf.db*"))
    assert main(["seed", str(tmp_path / "sf.db"), str(org)]) == 2


def test_a_refused_reseed_leaves_the_store_as_it_was(tmp_path):
    """Reseeding a store from a folder that gained a bad value refuses it and keeps what the store held."""
    org = northwind(tmp_path / "org", amount="1500.00")
    SalesforceDouble.seed(tmp_path / "sf.db", org)
    northwind(org, amount="$1,500")
    with pytest.raises(DataError, match=r"Amount__c '\$1,500'"):
        SalesforceDouble.seed(tmp_path / "sf.db", org)
    held = SalesforceDouble(tmp_path / "sf.db").records("Subscription__c", ["Amount__c"])
    assert held["a0S5g00000S4AAAEA3"] == ("1500.00",)


def test_fields_without_metadata_are_typed_from_the_data_or_by_the_types_option(tmp_path):
    """An object the double has no metadata for (a CPQ subscription): its columns are typed from the data,
    conservatively ("1,500" makes the amount text; whole numbers stay text; Ids of a seeded object are a reference),
    and the seed lists them; `--types` (or a metadata folder) types the amount as the org does, and then the
    seed refuses "1,500"."""
    org = tmp_path / "org"
    data_loader_csv(org / "Account.csv", ACCOUNTS)
    data_loader_csv(org / "SBQQ__Subscription__c.csv", [
        ["Id", "SBQQ__Account__c", "SBQQ__StartDate__c", "SBQQ__NetPrice__c", "Seats__c", "Renewed__c"],
        ["a1B5g00000S1AAAEA3", "0015g00000N1AAAAA3", "2024-01-01", "10000.00", "10", "true"],
        ["a1B5g00000S2AAAEA3", "0015g00000C1AAAAA3", "2025-02-01", "1,500", "007", "false"]])
    report = SalesforceDouble.seed(tmp_path / "sf.db", org)
    typed = {f: t for o, f, t, _ in report.inferred if o == "SBQQ__Subscription__c"}
    assert typed == {"SBQQ__Account__c": "reference(Account)", "SBQQ__StartDate__c": "date",
                     "SBQQ__NetPrice__c": "string(255)", "Seats__c": "string(255)", "Renewed__c": "boolean"}
    assert "SBQQ__Subscription__c.SBQQ__NetPrice__c string(255) (text)" in "\n".join(report.lines())
    double = SalesforceDouble(tmp_path / "sf.db")
    assert double.schema["SBQQ__Subscription__c"]["sbqq__startdate__c"]["type"] == "date"
    with pytest.raises(DataError, match=r"SBQQ__Subscription__c.csv:3 \(Id a1B5g00000S2AAAEA3\): SBQQ__NetPrice__c "
                                        r"'1,500'.*currency\(16,2\), typed by --types"):
        SalesforceDouble.seed(tmp_path / "sf2.db", org, types="SBQQ__Subscription__c.SBQQ__NetPrice__c=currency(16,2)")
    meta = tmp_path / "meta" / "objects" / "SBQQ__Subscription__c" / "fields"
    meta.mkdir(parents=True)
    (meta / "SBQQ__NetPrice__c.field-meta.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><CustomField xmlns="http://soap.sforce.com/2006/04/metadata">'
        "<fullName>SBQQ__NetPrice__c</fullName><label>Net Price</label><type>Currency</type><precision>18</precision>"
        "<scale>2</scale></CustomField>")
    with pytest.raises(DataError, match="SBQQ__NetPrice__c '1,500'.*typed by metadata"):
        SalesforceDouble.seed(tmp_path / "sf3.db", org, metadata=tmp_path / "meta")
    with pytest.raises(DataError, match="--types: cannot read"):
        SalesforceDouble.seed(tmp_path / "sf4.db", org, types="Amount=currency")


def test_seed_refuses_dates_text_and_required_fields_no_org_holds(tmp_path):
    """08/31/2026 in a date field, 81 characters in BillingCountry (Text(80)) and an Account without a Name are
    refused, each named; a lookup to an account the folder lacks is kept and reported (an export may leave it out)."""
    org = tmp_path / "org"
    accounts = [list(r) for r in ACCOUNTS]
    accounts[2][5] = "X" * 81
    accounts[3][1] = ""
    data_loader_csv(org / "Account.csv", accounts)
    data_loader_csv(org / "Subscription__c.csv", [
        SUBSCRIPTIONS[0], ["a0S5g00000S1AAAEA3", "0015g00000N1AAAAA3", "Core", "08/31/2026", "", "10.00"]])
    with pytest.raises(DataError) as err:
        SalesforceDouble.seed(tmp_path / "sf.db", org)
    msg = str(err.value)
    assert "3 value(s) no Salesforce org would hold" in msg
    assert "Account.csv:3 (Id 0015g00000N2AAAAA3): BillingCountry 'XXXX" in msg and "STRING_TOO_LONG" in msg
    assert "Account.csv:4 (Id 0015g00000C1AAAAA3): Name blank: REQUIRED_FIELD_MISSING" in msg
    assert "Subscription__c.csv:2 (Id a0S5g00000S1AAAEA3): Start_Date__c '08/31/2026'" in msg
    data_loader_csv(org / "Account.csv", ACCOUNTS[:2])
    data_loader_csv(org / "Subscription__c.csv", SUBSCRIPTIONS[:4])
    report = SalesforceDouble.seed(tmp_path / "sf.db", org)
    assert any("2 Subscription__c.Account__c value(s) point at no Account record" in n for n in report.notes)


FIELDS = [{"type": "currency", "precision": 6, "scale": 2}, {"type": "double", "precision": 18, "scale": 0},
          {"type": "int"}, {"type": "date"}, {"type": "datetime"}, {"type": "boolean"}, {"type": "reference"},
          {"type": "string", "length": 7}, {"type": "string", "length": 3}]


@settings(max_examples=400, deadline=None)
@example(spec={"type": "date"}, value="2026-02-30")
@example(spec={"type": "date"}, value="0000-01-01")
@example(spec={"type": "datetime"}, value="2026-01-01T25:00:00Z")
@example(spec={"type": "currency", "precision": 6, "scale": 2}, value="12345.00")
@example(spec={"type": "string", "length": 3}, value="ab\U0001F600")
@example(spec={"type": "currency", "precision": 6, "scale": 2}, value="0\x00")   # GLOB stops at a NUL
@example(spec={"type": "string", "length": 7}, value="a\x00bcdefghij")             # and so does length()
@given(spec=st.sampled_from(FIELDS), value=st.one_of(
    st.text(min_size=1, max_size=12),
    st.from_regex(r"[-+ ]?[0-9]{0,9}(\.[0-9]{0,3})?([eE][-+]?[0-9]{1,2})?", fullmatch=True),
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)?", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9]{14,19}", fullmatch=True)))
def test_the_seeds_sql_prefilter_never_lets_a_refused_value_through(spec, value):
    """Every value the field rules refuse is among those SQLite picks for checking (the seed checks only those)."""
    from nrr_engine.testing.salesforce_double import _f, _suspects, _unfit
    f = _f("X__c", spec["type"], **{k: v for k, v in spec.items() if k != "type"})
    if not value or _unfit(f, value) is None:
        return
    cond = _suspects(f, "v")
    db = sqlite3.connect(":memory:")
    assert cond is None or db.execute(f"SELECT {cond} FROM (SELECT ? AS v)", (value,)).fetchone()[0], (spec, value)


def test_rest_answers_never_carry_nul_bytes_and_text_stays_text(tmp_path):
    """The NUL bytes of the trial's finding came from the double's JSON: a number field holding a non-number
    came back as '\\x001,500\\x00'. Now a number field's value is a JSON number only when it is one, and a text
    field's value (even one with NUL bytes around digits) is never turned into a number."""
    org = northwind(tmp_path / "org", amount="1500.00")
    SalesforceDouble.seed(tmp_path / "sf.db", org)
    double = SalesforceDouble(tmp_path / "sf.db")
    # what the store of an unchecked seed held (the seed now refuses it), and a text with NUL bytes in it
    double.db.execute("UPDATE Subscription__c SET Amount__c = '1,500' WHERE Id = 'a0S5g00000S4AAAEA3'")
    double.db.execute("UPDATE Subscription__c SET Product__c = ? WHERE Id = 'a0S5g00000S1AAAEA3'", ("\x00123\x00",))
    with double.serve():
        rows = {r["Id"]: r for r in client(double).query_all(
            "SELECT Id, Amount__c, Product__c FROM Subscription__c")["records"]}
    assert rows["a0S5g00000S4AAAEA3"]["Amount__c"] == "1,500"
    assert rows["a0S5g00000S1AAAEA3"]["Amount__c"] == 10000.0
    assert rows["a0S5g00000S1AAAEA3"]["Product__c"] == "\x00123\x00"


def test_findings_never_show_control_characters_raw(org, cli, tmp_path):
    """An Id with an escape sequence and amounts with NUL, ESC and a bidi override: the finding names them
    escaped (\\x1b, \\x00, \\u202e), in the plan and in the run summary."""
    org.account("001A00000000001AAA", "Acme")
    org.sub("001A00000000001AAA", "2026-01-01", "", "1\x00500\x1b[31m")
    org.sub("001A00000000001AAA", "2026-01-01", "", "12k\u202e")
    org.write()
    text = (org.org / "Subscription__c.csv").read_text(encoding="utf-8")
    (org.org / "Subscription__c.csv").write_text(text.replace("a0S000000000000002", "a0S0000000\x1b[2J"),
                                                 encoding="utf-8")
    cli("plan", "--as-of", AS_OF, "--out", str(tmp_path / "plan.json"))
    [finding] = [f for f in json.loads((tmp_path / "plan.json").read_text())["findings"]
                 if f["kind"] == "arr_not_a_number"]
    assert all(ch.isprintable() for ch in finding["message"]), finding["message"]
    assert "(Id a0S0000000\\x1b[2J) Amount__c '12k\\u202e'" in finding["message"]
    assert "'1\\x00500\\x1b[31m'" in finding["message"]


# ---- item 8: the least-privilege user is told what to grant -----------------------------------------------------

def init_on_the_double(tmp_path: Path, monkeypatch, *sets: Path):
    """`nrr-engine init` with its source switched to Salesforce: the double serving the example org, its
    integration user holding only the given permission sets."""
    Cli(None)("init", str(tmp_path / "p"))
    cfg = tmp_path / "p" / "config" / "nrr.yaml"
    cfg.write_text(cfg.read_text().replace("source: {kind: local, path: ../org}",
                                           "source: {kind: salesforce, auth: password, poll_s: 0.001, "
                                           "api_reserve: 100}"))
    SalesforceDouble.seed(tmp_path / "sf.db", tmp_path / "p" / "org")
    double = SalesforceDouble(tmp_path / "sf.db", metadata=ROOT / "salesforce", permissions=Permissions.from_files(*sets))
    use_credentials(monkeypatch, double)
    return double, Cli(cfg)


def test_with_only_the_shipped_permission_set_validate_and_run_name_the_reads_to_grant(tmp_path, monkeypatch):
    """NRR_Engine_Integration alone: validate and plan say to grant Read on Subscription__c and the fields the
    config maps (not to deploy salesforce/, which does not help), once; with the shipped example read permission
    set too, validate is clean and the run fails no record."""
    double, cli = init_on_the_double(tmp_path, monkeypatch, SHIPPED)
    with double.serve():
        err = cli("validate", expect=2).stderr
        [line] = [x for x in err.splitlines() if "Subscription__c" in x]
        assert "arr.subscriptions.object: object Subscription__c does not exist in the org, or the " \
               "integration user cannot read it: grant Read on Subscription__c and its fields Account__c, " \
               "Start_Date__c, End_Date__c, Amount__c, Product__c to the integration user" in line
        assert "deploy salesforce/" not in line and "NRR_Engine_Reads.permissionset-meta.xml" in line
        err = cli("plan", "--as-of", AS_OF, expect=2).stderr
        # the human lines (the JSON log's run.failed event repeats the message, as every log line may)
        lines = [x for x in err.splitlines() if "Subscription__c" in x and not x.startswith("{")]
        assert len(lines) == 1 and "arr.subscriptions: object Subscription__c" in lines[0], err
        assert "grant Read on Subscription__c and its fields Account__c" in lines[0]
        assert "deploy salesforce/" not in lines[0]
        double.permissions = Permissions.from_files(SHIPPED, READS)
        assert "ok (" in cli("validate").stdout
        out = cli("run", "--as-of", AS_OF).stdout
        assert "failed" not in out and "applied" in out


def test_a_missing_read_field_names_the_grant_and_a_missing_own_object_says_deploy(tmp_path, monkeypatch):
    """A mapped field the user cannot read: grant read access to it (field-level security); the snapshot object
    the engine writes, missing: deploy salesforce/ and assign NRR_Engine_Integration."""
    double, cli = init_on_the_double(tmp_path, monkeypatch, SHIPPED, READS)
    double.permissions = double.permissions.without("fieldPermissions:Subscription__c.Product__c:readable",
                                                    "objectPermissions:KPI_Snapshot__c:allowRead")
    with double.serve():
        err = cli("validate", expect=2).stderr
        assert "grant the integration user read access to Subscription__c.Product__c (field-level security" in err
        assert "snapshots.object: object KPI_Snapshot__c does not exist in the org (or the integration " \
               "user cannot see it): deploy salesforce/" in err
        err = cli("plan", "--as-of", AS_OF, expect=2).stderr
        assert "grant the integration user read access to Subscription__c.Product__c" in err
        assert "object KPI_Snapshot__c does not exist in the org (or the integration user cannot see " \
               "it): deploy salesforce/" in err


def test_the_example_read_permission_set_grants_what_the_init_config_reads():
    """salesforce/examples/NRR_Engine_Reads grants Read on exactly the object and fields `arr.subscriptions` of
    the init config maps (nothing else), and is not in the deployed package directory."""
    from nrr_engine.demo.generator import INIT_CONFIG
    import yaml
    subs = yaml.safe_load(INIT_CONFIG)["arr"]["subscriptions"]
    fields = [subs[k] for k in ("account", "start", "end", "amount", "product")]
    assert set(Permissions.from_files(READS).grants()) == {f"objectPermissions:{subs['object']}:allowRead"} | {
        f"fieldPermissions:{subs['object']}.{f}:readable" for f in fields}
    project = json.loads((ROOT / "salesforce" / "sfdx-project.json").read_text())
    assert [d["path"] for d in project["packageDirectories"]] == ["force-app"]


# ---- item 9: /limits refused says what it means ----------------------------------------------------------------

def test_a_refused_limits_call_says_it_needs_view_setup_and_keeps_salesforces_code(tmp_path, monkeypatch):
    """Least privilege: the org refuses /limits (403 API_DISABLED_FOR_ORG, as documented for users without View
    Setup and Configuration) while every other REST call works; the warning says what that means and the fallback,
    with Salesforce's code kept apart, and the run summary's note says the same."""
    p = make_project(tmp_path, monkeypatch, permissions=Permissions.from_files(
        SHIPPED, ROOT / "tests" / "files" / "salesforce" / "Demo_Org_Reads.permissionset-meta.xml"))
    with p.double.serve():
        sf = client(p.double)
        with pytest.raises(Exception) as err:
            sf.limits()
        assert getattr(err.value, "status", None) == 403 and "API_DISABLED_FOR_ORG" in str(err.value)
        assert sf.query("SELECT COUNT() FROM Account")["totalSize"] > 0
        r = p.cli("plan", "--as-of", AS_OF)
    event = next(json.loads(x) for x in r.stderr.splitlines() if "salesforce.limits_unavailable" in x)
    assert event["reason"] == ("/limits needs View Setup and Configuration, which the integration user does not "
                               "need; using the Sforce-Limit-Info header / SELECT COUNT() instead")
    assert event["salesforce_error"] == "API_DISABLED_FOR_ORG: The REST API is not enabled for this Organization."
    usage = json.loads(p.ledger("SELECT api_usage FROM runs")[0][0])
    assert usage["limits_note"].startswith("/limits needs View Setup and Configuration, which the integration")
    assert "not enabled" not in usage["limits_note"].split("(Salesforce answered")[0]


# ---- item 18: the double's command line ---------------------------------------------------------------------

def test_the_double_command_has_help_and_seed_says_what_it_loaded(tmp_path, capsys):
    """`--help` prints the usage (exit 0, every command); `seed` says what it loaded: objects, records, and the
    fields it typed from the data."""
    r = subprocess.run([*DOUBLE, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and all(f"  {c} " in r.stdout for c in ("seed", "run", "serve", "connect", "query", "dump"))
    org = northwind(tmp_path / "org", amount="1500.00")
    assert main(["seed", str(tmp_path / "sf.db"), str(org)]) == 0
    out = capsys.readouterr().out
    assert f"seeded {tmp_path / 'sf.db'} from {org}: 2 object(s), 7 record(s) (Account 3, Subscription__c 4)" in out


def test_the_double_defaults_to_the_metadata_the_package_ships(tmp_path):
    """Without METADATA the double describes the engine's fields from the package's own copy of salesforce/ (so
    it works from an installed package), and a shipped permission set can be named instead of a path."""
    from nrr_engine.testing.salesforce_double import packaged_metadata
    shipped = packaged_metadata()
    import nrr_engine
    assert shipped == Path(nrr_engine.__file__).parent / "scaffold" / "salesforce"   # package data, not the repo
    assert (shipped / "force-app/main/default/objects/KPI_Snapshot__c/fields/Month__c.field-meta.xml").is_file()
    assert (shipped / "examples/NRR_Engine_Reads.permissionset-meta.xml").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"scaffold/**/*"' in pyproject
    SalesforceDouble.seed(tmp_path / "sf.db", northwind(tmp_path / "org", amount="1500.00"))
    r = subprocess.run([*DOUBLE, "run", str(tmp_path / "sf.db"), "--permission-set", "NRR_Engine_Integration",
                        "--permission-set", "NRR_Engine_Reads", "--", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    double = SalesforceDouble(tmp_path / "sf.db", metadata=shipped)
    assert double.schema["KPI_Snapshot__c"]["month__c"]["length"] == 7


def test_query_and_dump_print_the_doubles_records(tmp_path, capsys):
    """`query STORE SOQL` and `dump STORE OBJECT` print what the double holds as CSV, without the ledger."""
    store = tmp_path / "sf.db"
    SalesforceDouble.seed(store, northwind(tmp_path / "org", amount="1500.00"))
    assert main(["query", str(store), "SELECT Id, Amount__c FROM Subscription__c ORDER BY Id LIMIT 2"]) == 0
    assert capsys.readouterr().out == "Id,Amount__c\na0S5g00000S1AAAEA3,10000.00\na0S5g00000S2AAAEA3,5000.00\n"
    assert main(["query", str(store), "SELECT COUNT() FROM Account"]) == 0
    assert capsys.readouterr().out == "3\n"
    assert main(["dump", str(store), "Account"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Id,Name,ParentId,Website") and len(out) == 4 and "Contoso Ltd" in out[3]
    assert main(["query", str(store), "SELECT Nope FROM Account"]) == 2
    assert "No such column 'Nope'" in capsys.readouterr().err
    assert main(["dump", str(tmp_path / "missing.db"), "Account"]) == 2
    assert "seed it first" in capsys.readouterr().err


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    for _ in range(400):
        if path.exists() or proc.poll() is not None:
            return
        time.sleep(0.025)


def test_serve_removes_its_socket_on_sigterm_and_a_stale_one_at_start(tmp_path):
    """`serve` stopped by SIGTERM exits 0 and removes its socket; a socket file left by a killed double (nothing
    listening) is replaced at start; a second double on a socket the first serves is refused (exit 3)."""
    store = tmp_path / "sf.db"
    SalesforceDouble.seed(store, northwind(tmp_path / "org", amount="1500.00"))
    sock = tmp_path / "sf.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()                         # the file stays, nothing listens: what SIGKILL leaves
    server = subprocess.Popen([*DOUBLE, "serve", str(store), str(sock)], stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)
        wait_for(sock, server)
        for _ in range(200):              # listening (the stale file was replaced by a live socket)
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(sock))
                break
            except OSError:
                time.sleep(0.025)
            finally:
                probe.close()
        second = subprocess.run([*DOUBLE, "serve", str(store), str(sock)], capture_output=True, text=True, timeout=60)
        assert second.returncode == 3 and "another double is serving on" in second.stderr
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert not sock.exists()
    assert sqlite3.connect(store).execute("SELECT count(*) FROM Account").fetchone() == (3,)


# ---- item 16: the init scaffold fits a real export ---------------------------------------------------------------

def test_init_validates_and_runs_on_a_plain_data_loader_export(tmp_path):
    """`init`, then the trial's export (quoted, CRLF, BOM; no Region__c, no CurrencyIsoCode) in place of the
    example org: validate is clean, the run reports no unresolved mapping row (the table is the header only), and
    init's output says how to point the config at your own export."""
    out = Cli(None)("init", str(tmp_path / "p")).stdout
    assert "set source.path in" in out and "or replace the CSVs in" in out
    org = tmp_path / "p" / "org"
    for f in org.iterdir():
        f.unlink()
    northwind(org)
    cfg = tmp_path / "p" / "config" / "nrr.yaml"
    r = Cli(cfg)("validate")
    assert "ok (" in r.stdout and "error" not in r.stderr
    run = Cli(cfg)("run", "--as-of", AS_OF).stdout
    assert "accounts read: 3" in run and "mapping_unresolved" not in run
    assert "Amount__c '1,500'" in run            # the unreadable amount stays a finding, named by line
    assert (tmp_path / "p" / "rules" / "mappings.csv").read_text() == "child,parent,note\n"


def test_the_demo_keeps_its_own_config_and_mapping(tmp_path, monkeypatch):
    """`nrr-engine demo` still maps Hulu, LLC under Disney and breaks NRR down by Region__c (its own config)."""
    monkeypatch.chdir(tmp_path)
    Cli(None)("demo", "--dir", "d", "--fresh")
    assert '"Hulu, LLC",The Walt Disney Company' in (tmp_path / "d" / "rules" / "mappings.csv").read_text()
    assert "report: {segments: [Region__c]}" in (tmp_path / "d" / "config" / "nrr.yaml").read_text()


def test_a_currency_column_is_read_when_the_config_names_none(org, cli):
    """arr.subscriptions without `currency:` (as init writes it): a CurrencyIsoCode column in the export is still
    read, so an amount in EUR stops the run (mixed currencies) instead of being added to USD ones."""
    org.account("001A00000000001AAA", "Acme")
    org.sub("001A00000000001AAA", "2026-01-01", "", "1000.00")
    org.sub("001A00000000001AAA", "2026-02-01", "", "900.00")
    org.write()
    path = org.org / "Subscription__c.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[0] + ",CurrencyIsoCode", lines[1] + ",USD", lines[2] + ",EUR"]) + "\n",
                    encoding="utf-8")
    err = cli("plan", "--as-of", AS_OF, expect=2).stderr
    assert "mixed currencies" in err and "Subscription__c.CurrencyIsoCode holds amounts in EUR" in err
