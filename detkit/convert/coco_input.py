"""Reading a COCO source for ``detkit convert``: one JSON file, or every COCO JSON under SRC.

* Split: from the file's name (``instances_val2017.json`` -> val) or its folder's name
  (Roboflow's ``valid/_annotations.coco.json``), else drawn at random.
* Images: ``file_name`` looked up under ``--images DIR`` if given, else beside the JSON, in its
  ``images/`` folder, in SRC and in ``SRC/images/`` (first that has it; an exact name first, a
  case-insensitive or Unicode-normalised match only when unique). Real size from the header.
* Classes: the categories sorted by id, mapped to 0..N-1 (printed); images without annotations kept.
* Policy for dirty entries (each reported with the file and entry): a bad image entry, repeated
  image id (first kept), annotation of an image not listed (``missing_image``), unknown category
  (``unknown_category``), bbox not 4 numbers (``bad_bbox``): left out; negative w/h swapped,
  zero w/h dropped, boxes outside the image clipped or dropped (as for VOC).
* ``iscrowd``: kept as crowd (COCO output), left out of YOLO labels and counted (``crowd_skipped``),
  written ``difficult`` in VOC XML. ``ignore: 1`` and ``difficult: 1`` read as difficult.
"""
from __future__ import annotations

import os
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath

from detkit.convert.boxes import fix_box
from detkit.convert.discovery import FolderTables, inside, unsafe_filename
from detkit.convert.headers import check_claimed_size, check_image, sniff_image
from detkit.convert.options import DatasetOptions
from detkit.convert.records import ReportLog, SourceBox, SourceImage, SourceRead
from detkit.data.coco import is_coco_document, load_json, read_coco_file
from detkit.data.datafiles import IMAGE_EXTENSIONS
from detkit.errors import DataError, ImageError

SPLIT_WORDS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def split_of(path: Path) -> str | None:
    """train / val / test from a file's stem (``instances_val2017``) or its folder's name."""
    for text in (path.stem, path.parent.name):
        for tok in text.lower().replace("-", "_").replace(".", "_").split("_"):
            tok = tok.rstrip("0123456789")
            if tok in SPLIT_WORDS:
                return SPLIT_WORDS[tok]
    return None


def coco_files(src: Path) -> list[Path]:
    """The COCO JSON files of SRC (SRC itself when it is a file); other JSON files are ignored."""
    if src.is_file():
        return [src]
    found = []
    for p in sorted(src.rglob("*.json")):
        if p.name == "convert_report.json" or not p.is_file():
            continue
        with open(p, "rb") as fh:
            head = fh.read(1 << 16)
        if b'"images"' not in head and b'"annotations"' not in head and len(head) == 1 << 16:
            continue  # a big JSON file of something else
        if is_coco_document(load_json(p)):  # broken JSON is an error naming the file and line
            found.append(p)
    return found


class _ImageFinder:
    """Finds ``file_name`` under the candidate roots (exact name first, unique fallback next)."""

    def __init__(self, roots: list[Path]):
        self.roots = [r for r in roots if r.is_dir()]
        self.tables: dict[Path, FolderTables] = {}

    def find(self, file_name: str) -> tuple[Path, Path] | None:
        name = file_name.replace("\\", "/")
        for root in self.roots:
            p = root / name
            if p.is_file():
                return root, p
        for root in self.roots:
            folder = (root / name).parent
            t = self.tables.get(folder)
            if t is None:
                try:
                    t = self.tables[folder] = FolderTables.build(sorted(os.listdir(folder)))
                except OSError:
                    continue
            base = PurePosixPath(name).name
            for table, key in ((t.by_nfc, _nfc(base)), (t.by_fold, _nfc(base).casefold())):
                hits = table.get(key, [])
                if len(hits) == 1:
                    return root, folder / hits[0]
        return None


def _nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def logical_path(rel: str) -> str:
    """Output-name path: the path without folders named ``images`` or ``JPEGImages``."""
    parts = [p for p in rel.split("/")[:-1] if p not in ("images", "JPEGImages")] + [rel.rsplit("/", 1)[-1]]
    return "/".join(parts)


