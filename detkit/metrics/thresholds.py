"""Precision, recall and F1 as functions of the confidence threshold, and the F1-optimal threshold.

At a threshold ``s`` the detections with score >= ``s`` count (as ``--conf s`` does), with the
metric's own TP/FP flags (VOC devkit matching, or COCO matching at the report's IoU, area 'all',
100 detections per image); ignored detections count as neither. FN = positives - TP,
P = TP / (TP + FP), R = TP / positives, F1 = 2PR / (P + R) — the same arithmetic as the per-class
table, so the best-F1 row equals the table of a run with ``--conf`` set to that threshold.

The best threshold is searched over every distinct score of a TP or FP (F1 only changes there);
on equal F1 the highest threshold wins (fewer detections to deploy). "overall" pools all classes
(micro: summed TP/FP, all positives). Curves are sampled on 101 thresholds from 0 to 1 (or over the
score range when scores leave [0, 1]); precision is NaN where no detection counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from detkit.errors import EvalError


@dataclass(frozen=True)
class BestF1:
    """The F1-optimal confidence of one class (or 'overall') and the counts at it.

    ``conf`` is None when nothing can be chosen (no TP/FP detection, or no positives).
    """

    name: str
    conf: float | None
    f1: float
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int

    def to_dict(self) -> dict:
        def num(x):
            return None if x is None or math.isnan(x) else float(x)

        return {"name": self.name, "conf": num(self.conf), "f1": num(self.f1), "precision": num(self.precision),
                "recall": num(self.recall), "tp": self.tp, "fp": self.fp, "fn": self.fn}


@dataclass(frozen=True)
class ThresholdCurve:
    """P, R, F1 (and TP/FP counts) at each sampled confidence ``conf`` (G,)."""

    name: str
    conf: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    tp: np.ndarray
    fp: np.ndarray

    def to_dict(self) -> dict:
        def arr(a):
            return [None if math.isnan(v) else float(v) for v in np.asarray(a, np.float64)]

        return {"name": self.name, "conf": arr(self.conf), "precision": arr(self.precision),
                "recall": arr(self.recall), "f1": arr(self.f1), "tp": self.tp.tolist(), "fp": self.fp.tolist()}


@dataclass(frozen=True)
class ThresholdResult:
    """Per-class and overall best F1 and curves (class-index order)."""

    best: tuple[BestF1, ...]
    overall: BestF1
    curves: tuple[ThresholdCurve, ...]
    overall_curve: ThresholdCurve

    def to_dict(self, with_curves: bool = True) -> dict:
        out = {"overall": self.overall.to_dict(), "classes": [b.to_dict() for b in self.best]}
        if with_curves:
            out["curves"] = [c.to_dict() for c in self.curves]
            out["overall_curve"] = self.overall_curve.to_dict()
        return out

    def format_table(self) -> str:
        """Best-F1 lines: the confidence to deploy with and the counts there."""
        name_w = max([7] + [len(b.name) for b in self.best])
        hdr = f"{'class':<{name_w}} {'best conf':>9} {'F1':>6} {'P':>6} {'R':>6} {'TP':>7} {'FP':>8} {'FN':>7}"
        lines = ["# best F1: the confidence threshold (--conf) that maximises F1, and the counts at it", hdr,
                 "-" * len(hdr)]

        def f(x, w=6, d=3):
            return f"{'-':>{w}}" if x is None or math.isnan(x) else f"{x:>{w}.{d}f}"

        for b in list(self.best) + [self.overall]:
            lines.append(f"{b.name:<{name_w}} {f(b.conf, 9, 4)} {f(b.f1)} {f(b.precision)} {f(b.recall)} "
                         f"{b.tp:>7d} {b.fp:>8d} {b.fn:>7d}")
        return "\n".join(lines)


def _prf(tp, fp, npos):
    tp = np.asarray(tp, np.float64)
    fp = np.asarray(fp, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        r = tp / npos if npos > 0 else np.full(tp.shape, np.nan)
        f1 = np.where(np.nan_to_num(p) + np.nan_to_num(r) > 0, 2 * p * r / (p + r), 0.0)
    f1 = np.where(np.isnan(r), np.nan, np.nan_to_num(f1))
    return p, r, f1


def _best(name: str, scores: np.ndarray, tp: np.ndarray, fp: np.ndarray, npos: int) -> BestF1:
    sel = tp | fp
    s, t = scores[sel], tp[sel]
    if s.size == 0 or npos <= 0:
        return BestF1(name, None, 0.0 if npos > 0 else float("nan"), float("nan"), 0.0 if npos > 0 else float("nan"),
                      0, 0, int(npos))
    o = np.argsort(-s, kind="stable")
    s, t = s[o], t[o]
    ctp = np.cumsum(t)
    cfp = np.arange(1, s.size + 1) - ctp
    last = np.append(np.flatnonzero(s[1:] != s[:-1]), s.size - 1)  # end of each tie block
    p, r, f1 = _prf(ctp[last], cfp[last], npos)
    k = int(np.argmax(f1))  # first maximum = highest threshold
    n_tp, n_fp = int(ctp[last[k]]), int(cfp[last[k]])
    return BestF1(name, float(s[last[k]]), float(f1[k]), float(p[k]), float(r[k]), n_tp, n_fp, int(npos) - n_tp)


def _curve(name: str, grid: np.ndarray, scores: np.ndarray, tp: np.ndarray, fp: np.ndarray, npos: int) -> ThresholdCurve:
    s_tp = np.sort(scores[tp])
    s_fp = np.sort(scores[fp])
    n_tp = s_tp.size - np.searchsorted(s_tp, grid, side="left")  # score >= g
    n_fp = s_fp.size - np.searchsorted(s_fp, grid, side="left")
    p, r, f1 = _prf(n_tp, n_fp, npos)
    return ThresholdCurve(name, grid, p, r, f1, n_tp.astype(np.int64), n_fp.astype(np.int64))


def threshold_analysis(scores: np.ndarray, labels: np.ndarray, tp: np.ndarray, fp: np.ndarray,
                       n_pos: np.ndarray, class_names: list[str], n_grid: int = 101) -> ThresholdResult:
    """P/R/F1 versus confidence from per-detection flags (module docstring).

    Args:
        scores, labels: (D,) of the detections the metric scored. tp, fp: (D,) bool flags.
        n_pos: (C,) positives per class (the table's GT column). class_names: C names.
        n_grid: samples of each curve.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, np.int64)
    tp = np.asarray(tp, bool)
    fp = np.asarray(fp, bool)
    n_pos = np.asarray(n_pos, np.int64)
    if not (scores.shape == labels.shape == tp.shape == fp.shape) or (tp & fp).any():
        raise EvalError("threshold analysis: scores, labels, tp and fp must be equally long, tp and fp disjoint")
    if n_grid < 2:
        raise EvalError(f"n_grid must be >= 2, got {n_grid!r}")
    lo = min(0.0, float(scores.min())) if scores.size else 0.0
    hi = max(1.0, float(scores.max())) if scores.size else 1.0
    grid = np.linspace(lo, hi, n_grid)
    best, curves = [], []
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(len(class_names) + 1))
    for c, name in enumerate(class_names):
        ix = order[bounds[c]:bounds[c + 1]]
        best.append(_best(name, scores[ix], tp[ix], fp[ix], int(n_pos[c])))
        curves.append(_curve(name, grid, scores[ix], tp[ix], fp[ix], int(n_pos[c])))
    total = int(n_pos.sum())
    return ThresholdResult(best=tuple(best), overall=_best("overall", scores, tp, fp, total), curves=tuple(curves),
                           overall_curve=_curve("overall", grid, scores, tp, fp, total))
