"""``detkit detect``: run a darknet cfg + weights on images, write annotated images and JSON."""
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
_WRITABLE = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "detect", help="detect objects in images with a darknet cfg + weights",
        description="Run a YOLO model (darknet cfg + weights) on an image, a folder of images or a "
                    "list file; write annotated images and detections.json to --out.")
    p.add_argument("--cfg", required=True, help="darknet .cfg file (or a builtin name, e.g. yolov3-tiny)")
    p.add_argument("--weights", required=True, help="darknet .weights file")
    p.add_argument("--names", required=True, help="class names file, one per line (sets the class count)")
    p.add_argument("--source", required=True,
                   help="an image, a folder of images (searched recursively) or a .txt list of image paths")
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
    p.add_argument("--no-images", action="store_true", help="write only detections.json")
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
    from detkit import build_model, load_darknet_weights
    from detkit.data.datafiles import read_names, write_bytes_atomic, write_text_atomic
    from detkit.engine.predict import Predictor, parse_img_size, resolve_device

    if not 0.0 <= args.conf < 1.0:
        raise DataError(f"--conf must be in [0, 1), got {args.conf}")
    if not 0.0 < args.nms <= 1.0:
        raise DataError(f"--nms must be in (0, 1], got {args.nms}")
    if args.batch < 1:
        raise DataError(f"--batch must be >= 1, got {args.batch}")
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
    sources = collect_sources(args.source)
    out_dir = Path(args.out)
    if not args.no_images and out_dir.resolve() in {p.resolve().parent for p in sources}:
        raise DataError("--out is a folder holding input images; annotated images would overwrite "
                        "them (choose another --out, or --no-images)", path=out_dir)

    model = build_model(args.cfg, num_classes=len(names))
    report = load_darknet_weights(model, weights)
    if report.reinitialised:  # detecting with re-initialised heads would give random boxes
        raise WeightsError(
            f"holds {report.file_num_classes} classes but the names file {args.names} has {len(names)} "
            "names; use the names file the weights were trained with", path=weights)
    if report.partial:
        raise WeightsError(f"is a partial file (it ends before the last layer of {args.cfg}); "
                           "detection needs complete weights", path=weights)
    predictor = Predictor(model, img_size=img_size, conf=args.conf, nms=args.nms,
                          letterbox=not args.resize, device=device)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("detect: %d image(s), input %dx%d (%s), device %s", len(sources), *predictor.input_size,
             "plain resize" if args.resize else "letterbox", device)

    entries: list[dict] = []
    used: set[str] = set()
    n_ok = n_bad = 0
    t0 = time.perf_counter()
    rows: list[tuple[str, str, str, str]] = []
    for res in predictor.predict_paths(sources, batch_size=args.batch, keep_images=not args.no_images):
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
        if not args.no_images:
            out_name = _output_name(Path(res.path), used)
            ok, buf = cv2.imencode(Path(out_name).suffix, draw_detections(res.image, det, names))
            if not ok:  # pragma: no cover - cv2 encodes every extension in _WRITABLE
                raise ImageError("cannot encode the annotated image", path=res.path)
            write_bytes_atomic(out_dir / out_name, buf.tobytes())  # bytes: non-ASCII names are fine
    elapsed = time.perf_counter() - t0
    write_text_atomic(out_dir / "detections.json", _entries_json(entries))
    _print_table(rows)
    print(f"{n_ok} image(s) processed, {len(entries)} detection(s), {n_bad} unreadable image(s) skipped, "
          f"{elapsed:.2f} s; results in {out_dir}")
    return 0 if n_ok > 0 else 1


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
