"""The house's layout holds: transforms import no source, sink, ledger or CLI; the ledger imports no transform;
the Salesforce double drives the engine only as any caller would; pipeline.py holds orchestration only."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "nrr_engine"
FORBIDDEN_IN_TRANSFORMS = ("sources", "sinks", "ledger", "cli", "engine", "pipeline", "fetch", "scheduler",
                           "reconcile", "testing")


def imports(path: Path) -> set[str]:
    """Every nrr_engine module a file imports (relative imports resolved), at any depth in the file."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    package = list(rel.parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("nrr_engine")}


@pytest.mark.parametrize("path", sorted([*PKG.glob("hierarchy/*.py"), *PKG.glob("metrics/*.py")]),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_transforms_import_no_source_sink_ledger_or_cli(path):
    """hierarchy/ and metrics/ modules compute from data: they import none of the modules that read or write."""
    bad = {m for m in imports(path) for f in FORBIDDEN_IN_TRANSFORMS if m == f"nrr_engine.{f}"
           or m.startswith(f"nrr_engine.{f}.")}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_ledger_imports_no_transform():
    """ledger.py stores what it is given; it imports nothing from hierarchy/ or metrics/."""
    bad = {m for m in imports(PKG / "ledger.py") if m.startswith(("nrr_engine.hierarchy", "nrr_engine.metrics"))}
    assert not bad


def test_the_double_does_not_import_the_cli():
    """The Salesforce test double runs the program as `python -m nrr_engine` would, not through cli.main."""
    bad = {m for m in imports(PKG / "testing" / "salesforce_double.py")
           if m.startswith(("nrr_engine.cli", "nrr_engine.engine", "nrr_engine.pipeline"))}
    assert not bad


def test_pipeline_is_orchestration_only():
    """pipeline.py stays a few hundred lines and defines no transform of its own beyond the stage wrappers."""
    text = (PKG / "pipeline.py").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    tree = ast.parse(text)
    top = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert set(top) <= {"_repair", "_rollup", "_membership", "_nrr", "_snapshots", "_gates", "stages", "figures",
                        "compute", "run_stages", "apply", "report", "file_hash", "write_store", "report_from_store"}, top
