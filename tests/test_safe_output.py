"""Hostile input stays data (issue 12, findings 4 and 5): a name an attacker typed into Salesforce is neutralised in
the CSVs people open, kept byte-exact in Data Loader change sets, escaped on the terminal; temporary and lock files
never follow a planted symlink; state and exports are private whatever the umask; the demo asks before
overwriting; the Docker image is pinned."""
from __future__ import annotations

import csv
import io
import os
import re
import stat
import tomllib
from pathlib import Path

import pytest

from conftest import Cli, read_csv
from test_matching import AS_OF, shipped_rules

ROOT = Path(__file__).resolve().parents[1]
FORMULA = '=HYPERLINK("http://x","y")'
CMD = "+cmd|' /C calc'!A0"
SUM = "@SUM(1+1)"
ESCAPES = "\x1b[2J\x1b]0;pwned\x07\u202e"   # clear screen, an OSC window title, a right-to-left override


def hostile_org(org, child: str, region: str = SUM):
    """Northwind and its unlinked Dental subsidiary (a link for review), the child named `child`, the parent in
    region `region`; the shipped rules."""
    org.account("001N1", "Northwind Traders, Inc.", BillingCountry="United States", region=region)
    org.account("001N2", child, BillingCountry="United States")
    org.sub("001N1", "2024-01-01", "", "120000")
    org.sub("001N2", "2024-06-01", "", "60000")
    org.rules = shipped_rules()
    return org.write()


