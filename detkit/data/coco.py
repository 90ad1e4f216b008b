"""COCO detection JSON (``instances_*.json``): reading it entry by entry, and writing it.

Reading (:func:`read_coco_file`): the file must be a JSON object with ``images``, ``annotations``
and ``categories`` lists (else :class:`~detkit.errors.AnnotationError` naming the file, and the line
for broken JSON). Each entry is checked on its own; an unusable entry is reported through
``issue(entry, code, message)`` (``entry`` like ``"annotations[12]"``) and left out, so one bad
entry never hides the rest:

* ``images``: ``id`` (integer or string), ``file_name``, optional ``width``/``height``; a repeated
  id keeps its first entry (``duplicate_image_id``);
* ``categories``: ``id``, ``name``; a repeated id or name is an error (the class order would be
  ambiguous);
* ``annotations``: ``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]`` (4 finite numbers),
  optional ``iscrowd``, ``ignore``, ``difficult`` (detkit's attribute, written by
  :func:`coco_document`), ``id``; ``segmentation`` is not read (boxes only).

Coordinates: COCO boxes are continuous pixels: ``[x, y, w, h]`` covers ``x .. x + w``, so a VOC box
``xmin..xmax`` (1-based, inclusive) is ``x = xmin - 1``, ``w = xmax - xmin + 1`` (the rule
detkit's evaluation uses, see :mod:`detkit.boxes`).
"""
from __future__ import annotations

import json
import math
from itertools import chain
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from detkit.errors import AnnotationError

import numpy as np

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency, json is the fallback
    orjson = None
try:
    import msgspec
except ImportError:  # pragma: no cover - msgspec is a dependency; without it every file is read entry by entry
    msgspec = None

Issue = Callable[[str, str, str], None]


@dataclass(frozen=True)
class CocoImage:
    id: int | str
    file_name: str
    width: float | None
    height: float | None
    entry: str  # "images[3]"


class CocoAnnotation(NamedTuple):  # a tuple: 100,000 of them are made in a fraction of a second
    image_id: int | str
    category_id: int | str
    bbox: tuple[float, float, float, float]
    iscrowd: bool
    ignore: bool
    difficult: bool
    entry: str


@dataclass(frozen=True)
class CocoFile:
    images: list[CocoImage]
    categories: list[tuple[int | str, str]]  # (id, name), sorted by id
    annotations: list[CocoAnnotation]


