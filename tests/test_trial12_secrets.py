"""A new user's security trial (findings 4, 7, 8): a secret that occurs in the data is redacted in every output
for people as in the ledger; a private key file that is not one is exit 2 at its line; the double rehearses a
config that names its user (JWT included); library warnings are JSON lines when stderr is not a terminal."""
from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import warnings

import pytest

from nrr_engine import log as log_mod

from conftest import Cli, empty_init_project, write_csv
from test_salesforce import AS_OF
from test_salesforce_strict import _jwt_project
from test_secrets import _own_registry

# test_secrets' fixture: the redactor's registered values are the process's, restored after each test
pytestmark = pytest.mark.usefixtures(_own_registry.__name__)

PASSWORD, API_KEY = "Zz9-planted-secret", "k3y-planted-99"   # the trial's planted values


@pytest.fixture
def always_warn():
    """Every warning is shown, even one the process showed before (the default shows it once per place)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        yield


def leaks(texts: dict[str, str], secrets) -> list[str]:
    """Where a secret shows (case-insensitively), with some context."""
    return [f"{s!r} in {where}: ...{text[max(0, m.start() - 60):m.end() + 20]!r}..."
            for s in secrets for where, text in texts.items()
            for m in [re.search(re.escape(s), text, re.I)] if m]


# ---- F4: a secret in the data ---------------------------------------------------------------------------------

def planted_project(tmp_path, monkeypatch):
    """`init`'s project over an export whose data holds the environment's secrets: an amount that is the password,
    a start date that is an API key, an account named with the key (a review item) and an Industry that is the
    password (a report segment)."""
    monkeypatch.setenv("SF_PASSWORD", PASSWORD)
    monkeypatch.setenv("MY_API_KEY", API_KEY)
    org = empty_init_project(tmp_path, monkeypatch)
    write_csv(org / "Account.csv", [
        {"Id": "001000000000001AAA", "Name": "Acme", "ParentId": "", "BillingCountry": "United States",
         "Industry": "Software"},
        {"Id": "001000000000002AAA", "Name": f"Acme {API_KEY}", "ParentId": "", "BillingCountry": "United States",
         "Industry": "Software"},
        {"Id": "001000000000003AAA", "Name": "Beta", "ParentId": "", "BillingCountry": "United States",
         "Industry": PASSWORD}])
    write_csv(org / "Subscription__c.csv", [
        {"Id": "a0S000000000001AAA", "Account__c": "001000000000001AAA", "Start_Date__c": "2025-01-01",
         "End_Date__c": "", "Amount__c": PASSWORD, "Product__c": "Core"},
        {"Id": "a0S000000000002AAA", "Account__c": "001000000000002AAA", "Start_Date__c": API_KEY,
         "End_Date__c": "", "Amount__c": "2000.00", "Product__c": "Core"},
        {"Id": "a0S000000000003AAA", "Account__c": "001000000000003AAA", "Start_Date__c": "2025-01-01",
         "End_Date__c": "", "Amount__c": "3000.00", "Product__c": "Core"},
        {"Id": "a0S000000000004AAA", "Account__c": "001000000000001AAA", "Start_Date__c": "2025-01-01",
         "End_Date__c": "", "Amount__c": "1000.00", "Product__c": "Core"}])
    return Cli(tmp_path / "proj" / "config" / "nrr.yaml")


def test_a_secret_in_the_data_is_redacted_in_stdout_stderr_plan_json_and_reports(tmp_path, monkeypatch):
    """The password as an amount and the API key as a date, an account name and an Industry value: the run
    summary's finding lines, plan.json (valid JSON, change values included), review list, report nrr (stdout and
    --out) and runs show all print [redacted] where the ledger does, and no secret anywhere in them."""
    cli = planted_project(tmp_path, monkeypatch)
    outputs: dict[str, str] = {}

    def call(*args, expect=0):
        r = cli(*args, expect=expect)
        outputs[" ".join(args)] = r.stdout + "\n" + r.stderr
        return r

    call("validate")
    plan = call("plan", "--as-of", "2026-12-01", "--out", str(tmp_path / "plan.json"))
    run = call("run", "--as-of", "2026-12-01")
    for fmt in ("table", "csv", "json"):
        call("review", "list", "--format", fmt)
        call("report", "nrr", "--as-of", "2026-12-01", "--by", "Industry", "--format", fmt)
    call("report", "nrr", "--as-of", "2026-12-01", "--by", "Industry", "--format", "csv", "--out",
         str(tmp_path / "report.csv"))
    run_id = sqlite3.connect(tmp_path / "proj" / "state" / "nrr.db").execute(
        "SELECT id FROM runs WHERE mode = 'run'").fetchone()[0]
    shown = call("runs", "show", run_id, "--format", "json")
    call("runs", "show", run_id)
    outputs["plan.json"] = (tmp_path / "plan.json").read_text()
    outputs["report.csv"] = (tmp_path / "report.csv").read_text()

    assert not leaks(outputs, [PASSWORD, API_KEY])
    for out in (plan.stdout, run.stdout):   # the findings are there, redacted as in the ledger
        assert "Amount__c '[redacted]'" in out and "Start_Date__c '[redacted]'" in out
    assert "Amount__c '[redacted]'" in shown.stdout
    doc = json.loads(outputs["plan.json"])
    assert any("Amount__c '[redacted]'" in f["message"] for f in doc["findings"])
    assert [r["evidence"]["child_name"] for r in doc["review"]] == ["Acme [redacted]"]
    assert "Acme [redacted]" in outputs["review list --format table"]
    assert "[redacted]" in outputs["report.csv"]


def test_data_loader_files_keep_the_org_s_values_exactly(tmp_path, monkeypatch):
    """What `export` writes is a copy of the org's records, not a message about them: the account named with the
    key keeps its name byte for byte (a redacted value would be written back to the org)."""
    cli = planted_project(tmp_path, monkeypatch)
    cli("run", "--as-of", "2026-12-01")
    cli("export", "--out", str(tmp_path / "export"))
    full = (tmp_path / "export" / "full" / "Account.csv").read_text(encoding="utf-8-sig")
    assert f"Acme {API_KEY}" in full


def test_redactor_json_stays_valid_and_finds_escaped_and_case_folded_secrets(monkeypatch):
    """Redactor.json: a short secret equal to a number leaves the number alone (valid JSON), a secret with a quote
    (escaped in JSON) and a non-ASCII one in another case (\\uXXXX in JSON) are both redacted."""
    from nrr_engine.log import Redactor

    monkeypatch.setenv("SF_PASSWORD", 'pa"ss-wörd-Ünï')
    monkeypatch.setenv("SF_SECURITY_TOKEN", "42")
    log_mod.register_secrets(["SF_PASSWORD", "SF_SECURITY_TOKEN"])
    r = Redactor()
    text = r.json({"n": 42, "s": "42", "q": 'x pa"ss-wörd-Ünï y', "u": "PA\"SS-WÖRD-üNÏ"}, sort_keys=True)
    assert json.loads(text) == {"n": 42, "s": "[redacted]", "q": "x [redacted] y", "u": "[redacted]"}


def test_redactor_walks_only_the_lines_that_may_hold_a_secret(monkeypatch):
    """A plan line without a secret is written after one search, never walked value by value (a million-change
    plan stays a json.dumps per change); a line with one is."""
    from nrr_engine.log import Redactor

    monkeypatch.setenv("SF_PASSWORD", PASSWORD)
    log_mod.register_secrets(["SF_PASSWORD"])
    r = Redactor()
    walked = []
    value = r.value
    monkeypatch.setattr(r, "value", lambda v: walked.append(v) or value(v))
    rows = [{"object": "Account", "id": f"001{i:015d}", "field": "Hierarchy_ARR__c", "old": None, "new": f"{i}.00",
             "rule": "rollup", "evidence": {"view": "legal"}} for i in range(2000)]
    assert [r.json(row, sort_keys=True) for row in rows] == [json.dumps(row, sort_keys=True) for row in rows]
    assert walked == []
    row = {"new": f"Acme {PASSWORD.upper()}"}
    assert json.loads(r.json(row))["new"] == "Acme [redacted]"
    assert walked[0] == row


def test_redacting_stream_joins_writes_and_takes_text_only(monkeypatch):
    """stdout through the redactor: a secret written in two pieces is redacted whole (lines go out as they
    complete, the rest on flush); bytes are refused, so click writes to it and not round it."""
    from nrr_engine.log import _RedactingStream

    monkeypatch.setenv("SF_PASSWORD", PASSWORD)
    raw = io.StringIO()
    s = _RedactingStream(raw)
    s.write("amount " + PASSWORD[:5])
    s.write(PASSWORD[5:] + " end\nnext ")
    assert raw.getvalue() == "amount [redacted] end\n"
    s.write(PASSWORD)
    s.flush()
    assert raw.getvalue() == "amount [redacted] end\nnext [redacted]"
    with pytest.raises(TypeError):
        s.write(b"")
    assert s.isatty() is False


# ---- F7: a private key file that is not one ------------------------------------------------------------------

def _key_line(cfg) -> int:
    return next(i for i, line in enumerate(cfg.read_text().splitlines(), 1) if "private_key_file:" in line)


def test_a_private_key_file_that_is_not_a_pem_private_key_is_exit_2_at_its_line(tmp_path, monkeypatch):
    """JWT through the double with the real client: a text file, a certificate, an encrypted key, a FIFO and a
    missing file as source.private_key_file are each exit 2 at that config line saying what is wrong, never
    exit 70 (InvalidKeyError "public key"), never quoting the file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    import datetime as dt

    p, pem = _jwt_project(tmp_path, monkeypatch, "")
    cfg, key = p.cli.config, tmp_path / "server.key"
    where = f"{cfg}:{_key_line(cfg)}: source.private_key_file: '{key}'"
    pk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "nrr")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pk.public_key())
            .serial_number(1).not_valid_before(dt.datetime(2026, 1, 1)).not_valid_after(dt.datetime(2027, 1, 1))
            .sign(pk, hashes.SHA256()))
    cases = {
        "PLANTED-text-not-a-key\n": "is not a PEM private key (it has no PEM block)",
        cert.public_bytes(serialization.Encoding.PEM).decode(): "is not a PEM private key (it holds a certificate",
        pk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                         serialization.BestAvailableEncryption(b"pw")).decode(): "is an encrypted private key",
    }
    with p.double.serve():
        for content, says in cases.items():
            key.write_text(content)
            r = p.cli("plan", "--as-of", AS_OF, expect=2)
            assert f"error: {where} {says}" in r.stderr, r.stderr
            body = [line for line in content.splitlines() if "-----" not in line]
            assert "internal error" not in r.stderr and not leaks({"stderr": r.stderr}, body)
        key.unlink()
        os.mkfifo(key)   # opening it for reading must not wait for a writer
        assert f"error: {where} is not a regular file" in p.cli("plan", "--as-of", AS_OF, expect=2).stderr
        key.unlink()
        assert f"error: {where} does not exist" in p.cli("plan", "--as-of", AS_OF, expect=2).stderr
        key.write_bytes(pem)
        p.cli("plan", "--as-of", AS_OF)   # the real key logs in


