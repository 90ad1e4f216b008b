"""Read ground truth and predictions in every supported format, and score them with detkit.metrics.

Ground truth (``load_ground_truth``):

* COCO annotations JSON (``*.json``): images, annotations (bbox xywh, area, iscrowd, id),
  categories; classes are the categories sorted by id (pycocotools' order);
* Pascal VOC: an ``Annotations/`` folder, a VOC year root containing one, or any folder of
  ``*.xml``; ``difficult`` kept; image id = the XML file's stem (= the image's stem in VOC);
  classes from ``names`` or the sorted object names;
* YOLO/darknet: ``obj.data`` (its ``valid=`` list), ``data.yaml`` (its ``val``) or a list file of
  image paths (needs ``names``); labels found by darknet's ``images``/``JPEGImages`` -> ``labels``
  rule, pixel sizes read from the image headers; image id = the image's stem.

Predictions (``load_predictions``):

* ``coco``: a COCO results JSON (list of ``{image_id, category_id, bbox xywh, score}``, or a dict
  with such a list under ``annotations``); for VOC/YOLO ground truth ``image_id`` is the image's
  stem and ``category_id`` a class index (int) or class name (str);
* ``comp4``: darknet/devkit per-class files ``*det_test_<class>.txt``, lines
  ``image_id score x1 y1 x2 y2``;
* ``txt``: a folder of per-image files ``<stem>.txt``, lines ``class_name score x1 y1 x2 y2``
  (Cartucho/mAP and review_object_detection_metrics layout);
* ``yolo``: a folder of per-image files ``<stem>.txt``, lines ``class cx cy w h score`` normalised
  to [0, 1] (needs the images' pixel sizes, taken from the ground truth).

Coordinates: VOC XML, ``comp4`` and ``txt`` boxes are VOC 1-based inclusive pixels; COCO and
YOLO boxes are continuous pixels (``x1 = xmin - 1``, ``x2 = xmax``, see detkit.boxes). For the
VOC metric on VOC XML ground truth everything is brought to the XML's own numbers and scored with
the devkit's +1 IoU (bit-identical to the devkit); otherwise everything is continuous.
"""
from __future__ import annotations

import gc
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from detkit.errors import AnnotationError, EvalError
from detkit.metrics import DetTable, EvalReport, GTTable, evaluate

try:  # optional accelerator for large results files
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

try:  # optional: typed decoding of COCO results JSON (~5x faster than building 500k dicts)
    import msgspec as _msgspec
except ImportError:  # pragma: no cover
    _msgspec = None

if _msgspec is not None:
    class _ResultRow(_msgspec.Struct, gc=False):
        """One COCO result as the fast decoder expects it (anything else -> the checked path)."""

        image_id: int | str
        category_id: int | str
        bbox: tuple[float, float, float, float]
        score: float

    _RESULTS_DECODER = _msgspec.json.Decoder(list[_ResultRow])

log = logging.getLogger(__name__)

