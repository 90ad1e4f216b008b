"""TIDE's pairing and matching primitives (see :mod:`detkit.metrics.tide`): paired IoU as
pycocotools' ``bbIou`` (optionally with the VOC +1 pixel), per-detection first maximum over its
pairs, and tidecv's greedy matching run in rounds."""
from __future__ import annotations

import numpy as np

from detkit.metrics.coco import coco_pair_iou
from detkit.metrics.matching import segment_starts


def pair_iou(d_xywh: np.ndarray, g_xywh: np.ndarray, crowd: np.ndarray, plus_one: bool) -> np.ndarray:
    """IoU of paired boxes as pycocotools ``bbIou`` (crowd: over the detection's area); with
    ``plus_one`` the VOC +1 pixel widths (``w = x2 - x1 + 1``, boxes given as xywh of xyxy)."""
    if not plus_one:
        return coco_pair_iou(d_xywh, g_xywh, crowd)
    dw, dh, gw, gh = d_xywh[:, 2] + 1, d_xywh[:, 3] + 1, g_xywh[:, 2] + 1, g_xywh[:, 3] + 1
    w = np.minimum(d_xywh[:, 0] + dw, g_xywh[:, 0] + gw) - np.maximum(d_xywh[:, 0], g_xywh[:, 0])
    h = np.minimum(d_xywh[:, 1] + dh, g_xywh[:, 1] + gh) - np.maximum(d_xywh[:, 1], g_xywh[:, 1])
    i = w * h
    u = np.where(crowd, dw * dh, dw * dh + gw * gh - i)
    with np.errstate(divide="ignore", invalid="ignore"):
        o = i / u
    return np.where((w > 0) & (h > 0), o, 0.0)


def seg_argmax(d: np.ndarray, v: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per detection (pairs grouped by detection): max of ``v`` (0 where no pair) and the pair
    position of its first occurrence (-1 where no pair)."""
    best = np.zeros(n)
    first = np.full(n, -1, np.int64)
    if d.size == 0:
        return best, first
    st = segment_starts(d)
    mx = np.maximum.reduceat(v, st)
    ln = np.diff(np.append(st, d.size))
    pos = np.where(v == np.repeat(mx, ln), np.arange(d.size), d.size)
    fp = np.minimum.reduceat(pos, st)
    ok = mx > 0
    best[d[st[ok]]] = mx[ok]
    first[d[st[ok]]] = fp[ok]
    return best, first


def greedy_match(pd, pg, piou, group, rank, n_det, n_gt):
    """tidecv's matching on candidate pairs (same class, IoU >= pos), grouped by detection:
    detections in rank order within their group each take the free object of highest IoU (first
    on ties). Runs in rounds: round r = the r-th candidate detection of every group."""
    match = np.full(n_det, -1, np.int64)
    used = np.zeros(n_gt, bool)
    if pd.size == 0:
        return match, used
    st = segment_starts(pd)
    cd = pd[st]  # candidate detections, ascending (group, rank) order
    co = np.lexsort((rank[cd], group[cd]))
    cd_sorted = cd[co]
    gs = segment_starts(group[cd_sorted])
    crank_sorted = np.arange(cd.size) - np.repeat(gs, np.diff(np.append(gs, cd.size)))
    crank = np.zeros(n_det, np.int64)
    crank[cd_sorted] = crank_sorted
    rnd = crank[pd]
    po = np.argsort(rnd, kind="stable")
    pd, pg, piou, rnd = pd[po], pg[po], piou[po], rnd[po]
    bounds = np.searchsorted(rnd, np.arange(int(rnd[-1]) + 2))
    for r in range(bounds.size - 1):
        s, e = bounds[r], bounds[r + 1]
        d_r, g_r = pd[s:e], pg[s:e]
        v = np.where(used[g_r], -1.0, piou[s:e])
        sst = segment_starts(d_r)
        mx = np.maximum.reduceat(v, sst)
        ln = np.diff(np.append(sst, d_r.size))
        pos = np.where(v == np.repeat(mx, ln), np.arange(d_r.size), d_r.size)
        win = np.minimum.reduceat(pos, sst)
        ok = mx >= 0
        match[d_r[sst[ok]]] = g_r[win[ok]]
        used[g_r[win[ok]]] = True
    return match, used
