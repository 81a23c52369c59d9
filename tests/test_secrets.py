"""Secrets never reach any output (stdout, stderr, logs, warnings, the state dir and its ledger, plan.json,
exports) under every command and every fault the double injects; instance_url must be a Salesforce host."""
from __future__ import annotations

import re
import shutil
import socket
import sqlite3
import threading
import warnings
from pathlib import Path

import pytest

import nrr_engine
from nrr_engine import log as log_mod
from nrr_engine.config import SalesforceSettings
from nrr_engine.demo import write_demo_config
from nrr_engine.testing.salesforce_double import SalesforceDouble

from conftest import Cli
from test_faults import FAULTS

ROOT = Path(__file__).resolve().parent.parent
DEMO_ORG = Path(nrr_engine.__file__).parent / "demo" / "org"
AS_OF = "2026-11-15"
SOURCE = ("kind: salesforce, poll_s: 0.001, backoff_s: 0.001, api_reserve: 100, bulk_write_min: 300, "
          "bulk_query_min: 1000, page_size: 1000")
# planted secrets: long and short (3 and 2 characters: redacted as whole tokens, log.py's rule), mixed case
PASSWORD, TOKEN = "Pw-Hunter2-Secret", "tK9"
CONSUMER_KEY, CONSUMER_SECRET = "CK-Consumer-Key-77", "q7"
KEY_BODY = "PLANTEDkeyCONTENTline0123456789abcdefABCDEF"


@pytest.fixture(autouse=True)
def _own_registry():
    """The redactor's registered values are the process's: restore them so these tests' secrets stay here."""
    saved_vars, saved_values = set(log_mod._secret_vars), set(log_mod._secret_values)
    yield
    log_mod._secret_vars.clear(), log_mod._secret_vars.update(saved_vars)
    log_mod._secret_values.clear(), log_mod._secret_values.update(saved_values)
    getattr(log_mod, "_compiled", {}).clear()


@pytest.fixture(autouse=True)
def _warnings_to_stderr(monkeypatch):
    """Warnings reach stderr as they do in a real process (pytest would otherwise keep them to itself)."""
    import sys

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
    monkeypatch.setattr(warnings, "showwarning", show)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        yield


class Project:
    """A demo project on the double with planted secrets; collects every byte the engine writes."""

    def __init__(self, root: Path, monkeypatch, auth: str, **double_kw):
        shutil.copytree(DEMO_ORG, root / "org")
        self.cfg = write_demo_config(root)
        self.root = root
        self.set_source(auth)
        SalesforceDouble.seed(root / "sf.db", root / "org")
        self.double = SalesforceDouble(root / "sf.db", metadata=ROOT / "salesforce", password=PASSWORD,
                                       security_token=TOKEN, consumer_key=CONSUMER_KEY,
                                       consumer_secret=CONSUMER_SECRET, **double_kw)
        for var, value in (("SF_USERNAME", self.double.username), ("SF_PASSWORD", PASSWORD),
                           ("SF_SECURITY_TOKEN", TOKEN), ("SF_CONSUMER_KEY", CONSUMER_KEY),
                           ("SF_CONSUMER_SECRET", CONSUMER_SECRET)):
            monkeypatch.setenv(var, value)
        self.cli, self.outputs = Cli(self.cfg), []

    def set_source(self, auth: str) -> None:
        text = self.cfg.read_text()
        text = re.sub(r"source: \{[^}]*\}", "source: {" + SOURCE + ", " + auth + "}", text)
        self.cfg.write_text(text)

    def __call__(self, *args: str) -> int:
        r = self.last = self.cli(*args, expect=None)
        self.outputs.append((" ".join(args), r.stdout + "\n" + r.stderr))
        return r.exit_code

    def written(self) -> list[tuple[str, str]]:
        """(where, text) of everything the engine wrote: outputs, every file but the double's store (raw
        bytes), and the sqlite3 dump of every database in the project."""
        out = list(self.outputs)
        for f in sorted(self.root.rglob("*")):
            if not f.is_file() or f.name.startswith("sf.db") or f.suffix == ".key":   # the double's; the key (input)
                continue
            out.append((str(f), f.read_bytes().decode("utf-8", "replace")))
            if f.suffix == ".db":
                con = sqlite3.connect(f)
                try:
                    out.append((f"{f} (dump)", "\n".join(con.iterdump())))
                finally:
                    con.close()
        return out


