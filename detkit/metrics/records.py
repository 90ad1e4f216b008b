"""Inputs of the evaluators: per-image records (convenient) and flat tables (fast).

Two equivalent shapes of the same data:

* :class:`ImageGT` / :class:`ImageDets`: one frozen record per image (what a detector loop or a
  training loop produces);
* :class:`GTTable` / :class:`DetTable`: flat arrays over all images (what file readers produce;
  no per-image Python objects, so 500k detections cost nothing to hold).

Boxes are float64. ``box_format`` says whether a table holds ``xyxy`` or COCO ``xywh``; the COCO
evaluator works on ``xywh`` exactly as pycocotools does (``x + w`` and ``w * h`` computed from the
stored numbers), the VOC evaluator on ``xyxy`` exactly as the devkit does, so a reader should keep
the numbers in the format they were written in.

Order matters and is kept: detections with equal scores are ranked in input order (stable sort),
and ground-truth boxes keep their input order within an image (pycocotools' tie-breaking depends on
it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from detkit.errors import EvalError

BoxFormat = Literal["xyxy", "xywh"]


def _as(arr, dtype, shape_tail: tuple[int, ...], what: str, n: int | None = None) -> np.ndarray:
    out = np.asarray(arr, dtype=dtype)
    if shape_tail:
        if out.size == 0:
            out = out.reshape((0,) + shape_tail)
        if out.ndim != 1 + len(shape_tail) or out.shape[1:] != shape_tail:
            raise EvalError(f"{what}: expected shape (N, {', '.join(map(str, shape_tail))}), got {out.shape}")
    else:
        out = out.reshape(-1)
    if n is not None and out.shape[0] != n:
        raise EvalError(f"{what}: expected {n} rows, got {out.shape[0]}")
    return out


@dataclass(frozen=True)
class ImageGT:
    """Ground truth of one image.

    Attributes:
        image_id: the image's identifier (str or int), unique within a ground-truth list.
        boxes: (K, 4) float64 ``xyxy`` in pixels (VOC: the XML numbers, see ``plus_one``).
        labels: (K,) int64 class indices into ``class_names``.
        difficult: (K,) bool, VOC difficult flags (ignored by VOC; ignored regions for COCO).
        iscrowd: (K,) bool COCO crowd flags, or None (no crowd).
        area: (K,) float64 COCO ``area`` field (area ranges use it), or None (box area ``w*h``).
        ann_ids: (K,) int64 COCO annotation ids, or None; only used to reproduce pycocotools'
            "annotation id 0 never matches" behaviour.
    """

    image_id: str | int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray | None = None
    iscrowd: np.ndarray | None = None
    area: np.ndarray | None = None
    ann_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = _as(self.boxes, np.float64, (4,), f"ImageGT {self.image_id!r} boxes")
        k = boxes.shape[0]
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "labels", _as(self.labels, np.int64, (), f"ImageGT {self.image_id!r} labels", k))
        diff = np.zeros(k, bool) if self.difficult is None else _as(
            self.difficult, bool, (), f"ImageGT {self.image_id!r} difficult", k)
        object.__setattr__(self, "difficult", diff)
        if self.iscrowd is not None:
            object.__setattr__(self, "iscrowd", _as(self.iscrowd, bool, (), f"ImageGT {self.image_id!r} iscrowd", k))
        if self.area is not None:
            object.__setattr__(self, "area", _as(self.area, np.float64, (), f"ImageGT {self.image_id!r} area", k))
        if self.ann_ids is not None:
            object.__setattr__(self, "ann_ids", _as(self.ann_ids, np.int64, (), f"ImageGT {self.image_id!r} ann_ids", k))


@dataclass(frozen=True)
class ImageDets:
    """Detections of one image.

    Attributes:
        image_id: identifier matching an :class:`ImageGT`.
        boxes: (M, 4) float64 ``xyxy`` pixels, same convention as the ground truth.
        scores: (M,) float64 confidences.
        labels: (M,) int64 class indices.
    """

    image_id: str | int
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        boxes = _as(self.boxes, np.float64, (4,), f"ImageDets {self.image_id!r} boxes")
        m = boxes.shape[0]
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", _as(self.scores, np.float64, (), f"ImageDets {self.image_id!r} scores", m))
        object.__setattr__(self, "labels", _as(self.labels, np.int64, (), f"ImageDets {self.image_id!r} labels", m))


class _BoxTable:
    """Length and box-format views shared by :class:`GTTable` and :class:`DetTable`."""

    boxes: np.ndarray
    box_format: BoxFormat

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def xyxy(self) -> np.ndarray:
        """(N, 4) boxes as ``xyxy`` (``x2 = x + w`` when stored as ``xywh``)."""
        return self.boxes if self.box_format == "xyxy" else _xywh_to_xyxy(self.boxes)

    def xywh(self) -> np.ndarray:
        """(N, 4) boxes as COCO ``xywh`` (``w = x2 - x1`` when stored as ``xyxy``)."""
        return self.boxes if self.box_format == "xywh" else _xyxy_to_xywh(self.boxes)


@dataclass(frozen=True)
class GTTable(_BoxTable):
    """Ground truth of a whole set as flat arrays (N objects over I images).

    Attributes:
        image_ids: (I,) the images' identifiers; every image counts, with or without objects.
        image_index: (N,) int64 index into ``image_ids``.
        boxes: (N, 4) float64 in ``box_format``.
        labels: (N,) int64 class indices.
        difficult: (N,) bool. iscrowd: (N,) bool. area: (N,) float64 or None (box ``w*h``).
        ann_ids: (N,) int64 or None.
        box_format: ``"xyxy"`` or ``"xywh"``.
    """

    image_ids: tuple
    image_index: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray | None = None
    ann_ids: np.ndarray | None = None
    box_format: BoxFormat = "xyxy"

    def __post_init__(self) -> None:
        boxes = _as(self.boxes, np.float64, (4,), "ground-truth boxes")
        n = boxes.shape[0]
        object.__setattr__(self, "image_ids", tuple(self.image_ids))
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "image_index", _as(self.image_index, np.int64, (), "ground-truth image_index", n))
        object.__setattr__(self, "labels", _as(self.labels, np.int64, (), "ground-truth labels", n))
        object.__setattr__(self, "difficult", _as(self.difficult, bool, (), "ground-truth difficult", n))
        object.__setattr__(self, "iscrowd", _as(self.iscrowd, bool, (), "ground-truth iscrowd", n))
        if self.area is not None:
            object.__setattr__(self, "area", _as(self.area, np.float64, (), "ground-truth area", n))
        if self.ann_ids is not None:
            object.__setattr__(self, "ann_ids", _as(self.ann_ids, np.int64, (), "ground-truth ann_ids", n))
        if self.box_format not in ("xyxy", "xywh"):
            raise EvalError(f"box_format must be 'xyxy' or 'xywh', got {self.box_format!r}")
        if n and (self.image_index.min() < 0 or self.image_index.max() >= len(self.image_ids)):
            raise EvalError("ground-truth image_index out of range")
        if len(set(self.image_ids)) != len(self.image_ids):
            seen: set = set()
            dup = next(i for i in self.image_ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise EvalError(f"duplicate ground-truth image id {dup!r}")


@dataclass(frozen=True)
class DetTable(_BoxTable):
    """Detections of a whole set as flat arrays (M detections), in input order.

    Attributes:
        image_index: (M,) int64 index into the ground truth's ``image_ids``.
        boxes: (M, 4) float64 in ``box_format``. scores: (M,) float64. labels: (M,) int64.
    """

    image_index: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    box_format: BoxFormat = "xyxy"

    def __post_init__(self) -> None:
        boxes = _as(self.boxes, np.float64, (4,), "detection boxes")
        m = boxes.shape[0]
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "image_index", _as(self.image_index, np.int64, (), "detection image_index", m))
        object.__setattr__(self, "scores", _as(self.scores, np.float64, (), "detection scores", m))
        object.__setattr__(self, "labels", _as(self.labels, np.int64, (), "detection labels", m))
        if self.box_format not in ("xyxy", "xywh"):
            raise EvalError(f"box_format must be 'xyxy' or 'xywh', got {self.box_format!r}")
        if m and not np.isfinite(self.scores).all():
            bad = int(np.flatnonzero(~np.isfinite(self.scores))[0])
            raise EvalError(f"detection {bad}: score {self.scores[bad]!r} is not finite")


def _xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1)


def _xyxy_to_xywh(b: np.ndarray) -> np.ndarray:
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def tables_from_images(ground_truth: Sequence[ImageGT], detections: Sequence[ImageDets]
                       ) -> tuple[GTTable, DetTable]:
    """Flatten per-image records into tables (image order = ground-truth list order).

    Raises:
        EvalError: duplicate ground-truth image ids, or detections for an image without a
            ground-truth record.
    """
    image_ids = tuple(g.image_id for g in ground_truth)
    index = {}
    for i, iid in enumerate(image_ids):
        if iid in index:
            raise EvalError(f"duplicate ground-truth image id {iid!r}")
        index[iid] = i
    counts = [len(g.labels) for g in ground_truth]
    any_crowd = any(g.iscrowd is not None for g in ground_truth)
    any_area = any(g.area is not None for g in ground_truth)
    any_ids = any(g.ann_ids is not None for g in ground_truth)

    def cat(parts, dtype, tail=()):
        parts = [p for p in parts]
        if not parts:
            return np.zeros((0,) + tail, dtype)
        return np.concatenate(parts).astype(dtype, copy=False)

    gt = GTTable(
        image_ids=image_ids,
        image_index=np.repeat(np.arange(len(image_ids), dtype=np.int64), counts),
        boxes=cat([g.boxes for g in ground_truth], np.float64, (4,)),
        labels=cat([g.labels for g in ground_truth], np.int64),
        difficult=cat([g.difficult for g in ground_truth], bool),
        iscrowd=cat([g.iscrowd if g.iscrowd is not None else np.zeros(len(g.labels), bool)
                     for g in ground_truth], bool),
        area=cat([g.area if g.area is not None else (g.boxes[:, 2] - g.boxes[:, 0]) * (g.boxes[:, 3] - g.boxes[:, 1])
                  for g in ground_truth], np.float64) if any_area else None,
        ann_ids=cat([g.ann_ids if g.ann_ids is not None else np.arange(1, len(g.labels) + 1)
                     for g in ground_truth], np.int64) if any_ids else None,
        box_format="xyxy",
    )
    if not any_crowd:
        object.__setattr__(gt, "iscrowd", np.zeros(len(gt), bool))
    det_index = []
    for d in detections:
        if d.image_id not in index:
            raise EvalError(f"detections for image {d.image_id!r}, which has no ground-truth record")
        det_index.append(np.full(len(d.scores), index[d.image_id], np.int64))
    dt = DetTable(
        image_index=cat(det_index, np.int64),
        boxes=cat([d.boxes for d in detections], np.float64, (4,)),
        scores=cat([d.scores for d in detections], np.float64),
        labels=cat([d.labels for d in detections], np.int64),
        box_format="xyxy",
    )
    return gt, dt
