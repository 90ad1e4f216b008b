"""Prediction readers for evaluation: COCO results JSON, darknet comp4, per-image txt and YOLO files.

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

Coordinates: ``comp4`` and ``txt`` boxes are VOC 1-based inclusive pixels; COCO and YOLO boxes
are continuous pixels (``x1 = xmin - 1``, ``x2 = xmax``, see detkit.boxes). Large COCO results
files take a typed msgspec fast path when installed (same tables as the checked path).
"""
from __future__ import annotations

import logging
import math
import os
import re
from itertools import chain
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Literal

import numpy as np

from detkit.evaluate.ground_truth import GroundTruth
from detkit.evaluate.jsonio import boxes_array, boxes_fast, read_bytes, read_json
from detkit.errors import EvalError
from detkit.metrics.records import DetTable

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
_COMP4 = re.compile(r"det_(?:test|val|trainval|train)_(.+)\.txt$")


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


def _load_coco_results(p: Path, gt: GroundTruth, classes: _Classes, fast_path: bool = True
                       ) -> tuple[DetTable, bool]:
    data = read_bytes(p)
    fast = _results_columns_fast(data) if fast_path else None
    if fast is not None:
        r_img, r_cat, boxes, scores = fast
        n_rows = len(r_img)
    else:
        log.debug("%s: reading the results with the checked reader", p)
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
        boxes = boxes_fast(r_box)
        if boxes is None:
            boxes = boxes_array(r_box, p, "results")
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
    doc = read_json(p, data)
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


_LOADERS = {"comp4": _load_comp4, "txt": _load_txt, "yolo": _load_yolo}


def load_predictions(path: str | os.PathLike, gt: GroundTruth, fmt: PredFormat = "auto",
                     grow_classes: bool = False, fast: bool = True) -> tuple[DetTable, bool, list[str]]:
    """Read predictions for ``gt``.

    Args:
        fmt: one of ``PRED_FORMATS`` ('auto' guesses from the path).
        grow_classes: classes named only in the predictions are appended to the class list
            (else they are an error).
        fast: COCO results are decoded by msgspec's typed decoder when it is installed (falling back
            to the checked reader, which names the bad entry, on anything unusual); False always
            takes the checked reader. Both give identical tables.
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
    if fmt == "coco":
        dt, voc_px = _load_coco_results(p, gt, classes, fast_path=fast)
    else:
        dt, voc_px = _LOADERS[fmt](p, gt, classes)
    return dt, voc_px, classes.names
