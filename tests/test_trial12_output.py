"""A new user's security trial (trial 12), the outputs: every format printed to a terminal is escaped while a pipe
and --out keep the data (F3); one rule for every column of the review CSV and a table header quoted escaped once
(F13); --out into a folder that does not exist creates it 0700 and never names a temporary file, and review list
has --out (F9); init and demo create the project 0700/0600 whatever the umask, and validate and the run warn
about a config or rule file others could write (F5)."""
from __future__ import annotations

import csv
import io
import json
import os
import pty
import stat
import subprocess
import sys
import tempfile
import threading
import tty
from pathlib import Path

import pytest

import nrr_engine
from conftest import Cli
from test_matching import AS_OF
from test_safe_output import ESCAPES, hostile_org

PKG_ROOT = Path(nrr_engine.__file__).resolve().parents[1]   # the package under test (the base worktree's, there)
RAW = (b"\x1b", b"\x07", "\u202e".encode("utf-8"))           # ESC, BEL and U+202E as they would reach the terminal
NAME = "Northwind Traders Dental" + ESCAPES
REGION = "EMEA" + ESCAPES


def _child(args, stdout) -> tuple[int, str]:
    """Run `python -m nrr_engine ARGS` with `stdout` as its standard output; its exit code and stderr."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run([sys.executable, "-m", "nrr_engine", *args], stdin=subprocess.DEVNULL, stdout=stdout,
                              stderr=err, env={**os.environ, "PYTHONPATH": str(PKG_ROOT)}, timeout=120)
        err.seek(0)
        return proc.returncode, err.read()


def on_terminal(*args: str) -> bytes:
    """What the CLI writes to a terminal: its stdout is a pseudo-terminal in raw mode (no CR added), read back."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    chunks: list[bytes] = []

    def drain():  # read while the child writes: a full terminal buffer would block it
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child has exited and the terminal is closed
                return
            if not data:
                return
            chunks.append(data)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        code, err = _child(args, slave)
    finally:
        os.close(slave)
        reader.join(timeout=30)
        os.close(master)
    assert code == 0, err
    return b"".join(chunks)


def through_pipe(*args: str) -> bytes:
    """What the CLI writes to a pipe (`nrr-engine ... | less`)."""
    with tempfile.TemporaryFile() as out:
        code, err = _child(args, out)
        assert code == 0, err
        out.seek(0)
        return out.read()


@pytest.fixture
def hostile(org, cli):
    """Northwind's Dental subsidiary named with a clear-screen, an OSC window title and U+202E, its parent in a region
    named the same way; one run (a review item), then a decision whose --by and --note carry the same."""
    hostile_org(org, NAME, region=REGION)
    cli("run", *AS_OF)
    return org


@pytest.fixture
def umask_000():
    """umask 000: a file created without an explicit mode is world-writable."""
    old = os.umask(0)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# ---- F3: a terminal gets every format escaped; a pipe and --out keep the data ------------------------------------

def test_csv_and_json_reaching_a_terminal_show_control_characters_escaped(hostile):
    """review list --format csv/json, report nrr --format csv/json and runs list --format json on a pseudo-terminal:
    no raw ESC, BEL or U+202E reaches it; the CSV shows the hostile name and region escaped (one line end each)."""
    cfg = ["--config", str(hostile.config)]
    outputs = {
        "review csv": on_terminal(*cfg, "review", "list", "--format", "csv"),
        "review json": on_terminal(*cfg, "review", "list", "--format", "json"),
        "report csv": on_terminal(*cfg, "report", "nrr", "--by", "Region__c", "--format", "csv", *AS_OF),
        "report json": on_terminal(*cfg, "report", "nrr", "--by", "Region__c", "--format", "json", *AS_OF),
        "runs json": on_terminal(*cfg, "runs", "list", "--format", "json"),
    }
    for what, out in outputs.items():
        assert out.strip(), what
        assert not [c for c in RAW if c in out], (what, out[:400])
    escaped = "\\x1b[2J\\x1b]0;pwned\\x07\\u202e"
    review = outputs["review csv"].decode("utf-8")
    assert f"Northwind Traders Dental{escaped}" in review and "\r" not in review
    assert f"EMEA{escaped}" in outputs["report csv"].decode("utf-8")


