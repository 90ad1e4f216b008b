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
        xmin, ymin, xmax, ymax = o.voc()
        if xmin > xmax or ymin > ymax:
            logs.warn(xml_rel, "inverted_box", f"{where}: inverted box {o.voc()} swapped")
            xmin, xmax = min(xmin, xmax), max(xmin, xmax)
            ymin, ymax = min(ymin, ymax), max(ymin, ymax)
            counters["inverted_swapped"] += 1
        if xmin == xmax or ymin == ymax:
            logs.warn(xml_rel, "degenerate_box", f"{where}: zero-area box {o.voc()} dropped")
            counters["degenerate_dropped"] += 1
            continue
        x1, y1, x2, y2 = xmin - 1.0, ymin - 1.0, xmax, ymax  # VOC 1-based inclusive -> continuous
        out_by = max(-x1, -y1, x2 - w, y2 - h)
        cx1, cy1 = min(max(x1, 0.0), w), min(max(y1, 0.0), h)
        cx2, cy2 = min(max(x2, 0.0), w), min(max(y2, 0.0), h)
        if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
            logs.warn(xml_rel, "outside_image", f"{where}: box {o.voc()} lies outside the {w}x{h} image; dropped")
            counters["outside_dropped"] += 1
            continue
        if out_by > CLIP_SILENT_PX:
            logs.warn(xml_rel, "clipped_box", f"{where}: box {o.voc()} extends {out_by:g} px outside the "
                      f"{w}x{h} image; clipped")
            counters["clipped"] += 1
        elif out_by > 0:
            counters["clipped_1px"] += 1
        if opts.legacy_offset:  # darknet voc_label.py: centre - 1 px, width without the +1
            vx1, vx2, vy1, vy2 = cx1 + 1.0, cx2, cy1 + 1.0, cy2
            cx, cy, bw, bh = (vx1 + vx2) / 2 - 1, (vy1 + vy2) / 2 - 1, vx2 - vx1, vy2 - vy1
        else:
            cx, cy, bw, bh = (cx1 + cx2) / 2, (cy1 + cy2) / 2, cx2 - cx1, cy2 - cy1
        rows.append((o.name, cx / w, cy / h, bw / w, bh / h))
    return rows, difficult_names
