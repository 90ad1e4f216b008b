"""The wheel carries what an installed detkit needs: the shipped darknet cfgs (builtin names such as
``--cfg yolov7-tiny`` resolve from the installed package, not from a source checkout)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    src = out / "src"  # a copy: building writes build/ and *.egg-info/ beside the sources
    skip = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".hypothesis", ".ruff_cache")
    top = {"runs", "data"}  # a checkout's own run and demo folders (detkit/data is a package)
    shutil.copytree(ROOT, src, symlinks=True,
                    ignore=lambda d, names: set(skip(d, names)) | (top & set(names) if Path(d) == ROOT else set()))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(out)], capture_output=True, text=True, cwd=out)
    if proc.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1:]}")
    return next(out.glob("detkit-*.whl"))


def test_wheel_holds_every_shipped_cfg(wheel):
    shipped = sorted(p.name for p in (ROOT / "detkit" / "darknet" / "cfgs").glob("*.cfg"))
    assert "yolov7-tiny.cfg" in shipped and len(shipped) >= 12
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert sorted(Path(n).name for n in names if n.startswith("detkit/darknet/cfgs/")) == shipped
    assert not any(n.startswith(("tests/", "tools/", "cfg/")) for n in names)
    packages = {str(Path(n).parent) for n in names if n.endswith("/__init__.py")}
    on_disk = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "detkit").rglob("__init__.py")}
    assert packages == on_disk  # every subpackage (detkit.data, detkit.infer, ...) is in the wheel


def test_builtin_cfg_names_resolve_from_the_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = ("import detkit, sys\n"
            "from detkit.darknet.cfg import resolve_cfg\n"
            "from detkit.darknet.specs import parse_network\n"
            "text, source = resolve_cfg('yolov7-tiny')\n"
            "spec = parse_network(text, source)\n"
            "print(detkit.__file__)\nprint(source)\nprint(sum(1 for s in text.splitlines() if s.strip() == '[yolo]'))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    module_file, source, heads = proc.stdout.split()
    assert module_file.startswith(str(site)) and str(site) in source and source.endswith("yolov7-tiny.cfg")
    assert heads == "3"
