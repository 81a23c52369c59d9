"""Config validation: every error names file:line and what was expected; `validate` collects them all."""
from __future__ import annotations

import json

import pytest

from conftest import Cli
from nrr_engine import config as config_mod
from nrr_engine.errors import ConfigErrors

GOOD = """\
source: {kind: local, path: ../org}
state: ../state/nrr.db
currency: USD
arr:
  source: account_field
  account_field: ARR__c
views: [{name: legal, parent_field: ParentId}]
schedule: {nightly: "0 2 * * *"}
"""


@pytest.fixture
def cfg_dir(tmp_path):
    """A folder with config/ and an org/ whose Account.csv has the fields GOOD names (and no records)."""
    (tmp_path / "config").mkdir()
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "Account.csv").write_text("Id,Name,ParentId,ARR__c\n", encoding="utf-8")
    return tmp_path


def write(cfg_dir, text: str):
    path = cfg_dir / "config" / "nrr.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_good_config_loads_with_paths_relative_to_the_file(cfg_dir):
    """Paths resolve against the config file's folder, and legal gets the default rollup fields."""
    s = config_mod.load(write(cfg_dir, GOOD))
    assert s.org_path == (cfg_dir / "org").resolve() and s.state == (cfg_dir / "state" / "nrr.db").resolve()
    assert s.views[0].fields["arr"] == "Hierarchy_ARR__c"


@pytest.mark.parametrize("text, line, words", [
    (GOOD.replace("currency: USD", "currency: USD\ncurrency: EUR"), 4, "duplicate key 'currency'"),
    (GOOD.replace("views: [{name", "views: [{name: legal, name"), 7, "duplicate key"),
    (GOOD + "surprise: 1\n", 9, "unknown key 'surprise'"),
    (GOOD + "schedul: {}\n", 9, "unknown key 'schedul'; did you mean 'schedule'?"),
    (GOOD.replace("source: account_field", "source: magic"), 5, "expected one of: account_field, subscriptions, history"),
    (GOOD.replace("account_field: ARR__c", "history_months: 3"), 6, "history_months: 3 is less than the minimum"),
    (GOOD.replace('"0 2 * * *"', '"99 * * *"'), 8, "not a 5-field cron expression"),
    (GOOD.replace("path: ../org", "path: ../nowhere"), 1, "does not exist"),
    (GOOD.replace("views: [{name: legal", "views: [{name: Legal"), 7, "does not match"),
    (GOOD.replace("state: ../state/nrr.db\n", "state: [unclosed\n"), 3, "YAML syntax error"),
])
def test_each_error_names_file_line_and_expectation(cfg_dir, text, line, words):
    """A bad value is reported at its YAML line with what was expected."""
    path = write(cfg_dir, text)
    with pytest.raises(ConfigErrors) as exc:
        config_mod.load(path)
    message = str(exc.value)
    assert f"nrr.yaml:{line}:" in message, message
    assert words in message, message


def test_non_utf8_config_is_a_clear_error(cfg_dir):
    """A config saved as Latin-1 names the file, line, column and byte offset of the first bad byte, and the fix."""
    path = cfg_dir / "config" / "nrr.yaml"
    path.write_bytes(GOOD.replace("currency: USD", "# Soci\xe9t\xe9\ncurrency: USD").encode("latin-1"))
    with pytest.raises(ConfigErrors, match=r"nrr\.yaml:3: not UTF-8 \(byte 0xe9 at line 3, column 7, byte offset \d+\); re-save the file as UTF-8"):
        config_mod.load(path)


def test_validate_collects_every_problem(cfg_dir):
    """`validate` prints all schema problems at once and exits 2."""
    path = write(cfg_dir, GOOD.replace("currency: USD", "currency: dollars").replace("kind: local", "kind: local, extra: 1"))
    r = Cli(path)("validate", expect=2)
    assert r.stderr.count("error:") == 2 and "2 problem(s)" in r.stderr
    assert "nrr.yaml:1:" in r.stderr and "nrr.yaml:3:" in r.stderr


def test_validate_reports_rule_file_syntax_errors(cfg_dir):
    """A rule file with a YAML syntax error is named with its line."""
    (cfg_dir / "rules").mkdir()
    (cfg_dir / "rules" / "bad.yaml").write_text("rules:\n  - name: x\n    when: [oops\n")
    path = write(cfg_dir, GOOD + "rules: [../rules/*.yaml]\n")
    r = Cli(path)("validate", expect=2)
    assert "bad.yaml:" in r.stderr and "YAML syntax error" in r.stderr


def test_missing_config_says_how_to_create_one(tmp_path):
    """No config file: exit 2 pointing at --config, the env var and `init`."""
    r = Cli(tmp_path / "nope.yaml")("validate", expect=2)
    assert "config file not found" in r.stderr and "nrr-engine init" in r.stderr


def test_env_var_locates_the_config(cfg_dir, monkeypatch):
    """$NRR_ENGINE_CONFIG is used when --config is not given."""
    path = write(cfg_dir, GOOD)
    monkeypatch.setenv("NRR_ENGINE_CONFIG", str(path))
    assert "ok" in Cli(None)("validate").stdout


def test_schema_command_prints_the_json_schema():
    """`schema` prints a JSON Schema an editor can use."""
    out = json.loads(Cli(None)("schema").stdout)
    assert out["$schema"].startswith("https://json-schema.org/") and "arr" in out["properties"]


def test_init_scaffolds_a_config_that_validates_and_runs(tmp_path):
    """`init DIR` creates a commented config, rules/ and an example org that plan runs on."""
    Cli(None)("init", str(tmp_path / "proj"))
    cfg = tmp_path / "proj" / "config" / "nrr.yaml"
    assert "# nrr-engine config" in cfg.read_text() and (tmp_path / "proj" / "rules").is_dir()
    assert "ok" in Cli(cfg)("validate").stdout
    assert "accounts read" in Cli(cfg)("plan", "--as-of", "2026-11-15").stdout
    assert "exists" in Cli(None)("init", str(tmp_path / "proj"), expect=2).stderr
