"""Reading a YOLO source for ``detkit convert`` (layouts: :mod:`detkit.data.yolo_folder`).

Boxes: ``x1 = (cx - w / 2) * W`` etc. with W, H the image's real size from its header. Labels
hold 6 decimals, so a pixel coordinate is known only to about ``0.75e-6 * W``; a coordinate that
close to a whole pixel is taken as that whole pixel (this makes VOC -> YOLO -> VOC exact).

Dirty lines (each reported with file and line, the rest of the file still used): not 5 numbers or
a class outside ``0..N-1`` -> left out (``bad_label_line``); coordinates outside [0, 1] -> the box
clipped to the image (or dropped when nothing is left), negative w/h swapped, zero w/h dropped.
An image without a label file has no objects (darknet's rule; counted ``label_missing``).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from detkit.convert.boxes import fix_box
from detkit.convert.coco_input import logical_path
from detkit.convert.discovery import inside
from detkit.convert.headers import check_image
from detkit.convert.options import DatasetOptions
from detkit.convert.records import ReportLog, SourceBox, SourceImage, SourceRead
from detkit.data.yolo_folder import find_yolo_layout, parse_label_line
from detkit.errors import ImageError

#: YOLO labels have 6 decimals: cx and w/2 each within 0.5e-6 and 0.25e-6 of the true value.
LABEL_ROUNDING = 0.75e-6


def snap(v: float, size: int) -> float:
    """A pixel coordinate read from a label: the whole pixel when within the labels' rounding."""
    r = round(v)
    return float(r) if abs(v - r) <= LABEL_ROUNDING * size + 1e-9 else v


def _rel(path: Path, src: Path, root: Path) -> str:
    p = path.absolute()
    if inside(p, src):
        return p.relative_to(src).as_posix()
    return p.relative_to(root).as_posix() if inside(p, root) else p.as_posix().lstrip("/")


def read_yolo_source(src: Path, opts: DatasetOptions, logs: ReportLog, counters: Counter) -> SourceRead:
    layout = find_yolo_layout(src)
    names = layout.names
    root = layout.config.parent if layout.config is not None else src
    items: list[SourceImage] = []
    seen: dict[str, str] = {}
    iterator = layout.images
    if opts.progress:
        from tqdm import tqdm
        iterator = tqdm(layout.images, desc="convert", unit="image")
    for image, split, label in iterator:
        rel = _rel(image, src, root)
        if rel in seen:
            logs.skip(rel, "duplicate_annotation", f"listed in {seen[rel]} and {split}; used as {seen[rel]}")
            continue
        seen[rel] = split or "the folder"
        lrel = _rel(label, src, root)
        try:
            w, h = check_image(str(image))
        except ImageError as exc:
            logs.skip(rel, "bad_image", exc.message)
            continue
        boxes = []
        try:
            with open(label, encoding="utf-8-sig") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            lines = []
            counters["label_missing"] += 1
        except (OSError, UnicodeDecodeError) as exc:
            logs.skip(lrel, "bad_label_file", f"cannot read: {getattr(exc, 'strerror', None) or exc}")
            continue
        for i, s in enumerate(lines, 1):
            if not s.strip():
                continue
            counters["objects_read"] += 1
            row = parse_label_line(s, len(names))
            if isinstance(row, str):
                logs.warn(lrel, "bad_label_line", f"line {i}: {row}; left out", line=i)
                counters["bad_label_lines"] += 1
                continue
            c, cx, cy, bw, bh = row
            x1, x2 = snap((cx - bw / 2) * w, w), snap((cx + bw / 2) * w, w)
            y1, y2 = snap((cy - bh / 2) * h, h), snap((cy + bh / 2) * h, h)
            b = fix_box(x1, y1, x2, y2, w, h, 0.0, s.strip(), f"line {i}", lrel, logs, counters)
            if b is not None:
                boxes.append(SourceBox(names[c], *b))
        logical = logical_path(rel)
        items.append(SourceImage(rel, str(image), lrel, logical, w, h, boxes, split=split))
    if not layout.images:
        counters["no_images_listed"] += 1
    return SourceRead(items, tuple(names), {"annotation_files": len({str(lb) for _, _, lb in layout.images}),
                                            "config": None if layout.config is None else
                                            _rel(layout.config, src, root)})
