"""Evaluation results: per-class rows, PR curves, the headline number, and their text/JSON forms."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ClassResult:
    """One class's numbers.

    Attributes:
        name: class name. ap: the class AP (VOC AP at the IoU threshold, or COCO AP@[.5:.95]);
            NaN when the class has no (non-ignored) ground truth.
        tp, fp, fn: counted among the detections with score >= the confidence threshold (VOC
            rules, or COCO rules at the chosen IoU threshold, area 'all', 100 detections/image).
        precision, recall, f1: from those counts (precision 0 without detections; recall and F1
            NaN without ground truth).
        n_gt: ground-truth objects that count (VOC: non-difficult; COCO: non-crowd, non-ignored).
        n_det: detections of the class with score >= the confidence threshold.
        ap50, ap75: COCO only, the class's AP at IoU .50 and .75 (NaN for VOC).
    """

    name: str
    ap: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    n_gt: int
    n_det: int
    ap50: float = float("nan")
    ap75: float = float("nan")


@dataclass(frozen=True)
class PRCurve:
    """A class's precision/recall curve.

    VOC: one point per ranked (non-ignored) detection, with its score. COCO: the 101-point
    interpolated precision at the report's IoU threshold (``scores`` empty).
    """

    name: str
    recall: np.ndarray
    precision: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class EvalReport:
    """Everything an evaluation produced.

    Attributes:
        metric: 'voc' | 'voc07' | 'coco'. map: the headline (VOC mAP over classes with ground
            truth, or COCO AP@[.5:.95] = ``stats[0]``).
        classes: per-class rows, in class-index order. stats: the 12 COCO numbers (empty for VOC).
        stat_names: their names. pr_curves: one per class. convention: human-readable rules used.
        iou_threshold, conf_threshold: the thresholds of the counts (and of VOC AP).
        n_images: images in the ground truth. n_detections: detections evaluated.
        extra: metric internals; ``det_flags`` = (indices of the detections the metric scored, in
            its order; their TP flags; their FP flags at the report's IoU; neither = ignored).
    """

    metric: str
    map: float
    classes: tuple[ClassResult, ...]
    stats: tuple[float, ...]
    stat_names: tuple[str, ...]
    pr_curves: tuple[PRCurve, ...]
    convention: str
    iou_threshold: float
    conf_threshold: float
    n_images: int
    n_detections: int
    extra: dict = field(default_factory=dict)

    def to_dict(self, with_curves: bool = False) -> dict:
        """JSON-ready dict (NaN -> None). ``with_curves`` adds the PR points."""
        def num(x):
            if x is None:
                return None
            x = float(x)
            return None if math.isnan(x) else x

        out = {
            "metric": self.metric,
            "map": num(self.map),
            "convention": self.convention,
            "iou_threshold": self.iou_threshold,
            "conf_threshold": self.conf_threshold,
            "n_images": self.n_images,
            "n_detections": self.n_detections,
            "classes": [
                {"name": c.name, "ap": num(c.ap), "tp": c.tp, "fp": c.fp, "fn": c.fn,
                 "precision": num(c.precision), "recall": num(c.recall), "f1": num(c.f1),
                 "n_gt": c.n_gt, "n_det": c.n_det,
                 **({"ap50": num(c.ap50), "ap75": num(c.ap75)} if self.metric == "coco" else {})}
                for c in self.classes
            ],
        }
        if self.stats:
            out["stats"] = [float(s) for s in self.stats]
            out["stat_names"] = list(self.stat_names)
        if with_curves:
            out["pr_curves"] = [{"name": c.name, "recall": c.recall.tolist(), "precision": c.precision.tolist(),
                                 "scores": c.scores.tolist()} for c in self.pr_curves]
        return out

    def format_table(self) -> str:
        """The per-class table with a header naming the convention, and the mean/summary."""
        lines = [f"# {line}" for line in self.convention.splitlines()]
        name_w = max([5] + [len(c.name) for c in self.classes])
        ap_lbl = "AP" if self.metric != "coco" else "AP@[.5:.95]"
        hdr = (f"{'class':<{name_w}} {'GT':>7} {'dets':>8} {'TP':>7} {'FP':>8} {'FN':>7} "
               f"{'P':>6} {'R':>6} {'F1':>6} {ap_lbl:>11}")
        lines += [hdr, "-" * len(hdr)]

        def f(x, w=6, d=3):
            return f"{'-':>{w}}" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:>{w}.{d}f}"

        for c in self.classes:
            lines.append(f"{c.name:<{name_w}} {c.n_gt:>7d} {c.n_det:>8d} {c.tp:>7d} {c.fp:>8d} {c.fn:>7d} "
                         f"{f(c.precision)} {f(c.recall)} {f(c.f1)} {f(c.ap, 11, 4)}")
        lines.append("-" * len(hdr))
        tp = sum(c.tp for c in self.classes)
        fp = sum(c.fp for c in self.classes)
        fn = sum(c.fn for c in self.classes)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * p * r / (p + r) if (p + r) > 0 else (float("nan") if math.isnan(r) else 0.0)
        mean_lbl = "mAP" if self.metric != "coco" else "mAP@[.5:.95]"
        lines.append(f"{'all':<{name_w}} {sum(c.n_gt for c in self.classes):>7d} "
                     f"{sum(c.n_det for c in self.classes):>8d} {tp:>7d} {fp:>8d} {fn:>7d} "
                     f"{f(p)} {f(r)} {f(f1)} {f(self.map, 11, 4)}")
        lines.append(f"{mean_lbl} = {self.map:.4f}" if not math.isnan(self.map) else f"{mean_lbl} = n/a (no ground truth)")
        if self.stats:
            for n, s in zip(self.stat_names, self.stats):
                lines.append(f"  {n:<6} = {s:.6f}")
        return "\n".join(lines)