@pytest.fixture
def umask_022():
    """The usual umask (files 0644, folders 0755 unless the code says otherwise)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_formula_name_is_neutralised_in_review_csv_report_csv_and_full_export(org, cli, tmp_path):
    """A child named like a formula and a region like one: review list csv, report nrr csv and full/ show them
    with a leading quote (a spreadsheet shows text); figures such as -500.00 are left numbers."""
    name = "=Northwind Traders Dental"
    hostile_org(org, name)
    cli("run", *AS_OF)
    rows = list(csv.DictReader(io.StringIO(cli("review", "list", "--format", "csv").stdout)))
    assert [r["child_name"] for r in rows] == ["'" + name]
    report = list(csv.DictReader(io.StringIO(cli("report", "nrr", "--by", "Region__c", "--format", "csv",
                                                 *AS_OF).stdout)))
    assert "'" + SUM in [r["segment_value"] for r in report] and SUM not in [r["segment_value"] for r in report]
    cli("export", "--out", str(tmp_path / "ex"))
    full = {r["Id"]: r for r in read_csv(tmp_path / "ex" / "full" / "Account.csv")}
    assert full["001N2"]["Name"] == "'" + name and full["001N1"]["Region__c"] == "'" + SUM
    subs = read_csv(tmp_path / "ex" / "full" / "Subscription__c.csv")
    assert sorted(r["Amount__c"] for r in subs) == ["120000", "60000"]


def test_the_owasp_rule_and_numbers():
    """Every cell that starts with = + - @ tab or CR gets a quote; numbers, plain text and non-strings do not."""
    from nrr_engine.safe_output import csv_cell
    for cell in (FORMULA, CMD, SUM, "-2+3", "\t=1", "\r=1", "+", "-"):
        assert csv_cell(cell) == "'" + cell
    for cell in ("-500.00", "+12", "1e5", "-.5", "Acme", "", "'=already", 7, None):
        assert csv_cell(cell) == cell


def test_a_change_set_keeps_a_hostile_name_byte_exact(tmp_path):
    """Data Loader change sets are not neutralised: the name reaches the org exactly as it is (a quote would be
    loaded into Salesforce as part of the name)."""
    from nrr_engine.sinks.change_set import write_csv as change_csv
    rows = [["001N2", FORMULA], ["001N3", CMD], ["001N4", SUM]]
    path = change_csv(tmp_path / "Account.update.csv", ["Id", "Name"], rows)
    expected = io.StringIO(newline="")
    w = csv.writer(expected)
    w.writerow(["Id", "Name"])
    w.writerows(rows)
    assert path.read_bytes() == expected.getvalue().encode("utf-8")
    assert mode(path) == 0o600


def test_terminal_output_escapes_control_characters(org, cli, tmp_path):
    """review list, the run summary and the report table show ESC, an OSC title and U+202E escaped, never raw."""
    hostile_org(org, "Northwind Traders Dental" + ESCAPES, region="EMEA" + ESCAPES)
    outputs = {"run": cli("run", *AS_OF).stdout, "review": cli("review", "list").stdout,
               "report": cli("report", "nrr", "--by", "Region__c", *AS_OF).stdout}
    for what, out in outputs.items():
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, what
    assert "Dental\\x1b[" in outputs["review"]  # escaped, then cut to the column
    assert "EMEA\\x1b[2J" in outputs["run"] and "EMEA\\x1b[2J" in outputs["report"]


def test_an_error_message_escapes_control_characters(org, cli):
    """An error that quotes a value it was given (a field that is no column) prints the value escaped."""
    from nrr_engine.safe_output import terminal
    assert terminal("a\x1b[2Jb\u202ec\x85d\nline") == "a\\x1b[2Jb\\u202ec\\x85d\\nline"
    assert terminal("two\nlines\x1b", keep_newlines=True) == "two\nlines\\x1b"
    org.account("001A", "Acme")
    org.write()
    r = cli("report", "nrr", "--by", "R\x1b]0;x\x07", *AS_OF, expect=2)
    assert "\x1b" not in r.output and "\x07" not in r.output and "field R\\x1b]0;x\\x07" in r.output


def test_planted_temp_file_symlinks_are_not_followed(org, cli, tmp_path):
    """plan.json.tmp and full/Account.csv.tmp planted as symlinks to a victim file: plan --out and export write
    their files without touching the victim."""
    org.account("001A", "Acme")
    org.sub("001A", "2024-01-01", "", "1000")
    org.write()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "plan.json.tmp").symlink_to(victim)
    (tmp_path / "ex" / "full").mkdir(parents=True)
    (tmp_path / "ex" / "full" / "Account.csv.tmp").symlink_to(victim)
    cli("plan", "--out", str(tmp_path / "plan.json"), *AS_OF)
    cli("export", "--out", str(tmp_path / "ex"))
    assert victim.read_text() == "precious\n"
    assert (tmp_path / "plan.json").read_text().startswith('{"run_id"')
    assert read_csv(tmp_path / "ex" / "full" / "Account.csv")[0]["Name"] == "Acme"


def test_a_planted_lock_symlink_is_refused(org, cli, tmp_path):
    """state/nrr.lock planted as a symlink: the run stops (exit 3, naming the lock) and creates nothing there."""
    org.account("001A", "Acme")
    org.write()
    (tmp_path / "state").mkdir()
    victim = tmp_path / "elsewhere"
    (tmp_path / "state" / "nrr.lock").symlink_to(victim)
    r = cli("run", *AS_OF, expect=3)
    assert "run lock" in r.output and not victim.exists()


def test_state_and_exports_are_private_whatever_the_umask(org, cli, tmp_path, umask_022):
    """Under umask 022 the state folder is 0700, the ledger and working copy 0600, and plan.json, the report
    file and every export file 0600 in 0700 folders."""
    org.account("001A", "Acme")
    org.sub("001A", "2024-01-01", "", "1000")
    org.write()
    cli("run", *AS_OF)
    cli("plan", "--out", str(tmp_path / "plan.json"), *AS_OF)
    cli("report", "nrr", "--out", str(tmp_path / "nrr.txt"), *AS_OF)
    cli("export", "--out", str(tmp_path / "ex"))
    state = tmp_path / "state"
    assert mode(state) == 0o700
    dbs = [p for p in state.iterdir() if p.suffix in (".db", ".lock")]
    assert len(dbs) >= 3 and all(mode(p) == 0o600 for p in dbs), {p.name: oct(mode(p)) for p in dbs}
    assert mode(tmp_path / "plan.json") == 0o600 and mode(tmp_path / "nrr.txt") == 0o600
    exported = list((tmp_path / "ex").rglob("*"))
    assert any(p.name == "Account.csv" for p in exported)
    assert all(mode(p) == (0o700 if p.is_dir() else 0o600) for p in [tmp_path / "ex", *exported])


def test_demo_refuses_a_folder_that_is_not_empty(tmp_path):
    """demo --dir EXISTING keeps the folder's own config unless --force (overwrite) or --fresh (start over)."""
    root = tmp_path / "mine"
    (root / "config").mkdir(parents=True)
    (root / "config" / "nrr.yaml").write_text("mine\n")
    r = Cli(None)("demo", "--dir", str(root), expect=2)
    assert "not empty" in r.output and "--force" in r.output
    assert (root / "config" / "nrr.yaml").read_text() == "mine\n"
    assert "run " in Cli(None)("demo", "--dir", str(root), "--force").stdout
    assert "run " in Cli(None)("demo", "--dir", str(root), "--fresh").stdout
    assert "run " in Cli(None)("demo", "--dir", str(tmp_path / "new")).stdout


def test_the_docker_image_and_its_dependencies_are_pinned():
    """The Dockerfile's base image has an exact version (or a digest) and it installs with constraints.txt, which
    pins every dependency of pyproject.toml to one version inside pyproject's range."""
    from packaging.requirements import Requirement
    docker = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", docker, re.M).group(1)
    assert "@sha256:" in base or re.fullmatch(r"python:\d+\.\d+\.\d+-[a-z]+-[a-z]+", base), base
    assert re.search(r"pip install[^\n]*-c constraints\.txt", docker) and "COPY" in docker
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        req = Requirement(dep)
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        assert key in pins and req.specifier.contains(pins[key]), f"{dep}: constraints.txt pins {pins.get(key)}"
    assert [d for d in project["dependencies"] if "==" in d] == [], "pyproject keeps ranges for library users"