PredFormat = Literal["auto", "coco", "comp4", "txt", "yolo"]
PRED_FORMATS = ("auto", "coco", "comp4", "txt", "yolo")
MAX_IMAGE_SIDE = 1 << 20  # a COCO/VOC size claim beyond this is rejected (no real image is that big)
_COMP4 = re.compile(r"det_(?:test|val|trainval|train)_(.+)\.txt$")


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth read from files.

    Attributes:
        table: the objects (``box_format`` xywh for COCO JSON, xyxy otherwise).
        class_names: class index -> name.
        kind: 'coco' | 'voc' | 'yolo'.
        voc_pixels: True when boxes are VOC 1-based inclusive pixels (VOC XML).
        image_sizes: (I, 2) float64 width, height per image (NaN when unknown).
        category_ids: COCO category id per class index (COCO JSON only).
        image_files: image path per image when known (YOLO lists, VOC roots), else None entries.
        source: the path read.
    """

    table: GTTable
    class_names: list[str]
    kind: str
    voc_pixels: bool
    image_sizes: np.ndarray
    category_ids: list | None = None
    image_files: tuple = ()
    source: str = ""
    names_from_data: bool = field(default=False)


# --------------------------------------------------------------------------- helpers

def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise AnnotationError(f"cannot read JSON: {exc.strerror or exc}", path=path) from None


def _read_json(path: Path, data: bytes | None = None):
    """Parse a JSON file (orjson when installed: same numbers as the json module, ~2x faster).

    The cyclic garbage collector is paused while the document is built: the parsers allocate
    millions of containers (dicts, lists), each allocation batch would otherwise trigger a
    collection pass over all of them (2-3x the parse time on a 500k-detection results file).
    """
    if data is None:
        data = _read_bytes(path)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if _orjson is not None:
            return _orjson.loads(data)
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: absurd nesting
        line = getattr(exc, "lineno", None)
        raise AnnotationError(f"invalid JSON: {getattr(exc, 'msg', exc)}", path=path, line=line) from None
    finally:
        if was_enabled:
            gc.enable()


def _num(v, what: str, path: Path, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise AnnotationError(f"{where}: {what} must be a number, got {v!r}", path=path)
    f = float(v)
    if not math.isfinite(f):
        raise AnnotationError(f"{where}: {what} is not finite: {v!r}", path=path)
    return f


def _boxes_array(items: list, path: Path, where: str) -> np.ndarray:
    """List of 4-number lists -> (N, 4) float64; on any problem find and name the bad entry."""
    try:
        arr = np.array(items, dtype=np.float64)
        if arr.size == 0:
            return arr.reshape(0, 4)
        if arr.ndim == 2 and arr.shape[1] == 4 and np.isfinite(arr).all():
            if not any(isinstance(x, bool) for b in items[:1] for x in b):
                return arr
    except (TypeError, ValueError):
        pass
    for i, b in enumerate(items):
        if not isinstance(b, (list, tuple)) or len(b) != 4:
            raise AnnotationError(f"{where}[{i}]: bbox must be [x, y, w, h], got {b!r}", path=path)
        for v in b:
            _num(v, "bbox value", path, f"{where}[{i}]")
    raise AnnotationError(f"{where}: bbox values must be numbers", path=path)  # pragma: no cover


def _boxes_fast(items: list) -> np.ndarray | None:
    """Fast path of :func:`_boxes_array` for a clean list of 4-number lists (None: take the slow,
    error-reporting path)."""
    try:
        if items and set(map(len, items)) != {4}:
            return None
        arr = np.fromiter(chain.from_iterable(items), np.float64, count=4 * len(items)).reshape(-1, 4)
    except (TypeError, ValueError, OverflowError):
        return None
    return arr if np.isfinite(arr).all() else None


def _stem_ids(paths: Sequence[Path], source: Path) -> list[str]:
    ids = [p.stem for p in paths]
    seen: dict[str, Path] = {}
    for p, i in zip(paths, ids):
        if i in seen:
            raise EvalError(f"two images share the id {i!r} ({seen[i]} and {p}); predictions could not tell "
                            "them apart", path=source)
        seen[i] = p
    return ids


# --------------------------------------------------------------------------- ground truth

def load_coco_gt(path: str | os.PathLike) -> GroundTruth:
    """Read a COCO annotations JSON (bbox only; segmentation ignored)."""
    p = Path(path)
    doc = _read_json(p)
    if not isinstance(doc, dict):
        raise AnnotationError("COCO annotations JSON must be an object with images/annotations/categories", path=p)
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise AnnotationError(f"COCO annotations JSON has no '{key}' list", path=p)
    images, anns, cats = doc["images"], doc["annotations"], doc["categories"]
    img_ids = []
    sizes = []
    for i, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im:
            raise AnnotationError(f"images[{i}]: expected an object with 'id'", path=p)
        iid = im["id"]
        if isinstance(iid, (bool, float)) or not isinstance(iid, (int, str)):
            raise AnnotationError(f"images[{i}]: id must be an integer or string, got {iid!r}", path=p)
        img_ids.append(iid)
        w, h = im.get("width"), im.get("height")
        if w is None or h is None:
            sizes.append((math.nan, math.nan))
        else:
            w, h = _num(w, "width", p, f"images[{i}]"), _num(h, "height", p, f"images[{i}]")
            if not (0 < w <= MAX_IMAGE_SIDE and 0 < h <= MAX_IMAGE_SIDE):
                raise AnnotationError(f"images[{i}]: absurd size {w}x{h}", path=p)
            sizes.append((w, h))
    try:
        order = sorted(range(len(img_ids)), key=lambda k: img_ids[k])
    except TypeError:
        raise AnnotationError("images mix integer and string ids", path=p) from None
    img_ids = [img_ids[k] for k in order]
    sizes_arr = np.array([sizes[k] for k in order], np.float64).reshape(-1, 2)
    index: dict = {}
    for k, iid in enumerate(img_ids):
        if iid in index:
            raise AnnotationError(f"duplicate image id {iid!r}", path=p)
        index[iid] = k
    cat_ids, names = [], []
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or "id" not in c:
            raise AnnotationError(f"categories[{i}]: expected an object with 'id'", path=p)
        if isinstance(c["id"], bool) or not isinstance(c["id"], (int, float, str)):
            raise AnnotationError(f"categories[{i}]: id must be an integer or string, got {c['id']!r}"[:200], path=p)
        cat_ids.append(c["id"])
        names.append(str(c.get("name", c["id"])))
    try:
        corder = sorted(range(len(cat_ids)), key=lambda k: cat_ids[k])
    except TypeError:
        raise AnnotationError("categories mix integer and string ids", path=p) from None
    cat_ids = [cat_ids[k] for k in corder]
    names = [names[k] for k in corder]
    cindex = {c: k for k, c in enumerate(cat_ids)}
    if len(cindex) != len(cat_ids):
        raise AnnotationError("duplicate category id", path=p)
    try:
        a_img = [a["image_id"] for a in anns]
        a_cat = [a["category_id"] for a in anns]
        a_box = [a["bbox"] for a in anns]
    except (TypeError, KeyError):
        for i, a in enumerate(anns):
            if not isinstance(a, dict):
                raise AnnotationError(f"annotations[{i}]: expected an object, got {a!r}"[:200], path=p) from None
            for key in ("image_id", "category_id", "bbox"):
                if key not in a:
                    raise AnnotationError(f"annotations[{i}]: missing '{key}'", path=p) from None
        raise
    try:
        keep = [i for i, (im, c) in enumerate(zip(a_img, a_cat)) if im in index and c in cindex]
    except TypeError:  # a list or object as image_id / category_id
        bad = next(i for i, (im, c) in enumerate(zip(a_img, a_cat))
                   if not isinstance(im, (int, float, str)) or not isinstance(c, (int, float, str)))
        raise AnnotationError(f"annotations[{bad}]: image_id and category_id must be integers or strings, got "
                              f"{a_img[bad]!r}, {a_cat[bad]!r}"[:200], path=p) from None
    if len(keep) != len(anns):
        dropped = len(anns) - len(keep)
        log.warning("%s: %d annotations refer to images or categories not listed; ignored (as pycocotools)",
                    p, dropped)
    boxes = _boxes_array([a_box[i] for i in keep], p, "annotations")
    sel = [anns[i] for i in keep]
    area, crowd, aid = [], [], []
    for j, a in enumerate(sel):
        ar = a.get("area")
        if ar is None:
            area.append(boxes[j, 2] * boxes[j, 3])
        else:
            area.append(_num(ar, "area", p, f"annotations[{keep[j]}]"))
        crowd.append(bool(a.get("iscrowd", 0)))
        aid.append(a.get("id", keep[j] + 1))
    try:
        aid_arr = np.array(aid, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise AnnotationError("annotation ids must be integers", path=p) from None
    if aid_arr.size and np.unique(aid_arr).size != aid_arr.size:
        vals, cnt = np.unique(aid_arr, return_counts=True)
        raise AnnotationError(f"duplicate annotation id {int(vals[cnt > 1][0])}", path=p)
    table = GTTable(image_ids=tuple(img_ids), image_index=np.array([index[a_img[i]] for i in keep], np.int64),
                    boxes=boxes, labels=np.array([cindex[a_cat[i]] for i in keep], np.int64),
                    difficult=np.zeros(len(keep), bool), iscrowd=np.array(crowd, bool),
                    area=np.array(area, np.float64), ann_ids=aid_arr, box_format="xywh")
    return GroundTruth(table=table, class_names=names, kind="coco", voc_pixels=False, image_sizes=sizes_arr,
                       category_ids=cat_ids, image_files=tuple(None for _ in img_ids), source=str(p))


def _voc_xml_files(p: Path, image_set: str | None) -> tuple[list[Path], Path | None]:
    ann = p / "Annotations" if (p / "Annotations").is_dir() else p
    root = p if ann != p else (p.parent if p.name == "Annotations" else None)
    if image_set:
        base = root if root is not None else p
        lst = base / "ImageSets" / "Main" / f"{image_set}.txt"
        if not lst.is_file():
            raise EvalError(f"image set list not found: {lst}", path=p)
        ids = [ln.split()[0] for ln in lst.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
        files = [ann / f"{i}.xml" for i in ids]
        for f in files:
            if not f.is_file():
                raise EvalError(f"annotation for image set entry not found: {f}", path=lst)
        return files, root
    files = sorted(ann.glob("*.xml"))
    if not files:
        raise EvalError("no *.xml annotations found", path=ann)
    return files, root


def load_voc_gt(path: str | os.PathLike, names: Sequence[str] | None = None,
                image_set: str | None = None) -> GroundTruth:
    """Read VOC XML annotations (a folder of XMLs, ``Annotations/`` or a VOC year root)."""
    from detkit.data.voc import read_voc_annotation  # data readers; imported lazily

    p = Path(path)
    files, root = _voc_xml_files(p, image_set)
    records = [read_voc_annotation(f) for f in files]
    ids = _stem_ids(files, p)
    if names is None:
        names = sorted({o.name for r in records for o in r.objects})
    cindex = {n: k for k, n in enumerate(names)}
    img_idx, boxes, labels, diff = [], [], [], []
    for k, (f, r) in enumerate(zip(files, records)):
        for o in r.objects:
            if o.name not in cindex:
                raise EvalError(f"object class {o.name!r} is not in the class names", path=f)
            img_idx.append(k)
            boxes.append(o.voc())
            labels.append(cindex[o.name])
            diff.append(o.difficult)
    sizes = np.array([(r.width or math.nan, r.height or math.nan) for r in records], np.float64).reshape(-1, 2)
    image_files = []
    for f in files:
        img = None
        if root is not None:
            for ext in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp"):
                c = root / "JPEGImages" / f"{f.stem}{ext}"
                if c.is_file():
                    img = c
                    break
        image_files.append(img)
    table = GTTable(image_ids=tuple(ids), image_index=np.array(img_idx, np.int64),
                    boxes=np.array(boxes, np.float64).reshape(-1, 4), labels=np.array(labels, np.int64),
                    difficult=np.array(diff, bool), iscrowd=np.zeros(len(labels), bool), box_format="xyxy")
    return GroundTruth(table=table, class_names=list(names), kind="voc", voc_pixels=True, image_sizes=sizes,
                       image_files=tuple(image_files), source=str(p))


def load_yolo_gt(path: str | os.PathLike, names: Sequence[str] | None = None) -> GroundTruth:
    """Read a YOLO dataset's validation images: ``obj.data``, ``data.yaml`` or a list file."""
    from detkit.data.datafiles import label_path_for, load_data_config, read_list_file, read_yolo_labels
    from detkit.data.images import read_image_size

    p = Path(path)
    names_from_data = False
    if p.suffix.lower() in (".data", ".yaml", ".yml"):
        cfg = load_data_config(p)
        images = cfg.val
        if not images:
            raise EvalError("the data file names no validation images (valid= / val:)", path=p)
        if names is None:
            names, names_from_data = list(cfg.names), True
    else:
        images = read_list_file(p, extra_bases=[Path.cwd()], must_exist=True)
        if names is None:
            raise EvalError("a list file has no class names: pass --names FILE", path=p)
    ids = _stem_ids(images, p)
    C = len(names)
    img_idx, boxes, labels, sizes = [], [], [], []
    for k, img in enumerate(images):
        w, h = read_image_size(img)
        sizes.append((float(w), float(h)))
        lab = read_yolo_labels(label_path_for(img), num_classes=C, missing_ok=True)
        if lab.shape[0]:
            cx, cy, bw, bh = lab[:, 1] * w, lab[:, 2] * h, lab[:, 3] * w, lab[:, 4] * h
            boxes.append(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1))
            labels.append(lab[:, 0].astype(np.int64))
            img_idx.append(np.full(lab.shape[0], k, np.int64))
    cat = (lambda xs, shape, dt: np.concatenate(xs) if xs else np.zeros(shape, dt))
    lab_arr = cat(labels, (0,), np.int64)
    table = GTTable(image_ids=tuple(ids), image_index=cat(img_idx, (0,), np.int64),
                    boxes=cat(boxes, (0, 4), np.float64), labels=lab_arr,
                    difficult=np.zeros(lab_arr.size, bool), iscrowd=np.zeros(lab_arr.size, bool), box_format="xyxy")
    return GroundTruth(table=table, class_names=list(names), kind="yolo", voc_pixels=False,
                       image_sizes=np.array(sizes, np.float64).reshape(-1, 2), image_files=tuple(images),
                       source=str(p), names_from_data=names_from_data)


