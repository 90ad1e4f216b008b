"""``evaluate``: one entry point for VOC (all-point / 11-point) and COCO evaluation."""
from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np

from detkit.errors import EvalError
from detkit.metrics.ap import ap_11_point, ap_all_point, pr_from_flags
from detkit.metrics.coco import IOU_THRS, REC_THRS, STAT_NAMES, coco_evaluate
from detkit.metrics.records import DetTable, GTTable, ImageDets, ImageGT, tables_from_images
from detkit.metrics.report import ClassResult, EvalReport, PRCurve
from detkit.metrics.voc import voc_match

Metric = Literal["voc", "voc07", "coco"]
METRICS = ("voc", "voc07", "coco")


def _validate(gt: GTTable, dt: DetTable, num_classes: int) -> None:
    for what, t in (("ground-truth", gt), ("detection", dt)):
        if len(t) == 0:
            continue
        bad = ~np.isfinite(t.boxes).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise EvalError(f"{what} box {i} is not finite: {t.boxes[i].tolist()}")
        lab = t.labels
        out = (lab < 0) | (lab >= num_classes)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise EvalError(f"{what} {i}: class index {int(lab[i])} outside 0..{num_classes - 1}")
    if len(dt) and (dt.image_index.min() < 0 or dt.image_index.max() >= len(gt.image_ids)):
        raise EvalError("detection image_index out of range of the ground-truth images")
    if gt.area is not None and len(gt) and not np.isfinite(gt.area).all():
        raise EvalError("ground-truth area is not finite")


def _sorted_images(gt: GTTable, dt: DetTable) -> tuple[GTTable, DetTable]:
    """Reorder images by ascending id (pycocotools evaluates images in ``np.unique`` order)."""
    ids = gt.image_ids
    try:
        perm = sorted(range(len(ids)), key=lambda i: ids[i])
    except TypeError:  # mixed id types: keep the given order
        return gt, dt
    if perm == list(range(len(ids))):
        return gt, dt
    new_of_old = np.empty(len(ids), np.int64)
    new_of_old[np.asarray(perm, np.int64)] = np.arange(len(ids))
    gt2 = GTTable(image_ids=tuple(ids[i] for i in perm), image_index=new_of_old[gt.image_index], boxes=gt.boxes,
                  labels=gt.labels, difficult=gt.difficult, iscrowd=gt.iscrowd, area=gt.area, ann_ids=gt.ann_ids,
                  box_format=gt.box_format)
    dt2 = DetTable(image_index=new_of_old[dt.image_index], boxes=dt.boxes, scores=dt.scores, labels=dt.labels,
                   box_format=dt.box_format)
    return gt2, dt2


def convention_text(metric: str, iou_threshold: float, conf_threshold: float, plus_one: bool, iou_rule: str) -> str:
    """Human-readable statement of every rule the numbers depend on."""
    if metric == "coco":
        return "\n".join([
            "metric: COCO bbox (pycocotools COCOeval rules): AP averaged over IoU .50:.05:.95 and 101 recall "
            "points, area ranges on the GT 'area' field, maxDets 1/10/100",
            "IoU: no +1 pixel; crowd regions use the detection's area as union and can absorb many detections; "
            "IoU >= t; ties in score keep input order (stable sort)",
            "ignored: crowd and out-of-range objects (and VOC 'difficult' ones); annotation id 0 never counts as "
            "matched (as in pycocotools)",
            "class without ground truth: AP -1 in pycocotools, shown as '-' here, excluded from the means",
            f"counts (TP/FP/FN): detections with score >= {conf_threshold:g}, COCO matching at IoU {iou_threshold:g}, "
            "area all, 100 detections per image",
        ])
    interp = "all-point (VOC2010+ devkit)" if metric == "voc" else "11-point (VOC2007, thresholds numpy.arange(0, 1.1, 0.1))"
    rule = "IoU >= threshold (devkit)" if iou_rule == ">=" else "IoU > threshold (py-faster-rcnn)"
    return "\n".join([
        f"metric: Pascal VOC AP at IoU {iou_threshold:g}, {interp}",
        f"matching: greedy by score (stable sort), single best-IoU object, duplicates FP; {rule}; "
        + ("+1 pixel IoU (w = x2 - x1 + 1, VOC integer pixels)" if plus_one else "no +1 pixel in IoU"),
        "difficult objects: ignored (matching one is neither TP nor FP; not counted in GT)",
        "class without ground truth: AP undefined ('-'/null), excluded from mAP; its detections count as FP",
        f"counts (TP/FP/FN): detections with score >= {conf_threshold:g}",
    ])


