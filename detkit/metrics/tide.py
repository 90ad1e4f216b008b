"""Error breakdown of a detector (TIDE, Bolya et al., ECCV 2020), vectorised with numpy.

Definitions are tidecv 1.0.1's (``TIDE(pos_threshold=0.5, background_threshold=0.1)``, bbox mode,
``get_main_errors`` / ``get_special_errors``), reproduced operation for operation:

* per image, detections are ranked by score (stable: ties keep input order) and cut to the first
  ``max_dets`` (100) over all classes; crowd (and VOC difficult) objects are *ignore regions*, the
  others are the ground truth;
* matching: each detection in rank order takes, among the still free objects of its class, the
  one with the highest IoU (first one on ties) when that IoU >= ``pos_thresh``: a true positive;
  an unmatched detection inside an ignore region of its class (IoU with the region's box over the
  detection's own area > ``pos_thresh``) is ignored (not in the AP, but still typed below);
* every other detection gets exactly one type, tested in this order: **Bkg** if its image has no
  object; **Loc** if its best IoU with an object of its class is in ``[bg, pos]``; **Cls** if its
  best IoU with an object of another class is >= pos; **Dupe** if its best IoU with an already
  matched object of its class is >= pos; **Bkg** if its best IoU with any object is <= bg;
  otherwise **Both**. An object that is neither matched nor the target of a Cls/Loc error
  (while free) is **Miss**;
* fixing a type recomputes the mAP: Cls/Loc errors become true positives (only the best-scored
  one per target object, and only if that object was free; the others are removed), Dupe / Bkg /
  Both errors are removed, fixing Miss removes the missed objects from the positives. dAP =
  max(fixed mAP - mAP, 0), each type fixed alone (non-progressive). Oracles: **FalsePos** scores
  every TP 1 and every FP 0; **FalseNeg** drops all unmatched objects; their dAP is not clipped;
* AP (``interpolation="coco101"``, tidecv's): per class at IoU ``pos_thresh``, precision envelope
  read at recall ``x / 100`` for x = 0..100 (first recall >= x), averaged; a class with
  detections but no object has AP 0 and stays in the mean (tidecv's rule); the mean is over the
  classes that have objects or detections. ``"voc"`` / ``"voc07"`` use the all-point / 11-point
  rules of :mod:`detkit.metrics.ap` on the same points instead.
* tie order, which moves AP when scores are equal: the unfixed mAP ranks equal scores by image
  (ground-truth order) then rank; every recomputed one puts points that came from errors before
  the true positives (tidecv rebuilds its lists that way), so even a type with no error can get a
  small dAP > 0 when scores tie; this is kept, to give tidecv's numbers.

Values are fractions (tidecv prints percent: x 100).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from detkit.errors import EvalError
from detkit.metrics.ap import ap_11_point, ap_all_point
from detkit.metrics.matching import group_pairs, segment_starts
from detkit.metrics.records import DetTable, GTTable
from detkit.metrics.tide_match import greedy_match, pair_iou, seg_argmax

ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
SPECIAL_TYPES = ("FalsePos", "FalseNeg")
# per-detection codes: 0 = true positive / not evaluated, 1.. = ERROR_TYPES[code - 1] (Miss is objects only)
CLS, LOC, BOTH, DUPE, BKG = 1, 2, 3, 4, 5
INTERPOLATIONS = ("coco101", "voc", "voc07")
_X_RANGE = np.arange(101) / 100  # tidecv: [x / 100 for x in range(101)]


@dataclass(frozen=True)
class TideResult:
    """The error breakdown (fractions of AP, not percent).

    Attributes:
        ap: tidecv's mAP at ``pos_thresh`` (before any fix).
        dap: {type: dAP} for ERROR_TYPES; special: {"FalsePos": dAP, "FalseNeg": dAP}.
        counts: {type: number of errors}.
        class_counts: (C, 6) int64 errors per class and type (detection class; Miss: object class).
        det_type: (M,) int8 per input detection: 0 true positive or cut by ``max_dets``, else the
            code of its type (CLS..BKG); det_kept: (M,) bool evaluated (within ``max_dets``);
            det_ignored: (M,) bool in an ignore region (typed, but not in the AP).
        det_tp: (M,) bool matched. gt_missed: (N,) bool objects typed Miss. gt_matched: (N,) bool.
        pos_thresh, bg_thresh, max_dets, interpolation: the settings.
    """

    ap: float
    dap: dict
    special: dict
    counts: dict
    class_counts: np.ndarray
    det_type: np.ndarray
    det_kept: np.ndarray
    det_ignored: np.ndarray
    det_tp: np.ndarray
    gt_missed: np.ndarray
    gt_matched: np.ndarray
    pos_thresh: float
    bg_thresh: float
    max_dets: int | None
    interpolation: str

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-detection arrays)."""
        def num(x):
            return None if math.isnan(x) else float(x)

        return {"ap": num(self.ap), "dap": {k: num(v) for k, v in self.dap.items()},
                "special": {k: num(v) for k, v in self.special.items()},
                "counts": {k: int(v) for k, v in self.counts.items()},
                "pos_thresh": self.pos_thresh, "bg_thresh": self.bg_thresh, "max_dets": self.max_dets,
                "interpolation": self.interpolation, "units": "AP fraction (tidecv prints percent)"}


