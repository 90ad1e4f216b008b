"""``detkit detect`` as a library call: :class:`DetectOptions` -> :func:`run_detect` loads the model
(cfg + weights, or an ``.onnx`` file), runs the :class:`~detkit.infer.predict.Predictor` over images
or a video and writes annotated images / video, ``detections.json`` (``detections.jsonl`` for a
video) and, with ``save_txt``, YOLO prediction files."""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from detkit.data.datafiles import read_names, write_text_atomic
from detkit.fileio import write_bytes_atomic
from detkit.errors import DataError, ImageError, WeightsError
from detkit.infer.draw import draw_detections
from detkit.infer.backends import choose_backend, cpu_features, weights_kind
from detkit.infer.loading import load_darknet_openvino, load_model, load_onnx_model, load_openvino_model
from detkit.infer.onnxrt import META_RESIZE, onnx_is_quantized
from detkit.infer.predict import Predictor, parse_img_size, resolve_device_type
from detkit.infer.sources import collect_sources, is_video
from detkit.infer.writers import (detection_entries, detection_table, entries_json, label_stem, open_video_writer,
                                  output_name, yolo_prediction_lines)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectOptions:
    """One ``detkit detect`` run (the CLI flags; see ``detkit detect --help``).

    ``img_size`` is N, ``"WxH"``, (W, H) or None (the cfg's size); ``fast=False`` is ``--no-fast``; ``quiet``
    hides the progress bar and the detection table; ``progress`` allows the bar (the CLI sets it
    when stderr is a terminal).
    """

    weights: str
    names: str
    source: str
    out: str
    cfg: str | None = None
    conf: float = 0.25
    nms: float = 0.45
    img_size: int | str | tuple[int, int] | None = None
    resize: bool = False
    batch: int = 8
    device: str = "auto"
    classes: int | None = None
    no_images: bool = False
    save_txt: bool = False
    precision: str = "auto"
    fast: bool = True
    compile: bool = False
    quiet: bool = False
    progress: bool = False
    backend: str = "auto"


def _print_err(text: str) -> None:
    print(text, file=sys.stderr)


