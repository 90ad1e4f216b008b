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
from itertools import repeat
from pathlib import Path, PurePosixPath

import numpy as np

from detkit.convert.boxes import fix_box
from detkit.convert.discovery import FolderTables, inside, unsafe_filename
from detkit.convert.headers import check_claimed_size, check_image, sniff_image
from detkit.convert.options import DatasetOptions
from detkit.convert.records import BoxTable, ReportLog, SourceBox, SourceImage, SourceRead
from detkit.data.coco import is_coco_document, load_json, read_coco_columns, read_coco_file
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
        self._root_str = {r: str(r) for r in self.roots}

    def find(self, file_name: str) -> tuple[Path, Path] | None:
        hit = self.find_rel(file_name)
        return None if hit is None else (hit[0], hit[0] / hit[1])

    def find_rel(self, file_name: str) -> tuple[Path, str] | None:
        """(root, path relative to root as POSIX text, normalised as pathlib does) or None."""
        name = file_name.replace("\\", "/")
        parts = [q for q in name.split("/") if q not in ("", ".")]
        if not parts:  # nothing but separators and dots: pathlib's own reading of it
            for root in self.roots:
                if (root / name).is_file():
                    return root, (root / name).relative_to(root).as_posix()
            return self._fallback(name)
        rel = "/".join(parts)
        for root in self.roots:
            if os.path.isfile(self.path_of(root, rel)):
                return root, rel
        return self._fallback(name)

    def path_of(self, root: Path, rel: str) -> str:
        """``str(root / rel)`` for a normalised ``rel``, without building the Path."""
        r = self._root_str[root]
        return rel if r == "." else (r + rel if r.endswith("/") else f"{r}/{rel}")

    def _fallback(self, name: str) -> tuple[Path, str] | None:
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
                    try:
                        return root, (folder / hits[0]).relative_to(root).as_posix()
                    except ValueError:  # a folder outside the root (pathlib's ".." parent)
                        continue
        return None


def _nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def logical_path(rel: str) -> str:
    """Output-name path: the path without folders named ``images`` or ``JPEGImages``."""
    parts = [p for p in rel.split("/")[:-1] if p not in ("images", "JPEGImages")] + [rel.rsplit("/", 1)[-1]]
    return "/".join(parts)


#: Read clean COCO files column-wise (:func:`detkit.data.coco.read_coco_columns`); False: always
#: the reference reader (entry by entry). Both give the same items, boxes and report (tested).
FAST = True


def read_coco_source(src: Path, opts: DatasetOptions, logs: ReportLog, counters: Counter) -> SourceRead:
    files = coco_files(src)
    if not files:
        raise DataError("no COCO JSON file (a JSON object with 'images' and 'annotations' lists) found", path=src)
    base = src if src.is_dir() else src.parent
    classes: tuple[str, ...] | None = None
    items: list[SourceImage] = []
    tables: list[tuple[BoxTable | None, int]] = []  # per file, and its first item
    seen_images: dict[str, str] = {}
    for jf in files:
        jrel = jf.relative_to(base).as_posix()
        issue = (lambda entry, code, msg, f=jrel: logs.skip(f, code, f"{entry}: {msg}"))
        cols = read_coco_columns(jf, issue) if FAST else None
        coco = read_coco_file(jf, issue) if cols is None else cols
        names = tuple(n for _, n in coco.categories)
        if classes is None:
            classes = names
        elif names != classes:
            raise DataError(f"categories differ from those of the first COCO file: {list(names)} vs "
                            f"{list(classes)}", path=jf)
        cindex = {cid: k for k, (cid, _) in enumerate(coco.categories)}
        roots = [Path(opts.images)] if opts.images else [jf.parent, jf.parent / "images", base, base / "images"]
        images = _FileImages(jf, jrel, split_of(jf), base, _ImageFinder(roots), seen_images, logs, counters)
        iterator = coco.images
        if opts.progress:
            from tqdm import tqdm
            iterator = tqdm(coco.images, desc=f"convert {jf.name}", unit="image")
        first = len(items)
        if cols is None:
            _read_entries(coco, cindex, classes, iterator, images, items)
            tables.append((None, first))
        else:
            tables.append((_read_columns(cols, cindex, classes, iterator, images, items), first))
    table = None
    if all(t is not None for t, _ in tables):
        table = BoxTable.concat([t for t, _ in tables])
    else:  # some file needed the reference reader: every image holds its boxes as SourceBox lists
        for k, (t, first) in enumerate(tables):
            if t is not None:
                t.materialise(items[first:first + len(t.offsets) - 1])
    return SourceRead(items, classes, {"annotation_files": len(files)}, table=table)


