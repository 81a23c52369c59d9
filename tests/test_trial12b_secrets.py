"""A second new user's security trial (findings 2 and 6): a secret in the data is redacted in the forms the
engine derives from it too (a name's normalised key in a family key, a key field's case-folded value), and the
Bearer/OAuth rule takes only what looks like a token, so the engine's own help text is left as it is."""
from __future__ import annotations

import ast
import json
import os
import re
import random as stdlib_random
import sqlite3
from pathlib import Path

import pytest

import nrr_engine
from nrr_engine import log as log_mod

from conftest import Cli, empty_init_project, write_csv
from test_salesforce import AS_OF
from test_salesforce_strict import _jwt_project
from test_secrets import _own_registry
from test_trial12_secrets import leaks

# test_secrets' fixture: the redactor's registered values are the process's, restored after each test
pytestmark = pytest.mark.usefixtures(_own_registry.__name__)

NAME_SECRET = "Qq7-planted-secret"     # the trial's: in two account names ("... US", "... UK")
SITE_SECRET = "Ww5-Site-Secret"        # in two subdomain websites with no account on the domain itself
KEY_SECRET = "Straße-Geheim-77"       # a parent key two accounts share and no account has: casefold makes ß "ss"
# What the engine derives from them and, before this fix, printed: written out here, not computed by the code
# under test, so a change in how names are folded cannot make the test pass by itself.
DERIVED = ["qq7 planted secret", "strasse-geheim-77", "strasse geheim 77"]


def planted_project(tmp_path, monkeypatch) -> Cli:
    """`init`'s project over an org whose names, websites and parent keys hold the environment's secrets, so that
    the run proposes a placeholder parent for each: by name (`placeholder:name:<key>`), by website
    (`placeholder:domain:<domain>`) and by parent key (`placeholder:Parent_DUNS__c:<value>`)."""
    monkeypatch.setenv("SF_PASSWORD", NAME_SECRET)
    monkeypatch.setenv("MY_SITE_TOKEN", SITE_SECRET)
    monkeypatch.setenv("MY_DUNS_TOKEN", KEY_SECRET)
    org = empty_init_project(tmp_path, monkeypatch)
    accounts = [
        ("001000000000001AAA", f"{NAME_SECRET} US", "", "United States", ""),
        ("001000000000002AAA", f"{NAME_SECRET} UK", "", "United Kingdom", ""),
        ("001000000000003AAA", "Wonka Labs", f"https://us.{SITE_SECRET}.com", "United States", ""),
        ("001000000000004AAA", "Slugworth Candy", f"https://uk.{SITE_SECRET.lower()}.com/shop", "United Kingdom", ""),
        ("001000000000005AAA", "Initrode", "", "United States", KEY_SECRET),
        ("001000000000006AAA", "Vandelay Industries", "", "United States", KEY_SECRET.upper()),
    ]
    write_csv(org / "Account.csv", [
        {"Id": i, "Name": n, "ParentId": "", "Website": w, "BillingCountry": c, "Region__c": "NA",
         "Industry": "Software", "DunsNumber": "", "Parent_DUNS__c": d} for i, n, w, c, d in accounts])
    write_csv(org / "Subscription__c.csv", [
        {"Id": f"a0S00000000000{k}AAA", "Account__c": i, "Start_Date__c": "2025-01-01", "End_Date__c": "",
         "Amount__c": f"{k}000.00", "Product__c": "Core"} for k, (i, *_) in enumerate(accounts, 1)])
    return Cli(tmp_path / "proj" / "config" / "nrr.yaml")


def test_a_secret_in_names_websites_and_keys_never_shows_in_any_form(tmp_path, monkeypatch):
    """Secrets planted in account names, websites and a parent key: plan, run, review list (table, CSV, JSON,
    --out), report nrr (every format, --out) and runs show print neither the secret nor the forms the engine
    derives from it (the name key "qq7 planted secret", the case-folded key "strasse-geheim-77") on stdout or
    stderr, in plan.json or in any --out file; the three placeholder proposals are there, redacted."""
    cli = planted_project(tmp_path, monkeypatch)
    commands = [("validate",), ("plan", "--as-of", "2026-12-01", "--out", str(tmp_path / "plan.json")),
                ("run", "--as-of", "2026-12-01")]
    for fmt in ("table", "csv", "json"):
        commands += [("review", "list", "--format", fmt),
                     ("review", "list", "--format", fmt, "--out", str(tmp_path / f"review.{fmt}")),
                     ("report", "nrr", "--as-of", "2026-12-01", "--by", "Industry", "--format", fmt,
                      "--out", str(tmp_path / f"report.{fmt}"))]
    outputs = {" ".join(args): (r.stdout + "\n" + r.stderr) for args in commands for r in [cli(*args)]}
    run_id = sqlite3.connect(tmp_path / "proj" / "state" / "nrr.db").execute(
        "SELECT id FROM runs WHERE mode = 'run'").fetchone()[0]
    for args in (("runs", "show", run_id, "--format", "json"), ("runs", "show", run_id)):
        r = cli(*args)
        outputs[" ".join(args)] = r.stdout + "\n" + r.stderr
    for f in tmp_path.iterdir():
        if f.is_file():
            outputs[f.name] = f.read_text(encoding="utf-8-sig")

    assert not leaks(outputs, [NAME_SECRET, SITE_SECRET, KEY_SECRET, *DERIVED])
    refs = sorted(it["parent_ref"] for it in json.loads(outputs["review list --format json"]))
    assert refs == ["placeholder:Parent_DUNS__c:[redacted]", "placeholder:domain:[redacted].com",
                    "placeholder:name:[redacted]"], refs
    plan = json.loads(outputs["plan.json"])
    assert "placeholder:name:[redacted]" in json.dumps(plan)


