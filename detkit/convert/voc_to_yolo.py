"""``detkit convert-voc``: Pascal VOC XML datasets -> a YOLO/darknet dataset folder.

This module holds :func:`convert_voc` (the run: walk SRC, read each XML, find and check its
image, convert its boxes, choose the splits, build OUT). Its API types are in
:mod:`detkit.convert.options`, the printed table and imbalance warning in
:mod:`detkit.convert.summary`. The steps live in:

* :mod:`detkit.convert.discovery`: the SRC layouts recognised, the walk, how an XML's image is found;
* :mod:`detkit.convert.headers`: each image's real size from its JPEG/PNG header (EXIF orientation applied);
* :mod:`detkit.convert.boxes`: the box rule (VOC pixels -> YOLO values, ``legacy_offset``);
* :mod:`detkit.convert.splits`: ImageSets/Main splits and the seeded random draw;
* :mod:`detkit.convert.output`: OUT built aside and renamed into place (never half-written,
  SRC only read), the checks on an existing OUT, the file writes;
* :mod:`detkit.convert.records`: the per-image records and the report's warning log.

See docs/convert.md for the OUT layout and the report fields.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Callable

from detkit.convert.boxes import convert_boxes
from detkit.convert.discovery import walk_source
from detkit.convert.headers import check_claimed_size, check_image
from detkit.convert.options import ClassStats, ConvertOptions, ConvertResult
from detkit.convert.output import (
    REPORT_NAME,
    TOOL,
    build_out,
    check_paths,
    place_image,
    rename_map_text,
    write_label_pair,
    write_text,
    write_yolo_files,
)
from detkit.convert.pairing import report_unannotated, voc_pairs
from detkit.convert.records import ConvertedImage, ReportLog
from detkit.convert.splits import assign_splits
from detkit.data.datafiles import format_yolo_labels
from detkit.data.sanitize import sanitize_paths
from detkit.errors import DataError, ImageError

#: Output extensions: ``.jpeg`` is renamed ``.jpg`` (same bytes); BMP is re-encoded as lossless PNG,
#: because pjreddie's darknet derives label paths only from ``.jpg``/``.png``/``.JPG``/``.JPEG``.
EXT_ALIASES = {".jpeg": ".jpg", ".bmp": ".png"}


def convert_voc(src: str | os.PathLike, out: str | os.PathLike, options: ConvertOptions = ConvertOptions(),
                *, on_write: Callable[[Path], None] | None = None) -> ConvertResult:
    """Convert the VOC dataset under ``src`` into a YOLO dataset folder ``out``.

    ``on_write`` is called with the path of each dataset file (label files, lists, names, data
    files, map, report) just before it is written into the build folder; an exception it raises aborts the
    run like any other (OUT is left as it was).

    Returns:
        :class:`ConvertResult` (counts, warnings, skipped files; the same as OUT's report).
    Raises:
        DataError: bad SRC/OUT, nothing convertible, or (``strict``) any warning. OUT is then
        left as it was.
        AnnotationError: ``strict`` and a malformed annotation.
    """
    src, out = Path(src).absolute(), Path(out).absolute()
    opts = options

    def write(path: Path, text: str) -> None:
        if on_write is not None:
            on_write(path)
        write_text(path, text)
    if opts.difficult not in ("skip", "keep"):
        raise DataError(f"difficult must be 'skip' or 'keep', got {opts.difficult!r}")
    if not 0.0 <= opts.val_fraction < 1.0:
        raise DataError(f"val fraction must be in [0, 1), got {opts.val_fraction}")
    if opts.names is not None:
        dup = [n for n, c in Counter(opts.names).items() if c > 1]
        if dup or not opts.names:
            raise DataError(f"class names must be unique and non-empty, got duplicates {dup}")
    check_paths(src, out, opts.force)

    logs = ReportLog()
    tree = walk_source(src, logs)
    known = set(opts.names) if opts.names is not None else None
    unknown: Counter = Counter()
    counters: Counter = Counter()
    items: list[ConvertedImage] = []
    claimed: dict[str, str] = {}

    for pair in voc_pairs(src, tree, logs, claimed, progress=opts.progress):
        xml_rel, xml_stem, group, rec, match = pair.xml_rel, pair.xml_stem, pair.group, pair.record, pair.match
        image_rel = match.path
        try:
            w, h = check_image(os.path.join(src, image_rel))
        except ImageError as exc:
            logs.skip(image_rel, "bad_image", exc.message)
            continue
        check_claimed_size(rec.width, rec.height, w, h, xml_rel, logs, counters)
        rows, diff_names = convert_boxes(rec, w, h, xml_rel, opts, known, unknown, logs, counters)
        counters["objects_read"] += len(rec.objects)
        logical = pair.logical
        items.append(ConvertedImage(xml_rel, image_rel, logical, group, xml_stem, w, h, rows, diff_names,
                                    kind=match.kind))

    for name, n in sorted(unknown.items()):
        logs.warn("", "unknown_class", f"class {name!r} is not in --names: {n} objects skipped")
    year_other = report_unannotated(tree, claimed, logs)

    if opts.strict and (logs.warnings or logs.skipped):
        first = (logs.warnings + logs.skipped)[0]
        raise DataError(f"--strict: {len(logs.warnings)} warnings, {len(logs.skipped)} skipped files; "
                        f"first: {first['file'] or 'SRC'}: {first.get('message') or first.get('reason')}",
                        path=src)
    if not items:
        reasons = Counter(s["code"] for s in logs.skipped)
        raise DataError(f"nothing could be converted ({len(tree.xmls)} XML files; skipped: "
                        f"{dict(sorted(reasons.items())) or 'none'})", path=src)

    # classes
    if opts.names is not None:
        class_names = tuple(opts.names)
    else:
        seen = {r[0] for it in items for r in it.objects} | {n for it in items for n in it.difficult_names}
        class_names = tuple(sorted(seen))
    similar: dict[str, list[str]] = {}
    for n in class_names:
        similar.setdefault(" ".join(n.casefold().replace("_", " ").replace("-", " ").split()), []).append(n)
    for group in similar.values():
        if len(group) > 1:
            logs.warn("", "similar_class_names", f"classes {', '.join(repr(g) for g in group)} differ only in case, "
                      "spaces, '_' or '-': probably one class spelt differently (use --names to choose)")
    class_id = {n: i for i, n in enumerate(class_names)}

    # names, splits
    mapping = sanitize_paths((it.logical for it in items), ext_aliases=EXT_ALIASES)
    new_paths = {it.image_rel: mapping[it.logical] for it in items}
    splits, split_info = assign_splits(items, new_paths, src, opts, logs)
    if opts.strict and logs.warnings:
        raise DataError(f"--strict: {logs.warnings[0]['file']}: {logs.warnings[0]['message']}", path=src)

    # build in a sibling folder, then swap it in
    modes: Counter = Counter()
    per_class_img: Counter = Counter()
    per_class_obj: Counter = Counter()
    per_class_diff: Counter = Counter()
    done: dict = {}

    def build(tmp: Path) -> None:
        (tmp / "images").mkdir(parents=True)
        (tmp / "labels").mkdir()
        (tmp / "backup").mkdir()
        rename_rows = []
        for d_src, d_new in sorted((k, v) for k, v in mapping.items() if k.endswith("/")):
            rename_rows.append(("folder", d_src.rstrip("/"), "images/" + d_new.rstrip("/")))
        made_dirs: set[str] = set()
        tmp_s = str(tmp)
        for it in sorted(items, key=lambda it: new_paths[it.image_rel]):
            new = new_paths[it.image_rel]
            stem = new.rsplit(".", 1)[0]
            folder = new.rsplit("/", 1)[0] if "/" in new else ""
            if folder not in made_dirs:
                os.makedirs(os.path.join(tmp_s, "images", folder), exist_ok=True)
                os.makedirs(os.path.join(tmp_s, "labels", folder), exist_ok=True)
                made_dirs.add(folder)
            modes[place_image(os.path.join(src, it.image_rel), os.path.join(tmp_s, "images", new), opts.link,
                              kind=it.kind)] += 1
            write_label_pair(tmp_s, stem, format_yolo_labels(
                [(class_id[c], cx, cy, bw, bh) for c, cx, cy, bw, bh in it.objects]), on_write)
            for c in {r[0] for r in it.objects}:
                per_class_img[c] += 1
            for r in it.objects:
                per_class_obj[r[0]] += 1
            for c in it.difficult_names:
                per_class_diff[c] += 1
            rename_rows.append(("image", it.image_rel, f"images/{new}"))
            rename_rows.append(("annotation", it.xml_rel, f"labels/{stem}.txt"))

        split_names = ["train", "val"] + (["test"] if splits["test"] else [])
        write_yolo_files(tmp, {s: [f"./images/{new_paths[it.image_rel]}" for it in splits[s]] for s in split_names},
                         class_names, TOOL, write)
        write(tmp / "rename_map.csv", rename_map_text(rename_rows))

        per_class = {n: ClassStats(per_class_img[n], per_class_obj[n], per_class_diff[n]) for n in class_names}
        report = {
            "tool": TOOL,
            "src": str(src),
            "options": {"names": list(opts.names) if opts.names is not None else None,
                        "val_fraction": opts.val_fraction, "seed": opts.seed, "difficult": opts.difficult,
                        "link": opts.link, "legacy_offset": opts.legacy_offset, "strict": opts.strict},
            "classes": list(class_names),
            "images": len(items),
            "splits": {s: len(splits[s]) for s in split_names},
            "split_source": split_info,
            "objects_read": counters["objects_read"],
            "objects_written": sum(per_class_obj.values()),
            "per_class": {n: {"images": s.images, "objects": s.objects, "difficult": s.difficult}
                          for n, s in per_class.items()},
            "difficult": counters["difficult"],
            "difficult_skipped": counters["difficult_skipped"],
            "unknown_class_skipped": dict(sorted(unknown.items())),
            "boxes": {k: counters[k] for k in ("inverted_swapped", "degenerate_dropped", "outside_dropped",
                                                 "clipped", "clipped_1px")},
            "size_missing": counters["size_missing"],
            "empty_images": sum(1 for it in items if not it.objects),
            "image_files": dict(sorted(modes.items())),
            "xml_files": len(tree.xmls),
            "year_folder_other_images": year_other,
            "warnings": logs.warnings,
            "skipped": logs.skipped,
        }
        write(tmp / REPORT_NAME, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        done.update(report=report, per_class=per_class)

    build_out(out, build)
    report, per_class = done["report"], done["per_class"]
    return ConvertResult(out=out, class_names=class_names, per_class=per_class, images=len(items),
                         splits=report["splits"], warnings=tuple(logs.warnings), skipped=tuple(logs.skipped),
                         report=report)