class _FileImages:
    """The per-image checks of one COCO file (both readers): image found, not annotated twice,
    readable, size compared with the entry's; each failure reported."""

    def __init__(self, jf, jrel, split, base, finder, seen_images, logs, counters):
        self.jf, self.jrel, self.split, self.base, self.finder = jf, jrel, split, base, finder
        self.seen, self.logs, self.counters = seen_images, logs, counters
        self._prefix: dict[Path, tuple[str, str]] = {}  # root -> how it lies relative to SRC

    def check(self, im, n_anns: int):
        """(path, path relative to its root, rel, w, h, kind) of a usable image, else None (reported)."""
        jrel, logs = self.jrel, self.logs
        self.counters["objects_read"] += n_anns
        where = f"{im.entry} ({im.file_name!r})"
        if unsafe_filename(im.file_name):
            logs.skip(jrel, "unsafe_filename", f"{where}: file_name points outside the image folder; "
                      f"{n_anns} annotations left out")
            return None
        hit = self.finder.find_rel(im.file_name)
        if hit is None:
            logs.skip(jrel, "no_image", f"{where}: image file not found under "
                      f"{', '.join(str(r) for r in self.finder.roots)}; {n_anns} annotations left out")
            return None
        root, rel_root = hit
        path = self.finder.path_of(root, rel_root)
        rel = self._rel(root, rel_root)
        if rel in self.seen:
            logs.skip(jrel, "duplicate_annotation", f"{where}: image {rel!r} is already annotated by "
                      f"{self.seen[rel]}; left out")
            return None
        self.seen[rel] = f"{jrel} {im.entry}"
        try:
            w, h = check_image(path)
        except ImageError as exc:
            logs.skip(rel, "bad_image", exc.message)
            return None
        check_claimed_size(im.width, im.height, w, h, jrel, logs, self.counters, what=f"{im.entry}: width x height")
        kind = None
        if os.path.splitext(rel_root)[1].lower() not in IMAGE_EXTENSIONS:
            kind = sniff_image(path)
        return path, rel_root, rel, w, h, kind

    def _rel(self, root: Path, rel_root: str) -> str:
        """``path.relative_to(SRC)`` when the image is inside SRC, else relative to its root (lexical,
        as pathlib: ``rel_root`` is normalised and holds no ``..``)."""
        how = self._prefix.get(root)
        if how is None:
            if inside(root, self.base):
                how = ("root_in_src", root.relative_to(self.base).as_posix())
            elif inside(self.base, root):
                how = ("src_in_root", self.base.relative_to(root).as_posix())
            else:
                how = ("apart", "")
            self._prefix[root] = how
        kind, prefix = how
        if kind == "root_in_src":
            return rel_root if prefix == "." else f"{prefix}/{rel_root}"
        if kind == "src_in_root" and rel_root.startswith(prefix + "/"):
            return rel_root[len(prefix) + 1:]
        return rel_root

    def item(self, hit, boxes: list) -> SourceImage:
        path, rel_root, rel, w, h, kind = hit
        logical = logical_path(rel_root) + (kind or "")
        return SourceImage(rel, path, self.jrel, logical, w, h, boxes, split=self.split, kind=kind)

    def box(self, x, y, bw, bh, w, h, entry):
        """A box in continuous pixels checked against the w x h image: (x1, y1, x2, y2) or None."""
        x2, y2 = x + bw, y + bh
        if 0.0 <= x and 0.0 <= y and bw > 0.0 and bh > 0.0 and x2 <= w and y2 <= h:
            return x, y, x2, y2  # inside the image: what fix_box returns, without its checks
        return fix_box(x, y, x2, y2, w, h, 0.0, [x, y, bw, bh], entry, self.jrel, self.logs, self.counters)


def _read_entries(coco, cindex, classes, iterator, images: _FileImages, items: list[SourceImage]) -> None:
    """The reference reader: one record per annotation."""
    jrel, logs = images.jrel, images.logs
    by_image: dict = defaultdict(list)
    known_ids = {im.id for im in coco.images}
    for a in coco.annotations:
        if a.image_id not in known_ids:
            logs.skip(jrel, "missing_image", f"{a.entry}: image_id {a.image_id!r} is not in images")
        elif a.category_id not in cindex:
            logs.skip(jrel, "unknown_category", f"{a.entry}: category_id {a.category_id!r} is not in categories")
        else:
            by_image[a.image_id].append(a)
    for im in iterator:
        anns = by_image.get(im.id, [])
        hit = images.check(im, len(anns))
        if hit is None:
            continue
        w, h = hit[3], hit[4]
        boxes = []
        for a in anns:
            b = images.box(*a.bbox, w, h, a.entry)
            if b is not None:
                boxes.append(SourceBox(classes[cindex[a.category_id]], *b,
                                       difficult=a.difficult or a.ignore, crowd=a.iscrowd))
        items.append(images.item(hit, boxes))