def test_the_ledger_keeps_the_exact_family_key_so_approving_works(tmp_path, monkeypatch):
    """Redaction is for people only: the review queue in the ledger keeps the exact key, so approving the
    redacted item creates the placeholder parent, and the Data Loader file names it exactly."""
    cli = planted_project(tmp_path, monkeypatch)
    cli("run", "--as-of", "2026-12-01")
    db = sqlite3.connect(tmp_path / "proj" / "state" / "nrr.db")
    (item,) = db.execute("SELECT id FROM review WHERE parent_ref = ?",
                         ("placeholder:name:qq7 planted secret",)).fetchall()
    cli("review", "approve", str(item[0]))
    cli("run", "--as-of", "2026-12-01")
    cli("export", "--out", str(tmp_path / "export"))
    full = (tmp_path / "export" / "full" / "Account.csv").read_text(encoding="utf-8-sig")
    assert "placeholder:name:qq7 planted secret" in full and f"{NAME_SECRET} US" in full


@pytest.mark.parametrize("secret, form", [
    ("Qq7-planted-secret", "qq7 planted secret"),          # folded: punctuation to spaces, lower case
    ("The Müller-Geheim GmbH", "muller geheim"),           # the name key: accents, "The" and the legal form go
    ("R&D-Secret-9", "r and d secret 9"),                  # "&" as "and" in the key
    ("Straße-Geheim-77", "strasse-geheim-77"),             # a key field's casefold
    ("Esc\x1b[2J-secret", "Esc\\x1b[2J-secret"),           # as a terminal shows it
])
def test_the_derived_forms_of_a_secret_are_redacted(monkeypatch, secret, form):
    """Each form the engine derives from a secret of 6+ characters is redacted inside a longer text, in any case;
    the rest of the text is kept."""
    monkeypatch.setenv("SF_PASSWORD", secret)
    text = f"parent_ref placeholder:name:{form.upper()} us, then more"
    out = log_mod.redact_text(text)
    assert form.casefold() not in out.casefold() and out.endswith(" us, then more"), out
    assert "[redacted]" in out


def test_short_derived_forms_are_whole_tokens_and_tiny_ones_are_dropped(monkeypatch):
    """A derived form under 6 characters is redacted as a whole token only (as a short secret is), and one under
    VARIANT_MIN characters is not registered: "!!!!!1" does not blank every "1"."""
    monkeypatch.setenv("SF_PASSWORD", "a.b.c.d.e")   # folds to "abcde"
    assert log_mod.redact_text("key name:abcde here; abcdef stays") == "key name:[redacted] here; abcdef stays"
    monkeypatch.setenv("SF_PASSWORD", "!!!!!1")
    assert log_mod.redact_text("1 link(s) applied, 1 to review") == "1 link(s) applied, 1 to review"
    assert log_mod.redact_text("x !!!!!1 y") == "x [redacted] y"


def test_the_pre_check_still_skips_texts_without_a_secret(monkeypatch):
    """The derived forms are needles of the one substring pre-check: a text with neither the secret nor a form
    of it is returned as it is (the same object), one with a form goes through the patterns."""
    monkeypatch.setenv("SF_PASSWORD", NAME_SECRET)
    r = log_mod.Redactor()
    clean = "Globex Corporation,placeholder:name:zeta analytics,120000.00"
    assert r.text(clean) is clean and not r.hits(clean)
    assert r.hits("placeholder:name:qq7 planted secret")
    assert r.json({"stem": "qq7 planted secret"}) == '{"stem": "[redacted]"}'


# ---- F6: the Bearer/OAuth rule takes tokens, not prose ----------------------------------------------------------

