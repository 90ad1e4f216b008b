"""``detkit detect``: run a darknet cfg + weights on images or a video; write annotated images /
video, JSON (JSON lines for videos) and optionally YOLO-format prediction files."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from detkit.errors import DataError, ImageError, WeightsError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jpe", ".pgm", ".ppm"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                    ".mjpeg", ".mjpg", ".ts", ".3gp", ".ogv"}
_WRITABLE = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "detect", help="detect objects in images with a darknet cfg + weights",
        description="Run a YOLO model (darknet cfg + weights) on an image, a folder of images, a "
                    "list file or a video; write annotated images and detections.json (video: an "
                    "annotated video and detections.jsonl, one line per frame) to --out.")
    p.add_argument("--cfg", default=None,
                   help="darknet .cfg file (or a builtin name, e.g. yolov3-tiny); not needed for an .onnx model")
    p.add_argument("--weights", required=True,
                   help="darknet .weights file, or an .onnx model from detkit export (run by onnxruntime; "
                        "float32 or int8)")
    p.add_argument("--names", required=True, help="class names file, one per line (sets the class count)")
    p.add_argument("--source", required=True,
                   help="an image, a folder of images (searched recursively), a .txt list of image paths "
                        f"or a video file ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold (default 0.25)")
    p.add_argument("--nms", type=float, default=0.45, help="per-class NMS IoU threshold (default 0.45)")
    p.add_argument("--img-size", default=None,
                   help="network input N or WxH, multiples of 32 (default: the cfg's width x height)")
    p.add_argument("--resize", action="store_true",
                   help="stretch images to the input size exactly as darknet's detector test does "
                        "(default: letterbox)")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--classes", type=int, default=None,
                   help="expected class count; must equal the number of names")
    p.add_argument("--no-images", action="store_true",
                   help="write no annotated images / video (only detections.json / detections.jsonl)")
    p.add_argument("--save-txt", action="store_true",
                   help="also write YOLO-format predictions, OUT/labels/<image stem>.txt, lines "
                        "'class cx cy w h score' normalised to [0, 1] (read by detkit eval --pred OUT/labels)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="fast path compute type: auto = bf16 on CPUs with native bf16 (AVX512-BF16/AMX), "
                        "fp16 on CUDA, else fp32 (default auto)")
    p.add_argument("--no-fast", action="store_true",
                   help="run the plain float32 model (no BN folding, no reduced precision): the reference path")
    p.add_argument("--compile", action="store_true", help="torch.compile the fast model (slow start)")
    p.add_argument("--quiet", dest="detect_quiet", action="store_true",
                   help="no progress bar and no detection table (same as detkit -q)")
    p.set_defaults(func=run)


def collect_sources(source: str | os.PathLike) -> list[Path]:
    """An image file, a folder (recursive, sorted) or a list file (``.txt``) -> image paths."""
    from detkit.data.datafiles import read_list_file

    src = Path(source)
    if src.is_dir():
        found = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not found:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder", path=src)
        return found
    if not src.exists():
        raise DataError("source not found (expected an image, a folder or a .txt list)", path=src)
    if src.suffix.lower() == ".txt":
        paths = read_list_file(src, extra_bases=[Path.cwd()])
        if not paths:
            raise DataError("list file names no images", path=src)
        return paths
    return [src]


def _colour(class_id: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per class."""
    hue = (class_id * 47) % 180
    hsv = np.array([[[hue, 220, 230]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_detections(image_rgb: np.ndarray, det, names: list[str]) -> np.ndarray:
    """Boxes and ``"name 0.81"`` labels on a BGR copy of the image (for cv2.imencode)."""
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 300))
    font_scale = max(0.4, min(h, w) / 900)
    for box, score, cid in list(zip(det.boxes, det.scores, det.class_ids))[::-1]:  # best drawn last
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        colour = _colour(int(cid))
        cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, thick)
        label = f"{names[int(cid)]} {score:.2f}".encode("ascii", "replace").decode()  # cv2 fonts are ASCII
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
        ty = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y1
        cv2.rectangle(out, (x1, ty), (x1 + tw + 2, ty + th + base + 2), colour, -1)
        cv2.putText(out, label, (x1 + 1, ty + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0), max(1, thick - 1), cv2.LINE_AA)
    return out