def _f1(p: float, r: float) -> float:
    if math.isnan(r):
        return float("nan")
    return 2 * p * r / (p + r) if (p + r) > 0 else 0.0


def evaluate(ground_truth: Sequence[ImageGT] | GTTable, detections: Sequence[ImageDets] | DetTable,
             class_names: Sequence[str], metric: Metric = "voc", iou_threshold: float = 0.5,
             conf_threshold: float = 0.25, plus_one: bool = False,
             iou_rule: Literal[">=", ">"] = ">=") -> EvalReport:
    """Score detections against ground truth.

    Args:
        ground_truth: one :class:`ImageGT` per image (images without objects included: they make
            their detections false positives), or a :class:`GTTable`.
        detections: :class:`ImageDets` (image ids must exist in the ground truth) or a
            :class:`DetTable`.
        class_names: names of class indices ``0..C-1``.
        metric: 'voc' (all-point AP at ``iou_threshold``), 'voc07' (11-point), 'coco' (12 stats).
        iou_threshold: VOC matching threshold; for COCO the IoU of the TP/FP/FN counts (one of
            0.50, 0.55, ..., 0.95).
        conf_threshold: score threshold of the TP/FP/FN counts (AP always uses every detection).
        plus_one: VOC +1 pixel IoU (ground truth from VOC XML integer pixels). Ignored by COCO.
        iou_rule: '>=' (devkit) or '>' (py-faster-rcnn). COCO always uses '>='.
    Returns:
        :class:`EvalReport`.
    Raises:
        EvalError: unknown metric/rule, bad thresholds, labels out of range, non-finite values,
            detections on unknown images.
    """
    if metric not in METRICS:
        raise EvalError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if iou_rule not in (">=", ">"):
        raise EvalError(f"unknown IoU rule {iou_rule!r}; valid: '>=', '>'")
    if not (0.0 < float(iou_threshold) <= 1.0):
        raise EvalError(f"IoU threshold must be in (0, 1], got {iou_threshold!r}")
    if math.isnan(float(conf_threshold)):
        raise EvalError(f"confidence threshold must be a number, got {conf_threshold!r}")
    names = [str(n) for n in class_names]
    C = len(names)
    gt = ground_truth if isinstance(ground_truth, GTTable) else None
    dt = detections if isinstance(detections, DetTable) else None
    if gt is None or dt is None:
        if gt is not None or dt is not None:
            raise EvalError("pass both ground truth and detections as tables, or both as per-image lists")
        gt, dt = tables_from_images(list(ground_truth), list(detections))  # type: ignore[arg-type]
    _validate(gt, dt, C)
    conv = convention_text(metric, float(iou_threshold), float(conf_threshold), plus_one, iou_rule)
    if metric == "coco":
        return _evaluate_coco(gt, dt, names, float(iou_threshold), float(conf_threshold), conv)
    return _evaluate_voc(gt, dt, names, metric, float(iou_threshold), float(conf_threshold), plus_one, iou_rule, conv)