def test_a_pipe_and_out_file_keep_the_data(hostile, tmp_path):
    """review list --format csv and report nrr --format csv through a pipe are the bytes --out writes: the hostile
    value as it is (a terminal escape is for terminals only), CRLF line ends, formula cells neutralised as ever."""
    cfg = ["--config", str(hostile.config)]
    report = through_pipe(*cfg, "report", "nrr", "--by", "Region__c", "--format", "csv", *AS_OF)
    values = [r["segment_value"] for r in csv.DictReader(io.StringIO(report.decode("utf-8"), newline=""))]
    assert REGION in values  # ESC [ 2 J kept: click no longer strips it as if it were a colour code
    Cli(hostile.config)("report", "nrr", "--by", "Region__c", "--format", "csv", "--out", str(tmp_path / "r.csv"),
                        *AS_OF)
    assert report == (tmp_path / "r.csv").read_bytes()
    review = through_pipe(*cfg, "review", "list", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(review.decode("utf-8"), newline="")))
    assert [r["child_name"] for r in rows] == [NAME] and review.count(b"\r\n") == 2
    Cli(hostile.config)("review", "list", "--format", "csv", "--out", str(tmp_path / "review.csv"))
    assert review == (tmp_path / "review.csv").read_bytes()


# ---- F13: one rule for every column; an excerpt escaped once -----------------------------------------------------

def test_every_review_csv_column_holds_the_data_by_one_rule(hostile, cli, tmp_path):
    """After approve --by 'eve<ESC>[2J' --note '=1+1 ok <OSC> ...': in the --status all CSV (not on a terminal),
    note, notes and decided_by all hold the raw text (notes neither escaped nor cut), a cell that starts like a formula is
    neutralised; on a terminal all three are escaped alike."""
    [item] = cli.json("review", "list", "--format", "json")
    by, note = "eve\x1b[2J", "=1+1 ok \x1b]0;pwn\x07" + " long" * 100
    cli("review", "approve", str(item["id"]), "--by", by, "--note", note)
    text = cli("review", "list", "--status", "all", "--format", "csv").stdout
    [row] = list(csv.DictReader(io.StringIO(text, newline="")))
    assert row["decided_by"] == by and row["note"] == "'" + note
    assert row["notes"].endswith(f" {by} approved: {note}")   # the decision's note, whole and raw
    assert "\\x1b" not in row["notes"] and "…" not in row["notes"]
    shown = on_terminal("--config", str(hostile.config), "review", "list", "--status", "all", "--format", "csv")
    assert not [c for c in RAW if c in shown]
    text = shown.decode("utf-8")
    assert ",'=1+1 ok \\x1b]0;pwn\\x07 long" in text                        # note
    assert " eve\\x1b[2J approved: =1+1 ok \\x1b]0;pwn\\x07 long" in text     # notes, escaped alike
    assert ",eve\\x1b[2J," in text                                           # decided_by


def test_a_table_header_error_quotes_the_header_escaped_once(org, cli):
    """A mapping table whose header is ESC[2J, an OSC title and 'child': validate quotes it with single escapes
    (\\x1b[2J, as the README shows), not doubled (\\\\x1b[2J)."""
    from test_matching import shipped_rules
    org.account("001A", "Acme")
    org.rules = shipped_rules()
    org.write()
    (org.root / "rules" / "mappings.csv").write_text("\x1b[2J\x1b]0;owned\x07child,parent\nA,B\n", encoding="utf-8")
    r = cli("validate", expect=2)
    line = next(ln for ln in r.stderr.splitlines() if "header is" in ln)
    assert "header is '\\x1b[2J\\x1b]0;owned\\x07child,parent'; expected child,parent" in line, line
    assert "\\\\" not in line and "\x1b" not in r.stderr
    from nrr_engine.yamlsource import excerpt
    assert excerpt("a\u202eb\\c") == "'a\\u202eb\\\\c'"   # a backslash in the value is shown as repr shows it


# ---- F9: --out into a new folder; review list --out ---------------------------------------------------------------

def test_out_into_a_folder_that_does_not_exist_creates_it_private(hostile, cli, tmp_path):
    """plan --out, report nrr --out and review list --out into folders that do not exist: written (0600), the
    missing folders created 0700, as export creates its own."""
    targets = {"plan": tmp_path / "new" / "sub" / "plan.json", "report": tmp_path / "rep" / "r.csv",
               "review": tmp_path / "rev" / "deep" / "review.csv"}
    cli("plan", "--out", str(targets["plan"]), *AS_OF)
    cli("report", "nrr", "--format", "csv", "--out", str(targets["report"]), *AS_OF)
    r = cli("review", "list", "--format", "csv", "--out", str(targets["review"]))
    assert "1 review item(s) written to" in r.stdout and r.stdout.count("\n") == 1  # the file, not stdout, has them
    assert json.loads(targets["plan"].read_text())["run_id"]
    assert targets["report"].read_text().startswith("view,period,window")
    assert targets["review"].read_text().startswith("id,status,confidence")
    for path in targets.values():
        assert mode(path) == 0o600, path
    for folder in (tmp_path / "new", tmp_path / "new" / "sub", tmp_path / "rep", tmp_path / "rev",
                   tmp_path / "rev" / "deep"):
        assert mode(folder) == 0o700, folder


