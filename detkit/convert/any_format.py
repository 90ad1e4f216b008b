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

import numpy as np

from detkit.convert.coco_input import coco_files, read_coco_source
from detkit.convert.fastlabels import label_lines
from detkit.convert.layouts import WRITERS, keep_box
from detkit.convert.options import ClassStats, ConvertResult, DatasetOptions
from detkit.convert.output import REPORT_NAME, build_out, check_paths, rename_map_text, write_text
from detkit.convert.records import BoxTable, ReportLog, SourceImage
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


def _table_known(table: BoxTable, classes: tuple[str, ...]) -> tuple[Counter, dict]:
    """Class filtering on a :class:`BoxTable` (what the SourceBox path does box by box): objects of
    classes outside ``classes`` counted by name and left out; the rest's class ids in ``classes``."""
    index = {n: k for k, n in enumerate(classes)}
    remap = np.array([index.get(n, -1) for n in table.names], np.int64)
    oc = remap[table.cls]
    known = oc >= 0
    unknown = Counter()
    for c, n in enumerate(np.bincount(table.cls[~known], minlength=len(table.names)).tolist()):
        if n:
            unknown[table.names[c]] = n
    item = table.item_index()
    keep = np.flatnonzero(known)
    return unknown, {"cls": oc[keep], "item": item[keep], "difficult": table.difficult[keep],
                     "crowd": table.crowd[keep], "x1": table.x1[keep], "y1": table.y1[keep],
                     "x2": table.x2[keep], "y2": table.y2[keep]}


def _table_yolo(tab: dict, items: list[SourceImage], classes: tuple[str, ...], opts: DatasetOptions,
                counters: Counter):
    """YOLO output from the known objects of a :class:`BoxTable` (``tab``, from :func:`_table_known`):
    :func:`keep_box`'s rule and counters, the per-class counts and each image's label text
    (:func:`detkit.convert.fastlabels.label_lines`), all column-wise."""
    diff, crowd = tab["difficult"], tab["crowd"]
    counters["difficult"] += int(diff.sum())
    counters["crowd_skipped"] += int(crowd.sum())
    keep = ~crowd
    if opts.difficult == "skip":
        counters["difficult_skipped"] += int((keep & diff).sum())
        keep &= ~diff
    c, it_k = tab["cls"][keep], tab["item"][keep]
    n_cls = len(classes)
    n_obj = np.bincount(c, minlength=n_cls).tolist()
    n_img = np.bincount(np.unique(it_k * n_cls + c) % n_cls, minlength=n_cls).tolist() if n_cls else []
    n_diff = np.bincount(tab["cls"][diff], minlength=n_cls).tolist()
    per_class = {n: ClassStats(n_img[k], n_obj[k], n_diff[k]) for k, n in enumerate(classes)}
    per_item = np.bincount(it_k, minlength=len(items))
    sizes = np.array([(it.width, it.height) for it in items], np.float64).reshape(len(items), 2)[it_k]
    blob, line_off = label_lines(c, tab["x1"][keep], tab["y1"][keep], tab["x2"][keep], tab["y2"][keep],
                                 sizes[:, 0], sizes[:, 1])
    first = np.zeros(len(items) + 1, np.int64)
    np.cumsum(per_item, out=first[1:])
    byte_off = line_off[first].tolist()
    texts = {id(it): blob[byte_off[k]:byte_off[k + 1]] for k, it in enumerate(items)}
    return {}, texts, per_class, int(keep.sum()), int((per_item == 0).sum())


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
    table = got.table
    if table is not None and opts.to != "yolo":  # the COCO and VOC writers take SourceBox lists
        table.materialise(items)
        table = None
    if opts.names is not None:
        classes = tuple(opts.names)
    elif got.classes is not None:
        classes = got.classes
    elif table is not None:
        classes = tuple(sorted({table.names[c] for c in set(table.cls.tolist())}))
    else:
        classes = tuple(sorted({b.name for it in items for b in it.boxes}))
    if table is not None:
        unknown, tab = _table_known(table, classes)
    else:
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
    if table is not None:
        kept, texts, per_class, n_written, n_empty = _table_yolo(tab, items, classes, opts, counters)
    else:
        texts = None
        kept = {id(it): [b for b in it.boxes if keep_box(b, opts.to, opts, counters)] for it in order}
        n_img, n_obj, n_diff = Counter(), Counter(), Counter()  # one pass (classes x images was quadratic)
        for it in order:
            names_here = [b.name for b in kept[id(it)]]
            n_obj.update(names_here)
            n_img.update(set(names_here))
            n_diff.update(b.name for b in it.boxes if b.difficult)
        per_class = {n: ClassStats(n_img[n], n_obj[n], n_diff[n]) for n in classes}
        n_written = sum(len(v) for v in kept.values())
        n_empty = sum(1 for v in kept.values() if not v)
    done: dict = {}

    def write(path: Path, text: str) -> None:
        if on_write is not None:
            on_write(path)
        write_text(path, text)

    def build(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        extra = {"texts": texts} if texts is not None else {}
        rows, modes = WRITERS[opts.to](tmp, order, kept, new_paths, splits, classes, opts, write, TOOL,
                                       on_write=on_write, **extra)
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
            "objects_written": n_written,
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
            "empty_images": n_empty,
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