def _engine_texts_about_bearer_or_oauth() -> list[str]:
    """Every string literal (messages, help, docstrings) in nrr_engine that says "bearer" or "oauth"."""
    found = []
    for path in Path(nrr_engine.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    re.search(r"(?i)\b(bearer|oauth)\s", node.value):
                found.append(node.value)
    return found


def test_the_engine_s_own_texts_about_bearer_and_oauth_are_left_alone(monkeypatch):
    """With no secret in the environment, every text of the engine that mentions bearer or OAuth (the RSA key
    hint "the JWT bearer flow signs with RS256", the double's help) comes out of the redactor unchanged."""
    for name in list(os.environ):
        if any(h in name.upper() for h in log_mod.SECRET_HINTS):
            monkeypatch.delenv(name)
    texts = _engine_texts_about_bearer_or_oauth()
    assert any("the JWT bearer flow signs with RS256" in t for t in texts)
    assert [t for t in texts if log_mod.redact_text(t) != t] == []


def _session_id() -> str:
    """A session id as Salesforce issues them: the 15-character org Id, "!", then ~96 of [A-Za-z0-9._]."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._"
    rng = stdlib_random.Random(20261201)   # the same on every collection (pytest-xdist compares them)
    return "00D5g000004bXyZ!AQ" + "".join(rng.choice(alphabet) for _ in range(94))


@pytest.mark.parametrize("token", [
    _session_id(),
    "00D5e1c0a9b8f7d6c5b4a3f2!Zq8xW3vY7bN2mK5pL9sT4rUe",                        # the double's shape
    "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiIzTVZHOU94VHlFTUNRM2dOcDJQamtxZVpLeG5tQWlHMXhWNG9IaDlBS0xfclNLLkJvU1ZQR1pIUXVrWG5W"
    "anpSZ1N1UXFHbjc1Tkw3eWZrUWN5eTcifQ.c2lnbmF0dXJl",                       # a JWT
    "T1amGT21.Idup.298885bf38e99053dca3434eb59c6aa",
    "AbCdEf0123456789+/xyZ==",                                                  # base64 with padding
])
@pytest.mark.parametrize("template", ["Authorization: Bearer {}\r\nHost: x", '{{"Authorization": "Bearer {}"}}',
                                      "INVALID_SESSION_ID: OAuth {}; expired", "bearer {}"])
def test_real_looking_tokens_after_bearer_or_oauth_are_redacted(monkeypatch, token, template):
    """Session ids, the double's tokens, a JWT and base64 tokens after Bearer/OAuth (a header, JSON, an error) are
    redacted whole, with the text around them kept, though no secret is registered."""
    for name in list(os.environ):
        if any(h in name.upper() for h in log_mod.SECRET_HINTS):
            monkeypatch.delenv(name)
    out = log_mod.redact_text(template.format(token))
    assert out == template.format("[redacted]"), out


def test_prose_after_bearer_is_kept():
    """Words after "bearer" or "OAuth" in a sentence are not a token: the hint keeps its words."""
    for text in ("the JWT bearer flow signs with RS256, which needs one", "OAuth 2.0 JWT bearer token flow",
                 "the bearer token expired; log in again", "OAuth error: invalid_grant",
                 "send it as Bearer <access token>", "Bearer server-to-server integration"):
        assert log_mod.redact_text(text) == text


def test_a_bad_key_s_messages_keep_their_hints_and_hide_its_content(tmp_path, monkeypatch):
    """JWT through the double: an EC key says "the JWT bearer flow signs with RS256" in full; a fake PEM block
    gets the hint that quotes both PEM headers in full (its BEGIN/END lines are no secret), and no line of the
    file's body shows."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p, pem = _jwt_project(tmp_path, monkeypatch, "")
    key = tmp_path / "server.key"
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    fake = "-----BEGIN RSA PRIVATE KEY-----\nPLANTEDnotbase64bodyLINE0123456789\n-----END RSA PRIVATE KEY-----\n"
    with p.double.serve():
        key.write_bytes(ec_key)
        r = p.cli("plan", "--as-of", AS_OF, expect=2)
        assert "is not an RSA private key; the JWT bearer flow signs with RS256, which needs one" in r.stderr, r.stderr
        body = [line for line in ec_key.decode().splitlines() if "-----" not in line]
        assert not leaks({"stderr": r.stderr + r.stdout}, body)
        key.write_text(fake)
        r = p.cli("plan", "--as-of", AS_OF, expect=2)
        assert ("(it starts -----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----; the certificate "
                "uploaded to the app is made from it)") in r.stderr, r.stderr
        assert not leaks({"stderr": r.stderr + r.stdout}, ["PLANTEDnotbase64bodyLINE0123456789"])
        key.write_bytes(pem)
        p.cli("plan", "--as-of", AS_OF)   # the real key logs in
