"""convert-voc under faults: SIGKILL at random moments then a rerun (output equals an uninterrupted
run's, SRC byte-identical, no stale build folders), a full disk mid-write, permission errors and
an output path blocked by a file (clear one-line messages, previous OUT intact)."""
from __future__ import annotations

import errno
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fuzzlib
from detkit.cli import main
from detkit.convert.options import ConvertOptions
from detkit.convert.voc_to_yolo import convert_voc
from helpers import tree_digest

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 40


def make_dataset(root: Path, n: int = N_IMAGES) -> Path:
    """A VOC year folder with ``n`` JPEGs (some PNG/BMP, Chinese names), XMLs and an ImageSets split."""
    rng = np.random.default_rng(0)
    ann, img, sets = root / "Annotations", root / "JPEGImages", root / "ImageSets" / "Main"
    for d in (ann, img, sets):
        d.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        stem = f"img_{i:03d}" if i % 7 else f"\u6d63\u718a_{i:03d}"
        ext = {0: ".png", 3: ".bmp"}.get(i % 10, ".jpg")
        w, h = int(rng.integers(48, 160)), int(rng.integers(48, 160))
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, {".png": "PNG", ".bmp": "BMP"}.get(ext, "JPEG"))
        (img / f"{stem}{ext}").write_bytes(buf.getvalue())
        objs = []
        for k in range(int(rng.integers(0, 4))):
            x1, y1 = int(rng.integers(1, w // 2)), int(rng.integers(1, h // 2))
            x2, y2 = int(rng.integers(x1 + 2, w)), int(rng.integers(y1 + 2, h))
            objs.append(f"<object><name>{['cat', 'dog', 'bird'][k % 3]}</name><difficult>{int(k == 2)}</difficult>"
                        f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"
                        "</object>")
        (ann / f"{stem}.xml").write_text(f"<annotation><filename>{stem}{ext}</filename><size><width>{w}</width>"
                                         f"<height>{h}</height><depth>3</depth></size>{''.join(objs)}</annotation>",
                                         encoding="utf-8")
        ids.append(stem)
    (sets / "train.txt").write_text("".join(f"{s}\n" for s in ids[: n * 3 // 4]), encoding="utf-8")
    (sets / "val.txt").write_text("".join(f"{s}\n" for s in ids[n * 3 // 4:]), encoding="utf-8")
    return root


def _cmd(src: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "detkit", "-q", "convert-voc", str(src), str(out)]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    src = make_dataset(root / "src")
    ref = root / "ref" / "out"
    convert_voc(src, ref, ConvertOptions())
    return src, tree_digest(ref), tree_digest(src)


def kill_and_rerun(dataset, work: Path, moment: str, delay: float, rerun_cli: bool = True) -> str:
    """Start convert-voc in a subprocess, SIGKILL it at ``moment`` ('delay': after ``delay`` s;
    'building': once its build folder holds ``int(delay)`` entries), check OUT is absent or
    complete, rerun, compare with the uninterrupted result. Returns what the kill interrupted."""
    src, ref_digest, src_digest = dataset
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    proc = subprocess.Popen(_cmd(src, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        if moment == "delay":
            time.sleep(delay)
        else:
            build = work / f".out.tmp-{proc.pid}"
            while proc.poll() is None and time.monotonic() - t0 < 120:
                try:
                    if sum(len(f) for _, _, f in os.walk(build)) >= int(delay):
                        break
                except OSError:
                    pass
                time.sleep(0.001)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = "after_exit" if proc.returncode == 0 else (
        "during_build" if any(p.name.startswith(".out.tmp-") for p in work.iterdir()) else "before_build")
    if out.exists():  # atomic swap: whatever is there is a complete result
        assert tree_digest(out) == ref_digest, f"partial OUT after a kill ({killed_at})"
    if rerun_cli:
        rc = subprocess.run(_cmd(src, out), env=_env(), capture_output=True, text=True, timeout=300)
        assert rc.returncode == 0, rc.stderr
    else:  # the same code path without the interpreter start-up (fast tier)
        convert_voc(src, out, ConvertOptions())
    assert tree_digest(out) == ref_digest, "rerun after a kill differs from an uninterrupted run"
    assert sorted(os.listdir(work)) == ["out"], f"stale build folders: {os.listdir(work)}"
    assert tree_digest(src) == src_digest, "SRC changed"
    fuzzlib.record("faults.convert_kill9", killed_at)
    return killed_at


@pytest.mark.timeout(300)
def test_kill9_while_building_then_rerun_matches(dataset, tmp_path):
    """One SIGKILL halfway through writing the build folder (the long tier draws 30 moments)."""
    assert kill_and_rerun(dataset, tmp_path, "building", 10, rerun_cli=False) == "during_build"


@pytest.mark.fuzz_long
@pytest.mark.timeout(3600)
def test_kill9_at_random_moments_long(dataset, tmp_path):
    n = int(os.environ.get("DETKIT_FUZZ_KILLS", "30"))
    # the length of an uninterrupted run bounds the random delays
    t0 = time.monotonic()
    subprocess.run(_cmd(dataset[0], tmp_path / "timing" / "out"), env=_env(), check=True, capture_output=True)
    span = time.monotonic() - t0
    rng = random.Random(int(os.environ.get("DETKIT_FUZZ_SEED", "0")))
    moments = []
    for k in range(n):
        if k % 2:
            moment, value = "building", rng.randint(0, 3 * N_IMAGES + 10)
        else:
            moment, value = "delay", rng.uniform(0.0, span * 1.1)
        moments.append(kill_and_rerun(dataset, tmp_path / f"k{k}", moment, value))
    fuzzlib.figure("convert_kill9_runs", n)
    fuzzlib.figure("convert_uninterrupted_seconds", round(span, 2))
    fuzzlib.figure("convert_kill9_moments", moments)


# --------------------------------------------------------------------------- disk full, permissions

def test_disk_full_mid_conversion_keeps_previous_out(dataset, tmp_path, monkeypatch, capsys):
    src, ref_digest, src_digest = dataset
    out = tmp_path / "out"
    convert_voc(src, out, ConvertOptions())
    before = tree_digest(out)
    calls = {"n": 0}
    real_write = os.write

    def write(fd, data):
        calls["n"] += 1
        if calls["n"] > 25:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", write)
    rc = main(["-q", "convert-voc", str(src), str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "detkit: error:" in err and "No space left on device" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert tree_digest(out) == before and sorted(os.listdir(tmp_path)) == ["out"]
    assert tree_digest(src) == src_digest


def test_permission_denied_is_one_clear_line(dataset, tmp_path, monkeypatch, capsys):
    """Tests run as root, where chmod does not stop writes: the refusal is injected at os.open."""
    src = dataset[0]
    real_open = os.open

    def deny(path, flags, *a, **kw):
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *a, **kw)
    monkeypatch.setattr(os, "open", deny)
    rc = main(["-q", "convert-voc", str(src), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and "Permission denied" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0 and sys.platform.startswith("linux"), reason="covered by the chmod variant")
def test_output_blocked_by_a_file(dataset, tmp_path, capsys):
    """A file where OUT or one of its parents should be: the read-only-folder case as root."""
    src = dataset[0]
    (tmp_path / "blocker").write_text("not a folder")
    for out in (tmp_path / "blocker", tmp_path / "blocker" / "out"):
        rc = main(["-q", "convert-voc", str(src), str(out)])
        err = capsys.readouterr().err
        assert rc == 1 and err.startswith("detkit: error:") and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "blocker").read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions (see test_output_blocked_by_a_file)")
def test_read_only_output_parent(dataset, tmp_path, capsys):
    src = dataset[0]
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        rc = main(["-q", "convert-voc", str(src), str(parent / "out")])
    finally:
        parent.chmod(0o755)
    err = capsys.readouterr().err
    assert rc == 1 and "Permission denied" in err and len(err.strip().splitlines()) == 1, err