def leaks(written, secrets) -> list[str]:
    """Where any secret shows (case-insensitively): anywhere when 6+ characters, else as a whole token."""
    found = []
    for s in secrets:
        pat = re.compile(re.escape(s) if len(s) >= 6 else rf"(?<![A-Za-z0-9]){re.escape(s)}(?![A-Za-z0-9])", re.I)
        found += [f"{s!r} in {where}: ...{text[max(0, m.start() - 60):m.end() + 20]!r}..."
                  for where, text in written for m in [pat.search(text)] if m]
    return found


def test_no_secret_in_any_output_of_any_command(tmp_path, monkeypatch):
    """Password login: every command, --debug and debug logs, an error echoing the Bearer token and a login
    error echoing the password: no password, security token or session id in any output or file."""
    p = Project(tmp_path, monkeypatch, "auth: password")
    with p.double.serve():
        assert p("validate") == 0
        assert p("--log-level", "debug", "plan", "--as-of", AS_OF, "--out", str(tmp_path / "plan.json")) == 0
        assert p("--log-level", "debug", "run", "--as-of", AS_OF) == 0
        for args in (("runs", "list"), ("review", "list"), ("report", "nrr", "--as-of", AS_OF),
                     ("export", "--out", str(tmp_path / "export"))):
            assert p(*args) == 0, args
        run_id = sqlite3.connect(tmp_path / "state" / "nrr.db").execute(
            "SELECT id FROM runs WHERE mode = 'run'").fetchone()[0]
        assert p("runs", "show", run_id) == 0 and p("rollback", run_id) == 0
        echo = p.double.fault("echo_token", path="/services/data/", message="rejected {sent} ({SENT})")
        assert p("--debug", "--log-level", "debug", "run", "--as-of", AS_OF) == 3 and echo.times == 0
        echo = p.double.fault("echo_login", path="/services/Soap/", message="bad password {sent} ({SENT})")
        assert p("--debug", "plan", "--as-of", AS_OF) == 3 and echo.times == 0
        assert p("runs", "list") == 0
        tokens = set(p.double.tokens)
    written = p.written()
    assert any("INVALID_AUTH_HEADER" in t for _, t in written), "the Bearer echo never reached an output"
    assert any("INVALID_LOGIN" in t for _, t in written), "the password echo never reached an output"
    assert (tmp_path / "plan.json").is_file() and (tmp_path / "export").is_dir()
    assert not leaks(written, [PASSWORD, TOKEN, PASSWORD + TOKEN, *tokens])


@pytest.mark.parametrize("name", list(FAULTS))
def test_no_secret_in_any_output_under_any_fault(name, tmp_path, monkeypatch):
    """Each fault kind of the double, run with --debug and debug logs: its documented exit code, and no
    password, security token or session id in any output, file or ledger dump."""
    setup, code, *source = FAULTS[name]
    p = Project(tmp_path, monkeypatch, "auth: password" + "".join(source))
    with p.double.serve():
        setup(p.double)
        assert p("--debug", "--log-level", "debug", "run", "--as-of", AS_OF) == code
        tokens = set(p.double.tokens)
    assert not leaks(p.written(), [PASSWORD, TOKEN, PASSWORD + TOKEN, *tokens])


