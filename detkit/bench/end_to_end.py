"""End to end over a folder of real JPEGs: decode -> resize -> model -> NMS -> JSON, images/s.

* in one process (:func:`end_to_end_opencv`, :func:`end_to_end_detkit`): Python imports are done
  before the clock starts, model loading is timed;
* as whole processes (:func:`end_to_end_process`): what a user waits for — interpreter start,
  imports, model load / compile, the run — for the plain OpenCV loop
  (``python -m detkit.bench.opencv_loop``) and ``detkit detect`` (``python -m detkit detect``).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from detkit.bench.opencv_loop import run_loop


@dataclass(frozen=True)
class Throughput:
    """End-to-end run over image files: ``images`` in ``seconds`` (model loading included)."""

    name: str
    images: int
    seconds: float
    detections: int
    note: str = ""

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def end_to_end_opencv(cfg: str, weights: str, images: list[Path], out_json: Path, size: int = 416,
                      conf: float = 0.25, nms: float = 0.45) -> Throughput:
    """The plain OpenCV DNN loop (:func:`detkit.bench.opencv_loop.run_loop`) in this process."""
    t0 = time.perf_counter()
    n = run_loop(cfg, weights, [str(p) for p in images], str(out_json), size, conf, nms)
    return Throughput("OpenCV DNN loop (imread, blobFromImage, forward, NMSBoxes)", len(images),
                      time.perf_counter() - t0, n)


def end_to_end_detkit(cfg: str, weights: str, names: str, images: list[Path], out_dir: Path, size: int = 416,
                      batch: int = 8, fast: bool = True, label: str = "detkit detect", backend: str = "auto",
                      no_images: bool = True) -> Throughput:
    """``detkit detect --no-images`` (``no_images``) over the images (a list file), in this process, through the
    library call the command makes (:func:`detkit.infer.detect.run_detect`); the pipeline's
    wait-for-data share goes into ``note``. Python imports (torch, torchvision, detkit's modules) are
    done before the clock starts, as cv2's is for the OpenCV loop; building the model, loading the
    weights and preparing the fast path are timed."""
    from detkit.infer.detect import DetectOptions, run_detect

    listing = out_dir / "images.txt"
    out_dir.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{p}\n" for p in images), encoding="utf-8")
    captured: list[str] = []

    class _Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record.getMessage())

    det_log = logging.getLogger("detkit.infer.detect")
    handler, old_level, old_prop = _Grab(level=logging.INFO), det_log.level, det_log.propagate
    det_log.addHandler(handler)
    det_log.setLevel(logging.INFO)
    det_log.propagate = False
    opts = DetectOptions(cfg=cfg, weights=weights, names=names, source=str(listing), out=str(out_dir / "out"),
                         no_images=no_images, quiet=True, device="cpu", img_size=size, batch=batch, fast=fast,
                         backend=backend)
    try:
        t0 = time.perf_counter()
        code = run_detect(opts, echo=lambda _: None)
        seconds = time.perf_counter() - t0
    finally:
        det_log.removeHandler(handler)
        det_log.setLevel(old_level)
        det_log.propagate = old_prop
    if code != 0:
        raise RuntimeError(f"detkit detect failed (exit {code}): {opts}")
    n_det = len(json.loads((out_dir / "out" / "detections.json").read_text(encoding="utf-8")))
    stats = next((m[len("pipeline: "):] for m in captured if m.startswith("pipeline: ")), "")
    return Throughput(label, len(images), seconds, n_det, stats)


def write_listing(images: list[Path], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p}\n" for p in images), encoding="utf-8")
    return path


def end_to_end_process(name: str, argv: list[str], images: int, out_json: Path, env: dict[str, str] | None = None,
                       note: str = "") -> Throughput:
    """Run ``argv`` (a ``python -m ...`` command) as a whole process; seconds from spawn to exit.
    ``out_json`` is the detections file it writes (counted)."""
    run_env = dict(os.environ)
    run_env.update(env or {})
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{name} failed (exit {proc.returncode}): {tail}")
    n_det = len(json.loads(out_json.read_text(encoding="utf-8"))) if out_json.is_file() else 0
    first = next((ln for ln in proc.stdout.splitlines() if ln.startswith("backend: ")), "")
    return Throughput(name, images, seconds, n_det, "; ".join(x for x in (note, first) if x))


def opencv_process_argv(cfg: str, weights: str, listing: Path, out_json: Path, size: int, threads: int) -> list[str]:
    return [sys.executable, "-m", "detkit.bench.opencv_loop", cfg, weights, str(listing), str(out_json), str(size),
            str(threads)]


def detect_process_argv(weights: str, names: str, listing: Path, out_dir: Path, size: int, batch: int,
                        cfg: str | None = None, no_images: bool = True, extra: tuple[str, ...] = ()) -> list[str]:
    argv = [sys.executable, "-m", "detkit", "-q", "detect", "--weights", weights, "--names", names, "--source",
            str(listing), "--out", str(out_dir), "--img-size", str(size), "--batch", str(batch), "--device", "cpu"]
    if cfg:
        argv += ["--cfg", cfg]
    if no_images:
        argv.append("--no-images")
    return argv + list(extra)
