"""Pascal VOC matching (devkit ``VOCevaldet`` rules), vectorised over all detections.

Rules (REFERENCES.md section 4), per class:

* detections are ranked by score, descending, with a stable sort (ties keep input order);
* each detection takes the single ground-truth object of its class in its image with the highest
  IoU (first one on ties, like MATLAB ``max``/numpy ``argmax``);
* IoU >= threshold (devkit; ``iou_rule='>'`` is py-faster-rcnn's strict rule): a difficult object
  makes the detection ignored (neither TP nor FP); an object not matched yet makes it a TP; an
  object already matched makes it a FP (duplicate; no fall back to the second best object);
* below the threshold, or no object of the class in the image: FP;
* IoU uses the +1 pixel rule (``w = x2 - x1 + 1``) when ``plus_one``.

Why no loop: a detection's fate depends only on its best object, and an object is taken by the
first (best-ranked) detection that picks it with enough IoU. So after one block-sparse argmax per
detection, the TPs are the first detection per picked object in class rank order: one sort.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detkit.metrics.matching import group_pairs, segment_starts
from detkit.metrics.records import DetTable, GTTable


@dataclass(frozen=True)
class VocMatch:
    """Matching result, detections in class-rank order (class ascending, score descending, stable).

    Attributes:
        order: (M,) int64 detection indices (into the input table) in class-rank order.
        labels, scores: (M,) of the detections in that order.
        tp, fp, ignored: (M,) bool (exactly one is True per detection).
        best_iou: (M,) float64 best IoU with an object of the class (-inf: none overlapping).
        best_gt: (M,) int64 index of that object in the ground-truth table (-1: none).
        npos: (C,) int64 non-difficult objects per class.
        class_start: (C + 1,) int64 boundaries of each class's run in the ordered arrays.
    """

    order: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    ignored: np.ndarray
    best_iou: np.ndarray
    best_gt: np.ndarray
    npos: np.ndarray
    class_start: np.ndarray


def voc_pair_iou(d: np.ndarray, g: np.ndarray, plus_one: bool) -> np.ndarray:
    """IoU of paired xyxy boxes with the devkit's arithmetic; -inf where they do not overlap.

    Args:
        d, g: (P, 4) float64 boxes, row i of ``d`` paired with row i of ``g``.
    """
    e = 1.0 if plus_one else 0.0
    iw = np.minimum(d[:, 2], g[:, 2]) - np.maximum(d[:, 0], g[:, 0]) + e
    ih = np.minimum(d[:, 3], g[:, 3]) - np.maximum(d[:, 1], g[:, 1]) + e
    inter = iw * ih
    ua = (d[:, 2] - d[:, 0] + e) * (d[:, 3] - d[:, 1] + e) + (g[:, 2] - g[:, 0] + e) * (g[:, 3] - g[:, 1] + e) - inter
    ok = (iw > 0) & (ih > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ov = inter / ua
    return np.where(ok, ov, -np.inf)


def voc_match(gt: GTTable, dt: DetTable, num_classes: int, iou_threshold: float = 0.5,
              plus_one: bool = False, iou_rule: str = ">=") -> VocMatch:
    """Label every detection TP / FP / ignored by the VOC devkit rules (see module docstring)."""
    C = int(num_classes)
    m = len(dt)
    gxy, dxy = gt.xyxy(), dt.xyxy()
    gkey = gt.image_index * C + gt.labels
    dkey = dt.image_index * C + dt.labels

    best_iou = np.full(m, -np.inf)
    best_gt = np.full(m, -1, np.int64)
    for d, g in group_pairs(dkey, gkey):
        iou = voc_pair_iou(dxy[d], gxy[g], plus_one)
        starts = segment_starts(d)
        seg_max = np.maximum.reduceat(iou, starts)
        seg_len = np.diff(np.append(starts, d.size))
        pos = np.where(iou == np.repeat(seg_max, seg_len), np.arange(d.size), d.size)
        first = np.minimum.reduceat(pos, starts)  # first maximum, like MATLAB max / np.argmax
        ids = d[starts]
        best_iou[ids] = seg_max
        best_gt[ids] = g[first]

    ok = best_iou >= iou_threshold if iou_rule == ">=" else best_iou > iou_threshold
    hit = np.flatnonzero(ok)
    diff_hit = gt.difficult[best_gt[hit]]
    ignored = np.zeros(m, bool)
    ignored[hit[diff_hit]] = True

    # class asc, score desc, input order on ties: one stable score sort, then a unique int key
    s0 = np.argsort(-dt.scores, kind="stable")
    p0 = np.empty(m, np.int64)
    p0[s0] = np.arange(m)
    if C < 65536:  # small class ids: numpy's stable sort is a radix sort
        order = s0[np.argsort(dt.labels[s0].astype(np.uint16), kind="stable")]
    else:
        order = np.lexsort((p0, dt.labels))
    rank = np.empty(m, np.int64)
    rank[order] = np.arange(m)
    cand = hit[~diff_hit]
    tp = np.zeros(m, bool)
    if cand.size:
        by_gt = cand[np.argsort(best_gt[cand] * max(m, 1) + rank[cand])]
        firsts = segment_starts(best_gt[by_gt])
        tp[by_gt[firsts]] = True
    fp = ~tp & ~ignored

    labels = dt.labels[order]
    npos = np.bincount(gt.labels[~gt.difficult], minlength=C).astype(np.int64)
    class_start = np.searchsorted(labels, np.arange(C + 1), side="left").astype(np.int64)
    return VocMatch(order=order, labels=labels, scores=dt.scores[order], tp=tp[order], fp=fp[order],
                    ignored=ignored[order], best_iou=best_iou[order], best_gt=best_gt[order],
                    npos=npos, class_start=class_start)
