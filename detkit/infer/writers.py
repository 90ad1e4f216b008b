"""The files ``detkit detect`` writes: output names (de-duplicated), YOLO prediction lines,
``detections.json`` entries, the video writer, and the printed detection table."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np

from detkit.errors import DataError

log = logging.getLogger(__name__)

#: image extensions written as they are (others become .jpg)
WRITABLE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def output_name(path: Path, used: set[str]) -> str:
    """Same file name as the input (non-ASCII kept), de-duplicated; unknown extensions -> .jpg."""
    stem, ext = path.stem, path.suffix
    if ext.lower() not in WRITABLE_EXTENSIONS:
        ext = ".jpg"
    name, k = f"{stem}{ext}", 2
    while name.lower() in used or name == "detections.json":
        name, k = f"{stem}_{k}{ext}", k + 1
    used.add(name.lower())
    return name


def yolo_prediction_lines(det, width: int, height: int) -> str:
    """Detections (original pixels) -> YOLO prediction lines ``class cx cy w h score``, box values
    normalised by the image ``width`` / ``height``, 6 decimals (``detkit eval --pred-format yolo``)."""
    lines = []
    for (x1, y1, x2, y2), score, cid in zip(det.boxes.astype(np.float64), det.scores, det.class_ids):
        lines.append(f"{int(cid)} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f} {float(score):.6f}\n")
    return "".join(lines)


def label_stem(path: Path, used: set[str]) -> str:
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


def detection_entries(det, names: list[str], image: str | None = None) -> tuple[list[dict], list[tuple]]:
    """One JSON-ready dict per detection: (``image``,) ``class_id``, ``class_name``, ``score``
    (6 decimals), ``box_xyxy`` (original pixels, 4 decimals); and the rows of the printed table
    (image, class, score with 2 decimals, box in whole pixels)."""
    entries, rows = [], []
    for box, score, cid in zip(det.boxes, det.scores, det.class_ids):
        box_list = [round(float(v), 4) for v in box]
        entry = {} if image is None else {"image": image}
        entry.update({"class_id": int(cid), "class_name": names[int(cid)], "score": round(float(score), 6),
                      "box_xyxy": box_list})
        entries.append(entry)
        rows.append((image or "", names[int(cid)], f"{score:.2f}", " ".join(f"{v:.0f}" for v in box_list)))
    return entries, rows


def entries_json(entries: list[dict]) -> str:
    """A JSON list, one detection per line (UTF-8, names and paths unescaped)."""
    if not entries:
        return "[]\n"
    return "[\n" + ",\n".join(" " + json.dumps(e, ensure_ascii=False) for e in entries) + "\n]\n"


def detection_table(rows: list[tuple[str, str, str, str]]) -> str:
    """image | class | score | box (x1 y1 x2 y2, original pixels); empty for no rows."""
    if not rows:
        return ""
    header = ("image", "class", "score", "box x1 y1 x2 y2")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(3)]
    fmt = f"{{:<{widths[0]}}}  {{:<{widths[1]}}}  {{:>{widths[2]}}}  {{}}"
    return "\n".join(fmt.format(*r) for r in [header, *rows])


def open_video_writer(out_dir: Path, stem: str, fps: float, size: tuple[int, int]):
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
