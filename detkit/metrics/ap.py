"""Average precision from a ranked list of true/false positives (Pascal VOC rules).

Both functions reproduce the reference arithmetic exactly (same operations in the same order),
so results are bit-identical to the py-faster-rcnn port of the devkit.
"""
from __future__ import annotations

import numpy as np

# numpy.arange(0, 1.1, 0.1) yields 0.30000000000000004, 0.6000000000000001, ...; the VOC2007
# 11-point metric as everyone runs it (py-faster-rcnn voc_eval) uses exactly these thresholds.
VOC07_RECALL_THRESHOLDS = np.arange(0.0, 1.1, 0.1)


def pr_from_flags(tp: np.ndarray, fp: np.ndarray, npos: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative recall and precision of a ranked list.

    Args:
        tp, fp: (D,) bool/0-1 flags in rank order (ignored detections removed).
        npos: number of positives (non-difficult objects); must be > 0.
    Returns:
        recall (D,) = cumTP / npos, precision (D,) = cumTP / max(cumTP + cumFP, eps).
    """
    ctp = np.cumsum(np.asarray(tp, dtype=np.float64))
    cfp = np.cumsum(np.asarray(fp, dtype=np.float64))
    rec = ctp / float(npos)
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return rec, prec


def ap_all_point(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC2010+ all-point AP: area under the monotone precision envelope.

    Sentinels recall 0/1 and precision 0/0 are added, the precision is made non-increasing from
    the right, and rectangles are summed where recall changes.
    """
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def ap_11_point(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC2007 11-point AP: mean over t in arange(0, 1.1, 0.1) of max precision at recall >= t."""
    ap = 0.0
    for t in VOC07_RECALL_THRESHOLDS:
        sel = rec >= t
        p = float(np.max(prec[sel])) if sel.any() else 0.0
        ap = ap + p / 11.0
    return ap