def _class_aps(cls, correct, ngt, present, interpolation) -> float:
    """tidecv ``ClassedAPDataObject.get_mAP`` over points already in AP order (class ascending,
    then tidecv's rank: score descending, tie key); see the module docstring."""
    C = ngt.shape[0]
    bounds = np.searchsorted(cls, np.arange(C + 1))
    aps = []
    for c in np.flatnonzero(present):
        s, e = bounds[c], bounds[c + 1]
        if e == s and ngt[c] == 0:
            continue  # empty: out of the mean
        if ngt[c] == 0:
            aps.append(0.0)
            continue
        t = correct[s:e]
        ntrue = np.cumsum(t)
        prec = ntrue / np.arange(1, t.size + 1)
        rec = ntrue / ngt[c]
        if interpolation == "coco101":
            if t.size == 0:
                aps.append(0.0)
                continue
            env = np.maximum.accumulate(prec[::-1])[::-1]
            idx = np.searchsorted(rec, _X_RANGE, side="left")
            y = np.where(idx < env.size, env[np.minimum(idx, env.size - 1)], 0.0)
            aps.append(float(np.sum(y)) / 101)
        elif interpolation == "voc":
            aps.append(ap_all_point(rec, prec))
        else:
            aps.append(ap_11_point(rec, prec))
    return float(np.mean(aps)) if aps else float("nan")


def _ranked(cls, score, tiekey) -> np.ndarray:
    """Indices in AP order: class ascending, score descending, tie key ascending."""
    return np.lexsort((tiekey, -score, cls))


