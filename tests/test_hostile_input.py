"""Hostile input stays data: rule files and mapping tables stay inside the project, files are regular and bounded,
YAML alias bombs and deep nesting are clean errors (exit 2, file:line), and object/field names are API names."""
from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import Cli

ROOT = Path(__file__).resolve().parents[1]
SECRET = "HUNTER2-TOP-SECRET-VALUE"


@pytest.fixture
def project(tmp_path) -> Path:
    """A fresh `nrr-engine init` project: <p>/config/nrr.yaml beside <p>/rules and <p>/org."""
    Cli(None)("init", str(tmp_path / "p"))
    return tmp_path / "p"


def _mapping_table(project: Path, table: str) -> None:
    path = project / "rules" / "match-mapping.yaml"
    text = path.read_text(encoding="utf-8")
    assert len(re.findall(r"^    table: \S+", text, flags=re.M)) == 1
    path.write_text(re.sub(r"^    table: \S+", f"    table: {table!r}", text, flags=re.M), encoding="utf-8")


def _config(project: Path, old: str, new: str) -> Path:
    cfg = project / "config" / "nrr.yaml"
    text = cfg.read_text(encoding="utf-8")
    assert old in text
    cfg.write_text(text.replace(old, new), encoding="utf-8")
    return cfg


def _run(args: list[str], timeout: float = 30) -> tuple[int, str, float, float]:
    """Run the CLI in a child (address space capped at 2 GB, killed after `timeout` s); return its exit code,
    stderr, wall seconds and its own peak RSS in MB (VmHWM of the engine process, polled until it exits)."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    with tempfile.TemporaryFile("w+") as err_fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "nrr_engine", *args], stdout=subprocess.DEVNULL, stderr=err_fh,
                                text=True, cwd=ROOT, preexec_fn=cap, env={**os.environ, "PYTHONPATH": str(ROOT)})
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        peak_kb = 0
        while proc.poll() is None:
            peak_kb = max(peak_kb, _hwm_kb(proc.pid))
            time.sleep(0.005)
        timer.cancel()
        wall = time.perf_counter() - t0
        code = proc.returncode
        err_fh.seek(0)
        return code, err_fh.read(), wall, peak_kb / 1024


def _hwm_kb(pid: int) -> int:
    """The child's peak RSS so far (VmHWM) once it runs the engine. Not ru_maxrss: a child forked from a test run
    that has grown counts the parent's pages it was forked with, so wait4 reports the test run's size, not its own."""
    try:
        if b"-m\x00nrr_engine" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return 0  # not exec'd yet: still the copy of the test process
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    line = next((ln for ln in status.splitlines() if ln.startswith("VmHWM:")), "VmHWM: 0 kB")
    return int(line.split()[1])


def test_a_mapping_table_outside_the_project_is_refused_and_never_quoted(project, tmp_path):
    """table: a file outside the project (or /proc/self/environ) is an error at the rule's line; no byte of it is read."""
    outside = tmp_path / "elsewhere" / "secrets.csv"
    outside.parent.mkdir()
    outside.write_text(f"API_KEY={SECRET}\n", encoding="utf-8")
    rule_file = project / "rules" / "match-mapping.yaml"
    original = rule_file.read_text(encoding="utf-8")
    for table in (str(outside), "../../elsewhere/secrets.csv", "/proc/self/environ"):
        _mapping_table(project, table)
        r = Cli(project / "config" / "nrr.yaml")("validate", expect=2)
        assert "is outside the project folder" in r.stderr and "match-mapping.yaml:" in r.stderr, r.stderr
        assert SECRET not in r.stderr and SECRET.lower() not in r.stderr and "api_key" not in r.stderr
        rule_file.write_text(original, encoding="utf-8")


def test_a_rules_glob_outside_the_project_is_refused(project, tmp_path):
    """rules: ['/etc/*'] or a ../../.. glob is an error at its line and none of the files it matches is read."""
    outside = tmp_path / "evil.yaml"
    outside.write_text(f"kind: {SECRET}\n", encoding="utf-8")
    for pattern in ("/etc/*", str(tmp_path / "*.yaml"), "../../evil.yaml"):
        cfg = _config(project, "rules: [../rules/*.yaml]", f"rules: [../rules/*.yaml, {pattern!r}]")
        r = Cli(cfg)("validate", expect=2)
        assert "rules[1]" in r.stderr and "is outside the project folder" in r.stderr, r.stderr
        assert SECRET not in r.stderr and "/etc/passwd" not in r.stderr
        _config(project, f"rules: [../rules/*.yaml, {pattern!r}]", "rules: [../rules/*.yaml]")
    assert "ok" in Cli(cfg)("validate").stdout  # the project's own rules still pass


