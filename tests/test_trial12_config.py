"""A new user's security trial (findings 10, 11): a bad object name is one error at the key that names it; a path
that leaves the project through a symbolic link says which link and where it points; a symlinked run lock says so."""
from __future__ import annotations

import os
import re

import pytest

from conftest import Cli


@pytest.fixture
def project(tmp_path, monkeypatch):
    """`nrr-engine init proj` in a fresh folder: (its config, the project folder)."""
    monkeypatch.chdir(tmp_path)
    Cli(None)("init", "proj")
    return tmp_path / "proj" / "config" / "nrr.yaml", tmp_path / "proj"


def line_of(cfg, text: str) -> int:
    return next(i for i, line in enumerate(cfg.read_text().splitlines(), 1) if text in line)


def errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


# ---- F10 ------------------------------------------------------------------------------------------------------

def test_a_bad_object_name_is_one_error_at_its_own_key(project):
    """arr.subscriptions.object: Sub-scription is reported once, at arr.subscriptions.object, not again under
    account, start, end, amount and product (which hold valid names); a bad field beside it is its own error."""
    cfg, _ = project
    cfg.write_text(cfg.read_text().replace("object: Subscription__c", "object: Sub-scription"))
    r = Cli(cfg)("validate", expect=2)
    at = f"{cfg}:{line_of(cfg, 'Sub-scription')}"
    assert errors(r) == [f"error: {at}: arr.subscriptions.object: 'Sub-scription' is not a Salesforce API name; "
                         "expected letters, digits and _ starting with a letter (e.g. Subscription__c)"]
    cfg.write_text(cfg.read_text().replace("account: Account__c", "account: Acc-ount"))
    r = Cli(cfg)("validate", expect=2)
    assert [e.split(": ")[2] for e in errors(r)] == ["arr.subscriptions.object", "arr.subscriptions.account"]
    assert "'Acc-ount'" in errors(r)[1] and "Sub-scription" not in errors(r)[1]


# ---- F11 ------------------------------------------------------------------------------------------------------

def test_a_rule_file_symlinked_outside_is_named_with_its_target(project, tmp_path):
    """rules: [../rules-sym/*.yaml] where one member is a symbolic link to a file outside: the error names that
    member and the link's target (never read: the target is a FIFO, which a read would wait on)."""
    cfg, proj = project
    outside = tmp_path / "outside"
    outside.mkdir()
    os.mkfifo(outside / "evil.yaml")
    (proj / "rules-sym").mkdir()
    (proj / "rules-sym" / "ok.yaml").write_text((proj / "rules" / "match-names.yaml").read_text())
    (proj / "rules-sym" / "evil.yaml").symlink_to(outside / "evil.yaml")
    cfg.write_text(cfg.read_text().replace("rules: [../rules/*.yaml]", "rules: [../rules-sym/*.yaml]"))
    r = Cli(cfg)("validate", expect=2)
    assert errors(r) == [
        f"error: {cfg}:{line_of(cfg, 'rules-sym')}: rules[0]: '../rules-sym/*.yaml' matches "
        f"'{proj / 'rules-sym' / 'evil.yaml'}', which is outside the project folder {proj}: "
        f"'{proj / 'rules-sym' / 'evil.yaml'}' is a symbolic link to '{outside / 'evil.yaml'}' (not followed, "
        "nothing read through it); expected a path inside the project: replace the link with what it points at, or "
        "list the folder it points into under allowed_paths:"]


def test_state_through_a_symlinked_folder_or_file_names_the_link(project, tmp_path):
    """state: ../outlink/nrr.db with outlink a symbolic link to a folder outside, and state/nrr.db itself a link:
    each error names the link and its target; a link inside the project that leads to another link outside says
    where it ends up."""
    cfg, proj = project
    outside = tmp_path / "outside"
    outside.mkdir()
    (proj / "outlink").symlink_to(outside)
    text = cfg.read_text()
    cfg.write_text(text.replace("state: ../state/nrr.db", "state: ../outlink/nrr.db"))
    at = f"{cfg}:{line_of(cfg, 'state:')}: state"
    r = Cli(cfg)("validate", expect=2)
    assert errors(r)[0].startswith(f"error: {at}: '../outlink/nrr.db' is outside the project folder {proj}: "
                                   f"'{proj / 'outlink'}' is a symbolic link to '{outside}' (not followed")
    (proj / "state").mkdir(exist_ok=True)
    (proj / "state" / "nrr.db").symlink_to(outside / "victim.db")
    cfg.write_text(text)
    r = Cli(cfg)("validate", expect=2)
    assert errors(r)[0].startswith(f"error: {at}: '../state/nrr.db' is outside the project folder {proj}: "
                                   f"'{proj / 'state' / 'nrr.db'}' is a symbolic link to '{outside / 'victim.db'}'")
    (proj / "state" / "nrr.db").unlink()
    (proj / "hop").symlink_to(proj / "outlink")   # inside -> inside -> outside
    cfg.write_text(text.replace("state: ../state/nrr.db", "state: ../hop/nrr.db"))
    r = Cli(cfg)("validate", expect=2)
    assert f"'{proj / 'hop'}' is a symbolic link to '{proj / 'outlink'}', which leads to '{outside}'" in r.stderr
    assert not (outside / "victim.db").exists() and not (outside / "nrr.db").exists()


def test_a_path_outside_without_a_link_keeps_the_plain_message(project):
    """A path that leaves by itself (../../elsewhere) says it is outside, with no link to name."""
    cfg, proj = project
    cfg.write_text(cfg.read_text().replace("state: ../state/nrr.db", "state: ../../elsewhere/nrr.db"))
    r = Cli(cfg)("validate", expect=2)
    assert re.search(r"state: '\.\./\.\./elsewhere/nrr\.db' is outside the project folder .*; expected a path "
                     r"inside it \(or list the folder under allowed_paths:\)$", errors(r)[0])
    assert "symbolic link" not in r.stderr


def test_a_symlinked_run_lock_says_it_is_a_link_and_to_remove_it(project, tmp_path):
    """state/nrr.lock a symbolic link to a file outside: the run stops (exit 3) saying the lock file is a
    symbolic link, where it points and to remove it; the target is never created."""
    cfg, proj = project
    (proj / "state").mkdir(exist_ok=True)
    victim = tmp_path / "victim"
    (proj / "state" / "nrr.lock").symlink_to(victim)
    r = Cli(cfg)("run", expect=3)
    lock = proj / "state" / "nrr.lock"
    assert errors(r) == [f"error: {lock}: cannot create the run lock: the lock file is a symbolic link (to "
                         f"'{victim}'), and the lock is never opened through one; remove the link (rm {lock}) and "
                         "run again"]
    assert not victim.exists()
    lock.unlink()
    Cli(cfg)("run")