def tide_errors(gt: GTTable, dt: DetTable, num_classes: int, pos_thresh: float = 0.5, bg_thresh: float = 0.1,
                max_dets: int | None = 100, interpolation: str = "coco101", plus_one: bool = False) -> TideResult:
    """The TIDE error breakdown of ``dt`` against ``gt`` (module docstring has every rule).

    Args:
        gt, dt: tables (image order = ``gt.image_ids`` order, as tidecv's image order).
        num_classes: C (labels are 0..C-1).
        pos_thresh, bg_thresh: foreground / background IoU (tidecv: 0.5 / 0.1), 0 < bg <= pos <= 1.
        max_dets: detections per image (all classes) that count; None: all.
        interpolation: 'coco101' (tidecv), 'voc' (all-point), 'voc07' (11-point).
        plus_one: VOC +1 pixel IoU.
    Raises:
        EvalError: bad thresholds, interpolation or max_dets.
    """
    if not (0.0 < bg_thresh <= pos_thresh <= 1.0):
        raise EvalError(f"TIDE thresholds need 0 < background ({bg_thresh!r}) <= foreground ({pos_thresh!r}) <= 1")
    if interpolation not in INTERPOLATIONS:
        raise EvalError(f"unknown AP interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
    if max_dets is not None and int(max_dets) < 1:
        raise EvalError(f"max_dets must be >= 1 or None, got {max_dets!r}")
    C, M, N = int(num_classes), len(dt), len(gt)
    gxy, dxy = gt.xywh(), dt.xywh()
    ign = gt.iscrowd | gt.difficult
    # --- rank per image (score desc, stable), cut to max_dets: kept detections in (image, rank) order
    s0 = np.argsort(-dt.scores, kind="stable")
    order = s0[np.argsort(dt.image_index[s0], kind="stable")]
    img_o = dt.image_index[order]
    st = segment_starts(img_o)
    rank_o = np.arange(M) - np.repeat(st, np.diff(np.append(st, M)))
    kd = order[rank_o < max_dets] if max_dets is not None else order
    K = kd.size
    kimg, kcls, ksc = dt.image_index[kd], dt.labels[kd], dt.scores[kd]
    kpos = np.arange(K)  # position = (image, rank) order = tidecv's push order
    # --- pairs of kept detections with the objects (non-ignored) of their image, IoU > 0
    gsub = np.flatnonzero(~ign)
    pd_l, pg_l, pi_l = [], [], []
    for d, g in group_pairs(kimg, gt.image_index[gsub]):
        gg = gsub[g]
        iou = pair_iou(dxy[kd[d]], gxy[gg], np.zeros(d.size, bool), plus_one)
        keep = iou > 0
        pd_l.append(d[keep]); pg_l.append(gg[keep]); pi_l.append(iou[keep])
    pd = np.concatenate(pd_l) if pd_l else np.zeros(0, np.int64)
    pg = np.concatenate(pg_l) if pg_l else np.zeros(0, np.int64)
    pi = np.concatenate(pi_l) if pi_l else np.zeros(0)
    same = kcls[pd] == gt.labels[pg]
    cand = same & (pi >= pos_thresh)
    match, used = greedy_match(pd[cand], pg[cand], pi[cand], kimg * C + kcls, kpos, K, N)
    tp = match >= 0
    # --- ignore regions: unmatched detections inside a crowd/difficult object of their class
    ignored = np.zeros(K, bool)
    isub = np.flatnonzero(ign)
    un = np.flatnonzero(~tp)
    if isub.size and un.size:
        for d, g in group_pairs(kimg * C + kcls, gt.image_index[isub] * C + gt.labels[isub], un):
            gg = isub[g]
            iou = pair_iou(dxy[kd[d]], gxy[gg], np.ones(d.size, bool), plus_one)
            ignored[d[iou > pos_thresh]] = True
    # --- error types of the unmatched detections
    m_cls, f_cls = seg_argmax(pd[same], pi[same], K)
    pg_s = pg[same]
    m_non, f_non = seg_argmax(pd[~same], pi[~same], K)
    pg_n = pg[~same]
    us = same & used[pg]
    m_used, _ = seg_argmax(pd[us], pi[us], K)
    m_any = np.maximum(m_cls, m_non)
    has_gt = np.bincount(gt.image_index[gsub], minlength=len(gt.image_ids)) > 0
    etype = np.zeros(K, np.int8)
    target = np.full(K, -1, np.int64)
    rest = ~tp
    for code, cond in ((BKG, ~has_gt[kimg]), (LOC, (m_cls >= bg_thresh) & (m_cls <= pos_thresh)),
                       (CLS, m_non >= pos_thresh), (DUPE, m_used >= pos_thresh), (BKG, m_any <= bg_thresh),
                       (BOTH, np.ones(K, bool))):
        sel = rest & cond
        etype[sel] = code
        if code == LOC:
            target[sel] = pg_s[f_cls[sel]]
        elif code == CLS:
            target[sel] = pg_n[f_non[sel]]
        rest &= ~cond
    # BestGTMatch: Cls/Loc errors on a free object; the best-ranked one per object is fixable
    fixable = np.zeros(K, bool)
    usable = np.zeros(N, bool)
    cl = np.flatnonzero(((etype == CLS) | (etype == LOC)) & (target >= 0))
    cl = cl[~used[target[cl]]]
    if cl.size:
        usable[target[cl]] = True
        by = cl[np.lexsort((kpos[cl], target[cl]))]
        fixable[by[segment_starts(target[by])]] = True
    gt_missed = ~ign & ~used & ~usable
    # --- AP of the original points and of every fix
    ngt = np.bincount(gt.labels[gsub], minlength=C)[:C].astype(np.int64)
    base_pts = ~ignored
    present = (ngt > 0) | (np.bincount(kcls[base_pts], minlength=C)[:C] > 0)
    base = np.flatnonzero(~ignored)
    ob = base[_ranked(kcls[base], ksc[base], kpos[base])]
    ap0 = _class_aps(kcls[ob], tp[ob], ngt, present, interpolation)
    err = ~tp
    # rebuilt lists: error points first, then the true positives; one order serves every fix that
    # only removes points or turns them into TPs of their own class
    tkey = np.where(tp, K + kpos, kpos)
    of = _ranked(kcls, ksc, tkey)
    dap = {}
    for name, code in zip(ERROR_TYPES, (CLS, LOC, BOTH, DUPE, BKG)):
        is_t = err & (etype == code)
        fixed = is_t & fixable
        sel = (err & ~is_t & ~ignored) | tp | fixed
        if code == CLS:  # fixed points move to their object's class: rank again
            cls = kcls.copy()
            cls[fixed] = gt.labels[target[fixed]]
            ix = np.flatnonzero(sel)
            o = ix[_ranked(cls[ix], ksc[ix], tkey[ix])]
            ap = _class_aps(cls[o], (tp | fixed)[o], ngt, present, interpolation)
        else:
            o = of[sel[of]]
            ap = _class_aps(kcls[o], (tp | fixed)[o], ngt, present, interpolation)
        dap[name] = max(ap - ap0, 0.0)
    miss_c = np.bincount(gt.labels[gt_missed], minlength=C)[:C]
    orig = (err & ~ignored) | tp
    o = of[orig[of]]
    ap_miss = _class_aps(kcls[o], tp[o], ngt - miss_c, present, interpolation)
    dap["Miss"] = max(ap_miss - ap0, 0.0)
    unmatched_c = np.bincount(gt.labels[~ign & ~used], minlength=C)[:C]
    ap_fn = _class_aps(kcls[o], tp[o], ngt - unmatched_c, present, interpolation)
    # FalsePos oracle: TP scored 1, FP 0 -> per class all TPs (tie-key order) before all FPs
    o_fp = o[np.argsort(kcls[o] * 2 + (~tp[o]), kind="stable")]
    ap_fp = _class_aps(kcls[o_fp], tp[o_fp], ngt, present, interpolation)
    special = {"FalsePos": ap_fp - ap0, "FalseNeg": ap_fn - ap0}
    # --- per detection / per class outputs
    det_type = np.zeros(M, np.int8)
    det_type[kd] = etype
    det_kept = np.zeros(M, bool)
    det_kept[kd] = True
    det_ign = np.zeros(M, bool)
    det_ign[kd] = ignored
    det_tp = np.zeros(M, bool)
    det_tp[kd] = tp
    class_counts = np.zeros((C, len(ERROR_TYPES)), np.int64)
    for j, code in enumerate((CLS, LOC, BOTH, DUPE, BKG)):
        class_counts[:, j] = np.bincount(kcls[etype == code], minlength=C)[:C]
    class_counts[:, 5] = miss_c
    counts = {n: int(class_counts[:, j].sum()) for j, n in enumerate(ERROR_TYPES)}
    return TideResult(ap=ap0, dap=dap, special=special, counts=counts, class_counts=class_counts,
                      det_type=det_type, det_kept=det_kept, det_ignored=det_ign, det_tp=det_tp,
                      gt_missed=gt_missed, gt_matched=used, pos_thresh=float(pos_thresh),
                      bg_thresh=float(bg_thresh), max_dets=None if max_dets is None else int(max_dets),
                      interpolation=interpolation)
