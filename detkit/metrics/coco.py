"""COCO bbox evaluation that reproduces pycocotools ``COCOeval(iouType='bbox')`` exactly, vectorised.

What pycocotools does (cocoeval.py, maskApi.c ``bbIou``) and how it is reproduced here:

* Per (image, category): detections sorted by score with a stable sort and cut to the last
  ``maxDets`` (100); objects keep their file order, "ignored" ones (crowd or area out of range)
  after the others. IoU has no +1; with a crowd object the union is the detection's area.
* Greedy per IoU threshold: each detection, in score order, takes among the objects still free
  (crowd objects are never used up) and with IoU >= t the one with the highest IoU (on ties the
  last one in object order, because the reference loop replaces on equality), preferring
  non-ignored objects; matching an ignored object makes the detection ignored; an unmatched
  detection whose own area (``w*h``) is out of range is ignored.
* The reference stores the matched *annotation id* and tests it for truth, so a detection matched
  to an object with ``id == 0`` counts as a false positive (and the object as missed); this is
  reproduced when the table carries ``ann_ids``.
* Accumulation: per category, the detections of all images (images in ascending id order, each
  cut to maxDet) are merged by score with a stable sort; precision at the 101 recall thresholds is
  the right-to-left max envelope at the first index whose recall >= threshold (0 beyond the last
  recall); categories without non-ignored objects get -1 and drop out of the means.

The greedy matching is sequential only within one (image, category) group, so it runs in rounds:
round r handles the r-th candidate detection of every group at once, for all 4 area ranges x 10
IoU thresholds at once. Only pairs with IoU >= the lowest threshold can ever match, so only those
are kept. The precision envelope at recall thresholds is a suffix maximum, computed with one
``reduceat`` per area range over all (threshold, category) runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detkit.metrics.matching import group_pairs, segment_starts
from detkit.metrics.records import DetTable, GTTable

# Exactly pycocotools Params.setDetParams (np.linspace: element 8 is 0.8999999999999999).
IOU_THRS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
REC_THRS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RNG = ((0 ** 2, 1e5 ** 2), (0 ** 2, 32 ** 2), (32 ** 2, 96 ** 2), (96 ** 2, 1e5 ** 2))
AREA_LBL = ("all", "small", "medium", "large")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass(frozen=True)
class CocoResult:
    """Accumulated COCO evaluation.

    Attributes:
        precision: (T, R, K, A) interpolated precision at ``maxDets[-1]``; -1 where a category has
            no non-ignored object in that area range.
        recall: (T, K, A, M) final recall; -1 likewise.
        stats: (12,) the summary numbers in pycocotools order (see ``STAT_NAMES``).
        npig: (K, A) number of non-ignored objects per category and area range.
        det_order: (D,) indices of the kept detections (rank < maxDets[-1] in their group) in
            evaluation order: category ascending, score descending, image ascending, input order.
        det_tp, det_fp: (T, D) bool flags at area 'all' for the detections in ``det_order``
            (both False: ignored).
    """

    precision: np.ndarray
    recall: np.ndarray
    stats: np.ndarray
    npig: np.ndarray
    det_order: np.ndarray
    det_tp: np.ndarray
    det_fp: np.ndarray


def coco_pair_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """maskApi.c ``bbIou`` on paired xywh boxes (same operations, same order): (P,) float64."""
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    i = w * h
    da = d[:, 2] * d[:, 3]
    u = np.where(crowd, da, da + g[:, 2] * g[:, 3] - i)
    ok = (w > 0) & (h > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        o = i / u
    return np.where(ok, o, 0.0)


def _summarize(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """The 12 stats exactly as COCOeval.summarize builds them (same slicing, same np.mean)."""
    def one(ap: bool, iou_thr=None, area="all", max_dets=100) -> float:
        a = AREA_LBL.index(area)
        m = MAX_DETS.index(max_dets)
        if ap:
            s = precision  # (T, R, K, A) at maxDets[-1]
            if iou_thr is not None:
                s = s[np.where(iou_thr == IOU_THRS)[0]]
            s = s[:, :, :, a]
        else:
            s = recall
            if iou_thr is not None:
                s = s[np.where(iou_thr == IOU_THRS)[0]]
            s = s[:, :, a, m]
        sel = s[s > -1]
        return -1.0 if sel.size == 0 else float(np.mean(sel))

    return np.array([
        one(True), one(True, .5), one(True, .75),
        one(True, area="small"), one(True, area="medium"), one(True, area="large"),
        one(False, max_dets=1), one(False, max_dets=10), one(False, max_dets=100),
        one(False, area="small"), one(False, area="medium"), one(False, area="large"),
    ])


def coco_evaluate(gt: GTTable, dt: DetTable, num_classes: int) -> CocoResult:
    """Evaluate detections against ground truth with pycocotools' bbox rules (module docstring).

    Image order is the ground truth's ``image_ids`` order (pycocotools sorts image ids; readers
    give them sorted); categories are ``0..num_classes-1`` (pycocotools: sorted category ids).
    Difficult objects (VOC ground truth) are treated as ignored, non-crowd objects.
    """
    K = int(num_classes)
    T, R, A, M = len(IOU_THRS), len(REC_THRS), len(AREA_RNG), len(MAX_DETS)
    max_det = MAX_DETS[-1]
    gb, db = gt.xywh(), dt.xywh()
    n_gt, n_dt = len(gt), len(dt)
    crowd = gt.iscrowd
    g_area = gt.area if gt.area is not None else gb[:, 2] * gb[:, 3]
    d_area = db[:, 2] * db[:, 3]
    lo = np.array([r[0] for r in AREA_RNG])[:, None]
    hi = np.array([r[1] for r in AREA_RNG])[:, None]
    g_ig = crowd[None, :] | gt.difficult[None, :] | (g_area[None, :] < lo) | (g_area[None, :] > hi)  # (A, N)
    d_out = (d_area[None, :] < lo) | (d_area[None, :] > hi)  # (A, M)
    g_zero = gt.ann_ids == 0 if gt.ann_ids is not None else np.zeros(n_gt, bool)

    # --- rank detections inside their (image, category) group; keep rank < maxDets[-1]
    dkey = dt.image_index * K + dt.labels
    gkey = gt.image_index * K + gt.labels
    grp_order = np.lexsort((np.arange(n_dt), -dt.scores, dkey))
    gstarts = segment_starts(dkey[grp_order])
    glens = np.diff(np.append(gstarts, n_dt))
    rank_sorted = np.arange(n_dt) - np.repeat(gstarts, glens)
    rank = np.empty(n_dt, np.int64)
    rank[grp_order] = rank_sorted
    kept_sorted = grp_order[rank_sorted < max_det]  # grouped, score order within group

    # --- candidate pairs (IoU >= lowest threshold): the only pairs that can ever match
    thr = np.minimum(IOU_THRS, 1 - 1e-10)
    thr_min = thr.min()
    pd_parts, pg_parts, pi_parts = [], [], []
    for d, g in group_pairs(dkey, gkey, kept_sorted):
        iou = coco_pair_iou(db[d], gb[g], crowd[g])
        keep = iou >= thr_min
        pd_parts.append(d[keep]); pg_parts.append(g[keep]); pi_parts.append(iou[keep])
    if pd_parts:
        pd, pg, piou = np.concatenate(pd_parts), np.concatenate(pg_parts), np.concatenate(pi_parts)
    else:
        pd = pg = np.zeros(0, np.int64); piou = np.zeros(0)

    # --- greedy matching in rounds (candidate rank within group), all (A, T) at once
    match = np.full((A, T, n_dt), -1, np.int64)  # matched object index per detection
    if pd.size:
        # rank among detections that have candidates, per group
        cdets = pd[segment_starts(pd)]  # distinct candidate detections, grouped order
        cstarts = segment_starts(dkey[cdets])
        clens = np.diff(np.append(cstarts, cdets.size))
        crank_of = np.zeros(n_dt, np.int64)
        crank_of[cdets] = np.arange(cdets.size) - np.repeat(cstarts, clens)
        pr_round = crank_of[pd]
        porder = np.argsort(pr_round, kind="stable")
        pd, pg, piou, pr_round = pd[porder], pg[porder], piou[porder], pr_round[porder]
        rb = np.searchsorted(pr_round, np.arange(pr_round[-1] + 2))
        used = np.zeros((A, T, n_gt), bool)
        pair_valid_t = piou[None, :] >= thr[:, None]  # (T, P)
        pcrowd = crowd[pg]
        for r in range(len(rb) - 1):
            s, e = rb[r], rb[r + 1]
            d_r, g_r = pd[s:e], pg[s:e]
            ig = g_ig[:, g_r]  # (A, P)
            valid = pair_valid_t[None, :, s:e] & ~(used[:, :, g_r] & ~pcrowd[s:e])  # (A, T, P)
            st = segment_starts(d_r)
            ln = np.diff(np.append(st, d_r.size))
            has_reg = np.logical_or.reduceat(valid & ~ig[:, None, :], st, axis=2)  # (A, T, nd)
            cand = valid & (ig[:, None, :] != np.repeat(has_reg, ln, axis=2))
            val = np.where(cand, piou[None, None, s:e], -1.0)
            vmax = np.maximum.reduceat(val, st, axis=2)
            is_max = cand & (val == np.repeat(vmax, ln, axis=2))
            pos = np.where(is_max, np.arange(d_r.size), -1)
            win = np.maximum.reduceat(pos, st, axis=2)  # last maximum (ties -> later object)
            a_i, t_i, j = np.nonzero(win >= 0)
            wp = win[a_i, t_i, j]
            match[a_i, t_i, d_r[st[j]]] = g_r[wp]
            used[a_i, t_i, g_r[wp]] = True

    matched = match >= 0
    mg = np.where(matched, match, 0)
    if n_gt:
        dtm_nonzero = matched & ~g_zero[mg]  # the reference tests the stored annotation id
        ig_of_match = np.take_along_axis(g_ig, mg.reshape(A, -1), axis=1).reshape(A, T, n_dt)
    else:
        dtm_nonzero = ig_of_match = np.zeros((A, T, n_dt), bool)
    dt_ig = (matched & ig_of_match) | (~dtm_nonzero & d_out[:, None, :])
    tp_all = dtm_nonzero & ~dt_ig  # (A, T, n_dt)
    fp_all = ~dtm_nonzero & ~dt_ig

    # --- accumulate
    npig = np.zeros((K, A), np.int64)
    for a in range(A):
        npig[:, a] = np.bincount(gt.labels[~g_ig[a]], minlength=K)[:K]
    kept = np.zeros(n_dt, bool)
    kept[kept_sorted] = True
    recall = -np.ones((T, K, A, M))
    det_labels = dt.labels
    for m_i, md in enumerate(MAX_DETS):
        inc = kept & (rank < md)
        for a in range(A):
            tp_cnt = np.zeros((T, K))
            for t in range(T):
                tp_cnt[t] = np.bincount(det_labels[inc & tp_all[a, t]], minlength=K)[:K]
            with np.errstate(divide="ignore", invalid="ignore"):
                rc = tp_cnt / npig[None, :, a]
            recall[:, :, a, m_i] = np.where(npig[None, :, a] > 0, rc, -1.0)

    # evaluation order: category asc, score desc, image asc, input order (stable merges)
    cand_idx = kept_sorted
    eo = np.lexsort((cand_idx, dt.image_index[cand_idx], -dt.scores[cand_idx], det_labels[cand_idx]))
    det_order = cand_idx[eo]
    lab_o = det_labels[det_order]
    precision = -np.ones((T, R, K, A))
    eps = np.spacing(1)
    for a in range(A):
        tp_o = tp_all[a][:, det_order]  # (T, D)
        fp_o = fp_all[a][:, det_order]
        t_i, p_i = np.nonzero(tp_o | fp_o)  # non-ignored detections, t-major then rank
        pa = np.where(npig[:, a] > 0, 0.0, -1.0)  # (K,)
        precision[:, :, :, a] = pa[None, None, :]
        if t_i.size == 0:
            continue
        seg = t_i * K + lab_o[p_i]
        st = segment_starts(seg)
        ln = np.diff(np.append(st, seg.size))
        flag = tp_o[t_i, p_i]
        cs = np.cumsum(flag)
        before = np.repeat(cs[st] - flag[st], ln)
        tp = (cs - before).astype(np.float64)
        idx_in = np.arange(seg.size) - np.repeat(st, ln)
        fp = (idx_in + 1).astype(np.float64) - tp
        seg_ids = seg[st]
        seg_k = seg_ids % K
        npig_seg = npig[seg_k, a]
        live = npig_seg > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            rc = tp / np.repeat(npig_seg, ln)
        pr = tp / (fp + tp + eps)
        # first index with rc >= thr  ==  number of rc < thr  (rc non-decreasing in a run)
        ridx = np.searchsorted(REC_THRS, rc, side="right")  # thr[r] > rc  <=>  r >= ridx
        nseg = st.size
        hist = np.bincount(np.repeat(np.arange(nseg), ln) * (R + 1) + ridx, minlength=nseg * (R + 1))
        cnt = np.cumsum(hist.reshape(nseg, R + 1), axis=1)[:, :R]  # (nseg, R)
        # flat pr with a 0 sentinel after every run: reduceat never crosses into the next run
        flat = np.zeros(seg.size + nseg)
        shift = np.repeat(np.arange(nseg), ln)
        flat[np.arange(seg.size) + shift] = pr
        base = st + np.arange(nseg)  # start of each run in ``flat``
        at = (base[:, None] + cnt).reshape(-1)
        chunk = np.maximum.reduceat(flat, at).reshape(nseg, R)
        q = np.maximum.accumulate(chunk[:, ::-1], axis=1)[:, ::-1]
        q = np.where(cnt < ln[:, None], q, 0.0)
        q = q[live]
        precision[seg_ids[live] // K, :, seg_k[live], a] = q
    stats = _summarize(precision, recall)
    return CocoResult(precision=precision, recall=recall, stats=stats, npig=npig, det_order=det_order,
                      det_tp=tp_all[0][:, det_order], det_fp=fp_all[0][:, det_order])
