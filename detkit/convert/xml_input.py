"""Reading a Pascal VOC source for ``detkit convert``: the convert-voc discovery and pairing rules
(:mod:`detkit.convert.discovery`, :mod:`detkit.convert.pairing`), boxes turned into continuous
pixels (``x1 = xmin - 1``, ``x2 = xmax``), checked and clipped as convert-voc does, difficult kept."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from detkit.convert.boxes import fix_box
from detkit.convert.discovery import walk_source
from detkit.convert.headers import check_claimed_size, check_image
from detkit.convert.options import DatasetOptions
from detkit.convert.pairing import report_unannotated, voc_pairs
from detkit.convert.records import ReportLog, SourceBox, SourceImage, SourceRead
from detkit.errors import ImageError


def read_voc_source(src: Path, opts: DatasetOptions, logs: ReportLog, counters: Counter) -> SourceRead:
    tree = walk_source(src, logs)
    claimed: dict[str, str] = {}
    items: list[SourceImage] = []
    for pair in voc_pairs(src, tree, logs, claimed, progress=opts.progress, desc="convert"):
        path = os.path.join(src, pair.image_rel)
        try:
            w, h = check_image(path)
        except ImageError as exc:
            logs.skip(pair.image_rel, "bad_image", exc.message)
            continue
        rec = pair.record
        check_claimed_size(rec.width, rec.height, w, h, pair.xml_rel, logs, counters)
        boxes = []
        for i, o in enumerate(rec.objects, 1):
            b = fix_box(*o.voc(), w, h, 1.0, o.voc(), f"object {i} ({o.name})", pair.xml_rel, logs, counters)
            if b is not None:
                boxes.append(SourceBox(o.name, *b, difficult=o.difficult))
        counters["objects_read"] += len(rec.objects)
        items.append(SourceImage(pair.image_rel, path, pair.xml_rel, pair.logical, w, h, boxes,
                                 group=pair.group, split_id=pair.xml_stem, kind=pair.match.kind))
    year_other = report_unannotated(tree, claimed, logs)
    return SourceRead(items, None, {"annotation_files": len(tree.xmls), "year_folder_other_images": year_other})