def test_a_bad_key_named_by_the_environment_names_the_variable(tmp_path, monkeypatch):
    """The key file from $SF_PRIVATE_KEY_FILE (no private_key_file in the config): a text file there is exit 2
    naming the variable (its value, a name holding KEY, is redacted like any such variable's)."""
    p, _ = _jwt_project(tmp_path, monkeypatch, "")
    cfg = p.cli.config
    cfg.write_text(re.sub(r", private_key_file: [^,}]+", "", cfg.read_text()))
    (tmp_path / "env.key").write_text("not a key\n")
    monkeypatch.setenv("SF_PRIVATE_KEY_FILE", str(tmp_path / "env.key"))
    with p.double.serve():
        r = p.cli("plan", "--as-of", AS_OF, expect=2)
    assert "error: the file $SF_PRIVATE_KEY_FILE names is not a PEM private key (it has no PEM block)" in r.stderr


# ---- F8: the double's user, JWT on the double, warnings as JSON ------------------------------------------------

def _double_cli(monkeypatch, capsys, store, *args) -> tuple[int, str]:
    """The double's command line in this process; the variables it sets are restored after the test."""
    from nrr_engine.testing.salesforce_double import main

    monkeypatch.setenv("SF_CONSUMER_SECRET", "CONSUMER-SECRET")
    code = main([*args[:1], str(store), *args[1:]])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_the_double_gives_its_user_the_config_s_username_for_jwt_and_password(tmp_path, monkeypatch, capsys):
    """A config that names its user (username: integration@acme.com, as the README shows): through the double's
    `run` it logs in (JWT and password) once the double is given that user with --username; without it the login
    fails as on an org whose integration user is another (JWT: not approved; password: INVALID_LOGIN)."""
    p, _ = _jwt_project(tmp_path, monkeypatch, ", username: integration@acme.com")
    store, cfg = tmp_path / "p" / "sf.db", str(p.cli.config)
    code, out = _double_cli(monkeypatch, capsys, store, "run", "--", "--config", cfg, "validate")
    assert code == 3 and "invalid_grant: user hasn't approved this consumer" in out
    code, out = _double_cli(monkeypatch, capsys, store, "run", "--username", "integration@acme.com", "--",
                            "--config", cfg, "validate")
    assert code == 0, out
    text = p.cli.config.read_text()
    p.cli.config.write_text(re.sub(r"auth: jwt, private_key_file: [^,}]+", "auth: password", text))
    code, out = _double_cli(monkeypatch, capsys, store, "run", "--", "--config", cfg, "validate")
    assert code == 3 and "INVALID_LOGIN" in out
    code, out = _double_cli(monkeypatch, capsys, store, "run", "--username=integration@acme.com", "--",
                            "--config", cfg, "validate")
    assert code == 0, out


