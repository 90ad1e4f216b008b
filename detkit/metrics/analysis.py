"""``analyze``: everything beyond the per-class table, from an :class:`EvalReport` and its tables.

* the TIDE error breakdown (:mod:`detkit.metrics.tide`): for ``coco`` exactly tidecv's settings
  (foreground IoU 0.5, background 0.1, 100 detections per image, 101-point AP); for ``voc`` /
  ``voc07`` the same rules at the report's IoU with the VOC AP (all-point / 11-point), the +1
  pixel IoU when the report used it, and no per-image cap (VOC has none);
* P/R/F1 versus confidence and the F1-optimal threshold (:mod:`detkit.metrics.thresholds`), from
  the metric's own TP/FP flags;
* per-image TP/FP/FN and error types (:mod:`detkit.metrics.per_image`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from detkit.errors import EvalError
from detkit.metrics.per_image import PerImageResult, per_image_results
from detkit.metrics.records import DetTable, GTTable
from detkit.metrics.report import EvalReport
from detkit.metrics.thresholds import ThresholdResult, threshold_analysis
from detkit.metrics.tide import ERROR_TYPES, SPECIAL_TYPES, TideResult, tide_errors


@dataclass(frozen=True)
class Analysis:
    """Error breakdown, threshold curves and per-image results of one evaluation.

    ``det_tp`` / ``det_fp``: (M,) bool metric flags per input detection (for drawing).
    """

    errors: TideResult
    thresholds: ThresholdResult
    per_image: PerImageResult
    det_tp: np.ndarray
    det_fp: np.ndarray

    def to_dict(self, with_curves: bool = True) -> dict:
        """The JSON keys ``errors`` and ``best_f1`` (with per-class curves)."""
        errors = self.errors.to_dict()
        errors["classes"] = [{"name": b.name, **{t: int(n) for t, n in zip(ERROR_TYPES, row)}}
                             for b, row in zip(self.thresholds.best, self.errors.class_counts)]
        return {"errors": errors, "best_f1": self.thresholds.to_dict(with_curves)}

    def format_errors(self) -> str:
        """tidecv-style summary: dAP per main error type and of the two oracles (percent points)."""
        e = self.errors
        lines = [f"# error breakdown (TIDE): dAP = AP gained by fixing each error type alone, in AP points "
                 f"(x100); foreground IoU {e.pos_thresh:g}, background IoU {e.bg_thresh:g}, "
                 f"{'all' if e.max_dets is None else e.max_dets} detections per image, AP: {e.interpolation}",
                 f"TIDE AP = {100 * e.ap:.2f}" if not math.isnan(e.ap) else "TIDE AP = n/a"]
        w = 9
        lines.append("type     " + "".join(f"{t:>{w}}" for t in ERROR_TYPES) + " |" +
                     "".join(f"{t:>{w + 1}}" for t in SPECIAL_TYPES))
        lines.append(" dAP     " + "".join(f"{100 * e.dap[t]:>{w}.2f}" for t in ERROR_TYPES) + " |" +
                     "".join(f"{100 * e.special[t]:>{w + 1}.2f}" for t in SPECIAL_TYPES))
        lines.append(" count   " + "".join(f"{e.counts[t]:>{w}d}" for t in ERROR_TYPES))
        return "\n".join(lines)


def full_flags(report: EvalReport, n_det: int) -> tuple[np.ndarray, np.ndarray]:
    """(M,) TP and FP flags per input detection from ``report.extra['det_flags']``."""
    flags = report.extra.get("det_flags")
    if flags is None:
        raise EvalError("this report carries no per-detection flags (made by detkit.metrics.evaluate?)")
    idx, tp_o, fp_o = flags
    tp = np.zeros(n_det, bool)
    fp = np.zeros(n_det, bool)
    tp[idx] = tp_o
    fp[idx] = fp_o
    return tp, fp


def analyze(report: EvalReport, gt: GTTable, dt: DetTable, class_names: list[str],
            plus_one: bool | None = None) -> Analysis:
    """Error breakdown, thresholds and per-image results for ``report`` (module docstring).

    Args:
        report: the result of :func:`detkit.metrics.evaluate` on ``gt`` / ``dt``.
        gt, dt: the tables that were scored (same coordinate space).
        class_names: the report's classes. plus_one: defaults to the report's VOC setting.
    """
    if len(class_names) != len(report.classes):
        raise EvalError(f"{len(class_names)} class names for a report of {len(report.classes)} classes")
    C = len(class_names)
    tp, fp = full_flags(report, len(dt))
    if report.metric == "coco":
        errors = tide_errors(gt, dt, C, pos_thresh=0.5, bg_thresh=0.1, max_dets=100, interpolation="coco101")
        counted = ~(gt.iscrowd | gt.difficult)
    else:
        po = bool(report.extra.get("plus_one", False)) if plus_one is None else bool(plus_one)
        errors = tide_errors(gt, dt, C, pos_thresh=report.iou_threshold, bg_thresh=min(0.1, report.iou_threshold),
                             max_dets=None, interpolation=report.metric, plus_one=po)
        counted = ~gt.difficult
    scored = tp | fp
    thr = threshold_analysis(dt.scores[scored], dt.labels[scored], tp[scored], fp[scored],
                             np.array([c.n_gt for c in report.classes], np.int64), list(class_names))
    per_img = per_image_results(gt.image_ids, gt.image_index, counted, dt.image_index, dt.scores, tp, fp,
                                report.conf_threshold, errors)
    return Analysis(errors=errors, thresholds=thr, per_image=per_img, det_tp=tp, det_fp=fp)
