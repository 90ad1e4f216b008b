"""Dependency direction (docs/ARCHITECTURE.md): cli -> engine / data.convert -> darknet / yolo / data
-> boxes / errors; metrics depends on numpy and detkit's leaf modules only; nothing imports detkit.cli.

The imports are read with ``ast`` (module level and inside functions), so lazy imports count too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "detkit"

# detkit modules that everything may import (pure helpers without detkit dependencies of their own)
LEAVES = {"detkit.errors", "detkit.boxes", "detkit.fileio"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _detkit_imports(path: Path) -> set[str]:
    """Every ``detkit.*`` module the file imports (absolute or relative)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "detkit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] == "detkit":
                found.add(mod)
    return found


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def test_modules_found():
    assert "detkit.cli" in MODULES and "detkit.metrics" in MODULES and "detkit.darknet.model" in MODULES


# Modules allowed to drive the CLI, with the reason:
CLI_USERS = {
    "detkit.__main__": "python -m detkit is the CLI's entry point",
    "detkit.bench.benchmark": "times the user-facing `detkit detect` command itself, in-process",
}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.startswith("detkit.cli") and n not in CLI_USERS))
def test_nothing_imports_the_cli(name):
    bad = {m for m in _detkit_imports(MODULES[name]) if m == "detkit.cli" or m.startswith("detkit.cli.")}
    assert not bad, f"{name} imports {sorted(bad)}; the CLI is the top layer"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("detkit.metrics")))
def test_metrics_depend_on_leaves_only(name):
    bad = {m for m in _detkit_imports(MODULES[name])
           if not m.startswith("detkit.metrics") and m not in LEAVES}
    assert not bad, f"{name} imports {sorted(bad)}; metrics may use numpy and {sorted(LEAVES)} only"


@pytest.mark.parametrize("name", sorted(n for n in MODULES
                                        if n.startswith(("detkit.darknet", "detkit.yolo", "detkit.data"))))
def test_lower_layers_do_not_import_engine(name):
    bad = {m for m in _detkit_imports(MODULES[name]) if m.startswith("detkit.engine")}
    # the demo dataset generator and convert are data-layer modules too: none may reach up into engine
    assert not bad, f"{name} imports {sorted(bad)}; engine sits above darknet/yolo/data"


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_leaves_import_no_detkit_module_but_errors(name):
    bad = {m for m in _detkit_imports(MODULES[name]) if m != "detkit.errors"}
    assert not bad, f"{name} imports {sorted(bad)}; leaf modules stay leaves"
