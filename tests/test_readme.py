"""The README's examples are what the program does: its config is what `init` writes and validates (with the view
snippets it offers), its sample outputs are what `nrr-engine demo` and `validate` print, and its tour of the
commands runs."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import Cli

README = Path(__file__).resolve().parents[1] / "README.md"
AS_OF = "2026-11-15"
RUN_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")


def blocks(after: str) -> list[str]:
    """The fenced code blocks of the README section whose heading or paragraph starts with `after`."""
    text = README.read_text(encoding="utf-8")
    start = text.index(after)
    end = text.find("\n## ", start + 1)
    return re.findall(r"```[a-z]*\n(.*?)```", text[start:end if end > 0 else None], re.S)


def block_after(words: str) -> str:
    """The first fenced block after the paragraph containing `words`."""
    text = README.read_text(encoding="utf-8")
    return re.search(r"```[a-z]*\n(.*?)```", text[text.index(words):], re.S).group(1)


def same_lines(readme: str, real: str) -> None:
    """Every README line equals the real line at its place; `...` in a README line stands for any text."""
    want, got = readme.rstrip("\n").split("\n"), real.rstrip("\n").split("\n")
    assert len(want) == len(got), f"README shows {len(want)} lines, the program printed {len(got)}:\n{real}"
    for w, g in zip(want, got):
        pattern = ".*".join(re.escape(RUN_ID.sub("RUN", part)) for part in w.split("..."))
        assert re.fullmatch(pattern, RUN_ID.sub("RUN", g)), f"README:\n{w}\nprogram:\n{g}"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """`nrr-engine init my-org` run in a fresh folder (the README's first command), cwd there."""
    monkeypatch.chdir(tmp_path)
    Cli(None)("init", "my-org")
    return tmp_path / "my-org" / "config" / "nrr.yaml"


def test_the_readme_config_is_what_init_writes(project):
    """The Config section's YAML is, byte for byte, the config `nrr-engine init` writes."""
    assert blocks("### Config")[0] == project.read_text(encoding="utf-8")


def test_the_readme_init_output_is_what_init_prints(tmp_path, monkeypatch):
    """The "Your own org" block is what `nrr-engine init my-org` prints, and the steps it and the paragraph after it
    give work: source.path set to a folder of Data Loader CSVs elsewhere validates and plans, the mapping table is
    the header the README names, and the CPQ mapping it shows is a valid arr.subscriptions."""
    import yaml
    monkeypatch.chdir(tmp_path)
    example = block_after("**Your own org.** `init` says how")
    command, expected = example.split("\n", 1)
    assert command == "$ nrr-engine init my-org"
    same_lines(expected, Cli(None)("init", "my-org").stdout)
    assert (tmp_path / "my-org" / "rules" / "mappings.csv").read_text() == "child,parent,note\n"
    sfdx = tmp_path / "my-org" / "salesforce"  # the README's deploy steps run from it: no checkout needed
    shipped = Path(__file__).parents[1] / "salesforce"
    assert sorted(p.relative_to(sfdx) for p in sfdx.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file())
    assert "`nrr-engine init` into your project" in README.read_text(encoding="utf-8").replace("\n", " ")
    readme = README.read_text(encoding="utf-8").replace("\n", " ")
    assert "`source: {kind: local, path: /data/exports/2026-11}` with `allowed_paths: [/data/exports]`" in readme
    assert "(`child,parent,note`)" in readme
    cpq = re.search(r"\(CPQ: `(object: SBQQ__Subscription__c, [^`]*)`\)", readme).group(1)
    assert set(yaml.safe_load("{" + cpq + "}")) == {"object", "account", "start", "end", "amount", "product"}
    export = tmp_path / "exports" / "2026-11"
    export.mkdir(parents=True)
    for name in ("Account.csv", "Subscription__c.csv"):
        (export / name).write_bytes((tmp_path / "my-org" / "org" / name).read_bytes())
    cfg = tmp_path / "my-org" / "config" / "nrr.yaml"
    cfg.write_text(cfg.read_text().replace("path: ../org}", f"path: {export}}}"), encoding="utf-8")
    assert "source.path" in Cli(cfg)("validate", expect=2).stderr   # outside the project: refused until allowed
    cfg.write_text(cfg.read_text() + f"allowed_paths: [{export.parent}]\n", encoding="utf-8")
    assert f"fields checked against the CSV headers in {export}" in Cli(cfg)("validate").stdout
    assert "accounts read: 1665" in Cli(cfg)("plan", "--as-of", AS_OF).stdout


def test_the_view_snippets_of_the_readme_validate(project):
    """The partition view the README offers (uncommented in the config) and the lookup view it names (with its
    field added to Account.csv, as the README says a field must be) both validate and run."""
    text = project.read_text(encoding="utf-8")
    partition = re.search(r"  # (- \{name: by_region, partition_of: legal, by: Region__c\})", text).group(1)
    readme = README.read_text(encoding="utf-8").replace("\n", " ")
    assert "`{name: by_region, partition_of: legal, by: Region__c}`" in readme
    assert "`{name: sales, parent_field: Sales_Parent__c}`" in readme
    project.write_text(text.replace(f"  # {partition}", f"  {partition}"), encoding="utf-8")
    cli = Cli(project)
    assert "ok (2 view(s)" in cli("validate").stdout
    accounts = project.parent.parent / "org" / "Account.csv"
    lines = accounts.read_text(encoding="utf-8").split("\n")
    accounts.write_text("\n".join([lines[0] + ",Sales_Parent__c"] + [f"{line}," if line else line for line in lines[1:]]),
                        encoding="utf-8")
    project.write_text(project.read_text().replace("rules: [", "  - {name: sales, parent_field: Sales_Parent__c}\n"
                                                   "rules: [", 1), encoding="utf-8")
    assert "ok (3 view(s)" in cli("validate").stdout
    assert "by_region" in cli("run", "--as-of", AS_OF).stdout


def test_the_readme_demo_output_is_what_the_demo_prints(tmp_path, monkeypatch):
    """`make demo` (nrr-engine demo --dir nrr-demo --fresh) prints the README's example, line for line."""
    monkeypatch.chdir(tmp_path)
    out = Cli(None)("demo", "--dir", "nrr-demo", "--fresh").stdout.replace(f"{tmp_path}/", "")
    same_lines(block_after("`make demo` prints a run summary"), out)


def test_the_readme_validate_example_is_what_validate_prints(project, tmp_path):
    """The typos the README describes, typed into an `init` project: validate prints the README's lines."""
    text = project.read_text(encoding="utf-8")
    project.write_text(text.replace("amount: Amount__c", "amount: Amount_c").replace("arr: Hierarchy_ARR__c",
                       "arr: Hierarchy_ARR_c").replace("\nschedule:", "\nschedul:"), encoding="utf-8")
    rules = project.parent.parent / "rules" / "match-names.yaml"
    rules.write_text(rules.read_text().replace("    method: qualifier\n", "    method: qualifier\n    child: [{field: "
                                               "Industri, op: not_equals, value: Partner}]\n", 1), encoding="utf-8")
    example = block_after("name-qualifier` rule (`tests/test_readme.py` makes these edits")
    command, expected = example.split("\n", 1)
    assert command == "$ nrr-engine --config my-org/config/nrr.yaml validate"
    r = Cli(Path("my-org/config/nrr.yaml"))("validate", expect=2)
    same_lines(expected, r.stderr.replace(f"{tmp_path}/", ""))


# Commands of the tour that are not run here, and why.
NOT_RUN = {
    "schedule": "a daemon that runs until stopped (tests/test_scheduler.py drives it)",
    "history import": "needs arr.source history or account_field (tests/test_history.py)",
}


def tour() -> list[list[str]]:
    lines = [line.split("#", 1)[0].strip() for line in blocks("## A tour of the commands")[0].splitlines()]
    return [shlex.split(line.split(">", 1)[0])[1:] for line in lines if line.startswith("nrr-engine ")]


def test_the_tour_of_the_commands_runs(project, tmp_path):
    """Each command of the README's tour runs (exit 0) on the `init` project, in the order shown: RUN_ID and
    review ids are the real ones, run/plan/report run as of the demo's date, the synthetic demo is smaller."""
    cli = Cli(project)
    commands = tour()
    assert ["init", "my-org"] in commands and ["runs", "show", "RUN_ID"] in commands
    run_id, ran = None, []
    for argv in commands:
        name = " ".join(argv[:2]) if argv[0] in ("report", "review", "runs", "history") else argv[0]
        if argv[0] == "init" or name in NOT_RUN:
            continue
        argv = list(argv)
        if argv[0] in ("plan", "run") or argv[:2] == ["report", "nrr"]:
            argv += ["--as-of", AS_OF]
        if argv[0] == "demo" and "--accounts" in argv:
            argv[argv.index("--accounts") + 1] = "300"
        if argv[:2] in (["review", "approve"], ["review", "reject"]):
            pending = cli.json("review", "list", "--format", "json")
            argv = argv[:2] + [str(pending[0 if argv[1] == "approve" else -1]["id"])] + \
                [a for a in argv[2:] if not a.isdigit()]
        if "RUN_ID" in argv:
            argv[argv.index("RUN_ID")] = run_id
        r = (Cli(None) if argv[0] == "demo" else cli)(*argv)
        if argv[0] == "run":
            run_id = r.stdout.split()[1]
        ran.append(name)
    assert {"validate", "schema", "plan", "run", "demo", "report nrr", "review list", "review approve",
            "review reject", "runs list", "runs show", "rollback", "export"} == set(ran)
