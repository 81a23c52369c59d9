"""A second new user's security trial (findings 3, 4, 5): validate checks the private key file as a run does
(exit 2 at its line, no login) and says which credential is missing; a path in config of the wrong kind (a folder
for a file, a file for a folder) is exit 2 at its key; a rules glob that matches no file is a warning at its line
(and a run's finding), one that points outside the project is refused whether or not its folder exists."""
from __future__ import annotations

import json
import sqlite3

import pytest

import test_trial12_config as trial12
from conftest import Cli
from test_salesforce import AS_OF
from test_salesforce_strict import _jwt_project

project = trial12.project   # `nrr-engine init proj` in a fresh folder: (its config, the project folder)
line_of, errors = trial12.line_of, trial12.errors


def warnings_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning: ")]


def set_rules(cfg, rules: str) -> None:
    text = cfg.read_text()
    assert "rules: [../rules/*.yaml]" in text
    cfg.write_text(text.replace("rules: [../rules/*.yaml]", f"rules: [{rules}]"))


# ---- F3: validate checks the key file as the run does ----------------------------------------------------------

def _bad_keys(tmp_path) -> dict[str, tuple[bytes | None, str]]:
    """File content (None: a folder, missing: no file) -> what the error says, for six kinds of bad key file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    import datetime as dt

    pk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "nrr")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pk.public_key())
            .serial_number(1).not_valid_before(dt.datetime(2026, 1, 1)).not_valid_after(dt.datetime(2027, 1, 1))
            .sign(pk, hashes.SHA256()))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "garbage": (b"PLANTED-garbage-not-a-key\n", "is not a PEM private key (it has no PEM block)"),
        "cert": (cert.public_bytes(serialization.Encoding.PEM), "is not a PEM private key (it holds a certificate"),
        "encrypted": (pk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"pw")), "is an encrypted private key"),
        "ec": (ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()), "is not an RSA private key"),
        "folder": (None, "is not a regular file (it is a folder)"),
        "missing": (b"", "does not exist"),
    }


def test_validate_refuses_a_bad_private_key_at_its_line_without_logging_in(tmp_path, monkeypatch):
    """JWT with SF_CONSUMER_KEY set: a garbage file, a certificate, an encrypted key, an EC key, a folder and a
    missing file as private_key_file are each `validate` exit 2 at that config line (as `plan`), with no "ok", no
    "org checks skipped" note, no token request to the double and the file never quoted; the real key then logs
    in and checks describe."""
    p, pem = _jwt_project(tmp_path, monkeypatch, "")
    cfg, key = p.cli.config, tmp_path / "server.key"
    where = f"{cfg}:{line_of(cfg, 'private_key_file:')}: source.private_key_file: '{key}'"
    with p.double.serve():
        for kind, (content, says) in _bad_keys(tmp_path).items():
            key.unlink()
            if content is None:
                key.mkdir()
            elif content:
                key.write_bytes(content)
            r = p.cli("validate", expect=2)
            assert len(errors(r)) == 1 and errors(r)[0].startswith(f"error: {where} {says}"), (kind, r.stderr)
            assert "ok (" not in r.stdout and "org checks skipped" not in r.stdout + r.stderr, kind
            assert "PLANTED" not in r.stdout + r.stderr and "internal error" not in r.stderr
            assert p.double.token_hosts == [], kind   # nothing was sent anywhere
            plan = p.cli("plan", "--as-of", AS_OF, expect=2)
            assert f"error: {where} {says}" in plan.stderr, (kind, plan.stderr)
            p.double.token_hosts.clear()
            if content is None:
                key.rmdir()
                key.touch()
        key.write_bytes(pem)
        r = p.cli("validate")
    assert "fields checked against Salesforce's describe" in r.stdout and p.double.token_hosts


def test_validate_says_which_credential_is_missing(tmp_path, monkeypatch):
    """JWT with a good key file but SF_CONSUMER_KEY unset: validate is ok, its note names the variable and the ok
    line says the credentials are incomplete, not that there are none; with neither the key file nor the
    consumer key it says there are none."""
    p, _ = _jwt_project(tmp_path, monkeypatch, "")
    monkeypatch.delenv("SF_CONSUMER_KEY")
    r = p.cli("validate")
    # (not the words "consumer key": a test before may have registered the double's key, CONSUMER-KEY, as a secret)
    assert "note: org checks skipped: source.auth needs the connected app's " in r.stdout
    assert "in the environment variable SF_CONSUMER_KEY, which is not set; with the credentials set" in r.stdout
    assert r.stdout.rstrip().endswith("org fields not checked (Salesforce credentials incomplete: see the note above))")
    assert "no Salesforce credentials" not in r.stdout
    cfg = p.cli.config
    cfg.write_text(cfg.read_text().replace(f", private_key_file: {tmp_path / 'server.key'}", ""))
    monkeypatch.delenv("SF_PRIVATE_KEY_FILE", raising=False)
    r = p.cli("validate")
    assert "note: org checks skipped: source.auth jwt needs the private key file" in r.stdout
    assert r.stdout.rstrip().endswith("org fields not checked (no Salesforce credentials))")


# ---- F4: a path of the wrong kind ------------------------------------------------------------------------------

def test_a_folder_as_private_key_file_is_exit_2_and_logged_so(tmp_path, monkeypatch):
    """private_key_file a folder: `plan --debug` is exit 2 at the config line saying it is a folder (was "error: Is
    a directory: 11", exit 3, logged as exit_code 70), and its run.failed event says exit_code 2."""
    p, _ = _jwt_project(tmp_path, monkeypatch, "")
    cfg, key = p.cli.config, tmp_path / "server.key"
    key.unlink()
    key.mkdir()
    with p.double.serve():
        r = p.cli("--debug", "plan", "--as-of", AS_OF, expect=2)
    want = (f"{cfg}:{line_of(cfg, 'private_key_file:')}: source.private_key_file: '{key}' is not a regular file "
            "(it is a folder); expected the PEM file of the connected app's private key")
    assert errors(r)[0].startswith(f"error: {want}"), r.stderr
    failed = [json.loads(line) for line in r.stderr.splitlines() if '"run.failed"' in line]
    assert [f["exit_code"] for f in failed] == [2] and failed[0]["error"].startswith(want)


def test_an_os_error_is_logged_with_the_exit_code_the_cli_ends_with():
    """engine.failure_of (the run.failed event's exit code) gives an OSError exit 3 with its text, as cli.guarded
    ends on it, not 70."""
    from nrr_engine.engine import failure_of

    assert failure_of(IsADirectoryError(21, "Is a directory", "/x/y")) == (3, "Is a directory: /x/y")


CASES = {   # name -> (what to do to the init project, the config text the error is at, the error after file:line: )
    "state a folder": (lambda cfg, proj: (proj / "state" / "nrr.db").mkdir(parents=True), "state:",
                       "state: {proj}/state/nrr.db is a folder, not a file; expected the SQLite ledger file "
                       "(e.g. ../state/nrr.db), which the first run creates"),
    "state under a file": (lambda cfg, proj: cfg.write_text(cfg.read_text().replace(
        "state: ../state/nrr.db", "state: ../org/Account.csv/nrr.db")), "state:",
        "state: {proj}/org/Account.csv/nrr.db cannot be reached: {proj}/org/Account.csv is a file, not a folder; "
        "expected the SQLite ledger file (e.g. ../state/nrr.db), which the first run creates"),
    "source.path a file": (lambda cfg, proj: cfg.write_text(cfg.read_text().replace(
        "path: ../org}", "path: ../org/Account.csv}")), "source:",
        "source.path: {proj}/org/Account.csv is a file, not a folder; expected the folder of <SObject>.csv files "
        "(the one that holds Account.csv)"),
    "working_copy a folder": (lambda cfg, proj: (cfg.write_text(cfg.read_text().replace(
        "path: ../org}", "path: ../org, working_copy: ../state/wc}")), (proj / "state" / "wc").mkdir(parents=True)),
        "source:", "source.working_copy: {proj}/state/wc is a folder, not a file; expected the SQLite file the run "
                   "keeps the working copy in, which the first run creates"),
    "default working copy a folder": (lambda cfg, proj: (proj / "state" / "local-org.db").mkdir(parents=True),
                                      "state:", "state: the working copy beside it, {proj}/state/local-org.db, is a "
                                      "folder, not a file; expected the SQLite file the run keeps the working copy "
                                      "in, which the first run creates (or set source.working_copy: FILE)"),
    "mirror a folder": (lambda cfg, proj: (cfg.write_text(cfg.read_text().replace(
        "source: {kind: local, path: ../org}", "source: {kind: salesforce, auth: password, mirror: ../state/m}")),
        (proj / "state" / "m").mkdir(parents=True)), "source:",
        "source.mirror: {proj}/state/m is a folder, not a file; expected the SQLite file the run keeps the mirror "
        "in, which the first run creates"),
    "rules a plain folder": (lambda cfg, proj: set_rules(cfg, "../rules"), "rules:",
                             "rules[0]: '../rules' is a folder; expected a rule file or a pattern of them "
                             "(e.g. '../rules/*.yaml')"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_config_path_of_the_wrong_kind_is_exit_2_at_its_key(project, case):
    """A folder where the config names a file (state, working_copy, the default working copy beside state, a
    Salesforce mirror), a file where it names a folder (source.path, a folder on state's way), a plain rules path
    that is a folder: validate and plan are each exit 2 with one error at the config line naming the key (plan was
    exit 3, "unable to open database file"; validate said ok)."""
    cfg, proj = project
    make, at, says = CASES[case]
    make(cfg, proj)
    want = f"error: {cfg}:{line_of(cfg, at)}: {says.format(proj=proj)}"
    assert errors(Cli(cfg)("validate", expect=2)) == [want]
    assert errors(Cli(cfg)("plan", "--as-of", AS_OF, expect=2)) == [want]


def test_a_mapping_table_that_is_a_folder_is_exit_2_at_its_table_line(project):
    """table: mappings.csv where mappings.csv is a folder: validate and plan are exit 2 at the rule's table: line
    (was "error: Is a directory: 3", and plan exit 3 logged as 70)."""
    cfg, proj = project
    table = proj / "rules" / "mappings.csv"
    table.unlink()
    table.mkdir()
    rule = proj / "rules" / "match-mapping.yaml"
    want = (f"error: {rule}:{line_of(rule, 'table:')}, rule acquisitions: table: {table} is a folder, not a file; "
            "expected a CSV file of child,parent[,note] rows (or a YAML list of {child: ..., parent: ...})")
    assert errors(Cli(cfg)("validate", expect=2)) == [want]
    r = Cli(cfg)("plan", "--as-of", AS_OF, expect=2)
    assert errors(r) == [want] and '"exit_code": 70' not in r.stderr


def test_a_folder_matched_as_a_rule_file_is_exit_2_naming_it(project):
    """rules/old.yaml a folder, matched by ../rules/*.yaml: validate and plan are exit 2 at the rules line naming
    the folder (validate said "Is a directory: <fd>", plan exit 3); a folder the glob ../rules/* matches is no rule
    file and no problem."""
    cfg, proj = project
    (proj / "rules" / "old.yaml").mkdir()
    want = (f"error: {cfg}:{line_of(cfg, 'rules:')}: rules[0]: '../rules/*.yaml' matches the folder "
            f"'{proj / 'rules' / 'old.yaml'}'; expected rule files only: rename or move the folder")
    assert errors(Cli(cfg)("validate", expect=2)) == [want]
    assert errors(Cli(cfg)("plan", "--as-of", AS_OF, expect=2)) == [want]
    (proj / "rules" / "old.yaml").rename(proj / "rules" / "archive")
    set_rules(cfg, "../rules/*")
    r = Cli(cfg)("validate")
    assert errors(r) == [] and warnings_of(r.stdout) == [] and "6 matching rule(s)" in r.stdout
    Cli(cfg)("plan", "--as-of", AS_OF)


# ---- F5: a rules glob that matches nothing ---------------------------------------------------------------------

def test_a_rules_glob_that_matches_no_file_is_a_warning_at_its_line_and_a_run_finding(project):
    """rules: [../rulez/*.yaml] (a typo): validate is ok (exit 0) but prints a warning at the rules line saying it
    matches no file and that its folder does not exist; plan prints it as a config_warning finding and the ledger
    keeps it; a glob that matches only CSVs says it matches no YAML file."""
    cfg, proj = project
    set_rules(cfg, "../rulez/*.yaml, ../rules/*.yaml")
    at = f"{cfg}:{line_of(cfg, 'rulez')}"
    says = (f"rules[0]: '../rulez/*.yaml' matches no file (the folder {proj / 'rulez'} does not exist); no rule is "
            "read from it, so repair runs without its rules: fix the pattern (e.g. '../rules/*.yaml') or remove it")
    r = Cli(cfg)("validate")
    assert warnings_of(r.stdout) == [f"warning: {at}: {says}"]
    assert " 4 rule file(s)" in r.stdout   # the other pattern still counts
    r = Cli(cfg)("plan", "--as-of", AS_OF)
    assert f"  data quality warning [config_warning]: {at}: {says}" in r.stdout.splitlines()
    db = sqlite3.connect(proj / "state" / "nrr.db")
    assert db.execute("SELECT kind, severity, message FROM findings WHERE kind = 'config_warning'").fetchall() == [
        ("config_warning", "warning", f"{at}: {says}")]
    cfg.write_text(cfg.read_text().replace("rules: [../rulez/*.yaml, ../rules/*.yaml]", "rules: [../rules/*.csv]"))
    r = Cli(cfg)("validate")
    assert warnings_of(r.stdout) == [f"warning: {at}: rules[0]: '../rules/*.csv' matches no .yaml or .yml file "
                                     "(rule files are YAML); no rule is read from it, so repair runs without its "
                                     "rules: fix the pattern (e.g. '../rules/*.yaml') or remove it"]


def test_a_plain_rules_path_that_does_not_exist_stays_an_error(project):
    """rules: [../rules/nope.yaml] (no wildcard): exit 2 at its line, not a warning."""
    cfg, _ = project
    set_rules(cfg, "../rules/nope.yaml")
    r = Cli(cfg)("validate", expect=2)
    assert errors(r) == [f"error: {cfg}:{line_of(cfg, 'nope')}: rules: file ../rules/nope.yaml does not exist"]
    assert warnings_of(r.stdout + r.stderr) == []


@pytest.mark.parametrize("pattern", ["../../../etc/*.conf", "../../nowhere/*.yaml", "../../empty/*.yaml",
                                     "../../nowhere/rules.yaml"])
def test_a_rules_path_outside_the_project_is_refused_whether_or_not_its_folder_exists(project, tmp_path, pattern):
    """A rules glob (or plain path) whose fixed folder is outside the project: exit 2 at its line, "outside the
    project folder", for a folder that does not exist (../../../etc of a project whose grandparent has no etc)
    and an empty one alike (was ok, 0 rule files); listing the folder under allowed_paths: makes it a warning."""
    cfg, proj = project
    (tmp_path / "empty").mkdir()
    set_rules(cfg, pattern)
    want = (f"error: {cfg}:{line_of(cfg, pattern)}: rules[0]: '{pattern}' is outside the project folder {proj}; "
            "expected a path inside it (or list the folder under allowed_paths:)")
    assert errors(Cli(cfg)("validate", expect=2)) == [want]
    assert errors(Cli(cfg)("plan", "--as-of", AS_OF, expect=2)) == [want]
    if pattern.endswith("*.yaml"):
        folder = (cfg.parent / pattern).parent.resolve()
        cfg.write_text(cfg.read_text() + f"allowed_paths: [{folder}]\n")
        gone = "" if folder.exists() else f" (the folder {folder} does not exist)"
        assert warnings_of(Cli(cfg)("validate").stdout) == [
            f"warning: {cfg}:{line_of(cfg, pattern)}: rules[0]: '{pattern}' matches no file{gone}; no rule is read "
            "from it, so repair runs without its rules: fix the pattern (e.g. '../rules/*.yaml') or remove it"]


def test_the_init_and_demo_configs_validate_without_warnings(project, tmp_path):
    """The configs `init` and the demo write: validate is ok with no warning line, and their rules globs match
    the shipped rule files."""
    from nrr_engine.demo.generator import write_demo_config

    cfg, _ = project
    r = Cli(cfg)("validate")
    assert warnings_of(r.stdout) == [] and " 4 rule file(s)" in r.stdout
    from nrr_engine.config import load

    demo = write_demo_config(tmp_path / "demo")
    (tmp_path / "demo" / "org").mkdir()   # where the demo writes its org
    settings = load(demo)
    assert settings.warnings == () and len(settings.rule_files) >= 4