def _positions(index: dict, ids: list, arr: np.ndarray | None) -> np.ndarray:
    """``index.get(id, -1)`` for each id, as int64 (vectorised when all ids are int64 integers)."""
    keys = list(index)
    if arr is not None and all(type(k) is int and -(1 << 63) <= k < (1 << 63) for k in keys):
        if not keys:
            return np.full(len(arr), -1, np.int64)
        key_arr = np.array(keys, np.int64)
        by_key = np.argsort(key_arr)
        sorted_keys = key_arr[by_key]
        at = np.minimum(np.searchsorted(sorted_keys, arr), len(keys) - 1)
        vals = np.array(list(index.values()), np.int64)[by_key]
        return np.where(sorted_keys[at] == arr, vals[at], -1)
    n = len(ids)
    return np.fromiter(map(index.get, ids, repeat(-1, n)), np.int64, n)


def _read_columns(cols, cindex, classes, iterator, images: _FileImages, items: list[SourceImage]) -> BoxTable:
    """The fast reader: the same checks, reports and boxes as :func:`_read_entries`, with the
    annotations as numpy columns; only boxes that need fixing go through Python one by one."""
    jrel, logs = images.jrel, images.logs
    n = len(cols.image_ids)
    img_k = _positions({im.id: k for k, im in enumerate(cols.images)}, cols.image_ids, cols.image_id_array)
    cat_k = _positions(cindex, cols.category_ids, cols.category_id_array)
    for i in np.flatnonzero((img_k < 0) | (cat_k < 0)).tolist():
        if img_k[i] < 0:
            logs.skip(jrel, "missing_image", f"annotations[{i}]: image_id {cols.image_ids[i]!r} is not in images")
        else:
            logs.skip(jrel, "unknown_category",
                      f"annotations[{i}]: category_id {cols.category_ids[i]!r} is not in categories")
    valid = np.flatnonzero((img_k >= 0) & (cat_k >= 0))
    sel = valid[np.argsort(img_k[valid], kind="stable")]  # annotation indices grouped by image, file order kept
    counts = np.bincount(img_k[valid], minlength=len(cols.images))
    starts = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    x, y, bw, bh = (cols.bbox[:, j] for j in range(4))
    x2, y2 = x + bw, y + bh
    inner = (x >= 0.0) & (y >= 0.0) & (bw > 0.0) & (bh > 0.0)
    ne = np.flatnonzero(counts)  # per image with annotations: all boxes' lower sides fine, largest x2 / y2
    all_inner = np.ones(len(counts), bool)
    max_x2 = np.full(len(counts), -np.inf)
    max_y2 = np.full(len(counts), -np.inf)
    if len(ne):
        all_inner[ne] = np.logical_and.reduceat(inner[sel], starts[ne])
        max_x2[ne] = np.maximum.reduceat(x2[sel], starts[ne])
        max_y2[ne] = np.maximum.reduceat(y2[sel], starts[ne])
    all_inner, max_x2, max_y2 = all_inner.tolist(), max_x2.tolist(), max_y2.tolist()
    pieces: list[np.ndarray] = []
    extra: list[tuple[int, float, float, float, float]] = []  # fixed boxes: (annotation, x1, y1, x2, y2)
    for k, im in enumerate(iterator):
        s, e = int(starts[k]), int(starts[k + 1])
        hit = images.check(im, e - s)
        if hit is None:
            continue
        w, h = hit[3], hit[4]
        if all_inner[k] and max_x2[k] <= w and max_y2[k] <= h:
            pieces.append(sel[s:e])  # every box inside the image: kept as read
        else:
            rows = []
            for i in sel[s:e].tolist():
                b = images.box(*cols.bbox[i].tolist(), w, h, f"annotations[{i}]")
                if b is not None:
                    rows.append(n + len(extra))
                    extra.append((i, *b))
            pieces.append(np.array(rows, np.int64))
        items.append(images.item(hit, []))
    src = np.array([r[0] for r in extra], np.int64)
    fixed = np.array([r[1:] for r in extra], np.float64).reshape(len(extra), 4)
    rows = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    offsets = np.zeros(len(pieces) + 1, np.int64)
    np.cumsum([len(p) for p in pieces], out=offsets[1:])
    whole = np.concatenate([np.arange(n), src])
    return BoxTable(classes, cls=cat_k[whole][rows], x1=np.concatenate([x, fixed[:, 0]])[rows],
                    y1=np.concatenate([y, fixed[:, 1]])[rows], x2=np.concatenate([x2, fixed[:, 2]])[rows],
                    y2=np.concatenate([y2, fixed[:, 3]])[rows],
                    difficult=(cols.difficult | cols.ignore)[whole][rows], crowd=cols.iscrowd[whole][rows],
                    offsets=offsets)
