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
are kept. Accumulation needs only the true-positive events: between two TPs precision can only
fall (a FP) or stay (an ignored detection), so the envelope at any recall threshold is a maximum
over TP events; each event's FP count comes from its position, minus the ignored detections
before it (out-of-range ones by a cumulative count, corrected on the few matched candidates).
One ``reduceat`` over all (area, threshold, category) event runs gives every envelope value.
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


def _run_cumsum(flags: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative sum along axis 1 restarting at every run start: (T, D) bool -> (T, D) int64."""
    x = flags.astype(np.int32)
    if starts.size > 1:
        tot = np.add.reduceat(x, starts, axis=1)
        x[:, starts[1:]] -= tot[:, :-1]  # the running sum returns to 0 at each run start
    return np.cumsum(x, axis=1)


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
    n_img_ = max(len(gt.image_ids), 1)
    # one stable sort by score; ties broken by input order (pycocotools: mergesort on -score)
    s0 = np.argsort(-dt.scores, kind="stable")
    p0 = np.empty(n_dt, np.int64)
    p0[s0] = np.arange(n_dt)
    grp_order = np.lexsort((p0, dkey)) if K * n_img_ * max(n_dt, 1) >= 2 ** 62 else \
        np.argsort(dkey * max(n_dt, 1) + p0)  # unique keys: (group, score rank)
    gstarts = segment_starts(dkey[grp_order])
    glens = np.diff(np.append(gstarts, n_dt))
    rank_sorted = np.arange(n_dt) - np.repeat(gstarts, glens)
    rank = np.empty(n_dt, np.int64)
    rank[grp_order] = rank_sorted
    kept_sorted = grp_order[rank_sorted < max_det]  # grouped, score order within group
    # evaluation order (pycocotools' stable merges): category, score desc, image, input order
    ss = -dt.scores[s0]
    dense = np.empty(n_dt, np.int64)  # dense rank of the score (equal scores share a rank)
    dense[s0] = np.concatenate(([0], np.cumsum(ss[1:] != ss[:-1]))) if n_dt else np.zeros(0, np.int64)
    ks = kept_sorted
    n_img = max(len(gt.image_ids), 1)
    if K * max(n_dt, 1) * n_img < 2 ** 62:  # one int64 key; the stable sort keeps input order on ties
        ekey = (dt.labels[ks] * max(n_dt, 1) + dense[ks]) * n_img + dt.image_index[ks]
        eo = ks[np.argsort(ekey, kind="stable")]
    else:  # pragma: no cover - astronomically large sets
        eo = ks[np.lexsort((ks, dt.image_index[ks], dense[ks], dt.labels[ks]))]
    D = eo.size
    pos_in_eval = np.full(n_dt, -1, np.int64)
    pos_in_eval[eo] = np.arange(D)

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
    cdets = pd[segment_starts(pd)] if pd.size else np.zeros(0, np.int64)  # candidate detections, grouped
    n_c = cdets.size
    match = np.full((A, T, n_c), -1, np.int64)  # matched object per candidate detection
    if n_c:
        cidx = np.zeros(n_dt, np.int64)
        cidx[cdets] = np.arange(n_c)
        cstarts = segment_starts(dkey[cdets])
        clens = np.diff(np.append(cstarts, n_c))
        crank = np.arange(n_c) - np.repeat(cstarts, clens)  # rank among the group's candidates
        pc = cidx[pd]
        pr_round = crank[pc]
        porder = np.argsort(pr_round, kind="stable")
        pc, pg, piou, pr_round = pc[porder], pg[porder], piou[porder], pr_round[porder]
        rb = np.searchsorted(pr_round, np.arange(pr_round[-1] + 2))
        used = np.zeros((A, T, n_gt), bool)
        pair_valid_t = piou[None, :] >= thr[:, None]  # (T, P)
        pcrowd = crowd[pg]
        for r in range(len(rb) - 1):
            s, e = rb[r], rb[r + 1]
            c_r, g_r = pc[s:e], pg[s:e]
            ig = g_ig[:, g_r]  # (A, P)
            valid = pair_valid_t[None, :, s:e] & ~(used[:, :, g_r] & ~pcrowd[s:e])  # (A, T, P)
            st = segment_starts(c_r)
            ln = np.diff(np.append(st, c_r.size))
            has_reg = np.logical_or.reduceat(valid & ~ig[:, None, :], st, axis=2)  # (A, T, nd)
            cand = valid & (ig[:, None, :] != np.repeat(has_reg, ln, axis=2))
            val = np.where(cand, piou[None, None, s:e], -1.0)
            vmax = np.maximum.reduceat(val, st, axis=2)
            is_max = cand & (val == np.repeat(vmax, ln, axis=2))
            pos = np.where(is_max, np.arange(c_r.size), -1)
            win = np.maximum.reduceat(pos, st, axis=2)  # last maximum (ties -> later object)
            a_i, t_i, j = np.nonzero(win >= 0)
            wp = win[a_i, t_i, j]
            match[a_i, t_i, c_r[st[j]]] = g_r[wp]
            used[a_i, t_i, g_r[wp]] = True

    # --- outcome of the candidate detections (everything else is unmatched: FP, or ignored when
    # its own area is out of range)
    npig = np.zeros((K, A), np.int64)
    for a in range(A):
        npig[:, a] = np.bincount(gt.labels[~g_ig[a]], minlength=K)[:K]
    cat_e = dt.labels[eo]
    rank_e = rank[eo]
    out_e = d_out[:, eo]  # (A, D)
    cp = pos_in_eval[cdets]  # candidates were drawn from the kept detections: all >= 0
    co = np.argsort(cp)
    cp_s = cp[co]  # candidates in evaluation order
    if n_c:
        matched = match >= 0
        mg = np.where(matched, match, 0)
        nz = matched & ~g_zero[mg]  # the reference tests the stored annotation id (0 = unmatched)
        ig_m = np.take_along_axis(g_ig, mg.reshape(A, -1), axis=1).reshape(A, T, n_c)
        ig_c = (matched & ig_m) | (~nz & d_out[:, None, cdets])  # (A, T, n_c)
        tp_c = (nz & ~ig_c)[:, :, co]
        ig_c = ig_c[:, :, co]
    else:
        ig_c = tp_c = np.zeros((A, T, 0), bool)
    # detections of area 'all' for the report's counts: (T, D) flags
    det_tp = np.zeros((T, D), bool)
    det_ig = np.repeat(out_e[0][None, :], T, axis=0)
    det_tp[:, cp_s] = tp_c[0]
    det_ig[:, cp_s] = ig_c[0]
    det_fp = ~det_tp & ~det_ig

    # --- accumulate. Between two true positives precision only falls (FP) or stays (ignored), so
    # the envelope at any recall threshold is a maximum over true-positive events only: the
    # whole accumulation runs on TP events (<= objects), not on every detection.
    precision = np.where(npig[None, None, :, :] > 0, 0.0, -1.0) * np.ones((T, R, 1, 1))  # (T, R, K, A)
    recall = np.where(npig[None, :, :, None] > 0, 0.0, -1.0) * np.ones((T, 1, 1, M))  # (T, K, A, M)
    a_i, t_i, c_i = np.nonzero(tp_c)  # TP events: area-major, then threshold, then evaluation order
    if D and a_i.size:
        rs = segment_starts(cat_e)  # category runs in evaluation order
        nr = rs.size
        run_of = np.repeat(np.arange(nr), np.diff(np.append(rs, D)))
        rk = cat_e[rs]
        crun = run_of[cp_s]
        j = cp_s[c_i]
        run = crun[c_i]
        k = rk[run]
        seg = (a_i * T + t_i) * nr + run
        st = segment_starts(seg)
        ln = np.diff(np.append(st, seg.size))
        m = (np.arange(seg.size) - np.repeat(st, ln) + 1)  # TP count so far in the run
        # candidates whose ignore flag differs from "unmatched" (sparse): prefix sums of the change
        da, dtt, dc = np.nonzero(ig_c != out_e[:, None, cp_s])
        dval = np.where(ig_c[da, dtt, dc], 1, -1)
        dkey_ = (da * T + dtt) * n_c + dc  # sorted (nonzero order)
        dpre = np.concatenate(([0], np.cumsum(dval)))
        cst = segment_starts(crun)
        first_of = np.repeat(cst, np.diff(np.append(cst, n_c)))  # first candidate of each run
        ekey_ = (a_i * T + t_i) * n_c
        dsum = dpre[np.searchsorted(dkey_, ekey_ + c_i, side="right")] - \
            dpre[np.searchsorted(dkey_, ekey_ + first_of[c_i], side="left")]
        # ignored detections up to each position of a run = out-of-range ones, corrected on candidates
        oc = np.cumsum(out_e, axis=1, dtype=np.int64)  # (A, D)
        oc_before = np.where(rs > 0, oc[:, np.maximum(rs - 1, 0)], 0)  # (A, nr)
        ign = (oc[a_i, j] - oc_before[a_i, run]) + dsum  # ignored detections of the run up to j
        fp = (j - rs[run] + 1) - m - ign
        tpf = m.astype(np.float64)
        pr = tpf / (fp.astype(np.float64) + tpf + np.spacing(1))
        sa, stt, sk = a_i[st], t_i[st], k[st]
        n_seg = ln
        recall[stt, sk, sa, M - 1] = n_seg / npig[sk, sa]
        # c[r] = #TP counts m in 1..npig with m / npig < recThrs[r]  (exact: same division)
        np_flat = npig.T.reshape(-1)  # (A * K,) block b = a * K + k
        off = np.concatenate(([0], np.cumsum(np_flat)))
        mm = np.arange(1, off[-1] + 1) - np.repeat(off[:-1], np_flat)
        blk = np.repeat(np.arange(A * K), np_flat)
        ridx = np.searchsorted(REC_THRS, mm / np.repeat(np_flat, np_flat), side="right")
        hist = np.bincount(blk * (R + 1) + ridx, minlength=A * K * (R + 1)).reshape(A * K, R + 1)
        c_tab = np.cumsum(hist, axis=1)[:, :R]  # (A*K, R)
        c_seg = np.minimum(c_tab[sa * K + sk], n_seg[:, None])  # (nseg, R)
        # suffix maxima of pr over each segment's events, read at c[r], via one reduceat
        nseg = st.size
        flat = np.zeros(seg.size + nseg)
        flat[np.arange(seg.size) + np.repeat(np.arange(nseg), ln)] = pr
        base = st + np.arange(nseg)
        chunk = np.maximum.reduceat(flat, (base[:, None] + c_seg).reshape(-1)).reshape(nseg, R)
        q = np.maximum.accumulate(chunk[:, ::-1], axis=1)[:, ::-1]
        q = np.where(c_seg < n_seg[:, None], q, 0.0)
        precision[stt, :, sk, sa] = q
        for m_i, md in enumerate(MAX_DETS[:-1]):
            sel = rank_e[j] < md
            cnt = np.bincount(((a_i * T + t_i) * K + k)[sel], minlength=A * T * K).reshape(A, T, K)
            with np.errstate(divide="ignore", invalid="ignore"):
                val = cnt.transpose(1, 2, 0) / npig[None]  # (T, K, A)
            recall[:, :, :, m_i] = np.where(npig[None] > 0, val, -1.0)
    else:
        for m_i in range(M):
            recall[:, :, :, m_i] = np.where(npig[None] > 0, 0.0, -1.0)
    stats = _summarize(precision, recall)
    return CocoResult(precision=precision, recall=recall, stats=stats, npig=npig, det_order=eo,
                      det_tp=det_tp, det_fp=det_fp)