def test_no_consumer_key_secret_or_key_content_in_any_output(tmp_path, monkeypatch):
    """Client credentials and JWT: the consumer key (also in simple-salesforce's 'not pre-authorised'
    warning), the consumer secret, the private key's content and session ids never reach an output."""
    p = Project(tmp_path, monkeypatch, "auth: client_credentials, domain: acme.my")
    with p.double.serve():
        assert p("plan", "--as-of", AS_OF) == 0
        echo = p.double.fault("echo_login", message="unknown client {sent}")
        assert p("plan", "--as-of", AS_OF) == 3 and echo.times == 0
        p.double.fault("echo_token", path="/services/data/", message="{SENT}")
        assert p("--debug", "plan", "--as-of", AS_OF) == 3
        # JWT: a user who has not approved the app makes simple-salesforce warn with the consumer key in a URL
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        (tmp_path / "server.key").write_text(pem)
        p.set_source(f"auth: jwt, private_key_file: {tmp_path / 'server.key'}")
        monkeypatch.setenv("SF_USERNAME", "someone-else@acme.example")
        assert p("plan", "--as-of", AS_OF) == 3, p.last.stderr
        assert any("to Allow Access" in t for _, t in p.outputs), "the simple-salesforce warning was not shown"
        # a private key file that is not a key: whatever the libraries say about it quotes none of it
        (tmp_path / "server.key").write_text(f"-----BEGIN PRIVATE KEY-----\n{KEY_BODY}\n-----END PRIVATE KEY-----\n")
        monkeypatch.setenv("SF_USERNAME", p.double.username)
        assert p("--debug", "plan", "--as-of", AS_OF) != 0
        tokens = set(p.double.tokens)
    key_lines = [line for line in pem.splitlines() if "-----" not in line]
    assert not leaks(p.written(), [CONSUMER_KEY, CONSUMER_SECRET, KEY_BODY, *key_lines, *tokens])


def test_redaction_rule_any_length_nested_any_case(monkeypatch):
    """Long secrets anywhere (any case); short ones as whole tokens or values; nested values; echoed Bearer."""
    monkeypatch.setenv("MY_PASS", "Lo0ngSecret")
    monkeypatch.setenv("MY_PIN", "x")
    log_mod.register_secrets(["MY_PASS", "MY_PIN"])
    assert log_mod.redact_text("a lo0ngsecret and LO0NGSECRETTail") == "a [redacted] and [redacted]Tail"
    assert log_mod.redact_text("pin=x, X; box") == "pin=[redacted], [redacted]; box"
    assert log_mod.redact({"a": [{"b": "X"}], "c": ("y", "Lo0ngSecret")}) == \
        {"a": [{"b": "[redacted]"}], "c": ("y", "[redacted]")}
    assert log_mod.redact_text("Authorization: Bearer 00Dxx!AQ.unknown-token") == "Authorization: Bearer [redacted]"


class _Listener:
    """A local TCP server that counts the connections it gets (a host the session id must not go to)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port, self.connections, self.stop = self.sock.getsockname()[1], 0, False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


def test_session_id_is_sent_only_to_a_salesforce_host(tmp_path, monkeypatch):
    """auth: session with instance_url on a local server: exit 2 naming source.instance_url, no connection;
    source.allow_any_host: true opts out (the engine then connects there)."""
    shutil.copytree(DEMO_ORG, tmp_path / "org")
    cfg = write_demo_config(tmp_path)
    server = _Listener()
    monkeypatch.setenv("SF_SESSION_ID", "00Dplanted!SESSIONidVALUE")
    try:
        url = f"https://127.0.0.1:{server.port}"
        cfg.write_text(cfg.read_text().replace("source: {kind: local, path: ../org}",
                                               "source: {kind: salesforce, auth: session, retries: 0, instance_url: " + url + "}"))
        r = Cli(cfg)("plan", "--as-of", AS_OF, expect=2)
        assert "source.instance_url" in r.stderr and "not a Salesforce host" in r.stderr
        assert server.connections == 0
        cfg.write_text(cfg.read_text().replace("retries: 0,", "retries: 0, allow_any_host: true,"))
        r = Cli(cfg)("plan", "--as-of", AS_OF, expect=3)
        assert server.connections >= 1, r.stderr
    finally:
        server.close()


@pytest.mark.parametrize("host, ok", [
    ("acme.my.salesforce.com", True), ("acme--uat.sandbox.my.salesforce.com", True), ("na123.salesforce.com", True),
    ("acme.develop.my.salesforce.com", True), ("acme.lightning.force.com", True), ("ACME.MY.SALESFORCE.COM", True),
    ("salesforce.com.attacker.example", False), ("evilsalesforce.com", False), ("127.0.0.1", False), (None, False)])
def test_salesforce_hosts(host, ok):
    """Which hosts a session id may go to without allow_any_host."""
    assert SalesforceSettings(auth="session").host_allowed(host) is ok
    assert SalesforceSettings(auth="session", allow_any_host=True).host_allowed(host) is True
