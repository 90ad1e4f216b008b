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

import csv
import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Callable

import yaml

from detkit.convert.boxes import convert_boxes
from detkit.convert.discovery import (
    choose_image,
    clean_filename,
    image_candidates,
    in_year_folder_outside_jpegimages,
    unsafe_filename,
    walk_source,
)
from detkit.convert.headers import check_image
from detkit.convert.options import ClassStats, ConvertOptions, ConvertResult
from detkit.convert.output import (
    REPORT_NAME,
    TOOL,
    check_paths,
    clean_stale,
    has_files,
    place_image,
    write_new,
    write_text,
)
from detkit.convert.records import ConvertedImage, ReportLog
from detkit.convert.splits import assign_splits
from detkit.data.datafiles import IMAGE_EXTENSIONS, format_yolo_labels
from detkit.data.sanitize import sanitize_paths
from detkit.data.voc import read_voc_annotation
from detkit.errors import AnnotationError, DataError, ImageError

#: Output extensions: ``.jpeg`` is renamed ``.jpg`` (same bytes); BMP is re-encoded as lossless PNG,
#: because pjreddie's darknet derives label paths only from ``.jpg``/``.png``/``.JPG``/``.JPEG``.
EXT_ALIASES = {".jpeg": ".jpg", ".bmp": ".png"}


