"""``detkit convert SRC OUT --to yolo|coco|voc [--from auto|voc|yolo|coco]``: any supported
annotation format to any other, with convert-voc's guarantees (ASCII-safe reversible names in
``rename_map.csv``, OUT built aside and renamed into place, SRC only read, dirty input fixed or
skipped and reported in ``convert_report.json``).

Steps: detect the source format (:func:`detect_format`), read it into :class:`SourceImage`
records with boxes in continuous pixels (:mod:`detkit.convert.xml_input`,
:mod:`detkit.convert.coco_input`, :mod:`detkit.convert.yolo_input`), fix the class order, name the
outputs, keep the source's splits (ImageSets, COCO file names, YOLO lists; a seeded draw for the
rest), write the target layout (:mod:`detkit.convert.layouts`). See docs/convert.md.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Callable

from detkit.convert.coco_input import coco_files, read_coco_source
from detkit.convert.layouts import WRITERS, keep_box
from detkit.convert.options import ClassStats, ConvertResult, DatasetOptions
from detkit.convert.output import REPORT_NAME, build_out, check_paths, rename_map_text, write_text
from detkit.convert.records import ReportLog, SourceImage
from detkit.convert.splits import assign_splits
from detkit.convert.voc_to_yolo import EXT_ALIASES
from detkit.convert.xml_input import read_voc_source
from detkit.convert.yolo_input import read_yolo_source
from detkit.data.sanitize import sanitize_paths
from detkit.data.yolo_folder import names_file
from detkit.errors import DataError

TOOL = "detkit convert"
FORMATS = ("voc", "yolo", "coco")
READERS = {"voc": read_voc_source, "coco": read_coco_source, "yolo": read_yolo_source}
BOX_COUNTERS = ("inverted_swapped", "degenerate_dropped", "outside_dropped", "clipped", "clipped_1px")


def detect_format(src: Path) -> str:
    """``coco`` for a JSON file; ``yolo`` for a folder with ``data.yaml``/``obj.data`` at its top;
    ``voc`` when it holds ``*.xml``; ``coco`` when it holds a COCO JSON; ``yolo`` with a names file."""
    if src.is_file():
        if src.suffix.lower() == ".json":
            return "coco"
        raise DataError("SRC is a file but not a COCO .json file", path=src)
    if (src / "data.yaml").is_file() or (src / "obj.data").is_file():
        return "yolo"
    for _, _, files in os.walk(src):
        if any(f.lower().endswith(".xml") for f in files):
            return "voc"
    if coco_files(src):
        return "coco"
    if names_file(src) is not None:
        return "yolo"
    raise DataError("cannot tell the annotation format (no *.xml, COCO JSON, data.yaml, obj.data or "
                    "obj.names/classes.txt found): use --from", path=src)


def _output_names(items: list[SourceImage], to: str) -> dict[str, str]:
    """Source image -> new path: the convert-voc naming rule; VOC output names are flat."""
    if to == "voc":
        flat = {it.image_rel: it.logical.replace("/", "__") for it in items}
        mapping = sanitize_paths(flat.values(), ext_aliases=EXT_ALIASES)
        return {k: mapping[v] for k, v in flat.items()}
    mapping = sanitize_paths((it.logical for it in items), ext_aliases=EXT_ALIASES)
    return {it.image_rel: mapping[it.logical] for it in items} | {k: v for k, v in mapping.items() if k.endswith("/")}


def _strict(opts: DatasetOptions, logs: ReportLog, src: Path) -> None:
    if opts.strict and (logs.warnings or logs.skipped):
        first = (logs.warnings + logs.skipped)[0]
        raise DataError(f"--strict: {len(logs.warnings)} warnings, {len(logs.skipped)} skipped files; "
                        f"first: {first['file'] or 'SRC'}: {first.get('message') or first.get('reason')}", path=src)


def convert_dataset(src: str | os.PathLike, out: str | os.PathLike, options: DatasetOptions = DatasetOptions(),
                    *, on_write: Callable[[Path], None] | None = None) -> ConvertResult:
    """Convert the dataset at ``src`` (a folder, or a COCO JSON file) into ``out`` in ``options.to``.

    ``on_write`` is called with each file's path (label / XML / JSON files, lists, names, map,
    report) before it is written into the build folder (a test seam; an exception it raises
    aborts the run and leaves OUT as it was).
    Raises:
        DataError / AnnotationError (one line naming the file and entry): bad options, SRC or OUT,
        a source file that cannot be read at all, nothing convertible, or ``strict`` and any warning.
    """
    src, out = Path(src).absolute(), Path(out).absolute()
    opts = options
    if opts.to not in FORMATS or opts.source not in (*FORMATS, "auto"):
        raise DataError(f"formats are {', '.join(FORMATS)} (from: also auto), got --from {opts.source} --to {opts.to}")
    if opts.difficult not in ("skip", "keep"):
        raise DataError(f"difficult must be 'skip' or 'keep', got {opts.difficult!r}")
    if not 0.0 <= opts.val_fraction < 1.0:
        raise DataError(f"val fraction must be in [0, 1), got {opts.val_fraction}")
    if not src.exists():
        raise DataError("SRC not found", path=src)
    check_paths(src if src.is_dir() else src.parent, out, opts.force)
    fmt = detect_format(src) if opts.source == "auto" else opts.source
    if fmt != "coco" and not src.is_dir():
        raise DataError(f"a {fmt} source must be a folder", path=src)

    logs, counters = ReportLog(), Counter()
    got = READERS[fmt](src, opts, logs, counters)
    items = got.items
    if opts.names is not None:
        classes = tuple(opts.names)
    elif got.classes is not None:
        classes = got.classes
    else:
        classes = tuple(sorted({b.name for it in items for b in it.boxes}))
    known, unknown = set(classes), Counter()
    for it in items:
        kept_here = [b for b in it.boxes if b.name in known]
        for b in it.boxes:
            if b.name not in known:
                unknown[b.name] += 1
        it.boxes = kept_here
    for name, n in sorted(unknown.items()):
        logs.warn("", "unknown_class", f"class {name!r} is not in --names: {n} objects skipped")
    _strict(opts, logs, src)
    if not items:
        reasons = Counter(s["code"] for s in logs.skipped)
        raise DataError(f"nothing could be converted ({fmt} source; skipped: {dict(sorted(reasons.items())) or 'none'})",
                        path=src)

    new_paths = _output_names(items, opts.to)
    preset = [it for it in items if it.split]
    drawn, split_info = assign_splits([it for it in items if not it.split], new_paths,
                                      src if src.is_dir() else src.parent, opts, logs)
    _strict(opts, logs, src)
    splits = {s: sorted([it for it in preset if it.split == s] + drawn[s], key=lambda it: new_paths[it.image_rel])
              for s in ("train", "val", "test")}
    if not splits["test"]:
        del splits["test"]
    split_info["source"] = len(preset)
    order = sorted(items, key=lambda it: new_paths[it.image_rel])
    kept = {id(it): [b for b in it.boxes if keep_box(b, opts.to, opts, counters)] for it in order}
    n_img, n_obj, n_diff = Counter(), Counter(), Counter()  # one pass (classes x images was quadratic)
    for it in order:
        names_here = [b.name for b in kept[id(it)]]
        n_obj.update(names_here)
        n_img.update(set(names_here))
        n_diff.update(b.name for b in it.boxes if b.difficult)
    per_class = {n: ClassStats(n_img[n], n_obj[n], n_diff[n]) for n in classes}
    done: dict = {}

    def write(path: Path, text: str) -> None:
        if on_write is not None:
            on_write(path)
        write_text(path, text)

    def build(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        rows, modes = WRITERS[opts.to](tmp, order, kept, new_paths, splits, classes, opts, write, TOOL,
                                       on_write=on_write)
        top = "JPEGImages" if opts.to == "voc" else "images"
        folders = [("folder", k.rstrip("/"), f"{top}/" + v.rstrip("/"))
                   for k, v in sorted(new_paths.items()) if k.endswith("/")]
        write(tmp / "rename_map.csv", rename_map_text(folders + rows))
        report = {
            "tool": TOOL, "src": str(src), "from": fmt, "to": opts.to,
            "options": {"names": list(opts.names) if opts.names is not None else None, "images": opts.images,
                        "val_fraction": opts.val_fraction, "seed": opts.seed, "difficult": opts.difficult,
                        "link": opts.link, "strict": opts.strict},
            "classes": list(classes),
            "images": len(items),
            "splits": {s: len(v) for s, v in splits.items()},
            "split_source": split_info,
            "objects_read": counters["objects_read"],
            "objects_written": sum(len(v) for v in kept.values()),
            "per_class": {n: {"images": s.images, "objects": s.objects, "difficult": s.difficult}
                          for n, s in per_class.items()},
            "difficult": counters["difficult"],
            "difficult_skipped": counters["difficult_skipped"],
            "crowd_skipped": counters["crowd_skipped"],
            "crowd_as_difficult": counters["crowd_as_difficult"],
            "unknown_class_skipped": dict(sorted(unknown.items())),
            "boxes": {k: counters[k] for k in BOX_COUNTERS},
            "size_missing": counters["size_missing"],
            "label_missing": counters["label_missing"],
            "empty_images": sum(1 for v in kept.values() if not v),
            "image_files": dict(sorted(modes.items())),
            **got.info,
            "warnings": logs.warnings,
            "skipped": logs.skipped,
        }
        write(tmp / REPORT_NAME, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        done["report"] = report

    build_out(out, build)
    report = done["report"]
    return ConvertResult(out=out, class_names=classes, per_class=per_class, images=len(items),
                         splits=report["splits"], warnings=tuple(logs.warnings), skipped=tuple(logs.skipped),
                         report=report)