def test_allowed_paths_lets_a_named_folder_in(project, tmp_path):
    """A folder listed under allowed_paths: may hold a mapping table; validate then reads it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "links.csv").write_text("child,parent\nAcme Sub,Acme\n", encoding="utf-8")
    _mapping_table(project, str(shared / "links.csv"))
    cfg = project / "config" / "nrr.yaml"
    assert "is outside the project folder" in Cli(cfg)("validate", expect=2).stderr
    cfg.write_text(cfg.read_text() + f"allowed_paths: [{str(shared)!r}]\n", encoding="utf-8")
    assert "ok" in Cli(cfg)("validate").stdout


@pytest.mark.parametrize("old, new, key", [
    ("path: ../org}", "path: {out}/org}", "source.path"),
    ("state: ../state/nrr.db", "state: {out}/nrr.db", "state"),
    ("path: ../org}", "path: ../org, working_copy: {out}/copy.db}", "source.working_copy"),
    ("path: ../org}", "path: ../org, working_copy: ../../outside/copy.db}", "source.working_copy"),
])
def test_every_data_path_in_config_stays_in_the_project_unless_allowed(project, tmp_path, old, new, key):
    """source.path, state and working_copy outside the project are an error at their line (exit 2) and nothing is
    read or created there; naming the folder under allowed_paths: lets it in."""
    out = tmp_path / "outside"
    (out / "org").mkdir(parents=True)
    for name in ("Account.csv", "Subscription__c.csv"):
        (out / "org" / name).write_bytes((project / "org" / name).read_bytes())
    cfg = _config(project, old, new.replace("{out}", str(out)))
    for command in (("validate",), ("plan", "--as-of", "2026-11-15"), ("run", "--as-of", "2026-11-15")):
        r = Cli(cfg)(*command, expect=2)
        assert "nrr.yaml:" in r.stderr and f"{key}:" in r.stderr and "is outside the project folder" in r.stderr, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["org"] and not (project / "state").exists()
    cfg.write_text(cfg.read_text() + f"allowed_paths: [{str(out)!r}]\n", encoding="utf-8")
    assert "ok" in Cli(cfg)("validate").stdout
    assert "accounts read:" in Cli(cfg)("plan", "--as-of", "2026-11-15").stdout


@pytest.mark.parametrize("key", ["private_key_file", "mirror"])
def test_salesforce_paths_in_config_stay_in_the_project_unless_allowed(project, tmp_path, key):
    """A JWT key file (e.g. private_key_file: /proc/self/environ) or a mirror outside the project is an error at
    its line before any login: the file is never read; allowed_paths: naming it lets it in."""
    value = "/proc/self/environ" if key == "private_key_file" else str(tmp_path / "mirror.db")
    cfg = _config(project, "source: {kind: local, path: ../org}",
                  "source: {kind: salesforce, instance_url: 'https://acme.my.salesforce.com', auth: jwt, "
                  f"username: ops@acme.example, {key}: {value!r}}}")
    r = Cli(cfg)("validate", expect=2)
    assert f"source.{key}:" in r.stderr and "is outside the project folder" in r.stderr, r.stderr
    assert "SF_" not in r.stderr and "PATH=" not in r.stderr
    cfg.write_text(cfg.read_text() + f"allowed_paths: [{value!r}]\n", encoding="utf-8")
    assert "is outside the project folder" not in Cli(cfg)("validate", expect=None).stderr


def test_a_table_header_error_quotes_a_short_escaped_excerpt(project):
    """A bad header is quoted as at most 60 characters, control characters escaped, case kept; never the whole line."""
    first = "\x1b[31mTOKEN=" + SECRET + "," + "x" * 200 + ",TAILMARKER"
    (project / "rules" / "mappings.csv").write_text(first + "\nA,B\n", encoding="utf-8")
    r = Cli(project / "config" / "nrr.yaml")("validate", expect=2)
    line = next(ln for ln in r.stderr.splitlines() if "header is" in ln)
    assert "mappings.csv:1" in line and "\\x1b[31mTOKEN=" in line and "\x1b" not in r.stderr
    assert "TAILMARKER" not in r.stderr and "tailmarker" not in r.stderr and "x" * 70 not in line
    quoted = line.split("header is ", 1)[1].split("; expected", 1)[0]
    assert len(quoted) <= 60 + 2 * 3 + 3 + 2  # 60 chars, \x1b escaped (+3), quotes and "..."


def test_non_regular_and_oversized_files_are_refused(project):
    """A FIFO as a rule file or table, /dev/zero as a table and a 9 MB table are errors (exit 2), not reads that
    block or fill memory."""
    os.mkfifo(project / "rules" / "pipe.yaml")
    cfg = project / "config" / "nrr.yaml"
    code, err, wall, _ = _run(["--config", str(cfg), "validate"], timeout=20)
    assert code == 2 and "pipe.yaml" in err and "not a regular file" in err, err
    (project / "rules" / "pipe.yaml").unlink()
    cfg.write_text(cfg.read_text() + "allowed_paths: [/dev]\n", encoding="utf-8")
    _mapping_table(project, "/dev/zero")
    code, err, wall, _ = _run(["--config", str(cfg), "validate"], timeout=20)
    assert code == 2 and "zero" in err and "not a regular file" in err, err
    big = project / "rules" / "big.csv"
    with open(big, "wb") as fh:
        fh.write(b"child,parent\n")
        fh.truncate(9 << 20)
    _mapping_table(project, "big.csv")
    r = Cli(cfg)("validate", expect=2)
    assert "big.csv" in r.stderr and "larger than 8 MB" in r.stderr


def _alias_bomb() -> str:
    """7 levels of 10 aliases: 10**7 values from a few hundred bytes."""
    lines = ["l0: &l0 [" + ", ".join(["xxxxxxxxxx"] * 10) + "]"]
    for i in range(1, 8):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text,message", [
    (_alias_bomb(), "expand to more than 100,000 values"),
    ("[" * 50_000 + "]" * 50_000 + "\n", "nested more than 64 levels deep"),
    ("a:\n" + "".join("  " * i + "- \n" for i in range(1, 500)), "nested more than 64 levels deep"),
])
def test_yaml_bombs_are_a_clean_error_fast(tmp_path, text, message):
    """An alias bomb and 50,000-deep (or 500-deep block) nesting: exit 2 with file:line within 2 s and 100 MB."""
    cfg = tmp_path / "nrr.yaml"
    cfg.write_text(text, encoding="utf-8")
    assert message.startswith("nested") or len(text.encode()) < 2000  # the bomb is small; its expansion is not
    code, err, wall, rss = _run(["--config", str(cfg), "validate"], timeout=20)
    assert code == 2 and message in err and f"{cfg}:" in err, err
    assert wall < 2.0 and rss < 100, (wall, rss)


def test_a_self_referring_alias_is_a_clean_error(tmp_path):
    """`a: &a [*a]` (a value containing itself) is exit 2 at its file, not a RecursionError."""
    cfg = tmp_path / "nrr.yaml"
    cfg.write_text("source: {kind: local}\na: &a [1, *a]\n", encoding="utf-8")
    r = Cli(cfg)("validate", expect=2)
    assert "refers to the value that contains it" in r.stderr and f"{cfg}:2" in r.stderr


@pytest.mark.parametrize("old,new,key", [
    ("object: Subscription__c", 'object: "../../../../services/data/v59.0/sobjects/User"', "arr.subscriptions.object"),
    ("amount: Amount__c", 'amount: "Amount__c FROM User --"', "arr.subscriptions.amount"),
    ("arr: Hierarchy_ARR__c", 'arr: "Hierarchy_ARR__c/../x"', "views[legal].fields.arr"),
    ("parent_field: ParentId", 'parent_field: "ParentId, (SELECT Id FROM Users)"', "views[legal].parent_field"),
])
def test_object_and_field_names_must_be_api_names(project, old, new, key):
    """An object or field name that is not ^[A-Za-z][A-Za-z0-9_]*$ is an error at its line before it reaches a
    describe URL, a CSV path or SOQL (the org is then not checked at all)."""
    cfg = _config(project, old, new)
    r = Cli(cfg)("validate", expect=2)
    line = next(ln for ln in r.stderr.splitlines() if "is not a Salesforce API name" in ln)
    assert line.startswith(f"error: {cfg}:") and key in line
    assert "org fields not checked" in r.stderr


def test_a_control_character_in_the_config_is_an_error_at_its_line(tmp_path):
    """A raw ESC in a YAML value (pasted from a terminal): exit 2 at the line it is on, naming the character
    (it was an internal error, exit 70, from PyYAML's ReaderError)."""
    cfg = tmp_path / "nrr.yaml"
    cfg.write_text('source: {kind: local, path: ../org}\nstate: ../state/nrr.db\ncurrency: "US\x1bD"\n', encoding="utf-8")
    r = Cli(cfg)("validate", expect=2)
    assert f"{cfg}:3: character U+001B is not allowed in YAML" in r.stderr
    assert "\x1b" not in r.stderr and "internal error" not in r.stderr


def test_a_text_parsed_twice_gives_independent_documents_and_errors_each_time(tmp_path):
    """The parse memo hands out copies (a caller editing its Document changes no later parse) and never keeps a
    failed parse: the same bad text is the same clean error the second time."""
    from nrr_engine.yamlsource import ConfigError, parse
    first = parse("a: {b: [1, 2]}\n", "x.yaml")
    first.data["a"]["b"].append(3)
    first.lines.clear()
    second = parse("a: {b: [1, 2]}\n", "x.yaml")
    assert second.data == {"a": {"b": [1, 2]}} and second.line_of(("a", "b")) == 1
    for _ in range(2):
        with pytest.raises(ConfigError, match="x.yaml:2"):
            parse("a: 1\n b: [\n", "x.yaml")