def load_ground_truth(path: str | os.PathLike, names: Sequence[str] | None = None,
                      image_set: str | None = None) -> GroundTruth:
    """Read ground truth from any supported source (see module docstring)."""
    p = Path(path)
    if not p.exists():
        raise EvalError("ground truth not found", path=p)
    if p.is_dir():
        return load_voc_gt(p, names, image_set)
    suf = p.suffix.lower()
    if suf == ".json":
        gt = load_coco_gt(p)
        if names is not None and len(names) != len(gt.class_names):
            raise EvalError(f"--names has {len(names)} names but the COCO file has {len(gt.class_names)} categories",
                            path=p)
        return gt if names is None else GroundTruth(**{**gt.__dict__, "class_names": list(names)})
    if suf == ".xml":
        raise EvalError("pass the folder of VOC XML files, not one file", path=p)
    return load_yolo_gt(p, names)


# --------------------------------------------------------------------------- predictions

def detect_pred_format(path: str | os.PathLike) -> str:
    """Guess the prediction format of a file or folder (see module docstring)."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() == ".json":
            return "coco"
        if _COMP4.search(p.name):
            return "comp4"
        raise EvalError("cannot tell the prediction format of this file (use --pred-format)", path=p)
    if not p.is_dir():
        raise EvalError("predictions not found", path=p)
    txts = sorted(p.glob("*.txt"))
    if any(_COMP4.search(t.name) for t in txts):
        return "comp4"
    for t in txts:
        for raw in t.read_text(encoding="utf-8-sig", errors="replace").splitlines():
            f = raw.split()
            if not f:
                continue
            try:
                int(f[0])
                vals = [float(x) for x in f[1:]]
            except ValueError:
                return "txt"
            return "yolo" if len(vals) == 5 and all(0.0 <= v <= 1.0 for v in vals) else "txt"
    if txts:
        return "txt"  # only empty files: either reads as no detections
    raise EvalError("no prediction files (*.json, *det_test_<class>.txt or per-image *.txt) found", path=p)


class _Classes:
    """Class name -> index, optionally growing with names seen only in predictions."""

    def __init__(self, names: list[str], grow: bool):
        self.names = list(names)
        self.index = {n: k for k, n in enumerate(self.names)}
        self.grow = grow

    def get(self, name: str, path: Path, line: int | None) -> int:
        k = self.index.get(name)
        if k is None:
            if not self.grow:
                raise EvalError(f"class {name!r} is not in the class names", path=path, line=line)
            k = self.index[name] = len(self.names)
            self.names.append(name)
        return k


def _image_lookup(gt: GroundTruth) -> dict:
    return {iid: k for k, iid in enumerate(gt.table.image_ids)}


def _parse_rows(path: Path, ncols: int, what: str) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise EvalError(f"cannot read {what}: {exc.strerror or exc}", path=path) from None
    except UnicodeDecodeError:
        raise EvalError(f"{what} is not UTF-8 text", path=path) from None
    out = []
    for i, raw in enumerate(text.splitlines(), 1):
        f = raw.split()
        if not f or f[0].startswith("#"):
            continue
        if len(f) != ncols:
            raise EvalError(f"expected {ncols} fields ({what}), got {len(f)}: {raw.strip()!r}"[:200], path=path, line=i)
        out.append((i, f))
    return out


def _floats(fields: list[str], path: Path, line: int) -> list[float]:
    try:
        vals = [float(x) for x in fields]
    except ValueError:
        raise EvalError(f"non-numeric value in {' '.join(fields)!r}", path=path, line=line) from None
    if not all(math.isfinite(v) for v in vals):
        raise EvalError(f"non-finite value in {' '.join(fields)!r}", path=path, line=line)
    return vals


def _map_ids(values: list, sorted_ids: tuple, lookup: dict) -> np.ndarray | None:
    """Map ids to indices (-1: unknown). Integer ids go through one vectorised searchsorted; any
    other id type returns None (the caller then maps with the dict)."""
    if not values:
        return np.zeros(0, np.int64)
    if not sorted_ids or not all(type(i) is int for i in sorted_ids[:1]):
        return None
    try:
        arr = np.array(values)
    except (ValueError, OverflowError):
        return None
    if arr.dtype.kind != "i" or arr.ndim != 1:
        return None
    ref = np.array(sorted_ids)
    if ref.dtype.kind != "i" or (ref.size > 1 and not (ref[1:] > ref[:-1]).all()):
        return None
    pos = np.clip(np.searchsorted(ref, arr), 0, ref.size - 1)
    return np.where(ref[pos] == arr, pos, -1).astype(np.int64)


def _results_columns_fast(data: bytes) -> tuple[list, list, np.ndarray, np.ndarray] | None:
    """Typed decoding of a clean COCO results list straight into columns (msgspec, when installed).

    Returns (image ids, category ids, (M, 4) float64 boxes, (M,) float64 scores), or None for
    anything the checked path must look at (another layout, wrong types, non-finite numbers): that
    path then reads the same bytes and names the bad entry. Numbers decode to the same floats as
    orjson/json (correctly rounded), so both paths give identical tables.
    """
    if _msgspec is None:
        return None
    try:
        rows = _RESULTS_DECODER.decode(data)
    except (_msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None
    n = len(rows)
    boxes = np.fromiter(chain.from_iterable(map(attrgetter("bbox"), rows)), np.float64, count=4 * n).reshape(n, 4)
    scores = np.fromiter(map(attrgetter("score"), rows), np.float64, count=n)
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        return None
    return list(map(attrgetter("image_id"), rows)), list(map(attrgetter("category_id"), rows)), boxes, scores


def _load_coco_results(p: Path, gt: GroundTruth, classes: _Classes) -> tuple[DetTable, bool]:
    data = _read_bytes(p)
    fast = _results_columns_fast(data)
    if fast is not None:
        r_img, r_cat, boxes, scores = fast
        n_rows = len(r_img)
    else:
        r_img, r_cat, r_box, r_score, n_rows = _results_columns_checked(p, data)
        boxes = scores = None
    lookup = _image_lookup(gt)
    if gt.kind == "coco":
        cindex = {c: k for k, c in enumerate(gt.category_ids or [])}
        img_index = _map_ids(r_img, gt.table.image_ids, lookup)
        if img_index is None:  # ids the vectorised path does not handle (strings, beyond int64): the dict
            img_index = np.array([lookup.get(i, -1) if isinstance(i, (int, str)) and not isinstance(i, bool)
                                  else -1 for i in r_img], np.int64)
        if (img_index < 0).any():
            bad = int(np.flatnonzero(img_index < 0)[0])
            raise EvalError(f"results[{bad}]: image_id {r_img[bad]!r} is not an image of the ground truth", path=p)
        labels = _map_ids(r_cat, tuple(gt.category_ids or ()), cindex)
        if labels is None:
            labels = np.array([cindex.get(c, -1) if isinstance(c, (int, str)) else -1 for c in r_cat], np.int64)
        keep = labels >= 0
        if not keep.all():
            log.warning("%s: %d results have a category_id absent from the ground truth; ignored (as pycocotools)",
                        p, int((~keep).sum()))
    else:
        img_index = np.empty(n_rows, np.int64)
        labels = np.empty(n_rows, np.int64)
        for k, (i, c) in enumerate(zip(r_img, r_cat)):
            key = str(i)
            if key not in lookup:
                raise EvalError(f"results[{k}]: image_id {i!r} is not an image stem of the ground truth", path=p)
            img_index[k] = lookup[key]
            if isinstance(c, str):
                labels[k] = classes.get(c, p, None)
            elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(classes.names):
                labels[k] = c
            else:
                raise EvalError(f"results[{k}]: category_id {c!r} is not a class index or name", path=p)
        keep = np.ones(n_rows, bool)
    if boxes is None:
        boxes = _boxes_fast(r_box)
        if boxes is None:
            boxes = _boxes_array(r_box, p, "results")
        try:
            scores = np.fromiter(r_score, np.float64, count=len(r_score))
            if scores.size != n_rows or not np.isfinite(scores).all():
                raise ValueError
        except (TypeError, ValueError):
            bad = next((k for k, s in enumerate(r_score)
                        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s)), 0)
            raise EvalError(f"results[{bad}]: score must be a finite number, got {r_score[bad]!r}", path=p) from None
    if not keep.all():
        img_index, labels, boxes, scores = img_index[keep], labels[keep], boxes[keep], scores[keep]
    return DetTable(image_index=img_index, boxes=boxes, scores=scores, labels=labels, box_format="xywh"), False


def _results_columns_checked(p: Path, data: bytes) -> tuple[list, list, list, list, int]:
    """The general path: parse to Python objects and name the first bad entry (one-line EvalError)."""
    doc = _read_json(p, data)
    if isinstance(doc, dict) and isinstance(doc.get("annotations"), list):
        doc = doc["annotations"]
    if not isinstance(doc, list):
        raise EvalError("COCO results JSON must be a list of {image_id, category_id, bbox, score}", path=p)
    try:
        r_img = list(map(itemgetter("image_id"), doc))
        r_cat = list(map(itemgetter("category_id"), doc))
        r_box = list(map(itemgetter("bbox"), doc))
        r_score = list(map(itemgetter("score"), doc))
    except (TypeError, KeyError):
        for i, d in enumerate(doc):
            if not isinstance(d, dict):
                raise EvalError(f"results[{i}]: expected an object, got {d!r}"[:200], path=p) from None
            for key in ("image_id", "category_id", "bbox", "score"):
                if key not in d:
                    raise EvalError(f"results[{i}]: missing '{key}'", path=p) from None
        raise
    return r_img, r_cat, r_box, r_score, len(doc)


def _load_comp4(p: Path, gt: GroundTruth, classes: _Classes) -> tuple[DetTable, bool]:
    files = [p] if p.is_file() else sorted(f for f in p.glob("*.txt") if _COMP4.search(f.name))
    lookup = {str(k): v for k, v in _image_lookup(gt).items()}
    img_index, boxes, scores, labels = [], [], [], []
    for f in files:
        cname = _COMP4.search(f.name).group(1)
        c = classes.get(cname, f, None)
        for line, fields in _parse_rows(f, 6, "image_id score x1 y1 x2 y2"):
            if fields[0] not in lookup:
                raise EvalError(f"image id {fields[0]!r} is not an image of the ground truth", path=f, line=line)
            v = _floats(fields[1:], f, line)
            img_index.append(lookup[fields[0]])
            scores.append(v[0])
            boxes.append(v[1:])
            labels.append(c)
    return DetTable(image_index=np.array(img_index, np.int64), boxes=np.array(boxes, np.float64).reshape(-1, 4),
                    scores=np.array(scores, np.float64), labels=np.array(labels, np.int64)), True


def _per_image_files(p: Path, gt: GroundTruth) -> list[tuple[Path, int]]:
    lookup = {str(k): v for k, v in _image_lookup(gt).items()}
    out = []
    for f in sorted(p.glob("*.txt")):
        if f.stem not in lookup:
            raise EvalError(f"prediction file for {f.stem!r}, which is not an image of the ground truth", path=f)
        out.append((f, lookup[f.stem]))
    return out


def _load_txt(p: Path, gt: GroundTruth, classes: _Classes) -> tuple[DetTable, bool]:
    img_index, boxes, scores, labels = [], [], [], []
    for f, k in _per_image_files(p, gt):
        for line, fields in _parse_rows(f, 6, "class_name score x1 y1 x2 y2"):
            v = _floats(fields[1:], f, line)
            labels.append(classes.get(fields[0], f, line))
            img_index.append(k)
            scores.append(v[0])
            boxes.append(v[1:])
    return DetTable(image_index=np.array(img_index, np.int64), boxes=np.array(boxes, np.float64).reshape(-1, 4),
                    scores=np.array(scores, np.float64), labels=np.array(labels, np.int64)), True


def _image_size(gt: GroundTruth, k: int) -> tuple[float, float]:
    w, h = gt.image_sizes[k]
    if math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0:
        return float(w), float(h)
    img = gt.image_files[k] if k < len(gt.image_files) else None
    if img is None:
        raise EvalError(f"image {gt.table.image_ids[k]!r}: size unknown (needed for normalised YOLO predictions)",
                        path=gt.source)
    from detkit.data.images import read_image_size
    w2, h2 = read_image_size(img)
    return float(w2), float(h2)


def _load_yolo(p: Path, gt: GroundTruth, classes: _Classes) -> tuple[DetTable, bool]:
    img_index, boxes, scores, labels = [], [], [], []
    C = len(classes.names)
    for f, k in _per_image_files(p, gt):
        rows = _parse_rows(f, 6, "class cx cy w h score")
        if not rows:
            continue
        w, h = _image_size(gt, k)
        for line, fields in rows:
            v = _floats(fields, f, line)
            c = v[0]
            if c != int(c) or not 0 <= c < C:
                raise EvalError(f"class {fields[0]!r} is not an index in 0..{C - 1}", path=f, line=line)
            cx, cy, bw, bh = v[1] * w, v[2] * h, v[3] * w, v[4] * h
            labels.append(int(c))
            img_index.append(k)
            scores.append(v[5])
            boxes.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    return DetTable(image_index=np.array(img_index, np.int64), boxes=np.array(boxes, np.float64).reshape(-1, 4),
                    scores=np.array(scores, np.float64), labels=np.array(labels, np.int64)), False


_LOADERS = {"coco": _load_coco_results, "comp4": _load_comp4, "txt": _load_txt, "yolo": _load_yolo}


def load_predictions(path: str | os.PathLike, gt: GroundTruth, fmt: PredFormat = "auto",
                     grow_classes: bool = False) -> tuple[DetTable, bool, list[str]]:
    """Read predictions for ``gt``.

    Args:
        fmt: one of ``PRED_FORMATS`` ('auto' guesses from the path).
        grow_classes: classes named only in the predictions are appended to the class list
            (else they are an error).
    Returns:
        (detections, voc_pixels: True when the boxes are VOC 1-based pixels, class names).
    """
    p = Path(path)
    if not p.exists():
        raise EvalError("predictions not found", path=p)
    if fmt not in PRED_FORMATS:
        raise EvalError(f"unknown prediction format {fmt!r}; valid: {', '.join(PRED_FORMATS)}")
    if fmt == "auto":
        fmt = detect_pred_format(p)  # type: ignore[assignment]
    if fmt != "coco" and fmt != "comp4" and not p.is_dir():
        raise EvalError(f"'{fmt}' predictions are a folder of per-image .txt files", path=p)
    classes = _Classes(gt.class_names, grow_classes)
    dt, voc_px = _LOADERS[fmt](p, gt, classes)
    return dt, voc_px, classes.names


# --------------------------------------------------------------------------- conversion + scoring

def _to_space(boxes_xyxy: np.ndarray, from_voc: bool, to_voc: bool) -> np.ndarray:
    if from_voc == to_voc:
        return boxes_xyxy
    from detkit.boxes import voc_to_xyxy, xyxy_to_voc
    return xyxy_to_voc(boxes_xyxy) if to_voc else voc_to_xyxy(boxes_xyxy)


def prepare_tables(gt: GroundTruth, dt: DetTable, dt_voc_pixels: bool, metric: str) -> tuple[GTTable, DetTable, bool]:
    """Bring ground truth and detections into one coordinate space for ``metric``.

    Returns (gt table, det table, plus_one default): VOC metric on VOC XML ground truth works on
    the XML's 1-based numbers with +1 IoU; every other case on continuous pixels without +1.
    """
    to_voc = gt.voc_pixels and metric != "coco"
    g = gt.table
    if g.box_format == "xyxy" and gt.voc_pixels != to_voc:
        g = GTTable(image_ids=g.image_ids, image_index=g.image_index, boxes=_to_space(g.boxes, gt.voc_pixels, to_voc),
                    labels=g.labels, difficult=g.difficult, iscrowd=g.iscrowd, area=g.area, ann_ids=g.ann_ids,
                    box_format="xyxy")
    if dt_voc_pixels != to_voc:
        dt = DetTable(image_index=dt.image_index, boxes=_to_space(dt.xyxy(), dt_voc_pixels, to_voc),
                      scores=dt.scores, labels=dt.labels, box_format="xyxy")
    return g, dt, to_voc


@dataclass(frozen=True)
class EvalRun:
    """A scored evaluation with the inputs it used (for plots)."""

    report: EvalReport
    gt: GTTable
    dt: DetTable
    class_names: list[str]
    plus_one: bool


def evaluate_files(gt_path: str | os.PathLike, pred_path: str | os.PathLike, metric: str = "voc",
                   names: Sequence[str] | None = None, iou_threshold: float = 0.5, conf_threshold: float = 0.25,
                   plus_one: bool | None = None, iou_rule: str = ">=", pred_format: PredFormat = "auto",
                   image_set: str | None = None) -> EvalRun:
    """Read ground truth and predictions from files and score them (see module docstring).

    ``plus_one=None`` picks the devkit default: +1 pixel IoU for VOC metrics on VOC XML ground
    truth, none otherwise.
    """
    gt = load_ground_truth(gt_path, names, image_set)
    grow = names is None and gt.kind == "voc"
    dt, dt_voc, class_names = load_predictions(pred_path, gt, pred_format, grow_classes=grow)
    g, d, default_plus_one = prepare_tables(gt, dt, dt_voc, metric)
    po = default_plus_one if plus_one is None else bool(plus_one)
    report = evaluate(g, d, class_names, metric=metric, iou_threshold=iou_threshold,  # type: ignore[arg-type]
                      conf_threshold=conf_threshold, plus_one=po, iou_rule=iou_rule)  # type: ignore[arg-type]
    return EvalRun(report=report, gt=g, dt=d, class_names=class_names, plus_one=po)


# --------------------------------------------------------------------------- model-driven evaluation

def predictions_to_coco_json(dt: DetTable, image_ids: Sequence, class_names: Sequence[str]) -> list[dict]:
    """Detections (continuous xyxy pixels) -> COCO results list (``image_id`` = image stem,
    ``category_id`` = class index, ``bbox`` xywh), readable back by :func:`load_predictions`."""
    b = dt.xywh()
    return [{"image_id": image_ids[int(i)], "category_id": int(c), "bbox": [float(v) for v in bb], "score": float(s)}
            for i, c, bb, s in zip(dt.image_index, dt.labels, b, dt.scores)]


def evaluate_model(cfg: str | os.PathLike | None, weights: str | os.PathLike, data: str | os.PathLike, metric: str = "voc",
                   names: Sequence[str] | None = None, iou_threshold: float = 0.5, conf_threshold: float = 0.25,
                   img_size: int | None = None, nms: float = 0.45, pred_conf: float = 0.005, batch_size: int = 8,
                   save_pred: str | os.PathLike | None = None, plus_one: bool | None = None,
                   iou_rule: str = ">=", device: str = "auto") -> EvalRun:
    """Run the model on the validation images of ``data`` (obj.data / data.yaml / list file), then
    score the detections like :func:`evaluate_files` (continuous pixels, no +1 unless forced).
    ``weights`` may be an exported ``.onnx`` file (float32 or int8; then ``cfg`` is not needed).

    Detections come from :class:`detkit.engine.predict.Predictor` (letterbox, per-class NMS,
    boxes in original pixels), kept down to ``pred_conf`` so AP sees the whole PR curve.
    """
    from detkit.engine.loading import load_model, load_onnx_model
    from detkit.engine.onnxrt import is_onnx_file
    from detkit.engine.predict import Predictor

    gt = load_yolo_gt(data, names)
    if is_onnx_file(weights):  # an exported file (float32 or int8) run by onnxruntime; cfg unused
        model = load_onnx_model(weights, len(gt.class_names), classes_from="the dataset")
    elif cfg is None:
        raise EvalError("model-driven evaluation needs --cfg (unless --weights is an .onnx model)")
    else:
        model, _ = load_model(cfg, weights, len(gt.class_names), purpose="evaluation", classes_from="the dataset")
    try:
        predictor = Predictor(model, img_size=img_size, conf=pred_conf, nms=nms, letterbox=True, device=device)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    img_index, boxes, scores, labels = [], [], [], []
    for k, res in enumerate(predictor.predict_paths(list(gt.image_files), batch_size=batch_size)):
        if res.error is not None:
            raise res.error
        det = res.detections
        if det is None or len(det) == 0:
            continue
        img_index.append(np.full(len(det), k, np.int64))
        boxes.append(np.asarray(det.boxes, np.float64))
        scores.append(np.asarray(det.scores, np.float64))
        labels.append(np.asarray(det.class_ids, np.int64))
    cat = (lambda xs, shape, t: np.concatenate(xs) if xs else np.zeros(shape, t))
    dt = DetTable(image_index=cat(img_index, (0,), np.int64), boxes=cat(boxes, (0, 4), np.float64),
                  scores=cat(scores, (0,), np.float64), labels=cat(labels, (0,), np.int64), box_format="xyxy")
    if save_pred is not None:
        from detkit.fileio import write_bytes_atomic
        res_list = predictions_to_coco_json(dt, gt.table.image_ids, gt.class_names)
        write_bytes_atomic(save_pred, (json.dumps(res_list) + "\n").encode("utf-8"), fsync=False, make_parents=True)
    g, d, default_plus_one = prepare_tables(gt, dt, False, metric)
    po = default_plus_one if plus_one is None else bool(plus_one)
    report = evaluate(g, d, gt.class_names, metric=metric, iou_threshold=iou_threshold,  # type: ignore[arg-type]
                      conf_threshold=conf_threshold, plus_one=po, iou_rule=iou_rule)  # type: ignore[arg-type]
    return EvalRun(report=report, gt=g, dt=d, class_names=list(gt.class_names), plus_one=po)
