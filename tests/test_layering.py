"""The package structure of docs/ARCHITECTURE.md, read from the code with ``ast``.

* Dependency direction: each package may import only the packages listed for it in ``ALLOWED``
  (its own modules always); nothing imports the CLI; metrics and the leaf modules stay leaves.
* No import cycles between modules (lazy imports inside functions count too).
* No private names across modules: ``from detkit.x import _name`` and ``module._name`` are only
  allowed inside the module that defines the name.
* No re-export shims: a module's detkit imports are used by the module itself; ``__all__`` lists
  only names the module defines (``detkit/__init__.py``, the documented public API, is the one
  exception); tests and tools import every name from the module that defines it.
* Tests patch no private global of a detkit module (``monkeypatch.setattr(mod, "_x", ...)``).
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "detkit"

LEAVES = {"errors", "boxes", "fileio", "checkpoint"}
# package (first component under detkit) -> the packages it may import, besides itself
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "boxes": {"errors"},
    "fileio": {"errors"},
    "checkpoint": {"errors", "fileio"},
    "metrics": {"errors", "boxes", "fileio"},
    "data": {"errors", "boxes", "fileio"},
    "yolo": {"errors", "boxes", "fileio"},
    "darknet": {"errors", "boxes", "fileio", "yolo"},
    "convert": {"errors", "boxes", "fileio", "data"},
    "infer": {"errors", "boxes", "fileio", "checkpoint", "data", "yolo", "darknet"},
    "evaluate": {"errors", "boxes", "fileio", "data", "metrics", "infer"},
    "train": {"errors", "boxes", "fileio", "checkpoint", "data", "yolo", "darknet", "metrics", "infer", "evaluate"},
    "bench": {"errors", "boxes", "fileio", "data", "yolo", "darknet", "metrics", "infer", "evaluate"},
    "demo": {"errors", "boxes", "fileio", "data", "darknet", "metrics", "convert", "infer", "evaluate", "train"},
    "cli": {"errors", "boxes", "fileio", "checkpoint", "data", "yolo", "darknet", "metrics", "convert", "infer",
            "evaluate", "train", "bench", "demo"},
    "__main__": {"cli"},
    "": {"darknet"},  # detkit/__init__.py: the public API (build_model, the .weights functions)
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    own = _module_name(path)
    base = own.split(".") if path.name == "__init__.py" else own.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path) -> list[tuple[str, str | None, str | None, int]]:
    """(module, imported name or None, local alias, line) for every detkit import in the file;
    ``from detkit.x import sub`` of a submodule is reported as module ``detkit.x.sub``."""
    out = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            out += [(a.name, None, a.asname or a.name, node.lineno) for a in node.names
                    if a.name.split(".")[0] == "detkit"]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(path, node)
            if mod.split(".")[0] != "detkit":
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if sub in MODULES:
                    out.append((sub, None, a.asname or a.name, node.lineno))
                else:
                    out.append((mod, a.name, a.asname or a.name, node.lineno))
    return out


def _targets(node: ast.Assign) -> set[str]:
    return {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def _defined(module: str) -> set[str]:
    """Top-level names a module defines itself (functions, classes, assignments)."""
    names: set[str] = set()
    for node in _tree(MODULES[module]).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= _targets(node)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.If, ast.Try)):  # optional imports / platform branches
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
                    names.add(sub.name)
                elif isinstance(sub, ast.Assign):
                    names |= _targets(sub)
    return names


def test_modules_found():
    assert {"detkit.cli", "detkit.metrics", "detkit.darknet.model", "detkit.infer.predict",
            "detkit.train.trainer", "detkit.evaluate.run", "detkit.convert.voc_to_yolo"} <= set(MODULES)
    assert {_package(m) for m in MODULES} <= set(ALLOWED), "a new package needs its line in ALLOWED"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_dependency_direction(name):
    pkg = _package(name)
    bad = sorted({f"{m} (line {line})" for m, _, _, line in _imports(MODULES[name])
                  if _package(m) != pkg and _package(m) not in ALLOWED[pkg]})
    assert not bad, (f"{name} imports {bad}; detkit.{pkg or '(root)'} may import only "
                     f"{sorted(ALLOWED[pkg])} (docs/ARCHITECTURE.md)")


def test_allowed_table_is_a_hierarchy():
    """The allowed package graph itself has no cycle (so no two packages can import each other)."""
    state: dict[str, int] = {}

    def visit(p: str, trail: list[str]) -> None:
        if state.get(p) == 1:
            raise AssertionError("package cycle: " + " -> ".join(trail + [p]))
        if state.get(p) == 2:
            return
        state[p] = 1
        for q in sorted(ALLOWED[p]):
            visit(q, trail + [p])
        state[p] = 2

    for p in sorted(ALLOWED):
        visit(p, [])


def test_no_import_cycles():
    graph = {m: sorted({dep for dep, _, _, _ in _imports(p) if dep in MODULES and dep != m})
             for m, p in MODULES.items()}
    # importing detkit.a.b imports its package detkit.a first: package __init__ files are nodes too
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(m: str, trail: list[str]) -> None:
        if state.get(m) == 1:
            cycles.append(" -> ".join(trail[trail.index(m):] + [m]))
            return
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in graph[m]:
            visit(d, trail + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _files_to_check() -> list[Path]:
    return sorted(MODULES.values()) + sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "tools").glob("*.py"))


@pytest.mark.parametrize("path", _files_to_check(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_names_across_modules(path):
    own = _module_name(path) if path.is_relative_to(PKG) else None
    bad = [f"line {line}: from {m} import {n}" for m, n, _, line in _imports(path)
           if n and n.startswith("_") and not n.startswith("__") and m != own]
    aliases = {alias: m for m, n, alias, _ in _imports(path) if n is None and m != own}
    for node in ast.walk(_tree(path)):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            bad.append(f"line {node.lineno}: {aliases[node.value.id]}.{node.attr}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "setattr"
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str) and node.args[1].value.startswith("_")
                and isinstance(node.args[0], ast.Name) and node.args[0].id in aliases):
            bad.append(f"line {node.lineno}: patches {aliases[node.args[0].id]}.{node.args[1].value}")
    assert not bad, f"{path.relative_to(ROOT)} reaches private names of other modules: {bad}"


@pytest.mark.parametrize("path", _files_to_check(), ids=lambda p: str(p.relative_to(ROOT)))
def test_names_are_imported_from_their_home(path):
    """``from detkit.x import name``: ``name`` is defined in detkit.x (not re-exported by it)."""
    bad = [f"line {line}: {n} is not defined in {m}" for m, n, _, line in _imports(path)
           if n is not None and m in MODULES and m != "detkit" and n not in _defined(m)]
    assert not bad, f"{path.relative_to(ROOT)}: {bad}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m != "detkit"))
def test_no_reexport_shims(name):
    """Every module-level detkit import is used by the module itself, and ``__all__`` (if any)
    lists only names defined here."""
    tree = _tree(MODULES[name])
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    used |= {n.value.id for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    # names mentioned only in string annotations (from __future__ import annotations) count as used
    strings = " ".join(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    unused = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and _resolve(MODULES[name], node).startswith("detkit"):
            for a in node.names:
                alias = a.asname or a.name
                if alias not in used and alias not in strings.split():
                    unused.append(alias)
    assert not unused, f"{name} imports {unused} without using them (a re-export shim or a dead import)"
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            listed = {e.value for e in node.value.elts} if isinstance(node.value, (ast.List, ast.Tuple)) else set()
            foreign = sorted(listed - _defined(name))
            assert not foreign, f"{name}.__all__ re-exports {foreign}"


def test_public_api_unchanged():
    import detkit

    assert set(detkit.__all__) == {"build_model", "load_darknet_weights", "save_darknet_weights", "DarknetModel",
                                   "__version__"}


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.count(".") == 1 and (PKG / m.split(".")[1]).is_dir()))
def test_each_package_says_what_it_owns(name):
    doc = ast.get_docstring(_tree(MODULES[name]))
    assert doc and len(doc) > 60, f"{name}/__init__.py needs a docstring saying what it owns and may import"


@pytest.mark.parametrize("folder", sorted(p for p in PKG.rglob("*") if p.is_dir() and p.name != "__pycache__"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_file_name_prefix_shared_by_siblings(folder):
    """A prefix shared by several sibling files (``convert_a.py``, ``convert_b.py``) is a package
    that has not been made."""
    stems = [p.stem for p in folder.glob("*.py") if p.stem != "__init__"]
    prefixes: dict[str, list[str]] = {}
    for s in stems:
        if "_" in s:
            prefixes.setdefault(s.split("_")[0], []).append(s)
    crowded = {k: v for k, v in prefixes.items() if len(v) >= 3}
    assert not crowded, f"{folder.relative_to(ROOT)}: {crowded}"
