"""Per-annotation box conversion for ``detkit convert-voc``: VOC pixel boxes -> normalised YOLO rows.

Box rule: VOC ``xmin..xmax`` are 1-based inclusive pixels, so the continuous box is
``x1 = xmin - 1, x2 = xmax`` (width ``xmax - xmin + 1``); YOLO values are ``cx = (x1 + x2) / 2 / W``,
``w = (x2 - x1) / W`` with W, H the real image size (EXIF orientation applied).
``legacy_offset`` reproduces darknet's ``voc_label.py`` instead: ``cx = ((xmin + xmax) / 2 - 1) / W``,
``w = (xmax - xmin) / W``.

Objects of classes outside ``--names`` are counted and left out; difficult objects are kept or
left out (``--difficult``); inverted boxes are swapped, zero-area boxes and boxes outside the
image dropped, boxes sticking out clipped -- each reported.
"""
from __future__ import annotations

from collections import Counter

from detkit.convert.options import ConvertOptions
from detkit.convert.records import ReportLog
from detkit.data.records import ImageRecord

#: Boxes sticking out of the image by at most this many pixels are clipped without a warning
#: (0-based annotators write ``xmin = 0``; VOC's 1-based rule then puts x1 at -1).
CLIP_SILENT_PX = 1.0


def fix_box(xmin: float, ymin: float, xmax: float, ymax: float, w: int, h: int, offset: float, shown,
            where: str, file: str, logs: ReportLog, counters: Counter) -> tuple[float, float, float, float] | None:
    """One box in its source's coordinates -> continuous pixel ``(x1, y1, x2, y2)`` inside the image,
    or None when it is dropped. Every fix is reported (``shown`` is the box as the source wrote it).

    ``offset`` is subtracted from ``xmin``/``ymin``: 1 for VOC's 1-based inclusive pixels, 0 for
    COCO and YOLO boxes (already continuous). Inverted boxes are swapped, zero-area boxes (as drawn)
    and boxes outside the image dropped, boxes sticking out clipped.
    """
    if xmin > xmax or ymin > ymax:
        logs.warn(file, "inverted_box", f"{where}: inverted box {shown} swapped")
        xmin, xmax = min(xmin, xmax), max(xmin, xmax)
        ymin, ymax = min(ymin, ymax), max(ymin, ymax)
        counters["inverted_swapped"] += 1
    if xmin == xmax or ymin == ymax:
        logs.warn(file, "degenerate_box", f"{where}: zero-area box {shown} dropped")
        counters["degenerate_dropped"] += 1
        return None
    x1, y1, x2, y2 = xmin - offset, ymin - offset, xmax, ymax
    out_by = max(-x1, -y1, x2 - w, y2 - h)
    cx1, cy1 = min(max(x1, 0.0), w), min(max(y1, 0.0), h)
    cx2, cy2 = min(max(x2, 0.0), w), min(max(y2, 0.0), h)
    if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
        logs.warn(file, "outside_image", f"{where}: box {shown} lies outside the {w}x{h} image; dropped")
        counters["outside_dropped"] += 1
        return None
    if out_by > CLIP_SILENT_PX:
        logs.warn(file, "clipped_box", f"{where}: box {shown} extends {out_by:g} px outside the "
                  f"{w}x{h} image; clipped")
        counters["clipped"] += 1
    elif out_by > 0:
        counters["clipped_1px"] += 1
    return cx1, cy1, cx2, cy2


def convert_boxes(rec: ImageRecord, w: int, h: int, xml_rel: str, opts: ConvertOptions,
                   known: set[str] | None, unknown: Counter, logs: ReportLog, counters: Counter
                   ) -> tuple[list[tuple[str, float, float, float, float]], list[str]]:
    rows, difficult_names = [], []
    for i, o in enumerate(rec.objects, 1):
        where = f"object {i} ({o.name})"
        if known is not None and o.name not in known:
            unknown[o.name] += 1
            continue
        if o.difficult:
            difficult_names.append(o.name)
            counters["difficult"] += 1
            if opts.difficult == "skip":
                counters["difficult_skipped"] += 1
                continue
        box = fix_box(*o.voc(), w, h, 1.0, o.voc(), where, xml_rel, logs, counters)
        if box is None:
            continue
        cx1, cy1, cx2, cy2 = box
        if opts.legacy_offset:  # darknet voc_label.py: centre - 1 px, width without the +1
            vx1, vx2, vy1, vy2 = cx1 + 1.0, cx2, cy1 + 1.0, cy2
            cx, cy, bw, bh = (vx1 + vx2) / 2 - 1, (vy1 + vy2) / 2 - 1, vx2 - vx1, vy2 - vy1
        else:
            cx, cy, bw, bh = (cx1 + cx2) / 2, (cy1 + cy2) / 2, cx2 - cx1, cy2 - cy1
        rows.append((o.name, cx / w, cy / h, bw / w, bh / h))
    return rows, difficult_names