def load_json(path: Path):
    """Parse a JSON file; broken JSON -> AnnotationError with the line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"cannot read: {exc.strerror or exc}", path=path) from None
    try:
        if orjson is not None:
            return orjson.loads(data)
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        try:  # the standard library names the line
            json.loads(data)
        except json.JSONDecodeError as exc2:
            raise AnnotationError(f"invalid JSON: {exc2.msg}", path=path, line=exc2.lineno) from None
        except (ValueError, RecursionError):
            pass
        raise AnnotationError(f"invalid JSON: {exc}"[:200], path=path) from None


def is_coco_document(doc) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("images"), list) and isinstance(doc.get("annotations"), list)


_NUM = (int, float)  # exact types: bool is not a number here
_ID = (int, str)


def _id_ok(v) -> bool:
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _flag(v) -> bool:
    return bool(v) and v not in ("0", "false", "False")


def read_coco_file(path: Path, issue: Issue) -> CocoFile:
    """Read a COCO JSON file (module docstring); bad entries go to ``issue`` and are left out."""
    doc = load_json(path)
    if not isinstance(doc, dict):
        raise AnnotationError("a COCO file must be a JSON object with images/annotations/categories", path=path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise AnnotationError(f"no '{key}' list (not a COCO detection file)", path=path)
    images = _read_images(doc["images"], issue)
    categories = _read_categories(doc["categories"], path)
    return CocoFile(images, categories, _read_annotations(doc["annotations"], issue))


def _read_images(entries: list, issue: Issue) -> list[CocoImage]:
    images: list[CocoImage] = []
    seen: dict = {}
    for i, im in enumerate(entries):
        where = f"images[{i}]"
        if not isinstance(im, dict) or not _id_ok(im.get("id")):
            issue(where, "bad_entry", f"expected an object with an integer or string 'id', got {im!r}"[:200])
            continue
        fn = im.get("file_name")
        if not isinstance(fn, str) or not fn.strip():
            issue(where, "bad_entry", f"image id {im['id']!r} has no 'file_name'")
            continue
        if im["id"] in seen:
            issue(where, "duplicate_image_id", f"image id {im['id']!r} already used by {seen[im['id']]} "
                  f"({fn!r} left out; the annotations of that id go to the first entry)")
            continue
        seen[im["id"]] = where
        images.append(CocoImage(im["id"], fn.strip(), _number(im.get("width")), _number(im.get("height")), where))
    return images


def _read_categories(entries: list, path: Path) -> list[tuple[int | str, str]]:
    cats: dict = {}
    names: dict[str, int | str] = {}
    for i, c in enumerate(entries):
        where = f"categories[{i}]"
        if not isinstance(c, dict) or not _id_ok(c.get("id")):
            raise AnnotationError(f"{where}: expected an object with an integer or string 'id', got {c!r}"[:200],
                                  path=path)
        name = str(c.get("name", c["id"]))
        if c["id"] in cats:
            raise AnnotationError(f"{where}: category id {c['id']!r} repeated", path=path)
        if name in names:
            raise AnnotationError(f"{where}: category name {name!r} used by ids {names[name]!r} and {c['id']!r}",
                                  path=path)
        cats[c["id"]] = name
        names[name] = c["id"]
    try:
        return sorted(cats.items(), key=lambda kv: kv[0])
    except TypeError:
        raise AnnotationError("categories mix integer and string ids", path=path) from None


def _read_annotations(entries: list, issue: Issue) -> list[CocoAnnotation]:
    anns: list[CocoAnnotation] = []
    append = anns.append
    for i, a in enumerate(entries):
        # fast path: an object with 4 finite int/float bbox values, int/str ids and plain flags
        try:
            b = a["bbox"]
            x, y, w, h = b
            iid, cid = a["image_id"], a["category_id"]
            if (type(b) is list and type(x) in _NUM and type(y) in _NUM and type(w) in _NUM and type(h) in _NUM
                    and x - x == 0 and y - y == 0 and w - w == 0 and h - h == 0  # finite (inf - inf is nan)
                    and type(iid) in _ID and type(cid) in _ID):
                crowd, ign, diff = a.get("iscrowd", 0), a.get("ignore", 0), a.get("difficult", 0)
                append(CocoAnnotation(iid, cid, (float(x), float(y), float(w), float(h)),
                                      crowd is not False and crowd != 0 and _flag(crowd),
                                      ign is not False and ign != 0 and _flag(ign),
                                      diff is not False and diff != 0 and _flag(diff), f"annotations[{i}]"))
                continue
        except (TypeError, KeyError, ValueError, AttributeError):
            pass
        where = f"annotations[{i}]"
        if not isinstance(a, dict):
            issue(where, "bad_entry", f"expected an object, got {a!r}"[:200])
            continue
        b = a.get("bbox")
        vals = [_number(v) for v in b] if isinstance(b, (list, tuple)) and len(b) == 4 else None
        if vals is None or any(v is None for v in vals):
            issue(where, "bad_bbox", f"bbox must be 4 finite numbers [x, y, w, h], got {b!r}"[:200])
            continue
        if not _id_ok(a.get("image_id")) or not _id_ok(a.get("category_id")):
            issue(where, "bad_entry", f"image_id / category_id must be integers or strings, got "
                  f"{a.get('image_id')!r}, {a.get('category_id')!r}"[:200])
            continue
        append(CocoAnnotation(a["image_id"], a["category_id"], tuple(vals), _flag(a.get("iscrowd", 0)),
                              _flag(a.get("ignore", 0)), _flag(a.get("difficult", 0)), where))
    return anns


@dataclass(frozen=True)
class CocoColumns:
    """A COCO file read column-wise (:func:`read_coco_columns`): the images and categories as
    :func:`read_coco_file` reads them, the annotations as columns in file order (entry ``i`` is
    ``annotations[i]``); every annotation is well formed (4 finite numbers, integer/string ids,
    integer flags)."""

    images: list[CocoImage]
    categories: list[tuple[int | str, str]]
    image_ids: list  # int | str per annotation, as written
    category_ids: list
    bbox: np.ndarray  # (n, 4) float64, [x, y, w, h]
    iscrowd: np.ndarray  # (n,) bool
    ignore: np.ndarray
    difficult: np.ndarray
    image_id_array: np.ndarray | None = None  # image_ids as int64 when all are integers in int64's range
    category_id_array: np.ndarray | None = None


_ORJSON_INT = (-(1 << 63), 1 << 64)  # orjson reads integers outside [lo, hi) as floats


def _id_array(ids: list, n: int) -> np.ndarray | None | bool:
    """The ids as an int64 array when all are integers within int64 (the common case); None when
    not, but every integer id is one orjson (the reference reader) also reads as an integer;
    False when some integer id is not."""
    try:
        return np.fromiter(ids, np.int64, n)
    except (TypeError, ValueError, OverflowError):
        lo, hi = _ORJSON_INT
        return None if all(type(v) is not int or lo <= v < hi for v in ids) else False


if msgspec is not None:
    class _Ann(msgspec.Struct, gc=False):
        image_id: int | str
        category_id: int | str
        bbox: tuple[float, float, float, float]
        iscrowd: int = 0
        ignore: int = 0
        difficult: int = 0

    class _Doc(msgspec.Struct, gc=False):
        images: msgspec.Raw
        annotations: list[_Ann]
        categories: msgspec.Raw

    _DECODER = msgspec.json.Decoder(_Doc)
    _DECODE_ERRORS: tuple = (msgspec.ValidationError, msgspec.DecodeError)


def _flags(values: list) -> np.ndarray:
    try:
        return np.array(values, np.int64) != 0
    except OverflowError:  # an integer beyond int64
        return np.fromiter(values, bool, len(values))


def read_coco_columns(path: Path, issue: Issue) -> CocoColumns | None:
    """:func:`read_coco_file` for a clean file, fast: msgspec decodes the annotations into typed
    records (no dict per annotation) that become numpy columns.

    Returns None -- read the file with :func:`read_coco_file` instead, which then reports or
    raises exactly what it always does -- when the file cannot be read, is not JSON, or holds any
    annotation that is not an object with integer/string ``image_id``/``category_id``, a ``bbox``
    of 4 finite numbers and integer ``iscrowd``/``ignore``/``difficult`` (when present), or an
    integer id outside orjson's range. ``images`` and ``categories`` are parsed by orjson/json and
    checked by the same code as :func:`read_coco_file` (same issues, same errors), so for every
    file this returns a result for, the result holds what :func:`read_coco_file` reads.
    One known difference: a number that overflows a double (``1e400``) inside an annotation key
    detkit does not read (e.g. ``segmentation``) is skipped here; orjson refuses the whole file.
    """
    if msgspec is None:  # pragma: no cover - msgspec is a dependency
        return None
    try:
        doc = _DECODER.decode(path.read_bytes())
    except (OSError, *_DECODE_ERRORS):
        return None
    try:
        raw_images = orjson.loads(bytes(doc.images)) if orjson is not None else json.loads(bytes(doc.images))
        raw_cats = orjson.loads(bytes(doc.categories)) if orjson is not None else json.loads(bytes(doc.categories))
    except (ValueError, RecursionError):
        return None
    if not isinstance(raw_images, list) or not isinstance(raw_cats, list):
        return None
    anns = doc.annotations
    n = len(anns)
    image_ids = [a.image_id for a in anns]
    category_ids = [a.category_id for a in anns]
    image_arr, category_arr = _id_array(image_ids, n), _id_array(category_ids, n)
    if image_arr is False or category_arr is False:
        return None
    bbox = np.fromiter(chain.from_iterable([a.bbox for a in anns]), np.float64, 4 * n).reshape(n, 4)
    if not np.isfinite(bbox).all():
        return None
    crowd = _flags([a.iscrowd for a in anns])  # an integer flag is set when it is not 0
    ignore = _flags([a.ignore for a in anns])
    difficult = _flags([a.difficult for a in anns])
    images = _read_images(raw_images, issue)
    categories = _read_categories(raw_cats, path)
    return CocoColumns(images, categories, image_ids, category_ids, bbox, crowd, ignore, difficult,
                       image_arr, category_arr)


def coco_number(v: float) -> int | float:
    """A coordinate for COCO JSON: rounded to 6 decimals, written as an integer when it is one."""
    r = round(v, 6)
    return int(r) if r == int(r) else r


def coco_document(images: list[dict], annotations: list[dict], categories: list[str]) -> dict:
    """A COCO detection document: category ids 1..N in ``categories`` order; ``images`` and
    ``annotations`` as given (see :func:`coco_annotation`)."""
    return {"info": {"description": "written by detkit convert"}, "licenses": [],
            "images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": n, "supercategory": ""} for k, n in enumerate(categories)]}


def coco_annotation(ann_id: int, image_id: int, class_index: int, x1: float, y1: float, x2: float, y2: float,
                    crowd: bool = False, difficult: bool = False) -> dict:
    """One annotation: integer ids, ``bbox`` from continuous pixels, ``area`` = box area,
    ``iscrowd``; ``difficult: 1`` only for VOC difficult objects (pycocotools ignores the key)."""
    bw, bh = x2 - x1, y2 - y1
    a = {"id": ann_id, "image_id": image_id, "category_id": class_index + 1,
         "bbox": [coco_number(x1), coco_number(y1), coco_number(bw), coco_number(bh)],
         "area": coco_number(bw * bh), "iscrowd": int(crowd), "segmentation": []}
    if difficult:
        a["difficult"] = 1
    return a


def dump_coco(doc: dict) -> str:
    """COCO JSON text (UTF-8, non-ASCII names kept, one line per entry for readable diffs)."""
    parts = ["{"]
    keys = list(doc)
    for k, key in enumerate(keys):
        v = doc[key]
        sep = "," if k < len(keys) - 1 else ""
        if isinstance(v, list) and v:
            items = ",\n".join("  " + json.dumps(x, ensure_ascii=False, separators=(",", ":")) for x in v)
            parts.append(f'"{key}": [\n{items}\n]{sep}')
        else:
            parts.append(f'"{key}": {json.dumps(v, ensure_ascii=False)}{sep}')
    parts.append("}")
    return "\n".join(parts) + "\n"