def _output_name(path: Path, used: set[str]) -> str:
    """Same file name as the input (non-ASCII kept), de-duplicated; unknown extensions -> .jpg."""
    stem, ext = path.stem, path.suffix
    if ext.lower() not in _WRITABLE:
        ext = ".jpg"
    name, k = f"{stem}{ext}", 2
    while name.lower() in used or name == "detections.json":
        name, k = f"{stem}_{k}{ext}", k + 1
    used.add(name.lower())
    return name


def run(args: argparse.Namespace) -> int:
    from detkit.data.datafiles import read_names
    from detkit.infer.predict import Predictor, parse_img_size, resolve_device

    if not 0.0 <= args.conf < 1.0:
        raise DataError(f"--conf must be in [0, 1), got {args.conf}")
    if not 0.0 < args.nms <= 1.0:
        raise DataError(f"--nms must be in (0, 1], got {args.nms}")
    if args.batch < 1:
        raise DataError(f"--batch must be >= 1, got {args.batch}")
    if args.compile and args.no_fast:
        raise DataError("--compile applies to the fast path; drop --no-fast")
    try:
        img_size = parse_img_size(args.img_size) if args.img_size is not None else None
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as exc:
        raise DataError(f"{exc}") from None
    names = read_names(args.names)
    if args.classes is not None and args.classes != len(names):
        raise DataError(f"--classes {args.classes} but the names file has {len(names)} names", path=args.names)
    weights = Path(args.weights)
    if not weights.is_file():
        raise WeightsError("weights file not found", path=weights)
    src = Path(args.source)
    video = src.is_file() and src.suffix.lower() in VIDEO_EXTENSIONS
    sources = [src] if video else collect_sources(args.source)
    out_dir = Path(args.out)
    if not args.no_images and out_dir.resolve() in {p.resolve().parent for p in sources}:
        raise DataError(f"--out is a folder holding input {'videos' if video else 'images'}; annotated "
                        "output would overwrite them (choose another --out, or --no-images)", path=out_dir)

    model = _load(args, weights, names)
    try:
        predictor = Predictor(model, img_size=img_size, conf=args.conf, nms=args.nms, letterbox=not args.resize,
                              device=device, fast=not args.no_fast, precision=args.precision,
                              compile=args.compile)
    except ValueError as exc:  # e.g. --precision fp16 on a CPU
        raise DataError(f"{exc}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    quiet = bool(getattr(args, "quiet", False) or args.detect_quiet)
    progress = not quiet and sys.stderr.isatty()
    log.info("detect: %s, input %dx%d (%s), %s", f"video {src}" if video else f"{len(sources)} image(s)",
             *predictor.input_size, "plain resize" if args.resize else "letterbox", predictor.description)
    if video:
        return _detect_video(args, predictor, names, src, out_dir, progress)
    return _detect_images(args, predictor, names, sources, out_dir, progress, quiet)


def _load(args: argparse.Namespace, weights: Path, names: list[str]):
    """The model to run: an ``.onnx`` file through onnxruntime, else cfg + darknet weights."""
    from detkit.infer.loading import load_model, load_onnx_model
    from detkit.infer.onnxrt import META_RESIZE, is_onnx_file

    if is_onnx_file(weights):
        if args.cfg:
            log.info("--cfg is not used with an .onnx model (the file holds the network)")
        if args.no_fast or args.precision != "auto":
            log.warning("--no-fast/--precision do not apply to an .onnx model (it runs as exported)")
        if args.compile:
            raise DataError("--compile applies to the PyTorch fast path, not to an .onnx model")
        model = load_onnx_model(weights, len(names), names_file=args.names)
        calibrated = model.metadata.get(META_RESIZE)
        running = "resize" if args.resize else "letterbox"
        if calibrated and calibrated != running:
            log.warning("%s was calibrated on %s inputs but detect runs %s (%s --resize to match)", weights,
                        calibrated, running, "drop" if args.resize else "add")
        return model
    if not args.cfg:
        raise DataError("--cfg is required (unless --weights is an .onnx model)")
    model, _ = load_model(args.cfg, weights, len(names), checkpoints=False, purpose="detection",
                          names_file=args.names, classes_hint="use the names file the weights were trained with")
    return model


def _detect_images(args: argparse.Namespace, predictor, names: list[str], sources: list[Path], out_dir: Path,
                   progress: bool, quiet: bool) -> int:
    from tqdm import tqdm

    from detkit.data.datafiles import write_bytes_atomic, write_text_atomic

    labels_dir = out_dir / "labels"
    if args.save_txt:
        labels_dir.mkdir(exist_ok=True)
    entries: list[dict] = []
    used: set[str] = set()
    used_stems: set[str] = set()
    n_ok = n_bad = 0
    t0 = time.perf_counter()
    rows: list[tuple[str, str, str, str]] = []
    results = predictor.predict_paths(sources, batch_size=args.batch, keep_images=not args.no_images)
    for res in tqdm(results, total=len(sources), unit="img", desc="detect", disable=not progress):
        if res.error is not None:
            n_bad += 1
            print(f"skipped: {res.error}", file=sys.stderr)
            continue
        n_ok += 1
        det = res.detections
        image_str = str(res.path)
        for box, score, cid in zip(det.boxes, det.scores, det.class_ids):
            box_list = [round(float(v), 4) for v in box]
            entries.append({"image": image_str, "class_id": int(cid), "class_name": names[int(cid)],
                            "score": round(float(score), 6), "box_xyxy": box_list})
            rows.append((image_str, names[int(cid)], f"{score:.2f}",
                         " ".join(f"{v:.0f}" for v in box_list)))
        if args.save_txt:
            stem = _label_stem(Path(res.path), used_stems)
            write_text_atomic(labels_dir / f"{stem}.txt", yolo_prediction_lines(det, *res.image_size))
        if not args.no_images:
            out_name = _output_name(Path(res.path), used)
            ok, buf = cv2.imencode(Path(out_name).suffix, draw_detections(res.image, det, names))
            if not ok:  # pragma: no cover - cv2 encodes every extension in _WRITABLE
                raise ImageError("cannot encode the annotated image", path=res.path)
            write_bytes_atomic(out_dir / out_name, buf.tobytes())  # bytes: non-ASCII names are fine
    elapsed = time.perf_counter() - t0
    write_text_atomic(out_dir / "detections.json", _entries_json(entries))
    if predictor.last_stats is not None:
        log.info("pipeline: %s", predictor.last_stats.describe())
    if not quiet:
        _print_table(rows)
    print(f"{n_ok} image(s) processed, {len(entries)} detection(s), {n_bad} unreadable image(s) skipped, "
          f"{elapsed:.2f} s; results in {out_dir}")
    return 0 if n_ok > 0 else 1


def yolo_prediction_lines(det, width: int, height: int) -> str:
    """Detections (original pixels) -> YOLO prediction lines ``class cx cy w h score``, box values
    normalised by the image ``width`` / ``height``, 6 decimals (``detkit eval --pred-format yolo``)."""
    lines = []
    for (x1, y1, x2, y2), score, cid in zip(det.boxes.astype(np.float64), det.scores, det.class_ids):
        lines.append(f"{int(cid)} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f} {float(score):.6f}\n")
    return "".join(lines)


def _label_stem(path: Path, used: set[str]) -> str:
    """The image's stem, de-duplicated (``stem_2``) with a warning: ``detkit eval`` matches
    prediction files to images by stem, so two images with one stem cannot both be scored."""
    stem, k = path.stem, 2
    if stem.lower() in used:
        while f"{stem}_{k}".lower() in used:
            k += 1
        log.warning("%s: another image has the stem %r; its predictions go to %s_%d.txt", path, stem, stem, k)
        stem = f"{stem}_{k}"
    used.add(stem.lower())
    return stem


def _open_writer(out_dir: Path, stem: str, fps: float, size: tuple[int, int]):
    """A cv2.VideoWriter on a temporary name in ``out_dir``: mp4v in .mp4, else MJPG in .avi
    (both work with the opencv-python(-headless) wheels). Returns (writer, temp path, final path)."""
    for fourcc, ext in (("mp4v", ".mp4"), ("MJPG", ".avi")):
        tmp = out_dir / f".{stem}.partial{ext}"
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, tmp, out_dir / f"{stem}{ext}"
        writer.release()
        tmp.unlink(missing_ok=True)
    raise DataError("OpenCV cannot write an mp4v/.mp4 or MJPG/.avi video here (use --no-images)", path=out_dir)


def _detect_video(args: argparse.Namespace, predictor, names: list[str], src: Path, out_dir: Path,
                  progress: bool) -> int:
    """Frames -> detections: ``OUT/<stem>.mp4`` (or ``.avi``) annotated, ``OUT/detections.jsonl``
    one JSON object per frame ``{"frame", "time", "detections": [...]}`` (time = frame / fps, s),
    with ``--save-txt`` ``OUT/labels/<stem>_<frame:06d>.txt``."""
    import tempfile

    from tqdm import tqdm

    from detkit.data.datafiles import write_text_atomic

    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        cap.release()
        raise DataError("cannot open the video (not a video, or a codec this OpenCV lacks)", path=src)
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    fps = fps if np.isfinite(fps) and fps > 0 else 0.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    labels_dir = out_dir / "labels"
    if args.save_txt:
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
            results = predictor.predict_frames(frames(), batch_size=args.batch)
            for i, (frame, det) in enumerate(tqdm(results, total=total or None, unit="frame", desc="detect",
                                                  disable=not progress)):
                n_frames += 1
                n_dets += len(det)
                dets = [{"class_id": int(c), "class_name": names[int(c)], "score": round(float(s), 6),
                         "box_xyxy": [round(float(v), 4) for v in b]}
                        for b, s, c in zip(det.boxes, det.scores, det.class_ids)]
                jf.write(json.dumps({"frame": i, "time": round(i / fps, 6) if fps else None,
                                     "detections": dets}, ensure_ascii=False) + "\n")
                if args.save_txt:
                    write_text_atomic(labels_dir / f"{src.stem}_{i:06d}.txt",
                                      yolo_prediction_lines(det, frame.shape[1], frame.shape[0]))
                if not args.no_images:
                    if writer is None:
                        writer, video_tmp, video_out = _open_writer(out_dir, src.stem, fps or 25.0,
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
    print(f"{n_frames} frame(s) processed, {n_dets} detection(s), {elapsed:.2f} s "
          f"({n_frames / max(elapsed, 1e-9):.1f} frames/s); results in {out_dir}"
          + (f" ({video_out.name}, detections.jsonl)" if video_out is not None else " (detections.jsonl)"))
    return 0


def _print_table(rows: list[tuple[str, str, str, str]]) -> None:
    """image | class | score | box (x1 y1 x2 y2, original pixels)."""
    if not rows:
        return
    header = ("image", "class", "score", "box x1 y1 x2 y2")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(3)]
    fmt = f"{{:<{widths[0]}}}  {{:<{widths[1]}}}  {{:>{widths[2]}}}  {{}}"
    print(fmt.format(*header))
    for r in rows:
        print(fmt.format(*r))


def _entries_json(entries: list[dict]) -> str:
    """A JSON list, one detection per line (UTF-8, names and paths unescaped)."""
    if not entries:
        return "[]\n"
    return "[\n" + ",\n".join(" " + json.dumps(e, ensure_ascii=False) for e in entries) + "\n]\n"