def convert_voc(src: str | os.PathLike, out: str | os.PathLike, options: ConvertOptions = ConvertOptions(),
                *, on_write: Callable[[Path], None] | None = None) -> ConvertResult:
    """Convert the VOC dataset under ``src`` into a YOLO dataset folder ``out``.

    ``on_write`` is called with the path of each dataset file (lists, names, data files, map,
    report) just before it is written into the build folder; an exception it raises aborts the
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

    # first pass: read every XML and list the images it can name, so that an exact match always
    # wins over another XML's case-insensitive or Unicode-normalised fallback (whatever the order)
    parsed: list[tuple[str, str, str | None, str, object, list]] = []
    exact_owner: dict[str, str] = {}
    for xml_rel in tree.xmls:
        parent = xml_rel.rsplit("/", 1)[0] if "/" in xml_rel else ""
        xml_stem = os.path.splitext(xml_rel.rsplit("/", 1)[-1])[0]
        group = None
        if parent == "Annotations" or parent.endswith("/Annotations"):
            g = parent[: -len("Annotations")].rstrip("/")
            if g in tree.year_roots:
                group = g
        image_dir = (f"{group}/JPEGImages" if group else "JPEGImages") if group is not None else parent
        try:
            rec = read_voc_annotation(os.path.join(src, xml_rel))
        except AnnotationError as exc:
            parsed.append((xml_rel, xml_stem, group, image_dir, exc, []))
            continue
        fname = rec.filename.strip()
        cands = image_candidates(tree, src, image_dir, "" if unsafe_filename(fname) else fname, xml_stem)
        if cands and cands[0].tier <= 1:
            exact_owner.setdefault(cands[0].path, xml_rel)
        parsed.append((xml_rel, xml_stem, group, image_dir, rec, cands))

    iterator = parsed
    if opts.progress:
        from tqdm import tqdm
        iterator = tqdm(parsed, desc="convert-voc", unit="xml")
    for xml_rel, xml_stem, group, image_dir, rec, cands in iterator:
        if isinstance(rec, AnnotationError):
            exc = rec
            msg = exc.message + (f" (line {exc.line})" if exc.line else "")
            logs.skip(xml_rel, "bad_xml", msg)
            continue
        fname = clean_filename(rec, xml_rel, logs)
        match, refused = choose_image(cands, fname, xml_rel, exact_owner)
        if match is None:
            why = f"; {refused}" if refused else ""
            logs.skip(xml_rel, "no_image", f"no image for this annotation in {image_dir or '.'}/ "
                      f"(<filename> {rec.filename!r}, or the XML's stem with {', '.join(IMAGE_EXTENSIONS)}){why}")
            continue
        if match.note:
            logs.warn(xml_rel, "filename_mismatch", match.note)
        image_rel = match.path
        if image_rel in claimed:
            logs.skip(xml_rel, "duplicate_annotation", f"image {image_rel!r} is already annotated by {claimed[image_rel]!r}")
            continue
        try:
            w, h = check_image(os.path.join(src, image_rel))
        except ImageError as exc:
            claimed[image_rel] = xml_rel
            logs.skip(image_rel, "bad_image", exc.message)
            continue
        claimed[image_rel] = xml_rel
        if rec.width is None or rec.height is None:
            counters["size_missing"] += 1
        elif (rec.width, rec.height) != (w, h):
            hint = " (width and height swapped: EXIF rotation?)" if (rec.width, rec.height) == (h, w) else ""
            logs.warn(xml_rel, "size_mismatch", f"<size> {rec.width}x{rec.height} disagrees with the image's "
                      f"real size {w}x{h}{hint}; boxes normalised by the real size")
        rows, diff_names = convert_boxes(rec, w, h, xml_rel, opts, known, unknown, logs, counters)
        counters["objects_read"] += len(rec.objects)
        if group is not None:
            inner = image_rel[len(image_dir) + 1:]
            logical = f"{group}/{inner}" if group else inner
        else:
            logical = image_rel
        if match.kind is not None:  # named without an image extension, an image by content
            logical += match.kind
        items.append(ConvertedImage(xml_rel, image_rel, logical, group, xml_stem, w, h, rows, diff_names,
                                    kind=match.kind))

    for name, n in sorted(unknown.items()):
        logs.warn("", "unknown_class", f"class {name!r} is not in --names: {n} objects skipped")
    year_other = 0
    for rel in tree.images:
        if rel not in claimed:
            if in_year_folder_outside_jpegimages(rel, tree.year_roots):
                year_other += 1  # SegmentationClass/, SegmentationObject/ ...: not detection images
                continue
            logs.skip(rel, "no_annotation", "image without an XML annotation")

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
    clean_stale(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        modes = Counter()
        per_class_img: Counter = Counter()
        per_class_obj: Counter = Counter()
        per_class_diff: Counter = Counter()
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
            text = format_yolo_labels([(class_id[c], cx, cy, bw, bh) for c, cx, cy, bw, bh in it.objects])
            label = os.path.join(tmp_s, "labels", stem + ".txt")
            write_new(label, text)
            side = os.path.join(tmp_s, "images", stem + ".txt")  # AlexeyAB's darknet looks beside the image
            try:
                os.link(label, side)
            except OSError:
                shutil.copyfile(label, side)
            for c in {r[0] for r in it.objects}:
                per_class_img[c] += 1
            for r in it.objects:
                per_class_obj[r[0]] += 1
            for c in it.difficult_names:
                per_class_diff[c] += 1
            rename_rows.append(("image", it.image_rel, f"images/{new}"))
            rename_rows.append(("annotation", it.xml_rel, f"labels/{stem}.txt"))

        split_names = ["train", "val"] + (["test"] if splits["test"] else [])
        for s in split_names:
            write(tmp / f"{s}.txt", "".join(f"./images/{new_paths[it.image_rel]}\n" for it in splits[s]))
        write(tmp / "obj.names", "".join(f"{n}\n" for n in class_names))
        write(tmp / "obj.data", f"classes = {len(class_names)}\ntrain = train.txt\nvalid = val.txt\n"
                                 "names = obj.names\nbackup = backup/\n")
        doc = {"train": "train.txt", "val": "val.txt"}
        if splits["test"]:
            doc["test"] = "test.txt"
        doc["nc"] = len(class_names)
        doc["names"] = list(class_names)
        write(tmp / "data.yaml", "# written by detkit convert-voc; paths are relative to this file's folder\n"
               + yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))
        buf = io.StringIO()
        wr = csv.writer(buf, lineterminator="\n")
        wr.writerow(("source", "output", "kind"))
        wr.writerows((s, o, k) for k, s, o in rename_rows)
        write(tmp / "rename_map.csv", buf.getvalue())

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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        if has_files(old / "backup"):  # darknet's weights from training on the previous output: keep them
            os.rmdir(out / "backup")
            os.replace(old / "backup", out / "backup")
        shutil.rmtree(old, ignore_errors=True)
    return ConvertResult(out=out, class_names=class_names, per_class=per_class, images=len(items),
                         splits=report["splits"], warnings=tuple(logs.warnings), skipped=tuple(logs.skipped),
                         report=report)
