"""Ground-truth readers for evaluation: COCO JSON, Pascal VOC XML and YOLO/darknet datasets.

Ground truth (``load_ground_truth``):

* COCO annotations JSON (``*.json``): images, annotations (bbox xywh, area, iscrowd, id),
  categories; classes are the categories sorted by id (pycocotools' order);
* Pascal VOC: an ``Annotations/`` folder, a VOC year root containing one, or any folder of
  ``*.xml``; ``difficult`` kept; image id = the XML file's stem (= the image's stem in VOC);
  classes from ``names`` or the sorted object names;
* YOLO/darknet: ``obj.data`` (its ``valid=`` list), ``data.yaml`` (its ``val``) or a list file of
  image paths (needs ``names``); labels found by darknet's ``images``/``JPEGImages`` -> ``labels``
  rule, pixel sizes read from the image headers; image id = the image's stem.

Coordinates: VOC XML boxes are VOC 1-based inclusive pixels (``GroundTruth.voc_pixels``); COCO
and YOLO boxes are continuous pixels (``x1 = xmin - 1``, ``x2 = xmax``, see detkit.boxes).

JSON parsing (orjson fast path, one-line errors) lives in :mod:`detkit.evaluate.jsonio`.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from detkit.errors import AnnotationError, EvalError
from detkit.evaluate.jsonio import boxes_array, json_number, read_json
from detkit.metrics.records import GTTable


log = logging.getLogger(__name__)

MAX_IMAGE_SIDE = 1 << 20  # a COCO/VOC size claim beyond this is rejected (no real image is that big)


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
    doc = read_json(p)
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
            w, h = json_number(w, "width", p, f"images[{i}]"), json_number(h, "height", p, f"images[{i}]")
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
    boxes = boxes_array([a_box[i] for i in keep], p, "annotations")
    sel = [anns[i] for i in keep]
    area, crowd, aid = [], [], []
    for j, a in enumerate(sel):
        ar = a.get("area")
        if ar is None:
            area.append(boxes[j, 2] * boxes[j, 3])
        else:
            area.append(json_number(ar, "area", p, f"annotations[{keep[j]}]"))
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