def _evaluate_voc(gt: GTTable, dt: DetTable, names: list[str], metric: str, iou: float, conf: float,
                  plus_one: bool, iou_rule: str, conv: str) -> EvalReport:
    C = len(names)
    vm = voc_match(gt, dt, C, iou, plus_one, iou_rule)
    ap_fn = ap_all_point if metric == "voc" else ap_11_point
    rows, curves, aps = [], [], []
    for c in range(C):
        s, e = vm.class_start[c], vm.class_start[c + 1]
        keep = ~vm.ignored[s:e]
        tp, fp, sc = vm.tp[s:e][keep], vm.fp[s:e][keep], vm.scores[s:e][keep]
        npos = int(vm.npos[c])
        if npos > 0:
            rec, prec = pr_from_flags(tp, fp, npos)
            ap = ap_fn(rec, prec)
            aps.append(ap)
        else:
            rec = np.full(tp.shape, np.nan)
            prec = np.cumsum(tp) / np.maximum(np.arange(1, tp.size + 1), 1)
            ap = float("nan")
        above = vm.scores[s:e] >= conf
        n_tp = int(np.count_nonzero(vm.tp[s:e] & above))
        n_fp = int(np.count_nonzero(vm.fp[s:e] & above))
        p = n_tp / (n_tp + n_fp) if n_tp + n_fp else 0.0
        r = n_tp / npos if npos else float("nan")
        rows.append(ClassResult(name=names[c], ap=ap, tp=n_tp, fp=n_fp, fn=npos - n_tp, precision=p, recall=r,
                                f1=_f1(p, r), n_gt=npos, n_det=int(np.count_nonzero(above))))
        curves.append(PRCurve(name=names[c], recall=rec, precision=prec, scores=sc))
    m = float(np.mean(aps)) if aps else float("nan")
    return EvalReport(metric=metric, map=m, classes=tuple(rows), stats=(), stat_names=(), pr_curves=tuple(curves),
                      convention=conv, iou_threshold=iou, conf_threshold=conf, n_images=len(gt.image_ids),
                      n_detections=len(dt), extra={"plus_one": plus_one, "iou_rule": iou_rule,
                                                   "det_flags": (vm.order, vm.tp, vm.fp)})


def _evaluate_coco(gt: GTTable, dt: DetTable, names: list[str], iou: float, conf: float, conv: str) -> EvalReport:
    C = len(names)
    t_hit = np.flatnonzero(np.isclose(IOU_THRS, iou, rtol=0, atol=1e-9))
    if t_hit.size == 0:
        raise EvalError(f"COCO counts need an IoU threshold among 0.50, 0.55, ..., 0.95; got {iou!r}")
    t = int(t_hit[0])
    gt, dt = _sorted_images(gt, dt)
    res = coco_evaluate(gt, dt, C)
    lab = dt.labels[res.det_order]
    above = dt.scores[res.det_order] >= conf
    tp_c = np.bincount(lab[above & res.det_tp[t]], minlength=C)[:C]
    fp_c = np.bincount(lab[above & res.det_fp[t]], minlength=C)[:C]
    ndet = np.bincount(dt.labels[dt.scores >= conf], minlength=C)[:C]
    t50 = int(np.flatnonzero(IOU_THRS == .5)[0])
    t75 = int(np.flatnonzero(IOU_THRS == .75)[0])

    def mean_valid(x: np.ndarray) -> float:
        v = x[x > -1]
        return float(np.mean(v)) if v.size else float("nan")

    rows, curves = [], []
    for c in range(C):
        npig = int(res.npig[c, 0])
        n_tp, n_fp = int(tp_c[c]), int(fp_c[c])
        p = n_tp / (n_tp + n_fp) if n_tp + n_fp else 0.0
        r = n_tp / npig if npig else float("nan")
        rows.append(ClassResult(name=names[c], ap=mean_valid(res.precision[:, :, c, 0]), tp=n_tp, fp=n_fp,
                                fn=npig - n_tp, precision=p, recall=r, f1=_f1(p, r), n_gt=npig, n_det=int(ndet[c]),
                                ap50=mean_valid(res.precision[t50, :, c, 0]),
                                ap75=mean_valid(res.precision[t75, :, c, 0])))
        pc = res.precision[t, :, c, 0]
        curves.append(PRCurve(name=names[c], recall=REC_THRS.copy(),
                              precision=pc if npig else np.full(REC_THRS.shape, np.nan), scores=np.zeros(0)))
    return EvalReport(metric="coco", map=float(res.stats[0]), classes=tuple(rows),
                      stats=tuple(float(s) for s in res.stats), stat_names=STAT_NAMES, pr_curves=tuple(curves),
                      convention=conv, iou_threshold=iou, conf_threshold=conf, n_images=len(gt.image_ids),
                      n_detections=len(dt), extra={"precision": res.precision, "recall": res.recall,
                                                   "det_flags": (res.det_order, res.det_tp[t], res.det_fp[t])})