def run_detect(opts: DetectOptions, echo: Callable[[str], None] = print,
               echo_err: Callable[[str], None] = _print_err) -> int:
    """Run detection as ``detkit detect`` does; returns the exit code (1 when no image was readable).

    ``echo`` receives the table and the summary line, ``echo_err`` the skipped-file lines.
    Raises DataError / WeightsError for bad options or files (one line each).
    """
    if not 0.0 <= opts.conf < 1.0:
        raise DataError(f"--conf must be in [0, 1), got {opts.conf}")
    if not 0.0 < opts.nms <= 1.0:
        raise DataError(f"--nms must be in (0, 1], got {opts.nms}")
    if opts.batch < 1:
        raise DataError(f"--batch must be >= 1, got {opts.batch}")
    if opts.compile and not opts.fast:
        raise DataError("--compile applies to the fast path; drop --no-fast")
    try:
        img_size = parse_img_size(opts.img_size) if opts.img_size is not None else None
        device = resolve_device_type(opts.device)
    except (ValueError, RuntimeError) as exc:
        raise DataError(f"{exc}") from None
    names = read_names(opts.names)
    if opts.classes is not None and opts.classes != len(names):
        raise DataError(f"--classes {opts.classes} but the names file has {len(names)} names", path=opts.names)
    weights = Path(opts.weights)
    if not weights.is_file():
        raise WeightsError("weights file not found", path=weights)
    src = Path(opts.source)
    video = is_video(src)
    sources = [src] if video else collect_sources(opts.source)
    out_dir = Path(opts.out)
    if not opts.no_images and out_dir.resolve() in {p.resolve().parent for p in sources}:
        raise DataError(f"--out is a folder holding input {'videos' if video else 'images'}; annotated "
                        "output would overwrite them (choose another --out, or --no-images)", path=out_dir)

    model, backend_line = load_detect_model(opts, weights, names, device, img_size)
    echo(backend_line)
    try:
        predictor = Predictor(model, img_size=img_size, conf=opts.conf, nms=opts.nms,
                              letterbox=not opts.resize, device=device, fast=opts.fast,
                              precision=opts.precision, compile=opts.compile)
    except ValueError as exc:  # e.g. --precision fp16 on a CPU
        raise DataError(f"{exc}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = opts.progress and not opts.quiet
    log.info("detect: %s, input %dx%d (%s), %s", f"video {src}" if video else f"{len(sources)} image(s)",
             *predictor.input_size, "plain resize" if opts.resize else "letterbox", predictor.description)
    if video:
        return _detect_video(opts, predictor, names, src, out_dir, progress, echo)
    return _detect_images(opts, predictor, names, sources, out_dir, progress, echo, echo_err)


def load_detect_model(opts: DetectOptions, weights: Path, names: list[str], device: str = "cpu",
                      img_size: tuple[int, int] | None = None):
    """The model to run and detect's first line naming the backend: ``--backend`` resolved by
    :func:`~detkit.infer.backends.choose_backend` for the kind of ``--weights`` (cfg + darknet
    weights, ``.onnx``, OpenVINO ``.xml``)."""
    kind = weights_kind(weights)
    quantized = kind == "onnx" and opts.backend in ("auto", "openvino") and onnx_is_quantized(weights)
    choice = choose_backend(opts.backend, kind, device, onnx_quantized=quantized)
    if kind != "darknet":
        if opts.cfg:
            log.info("--cfg is not used with an exported model (the file holds the network)")
        if opts.compile:
            raise DataError("--compile applies to the PyTorch fast path, not to an exported model")
    if choice.backend == "torch":
        if not opts.cfg:
            raise DataError("--cfg is required (unless --weights is an .onnx or .xml model)")
        model, _ = load_model(opts.cfg, weights, len(names), checkpoints=False, purpose="detection",
                              names_file=opts.names, classes_hint="use the names file the weights were trained with")
        what = "PyTorch fast path" if opts.fast else "PyTorch eager float32 (--no-fast)"
        return model, f"backend: torch ({what}; {choice.reason})"
    if choice.backend == "onnxruntime":
        if not opts.fast or opts.precision != "auto":
            log.warning("--no-fast/--precision do not apply to onnxruntime (the file runs as exported)")
        model = load_onnx_model(weights, len(names), names_file=opts.names)
    else:
        precision = _openvino_precision(opts)
        if kind == "darknet":
            if not opts.cfg:
                raise DataError("--cfg is required (unless --weights is an .onnx or .xml model)")
            model, _ = load_darknet_openvino(opts.cfg, weights, len(names), img_size, precision=precision,
                                             names_file=opts.names,
                                             classes_hint="use the names file the weights were trained with")
        else:
            model = load_openvino_model(weights, len(names), precision=precision, names_file=opts.names)
    calibrated = model.metadata.get(META_RESIZE)
    running = "resize" if opts.resize else "letterbox"
    if calibrated and calibrated != running:
        log.warning("%s was calibrated on %s inputs but detect runs %s (%s --resize to match)", weights,
                    calibrated, running, "drop" if opts.resize else "add")
    info = model.fast_info
    return model, (f"backend: {info.runtime.split()[0]} ({info.precision}, {info.threads} threads; {choice.reason}; "
                   f"{cpu_features().describe()})")


def _openvino_precision(opts: DetectOptions) -> str:
    if not opts.fast:
        return "fp32"
    if opts.precision == "fp16":
        raise DataError("--precision fp16 is for CUDA; OpenVINO on the CPU runs auto, fp32 or bf16")
    return opts.precision


def _detect_images(opts: DetectOptions, predictor: Predictor, names: list[str], sources: list[Path], out_dir: Path,
                   progress: bool, echo: Callable[[str], None], echo_err: Callable[[str], None]) -> int:
    labels_dir = out_dir / "labels"
    if opts.save_txt:
        labels_dir.mkdir(exist_ok=True)
    entries: list[dict] = []
    used: set[str] = set()
    used_stems: set[str] = set()
    n_ok = n_bad = 0
    t0 = time.perf_counter()
    rows: list[tuple[str, str, str, str]] = []
    results = predictor.predict_paths(sources, batch_size=opts.batch, keep_images=not opts.no_images)
    for res in tqdm(results, total=len(sources), unit="img", desc="detect", disable=not progress):
        if res.error is not None:
            n_bad += 1
            echo_err(f"skipped: {res.error}")
            continue
        n_ok += 1
        det = res.detections
        image_entries, image_rows = detection_entries(det, names, image=str(res.path))
        entries += image_entries
        rows += image_rows
        if opts.save_txt:
            stem = label_stem(Path(res.path), used_stems)
            write_text_atomic(labels_dir / f"{stem}.txt", yolo_prediction_lines(det, *res.image_size))
        if not opts.no_images:
            out_name = output_name(Path(res.path), used)
            ok, buf = cv2.imencode(Path(out_name).suffix, draw_detections(res.image, det, names))
            if not ok:  # pragma: no cover - cv2 encodes every writable extension
                raise ImageError("cannot encode the annotated image", path=res.path)
            write_bytes_atomic(out_dir / out_name, buf.tobytes())  # bytes: non-ASCII names are fine
    elapsed = time.perf_counter() - t0
    write_text_atomic(out_dir / "detections.json", entries_json(entries))
    if predictor.last_stats is not None:
        log.info("pipeline: %s", predictor.last_stats.describe())
    if not opts.quiet and rows:
        echo(detection_table(rows))
    echo(f"{n_ok} image(s) processed, {len(entries)} detection(s), {n_bad} unreadable image(s) skipped, "
         f"{elapsed:.2f} s; results in {out_dir}")
    return 0 if n_ok > 0 else 1


def _detect_video(opts: DetectOptions, predictor: Predictor, names: list[str], src: Path, out_dir: Path,
                  progress: bool, echo: Callable[[str], None]) -> int:
    """Frames -> detections: ``OUT/<stem>.mp4`` (or ``.avi``) annotated, ``OUT/detections.jsonl``
    one JSON object per frame ``{"frame", "time", "detections": [...]}`` (time = frame / fps, s),
    with ``save_txt`` ``OUT/labels/<stem>_<frame:06d>.txt``."""
    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        cap.release()
        raise DataError("cannot open the video (not a video, or a codec this OpenCV lacks)", path=src)
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    fps = fps if np.isfinite(fps) and fps > 0 else 0.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    labels_dir = out_dir / "labels"
    if opts.save_txt:
        labels_dir.mkdir(exist_ok=True)

    def frames():
        while True:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    fd, jsonl_tmp = tempfile.mkstemp(prefix=".detections.jsonl.", suffix=".tmp", dir=out_dir)
    writer = video_tmp = video_out = None
    n_frames = n_dets = 0
    t0 = time.perf_counter()
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as jf:
            results = predictor.predict_frames(frames(), batch_size=opts.batch)
            for i, (frame, det) in enumerate(tqdm(results, total=total or None, unit="frame", desc="detect",
                                                  disable=not progress)):
                n_frames += 1
                n_dets += len(det)
                dets, _ = detection_entries(det, names)
                jf.write(json.dumps({"frame": i, "time": round(i / fps, 6) if fps else None,
                                     "detections": dets}, ensure_ascii=False) + "\n")
                if opts.save_txt:
                    write_text_atomic(labels_dir / f"{src.stem}_{i:06d}.txt",
                                      yolo_prediction_lines(det, frame.shape[1], frame.shape[0]))
                if not opts.no_images:
                    if writer is None:
                        writer, video_tmp, video_out = open_video_writer(out_dir, src.stem, fps or 25.0,
                                                                         (frame.shape[1], frame.shape[0]))
                    writer.write(draw_detections(frame, det, names))
            jf.flush()
            os.fsync(jf.fileno())
        if writer is not None:
            writer.release()
            writer = None
            os.replace(video_tmp, video_out)
        if n_frames == 0:
            raise DataError("no frame could be read from the video", path=src)
        os.chmod(jsonl_tmp, 0o644)
        os.replace(jsonl_tmp, out_dir / "detections.jsonl")
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        for tmp in (jsonl_tmp, video_tmp):
            if tmp is not None and Path(tmp).exists():
                Path(tmp).unlink()
    elapsed = time.perf_counter() - t0
    if predictor.last_stats is not None:
        log.info("pipeline: %s", predictor.last_stats.describe())
    echo(f"{n_frames} frame(s) processed, {n_dets} detection(s), {elapsed:.2f} s "
         f"({n_frames / max(elapsed, 1e-9):.1f} frames/s); results in {out_dir}"
         + (f" ({video_out.name}, detections.jsonl)" if video_out is not None else " (detections.jsonl)"))
    return 0