def test_an_out_path_that_cannot_be_written_names_it_not_a_temporary_file(hostile, cli, tmp_path):
    """--out below a regular file (no folder can be made there): exit 3 naming the path asked for, never the
    internal `.NAME.xxxx.tmp`."""
    (tmp_path / "afile").write_text("x")
    for args in (("plan", "--out", str(tmp_path / "afile" / "plan.json"), *AS_OF),
                 ("report", "nrr", "--out", str(tmp_path / "afile" / "r.csv"), *AS_OF),
                 ("review", "list", "--out", str(tmp_path / "afile" / "review.csv"))):
        r = cli(*args, expect=3)
        assert ".tmp" not in r.stderr and str(tmp_path / "afile") in r.stderr, r.stderr
        assert "Not a directory" in r.stderr


def test_review_list_out_is_documented(cli):
    """review list --help and the README say --out FILE (0600)."""
    help_text = cli("review", "list", "--help").stdout
    assert "--out" in help_text and "0600" in help_text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "review list --format csv --out" in readme


# ---- F5: init and demo are private whatever the umask; others' write access is warned about -----------------------

def test_init_under_umask_000_creates_every_folder_0700_and_file_0600(tmp_path, umask_000):
    """init under umask 000: config/, rules/, org/, salesforce/ and everything in them are owner-only."""
    Cli(None)("init", str(tmp_path / "p"))
    paths = [tmp_path / "p", *(tmp_path / "p").rglob("*")]
    assert {"nrr.yaml", "mappings.csv", "Account.csv", "match-names.yaml"} <= {p.name for p in paths}
    wrong = {str(p): oct(mode(p)) for p in paths if mode(p) != (0o700 if p.is_dir() else 0o600)}
    assert not wrong, wrong
    assert "warning:" not in Cli(tmp_path / "p" / "config" / "nrr.yaml")("validate").output


def test_demo_under_umask_000_creates_its_project_private(tmp_path, umask_000):
    """demo --dir under umask 000: its config, rules and org (and the state the run makes) are owner-only."""
    root = tmp_path / "d"
    Cli(None)("demo", "--dir", str(root))
    paths = [root, *(p for sub in ("config", "rules", "org") for p in [root / sub, *(root / sub).rglob("*")])]
    assert len(paths) > 8
    wrong = {str(p): oct(mode(p)) for p in paths if mode(p) != (0o700 if p.is_dir() else 0o600)}
    assert not wrong, wrong


def test_validate_and_the_run_warn_about_a_config_or_rule_file_others_can_write(tmp_path):
    """A group/world-writable config file, rule file, mapping table and rules folder: validate exits 0 with a
    warning naming each and `chmod go-w FILE`; the run logs a warning for each; none once they are fixed."""
    Cli(None)("init", str(tmp_path / "p"))
    p = tmp_path / "p"
    loose = {p / "config" / "nrr.yaml": 0o666, p / "rules" / "match-names.yaml": 0o664,
             p / "rules" / "mappings.csv": 0o646, p / "rules": 0o777}
    for path, m in loose.items():
        os.chmod(path, m)
    cli = Cli(p / "config" / "nrr.yaml")
    out = cli("validate").output
    for path in loose:
        [line] = [ln for ln in out.splitlines() if ln.startswith("warning: ") and f" {path} is writable" in ln]
        assert f"`chmod go-w {path}`" in line, line
    assert "writable by group and others" in out and "writable by others" in out and "writable by group:" in out
    r = cli("plan", "--as-of", "2026-11-15")
    events = [json.loads(ln) for ln in r.stderr.splitlines() if ln.startswith("{")]
    warned = {e["file"]: e for e in events if e["event"] == "project_file.writable"}
    assert set(warned) == {str(path) for path in loose}
    assert all(e["level"] == "warning" and e["fix"] == f"chmod go-w {f}" for f, e in warned.items())
    for path in loose:
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    assert "writable" not in cli("validate").output
    assert "project_file.writable" not in cli("plan", "--as-of", "2026-11-15").stderr