def read_coco_source(src: Path, opts: DatasetOptions, logs: ReportLog, counters: Counter) -> SourceRead:
    files = coco_files(src)
    if not files:
        raise DataError("no COCO JSON file (a JSON object with 'images' and 'annotations' lists) found", path=src)
    base = src if src.is_dir() else src.parent
    classes: tuple[str, ...] | None = None
    items: list[SourceImage] = []
    seen_images: dict[str, str] = {}
    for jf in files:
        jrel = jf.relative_to(base).as_posix()
        coco = read_coco_file(jf, lambda entry, code, msg, f=jrel: logs.skip(f, code, f"{entry}: {msg}"))
        names = tuple(n for _, n in coco.categories)
        if classes is None:
            classes = names
        elif names != classes:
            raise DataError(f"categories differ from those of the first COCO file: {list(names)} vs "
                            f"{list(classes)}", path=jf)
        cindex = {cid: k for k, (cid, _) in enumerate(coco.categories)}
        split = split_of(jf)
        roots = [Path(opts.images)] if opts.images else [jf.parent, jf.parent / "images", base, base / "images"]
        finder = _ImageFinder(roots)
        by_image: dict = defaultdict(list)
        known_ids = {im.id for im in coco.images}
        for a in coco.annotations:
            if a.image_id not in known_ids:
                logs.skip(jrel, "missing_image", f"{a.entry}: image_id {a.image_id!r} is not in images")
            elif a.category_id not in cindex:
                logs.skip(jrel, "unknown_category", f"{a.entry}: category_id {a.category_id!r} is not in categories")
            else:
                by_image[a.image_id].append(a)
        iterator = coco.images
        if opts.progress:
            from tqdm import tqdm
            iterator = tqdm(coco.images, desc=f"convert {jf.name}", unit="image")
        for im in iterator:
            anns = by_image.get(im.id, [])
            counters["objects_read"] += len(anns)
            where = f"{im.entry} ({im.file_name!r})"
            if unsafe_filename(im.file_name):
                logs.skip(jrel, "unsafe_filename", f"{where}: file_name points outside the image folder; "
                          f"{len(anns)} annotations left out")
                continue
            hit = finder.find(im.file_name)
            if hit is None:
                logs.skip(jrel, "no_image", f"{where}: image file not found under "
                          f"{', '.join(str(r) for r in finder.roots)}; {len(anns)} annotations left out")
                continue
            root, path = hit
            rel = path.relative_to(base).as_posix() if inside(path, base) else path.relative_to(root).as_posix()
            if rel in seen_images:
                logs.skip(jrel, "duplicate_annotation", f"{where}: image {rel!r} is already annotated by "
                          f"{seen_images[rel]}; left out")
                continue
            seen_images[rel] = f"{jrel} {im.entry}"
            try:
                w, h = check_image(str(path))
            except ImageError as exc:
                logs.skip(rel, "bad_image", exc.message)
                continue
            check_claimed_size(im.width, im.height, w, h, jrel, logs, counters, what=f"{im.entry}: width x height")
            kind = None
            if os.path.splitext(path.name)[1].lower() not in IMAGE_EXTENSIONS:
                kind = sniff_image(str(path))
            boxes = []
            for a in anns:
                x, y, bw, bh = a.bbox
                x2, y2 = x + bw, y + bh
                if 0.0 <= x and 0.0 <= y and bw > 0.0 and bh > 0.0 and x2 <= w and y2 <= h:
                    b = (x, y, x2, y2)  # inside the image: what fix_box returns, without its checks
                else:
                    b = fix_box(x, y, x2, y2, w, h, 0.0, list(a.bbox), a.entry, jrel, logs, counters)
                if b is not None:
                    boxes.append(SourceBox(classes[cindex[a.category_id]], *b,
                                           difficult=a.difficult or a.ignore, crowd=a.iscrowd))
            logical = logical_path(path.relative_to(root).as_posix()) + (kind or "")
            items.append(SourceImage(rel, str(path), jrel, logical, w, h, boxes, split=split, kind=kind))
    return SourceRead(items, classes, {"annotation_files": len(files)})
