"""The command line as a contract: help for every command, documented in the README, clean exit codes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from conftest import Cli
from nrr_engine.cli import main
from nrr_engine.errors import ExitCode

README = Path(__file__).resolve().parent.parent / "README.md"


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))


COMMANDS = list(_commands(main))


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_has_help(path):
    """`nrr-engine <command> --help` works and says something."""
    r = Cli(None)(*path, "--help")
    assert "Usage:" in r.stdout and len(r.stdout.splitlines()) > 3


@pytest.mark.parametrize("path", [p for p in COMMANDS if p not in (("report",), ("runs",), ("history",))], ids=" ".join)
def test_every_command_is_in_the_readme(path):
    """Each command appears in a README example."""
    assert f"nrr-engine {' '.join(path)}" in README.read_text(encoding="utf-8")


def test_python_dash_m_and_console_script():
    """`python -m nrr_engine --version` runs as a module."""
    r = subprocess.run([sys.executable, "-m", "nrr_engine", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "nrr-engine" in r.stdout


def test_exit_codes_are_documented_and_ordered():
    """The exit codes of DESIGN §8, and the help text lists them."""
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4]
    assert "4 reconciliation gate failed" in Cli(None)("--help").stdout


def test_bad_option_value_is_exit_2(org, cli):
    """A malformed --period is a usage error (exit 2), not a traceback."""
    org.account("001A", "A")
    org.write()
    r = cli("report", "nrr", "--period", "October", expect=2)
    assert "YYYY-MM" in r.stderr


def test_unknown_run_is_a_clear_error(org, cli):
    """rollback/runs show of an unknown run id: exit 2 with a pointer to `runs list`."""
    org.account("001A", "A")
    org.write()
    assert "runs list" in cli("rollback", "nope", expect=2).stderr
    assert "runs list" in cli("runs", "show", "nope", expect=2).stderr


def test_the_global_options_work_after_the_command_too(org):
    """`runs list --config FILE`, `report nrr ... --config=FILE --log-level warning` and `--debug` after the
    command are taken as if given before it (a new user's trial: "No such option: --config"); no command has
    options of those names."""
    org.account("001A", "A")
    org.write()
    Cli(org.config)("run", "--as-of", "2026-11-15")
    before = Cli()("--config", str(org.config), "runs", "list", "--format", "json").stdout
    after = Cli()("runs", "list", "--format", "json", "--config", str(org.config), "--debug").stdout
    assert before == after and "succeeded" in after
    r = Cli()("report", "nrr", "--window", "1", f"--config={org.config}", "--log-level", "warning",
              "--as-of", "2026-11-15", "--format", "json")
    assert '"view": "legal"' in r.stdout
    clashing = [(path, p.opts) for path in COMMANDS for p in _command(path).params
                if set(p.opts) & {"--config", "--log-level", "--debug"}]
    assert clashing == []


def _command(path):
    cmd = main
    for name in path:
        cmd = cmd.commands[name]
    return cmd
