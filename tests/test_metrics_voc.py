"""VOC evaluation vs a plain devkit-rule loop written here, and hand-computed cases for every rule."""
from __future__ import annotations

import math

import numpy as np
import pytest

from detkit.errors import EvalError
from detkit.metrics.records import ImageDets, ImageGT
from detkit.metrics.evaluator import evaluate
from detkit.metrics.ap import VOC07_RECALL_THRESHOLDS, ap_11_point, ap_all_point


def devkit_loop(gts, dets, cls, iou_thr, plus_one, rule, use_07):
    """Straight transcription of VOCevaldet / py-faster-rcnn voc_eval for one class (a loop per detection)."""
    recs = {}
    npos = 0
    for g in gts:
        sel = g.labels == cls
        recs[g.image_id] = {"bb": g.boxes[sel], "diff": g.difficult[sel], "det": [False] * int(sel.sum())}
        npos += int((~g.difficult[sel]).sum())
    ids, conf, bbs = [], [], []
    for d in dets:
        for b, s, lab in zip(d.boxes, d.scores, d.labels):
            if lab == cls:
                ids.append(d.image_id)
                conf.append(s)
                bbs.append(b)
    order = sorted(range(len(conf)), key=lambda i: -conf[i])  # Python sort is stable
    e = 1.0 if plus_one else 0.0
    tp, fp = [], []
    for i in order:
        r = recs[ids[i]]
        bb = bbs[i]
        ovmax, jmax = -math.inf, -1
        for j, g in enumerate(r["bb"]):
            iw = min(bb[2], g[2]) - max(bb[0], g[0]) + e
            ih = min(bb[3], g[3]) - max(bb[1], g[1]) + e
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + e) * (bb[3] - bb[1] + e) + (g[2] - g[0] + e) * (g[3] - g[1] + e) - iw * ih
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax, jmax = ov, j
        ok = ovmax >= iou_thr if rule == ">=" else ovmax > iou_thr
        if ok:
            if r["diff"][jmax]:
                continue  # ignored
            if not r["det"][jmax]:
                r["det"][jmax] = True
                tp.append(1.0); fp.append(0.0)
            else:
                tp.append(0.0); fp.append(1.0)
        else:
            tp.append(0.0); fp.append(1.0)
    if npos == 0:
        return float("nan"), sum(tp), sum(fp), npos
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    rec = ctp / float(npos)
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0.0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
    else:
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = max(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
    return ap, sum(tp), sum(fp), npos


def random_set(seed, n_img=8, n_cls=3, integer=True):
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for i in range(n_img):
        k = int(rng.integers(0, 7))
        xy = rng.uniform(1, 200, (k, 2))
        wh = rng.uniform(2, 80, (k, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        if integer:
            boxes = np.round(boxes)
        if k and rng.random() < 0.3:  # duplicate object: ties in IoU
            boxes = np.concatenate([boxes, boxes[:1]])
            k += 1
        labels = rng.integers(0, n_cls, k)
        gts.append(ImageGT(f"img{i:02d}", boxes, labels, rng.random(k) < 0.2))
        m = int(rng.integers(0, 10))
        src = rng.integers(0, max(k, 1), m)
        db = boxes[src] + rng.normal(0, 6, (m, 4)) if k else rng.uniform(0, 200, (m, 4))
        db = np.concatenate([np.minimum(db[:, :2], db[:, 2:]), np.maximum(db[:, :2], db[:, 2:])], axis=1)
        if integer:
            db = np.round(db)
        dl = labels[src] if k else rng.integers(0, n_cls, m)
        dl = np.where(rng.random(m) < 0.15, rng.integers(0, n_cls, m), dl)
        scores = np.round(rng.uniform(size=m), 1)  # few distinct values: ties
        dets.append(ImageDets(f"img{i:02d}", db, scores, dl))
    return gts, dets


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("metric", ["voc", "voc07"])
def test_matches_devkit_loop(seed, metric):
    plus_one = seed % 2 == 0
    rule = ">=" if seed % 3 else ">"
    iou = (0.5, 0.3, 0.7)[seed % 3]
    gts, dets = random_set(seed, integer=seed % 4 != 1)
    rep = evaluate(gts, dets, ["a", "b", "c"], metric=metric, iou_threshold=iou, plus_one=plus_one,
                   iou_rule=rule, conf_threshold=-1.0)
    aps = []
    for c in range(3):
        ap, tp, fp, npos = devkit_loop(gts, dets, c, iou, plus_one, rule, metric == "voc07")
        row = rep.classes[c]
        assert (row.tp, row.fp, row.n_gt) == (tp, fp, npos)
        if math.isnan(ap):
            assert math.isnan(row.ap)
        else:
            assert row.ap == pytest.approx(ap, abs=1e-12)
            aps.append(ap)
    if aps:
        assert rep.map == pytest.approx(float(np.mean(aps)), abs=1e-12)


def test_11_point_thresholds_are_numpys_arange():
    t = VOC07_RECALL_THRESHOLDS
    assert t.size == 11 and t[3] == 0.30000000000000004 and t[3] != 0.3
    # recall exactly 0.3 does not reach threshold 0.30000000000000004: only the first 3 points count
    rec = np.array([0.1, 0.2, 0.3])
    prec = np.array([1.0, 1.0, 1.0])
    assert ap_11_point(rec, prec) == pytest.approx(3 / 11, abs=1e-15)
    assert ap_11_point(np.array([0.1, 0.2, 0.30000000000000004]), prec) == pytest.approx(4 / 11, abs=1e-15)


def test_all_point_hand_value():
    # 2 positives: TP, FP, TP -> rec .5 .5 1, prec 1 .5 .667 -> AP = .5*1 + .5*(2/3)
    assert ap_all_point(np.array([.5, .5, 1.]), np.array([1., .5, 2 / 3])) == pytest.approx(0.5 + 1 / 3)


def _img(boxes, labels, diff=None):
    return ImageGT("a", np.array(boxes, float), labels, diff)


def test_duplicate_is_fp_without_fallback_to_second_best():
    gt = [_img([[0, 0, 10, 10], [0, 0, 10, 12]], [0, 0])]
    # both detections' best object is the first one; the second detection is a FP even though
    # the second object (IoU > .5 with it) is free: VOC does not fall back.
    det = [ImageDets("a", [[0, 0, 10, 10], [0, 0, 10, 10.5]], [0.9, 0.8], [0, 0])]
    r = evaluate(gt, det, ["x"], conf_threshold=0).classes[0]
    assert (r.tp, r.fp, r.fn) == (1, 1, 1)


def test_difficult_match_is_ignored_and_not_counted():
    gt = [_img([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0], [True, False])]
    det = [ImageDets("a", [[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8], [0, 0])]
    rep = evaluate(gt, det, ["x"], conf_threshold=0)
    r = rep.classes[0]
    assert (r.tp, r.fp, r.fn, r.n_gt, r.n_det) == (1, 0, 0, 1, 2)
    assert rep.map == 1.0


def test_plus_one_and_rule_flags():
    # integer VOC boxes 1..10 and 1..5 (x): with +1 IoU = 5/10 = .5 exactly; without: 4/9
    gt = [_img([[1, 1, 10, 10]], [0])]
    det = [ImageDets("a", [[1, 1, 5, 10]], [0.9], [0])]
    assert evaluate(gt, det, ["x"], plus_one=True).map == 1.0
    assert evaluate(gt, det, ["x"], plus_one=True, iou_rule=">").map == 0.0
    assert evaluate(gt, det, ["x"], plus_one=False).map == 0.0


def test_stable_sort_on_tied_scores():
    # two images, tied scores: input order decides which one ranks first
    gt = [ImageGT("a", [[0, 0, 10, 10]], [0]), ImageGT("b", [[0, 0, 10, 10]], [0])]
    hit, miss = ImageDets("a", [[0, 0, 10, 10]], [0.5], [0]), ImageDets("b", [[50, 50, 60, 60]], [0.5], [0])
    first_hit = evaluate(gt, [hit, miss], ["x"]).map  # TP then FP: rec .5 prec 1 -> .5
    first_miss = evaluate(gt, [miss, hit], ["x"]).map  # FP then TP: prec .5 at rec .5 -> .25
    assert first_hit == pytest.approx(0.5) and first_miss == pytest.approx(0.25)


def test_class_without_gt_is_excluded_from_map_and_its_dets_are_fp():
    gt = [ImageGT("a", [[0, 0, 10, 10]], [0])]
    det = [ImageDets("a", [[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.9], [0, 1])]
    rep = evaluate(gt, det, ["x", "y"], conf_threshold=0)
    assert rep.map == 1.0 and math.isnan(rep.classes[1].ap)
    assert (rep.classes[1].fp, rep.classes[1].n_gt) == (1, 0)
    assert rep.to_dict()["classes"][1]["ap"] is None


def test_counts_use_conf_threshold_but_ap_uses_all():
    gt = [ImageGT("a", [[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    det = [ImageDets("a", [[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.1], [0, 0])]
    rep = evaluate(gt, det, ["x"], conf_threshold=0.5)
    r = rep.classes[0]
    assert (r.tp, r.fp, r.fn, r.n_det) == (1, 0, 1, 1) and rep.map == 1.0
    assert r.precision == 1.0 and r.recall == 0.5 and r.f1 == pytest.approx(2 / 3)


@pytest.mark.parametrize("bad,match", [
    (dict(metric="map"), "unknown metric"),
    (dict(iou_rule="=>"), "IoU rule"),
    (dict(iou_threshold=0.0), "IoU threshold"),
])
def test_bad_arguments(bad, match):
    with pytest.raises(EvalError, match=match):
        evaluate([ImageGT("a", [[0, 0, 1, 1]], [0])], [], ["x"], **bad)


def test_bad_inputs():
    gt = [ImageGT("a", [[0, 0, 1, 1]], [0])]
    with pytest.raises(EvalError, match="class index 3"):
        evaluate(gt, [ImageDets("a", [[0, 0, 1, 1]], [0.5], [3])], ["x"])
    with pytest.raises(EvalError, match="no ground-truth record"):
        evaluate(gt, [ImageDets("zz", [[0, 0, 1, 1]], [0.5], [0])], ["x"])
    with pytest.raises(EvalError, match="not finite"):
        evaluate(gt, [ImageDets("a", [[0, 0, np.nan, 1]], [0.5], [0])], ["x"])
    with pytest.raises(EvalError, match="duplicate"):
        evaluate(gt + gt, [], ["x"])
    with pytest.raises(EvalError, match="shape"):
        ImageGT("a", [[0, 0, 1]], [0])