def test_the_double_s_help_says_how_its_user_and_connected_app_are_set_up(capsys):
    """`--help` names --username, that a config's username wins over $SF_USERNAME, and that the connected app
    is pre-authorised for the double's user (how JWT is rehearsed on it)."""
    from nrr_engine.testing.salesforce_double import main

    assert main(["--help"]) == 0
    usage = " ".join(capsys.readouterr().out.split())
    assert "serve STORE SOCKET [--metadata DIR] [--permission-set FILE]... [--username NAME]" in usage
    assert "logs in as that user, not as $SF_USERNAME" in usage
    assert "pre-authorised for that user" in usage and "Admin approved users are pre-authorized" in usage


def test_a_library_warning_is_one_json_event_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, always_warn):
    """JWT for a user who has not approved the app: simple-salesforce's multi-line UserWarning reaches stderr (not
    a terminal) as one JSON object among the JSON log lines (category, source, run_id, message), with the
    consumer key in it redacted; every stderr line is JSON but the final error."""
    p, _ = _jwt_project(tmp_path, monkeypatch, "")
    monkeypatch.setenv("SF_USERNAME", "someone-else@acme.example")
    with p.double.serve():
        r = p.cli("plan", "--as-of", AS_OF, expect=3)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "hasn't approved this consumer" in lines[-1]
    events = [json.loads(line) for line in lines[:-1]]   # raises on any line that is not JSON
    warned = [e for e in events if e["event"] == "python.warning"]
    assert len(warned) == 1, r.stderr
    w = warned[0]
    assert w["category"] == "UserWarning" and w["level"] == "warning" and w["run_id"]
    assert re.search(r"simple_salesforce/login\.py:\d+$", w["source"])
    assert "Allow Access" in w["message"] and "client_id=[redacted]" in w["message"]
    assert p.double.consumer_key not in r.stderr


def test_a_progress_bar_redrawing_its_line_is_shown_as_it_goes(monkeypatch):
    """A progress bar redraws its line with \\r and no \\n (tqdm on a terminal): each redraw goes out at once,
    redacted, instead of waiting for a newline that comes only when the run ends."""
    from nrr_engine.log import _RedactingStream

    monkeypatch.setenv("SF_PASSWORD", PASSWORD)
    raw = io.StringIO()
    s = _RedactingStream(raw)
    s.write("\rfetch:  10%")
    s.write("\rmatch:  20% " + PASSWORD)
    s.write("\r")
    assert raw.getvalue() == "\rfetch:  10%\rmatch:  20% [redacted]\r"
