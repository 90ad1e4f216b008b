"""F1-optimal threshold on a case computed by hand, P/R/F1 curves, per-image results that sum to the
table's totals, and the combined analysis (JSON keys, text)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from detkit.errors import EvalError
from detkit.metrics.analysis import analyze
from detkit.metrics.evaluator import evaluate
from detkit.metrics.records import ImageDets, ImageGT
from detkit.metrics.thresholds import threshold_analysis
from tide_cases import case_tables, make_case

# ranked flags over 4 objects: T T F T F F T at .9 .8 .7 .6 .5 .4 .3
#   conf .9: P 1, R .25 -> F1 .4;  .8: 1, .5 -> .667;  .7: .667, .5 -> .571;  .6: .75, .75 -> .75
#   .5: .6, .75 -> .667;  .4: .5, .75 -> .6;  .3: 4/7, 1 -> .727   => best .6 (TP 3, FP 1, FN 1)
SCORES = np.array([.9, .8, .7, .6, .5, .4, .3])
TP = np.array([1, 1, 0, 1, 0, 0, 1], bool)


def test_best_f1_by_hand():
    r = threshold_analysis(SCORES, np.zeros(7, np.int64), TP, ~TP, np.array([4]), ["a"])
    b = r.best[0]
    assert (b.conf, b.tp, b.fp, b.fn) == (.6, 3, 1, 1)
    assert b.f1 == pytest.approx(.75) and b.precision == pytest.approx(.75) and b.recall == pytest.approx(.75)
    assert r.overall.conf == .6 and r.overall.f1 == pytest.approx(.75)
    c = r.curves[0]
    k = int(np.flatnonzero(np.isclose(c.conf, .65))[0])  # between .6 and .7: 2 TP, 1 FP
    assert (c.tp[k], c.fp[k]) == (2, 1) and c.f1[k] == pytest.approx(2 * (2 / 3) * .5 / (2 / 3 + .5))
    assert np.isnan(c.precision[-1]) or c.tp[-1] + c.fp[-1] > 0  # no detection at conf 1.0 -> NaN


def test_ties_count_together_and_highest_threshold_wins():
    # equal scores enter together; F1 equal at .9 and .5 -> .9 (fewer detections)
    r = threshold_analysis(np.array([.9, .5, .5]), np.zeros(3, np.int64), np.array([1, 1, 0], bool),
                           np.array([0, 0, 1], bool), np.array([1]), ["a"])
    assert r.best[0].conf == .9 and r.best[0].f1 == 1.0
    r = threshold_analysis(np.array([.5, .5]), np.zeros(2, np.int64), np.array([1, 0], bool),
                           np.array([0, 1], bool), np.array([1]), ["a"])
    assert (r.best[0].conf, r.best[0].tp, r.best[0].fp) == (.5, 1, 1)


def test_no_detections_or_no_positives():
    r = threshold_analysis(np.zeros(0), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, bool),
                           np.array([3, 0]), ["a", "b"])
    assert r.best[0].conf is None and r.best[0].fn == 3 and r.best[0].f1 == 0.0
    assert r.best[1].conf is None and np.isnan(r.best[1].f1)
    with pytest.raises(EvalError):
        threshold_analysis(SCORES, np.zeros(7, np.int64), TP, TP, np.array([4]), ["a"])


def _hand_voc():
    # the ranked list above as boxes: object k at x = 20k; TP boxes on objects, FP boxes far away
    gt = [ImageGT("im", np.array([[20 * k, 0, 20 * k + 10, 10] for k in range(4)], float), np.zeros(4, np.int64))]
    obj = iter(range(4))
    boxes = []
    for t in TP:
        k = next(obj) if t else None
        boxes.append([20 * k, 0, 20 * k + 10, 10] if t else [500, 500, 510, 510])
    return gt, [ImageDets("im", np.array(boxes, float), SCORES, np.zeros(7, np.int64))]


def test_best_f1_through_evaluate_equals_the_table_at_that_conf():
    gt, dets = _hand_voc()
    rep = evaluate(gt, dets, ["a"], metric="voc", conf_threshold=0.25)
    a = analyze(rep, *_tables_of(gt, dets), ["a"])
    b = a.thresholds.best[0]
    assert (b.conf, b.tp, b.fp, b.fn) == (.6, 3, 1, 1)
    row = evaluate(gt, dets, ["a"], metric="voc", conf_threshold=b.conf).classes[0]
    assert (row.tp, row.fp, row.fn, row.f1) == (b.tp, b.fp, b.fn, b.f1)
    d = a.to_dict()
    assert d["best_f1"]["classes"][0]["conf"] == .6 and len(d["best_f1"]["curves"][0]["f1"]) == 101
    assert set(d["errors"]["dap"]) == {"Cls", "Loc", "Both", "Dupe", "Bkg", "Miss"}
    assert "best F1" in a.thresholds.format_table() and "TIDE AP" in a.format_errors()


def _tables_of(gt, dets):
    from detkit.metrics.records import tables_from_images
    return tables_from_images(gt, dets)


@pytest.mark.parametrize("metric", ["voc", "voc07", "coco"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_image_counts_sum_to_the_totals(metric, seed, tmp_path):
    n_img, C, gts, dets = make_case(seed, n_img=40, C=3, crowd_p=0.1)
    gt, dt = case_tables(n_img, C, gts, dets)
    names = [f"c{c}" for c in range(C)]
    rep = evaluate(gt, dt, names, metric=metric, conf_threshold=0.3)
    a = analyze(rep, gt, dt, names)
    pi = a.per_image
    assert int(pi.tp.sum()) == sum(c.tp for c in rep.classes)
    assert int(pi.fp.sum()) == sum(c.fp for c in rep.classes)
    assert int(pi.fn.sum()) == sum(c.fn for c in rep.classes)
    assert int(pi.n_gt.sum()) == sum(c.n_gt for c in rep.classes)
    assert int(pi.errors[:, 5].sum()) == a.errors.counts["Miss"]
    # every FP-side error at conf counts once: errors among kept detections above conf
    above = (dt.scores >= 0.3) & a.errors.det_kept
    assert int(pi.errors[:, :5].sum()) == int(np.count_nonzero(above & (a.errors.det_type > 0)))
    rows = list(csv.DictReader(pi.write(tmp_path / "img.csv").open()))
    assert len(rows) == n_img and sum(int(r["fn"]) for r in rows) == int(pi.fn.sum())
    bad = [int(r["fp"]) + int(r["fn"]) for r in rows]
    assert bad == sorted(bad, reverse=True)  # worst first
    lines = (pi.write(tmp_path / "img.jsonl")).read_text().splitlines()
    assert json.loads(lines[0])["image_id"] == rows[0]["image_id"] or str(json.loads(lines[0])["image_id"]) == rows[0]["image_id"]
    with pytest.raises(EvalError, match="must end in"):
        pi.write(tmp_path / "img.txt")


@pytest.mark.parametrize("metric", ["voc", "coco"])
@pytest.mark.parametrize("n_gt,n_det", [(2, 0), (0, 2), (0, 0), (1, 1)])
def test_empty_sides_give_strict_json_and_a_report(tmp_path, metric, n_gt, n_det):
    from detkit.evaluate.html_report import write_html_report
    from detkit.metrics.records import DetTable, GTTable

    def tables():
        gt = GTTable(image_ids=("a", "b"), image_index=np.zeros(n_gt, np.int64), boxes=np.tile([[0., 0, 10, 10]], (n_gt, 1)),
                     labels=np.zeros(n_gt, np.int64), difficult=np.zeros(n_gt, bool), iscrowd=np.zeros(n_gt, bool))
        dt = DetTable(image_index=np.ones(n_det, np.int64), boxes=np.tile([[0., 0, 10, 10]], (n_det, 1)),
                      scores=np.full(n_det, .5), labels=np.zeros(n_det, np.int64))
        return gt, dt

    gt, dt = tables()
    rep = evaluate(gt, dt, ["x", "y"], metric=metric)
    a = analyze(rep, gt, dt, ["x", "y"])
    json.dumps(a.to_dict(), allow_nan=False)
    assert a.errors.counts["Miss"] == (n_gt if n_det == 0 or n_gt == 1 else 0)
    assert a.errors.counts["Bkg"] == n_det  # detections in the image without objects
    assert write_html_report(tmp_path, rep, a, gt, dt, ["x", "y"]).size_bytes > 0
