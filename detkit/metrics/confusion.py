"""Confusion matrix between ground-truth classes and detected classes (plus background).

Rule (class-agnostic one-to-one matching per image, for a diagnostic plot; AP does not use it):
detections with score >= ``conf_threshold`` are paired with every object of the same image; pairs
with IoU >= ``iou_threshold`` are taken greedily by descending IoU (ties: detection rank, then
object order), each detection and each object at most once. Difficult / crowd objects are left out.
Rows are ground truth (last row: background = unmatched detections), columns are predictions
(last column: background = missed objects).
"""
from __future__ import annotations

import numpy as np

from detkit.boxes import iou_matrix
from detkit.metrics.records import DetTable, GTTable


def confusion_matrix(gt: GTTable, dt: DetTable, num_classes: int, iou_threshold: float = 0.5,
                     conf_threshold: float = 0.25, plus_one: bool = False) -> np.ndarray:
    """(C + 1, C + 1) int64 counts: ``[gt_class, pred_class]``, index C = background."""
    C = int(num_classes)
    cm = np.zeros((C + 1, C + 1), np.int64)
    gsel = ~(gt.difficult | gt.iscrowd)
    g_img, g_lab, g_box = gt.image_index[gsel], gt.labels[gsel], gt.xyxy()[gsel]
    dsel = dt.scores >= conf_threshold
    d_img, d_lab, d_box, d_sc = dt.image_index[dsel], dt.labels[dsel], dt.xyxy()[dsel], dt.scores[dsel]
    g_order = np.argsort(g_img, kind="stable")
    d_order = np.lexsort((-d_sc, d_img))
    g_bounds = np.searchsorted(g_img[g_order], np.arange(len(gt.image_ids) + 1))
    d_bounds = np.searchsorted(d_img[d_order], np.arange(len(gt.image_ids) + 1))
    for i in np.flatnonzero((np.diff(g_bounds) > 0) | (np.diff(d_bounds) > 0)):
        gi = g_order[g_bounds[i]:g_bounds[i + 1]]
        di = d_order[d_bounds[i]:d_bounds[i + 1]]
        g_used = np.zeros(gi.size, bool)
        d_used = np.zeros(di.size, bool)
        if gi.size and di.size:
            iou = iou_matrix(d_box[di], g_box[gi], plus_one=plus_one)  # (D_i, G_i), one image
            dd, gg = np.nonzero(iou >= iou_threshold)
            order = np.lexsort((gg, dd, -iou[dd, gg]))
            for a, b in zip(dd[order], gg[order]):  # pairs of one image only
                if not d_used[a] and not g_used[b]:
                    d_used[a] = g_used[b] = True
                    cm[g_lab[gi[b]], d_lab[di[a]]] += 1
        np.add.at(cm, (g_lab[gi[~g_used]], C), 1)
        np.add.at(cm, (C, d_lab[di[~d_used]]), 1)
    return cm
