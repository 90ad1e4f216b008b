"""Every public fixture in ../shared/evaldata reproduces its documented numbers (real tier).

Expected values are read from ../shared/evaldata/EXPECTED.json (documented upstream, or re-run with
the reference tools) and the COMPUTED_*.json secondary checks; nothing is hard-coded here except
the upstream-documented rounded percentages quoted with their source.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from detkit.evaluate.run import evaluate_files
from detkit.metrics.records import ImageDets, ImageGT
from detkit.metrics.evaluator import evaluate

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def ev(shared) -> Path:
    d = shared / "evaldata"
    if not (d / "EXPECTED.json").is_file():
        pytest.skip("evaldata fixtures absent")
    return d


@pytest.fixture(scope="module")
def expected(ev) -> dict:
    return json.loads((ev / "EXPECTED.json").read_text())


def coco_stats(gt: Path, dt: Path, **kw):
    return evaluate_files(gt, dt, metric="coco", **kw).report


# ----------------------------------------------------------------------------- COCO (B1-B6)

def test_b1_coco_val2014_100(ev, expected):
    e = expected["coco_val2014_100_bbox"]
    gt = ev / "faster_coco_eval/tests/dataset/cocoapi/instances_val2014_100.json"
    for dt in (ev / "faster_coco_eval/tests/dataset/cocoapi/instances_val2014_fakebbox100_results.json",
               ev / "cocoapi/results/instances_val2014_fakebbox100_results.json"):
        rep = coco_stats(gt, dt)
        assert list(rep.stats) == e["documented"]  # "bit-identical (all 12 values, repr-equal)"
        assert rep.map == e["documented"][0]


def test_b1_per_category_and_pr_curves(ev):
    comp = json.loads((ev / "COMPUTED_coco_per_category.json").read_text())["faster_coco_eval/val2014_100_bbox"]
    curves = json.loads((ev / "COMPUTED_coco_val2014_100_pr_curves.json").read_text())
    gt = ev / "faster_coco_eval/tests/dataset/cocoapi/instances_val2014_100.json"
    dt = ev / "faster_coco_eval/tests/dataset/cocoapi/instances_val2014_fakebbox100_results.json"
    run = evaluate_files(gt, dt, metric="coco")
    rep = run.report
    prec = rep.extra["precision"]  # (T, R, K, A)
    cat_ids = curves["catIds"]
    for k, cid in enumerate(cat_ids):
        row = rep.classes[k]
        ref = comp["per_category_all_area_maxDets100"].get(str(cid))
        if ref is None or ref["AP"] == -1:
            assert math.isnan(row.ap)
            continue
        assert row.ap == pytest.approx(ref["AP"], abs=1e-12)
        assert row.ap50 == pytest.approx(ref["AP50"], abs=1e-12)
        np.testing.assert_allclose(prec[0, :, k, 0], curves["precision_iou0.50"][str(cid)], rtol=0, atol=1e-12)
        np.testing.assert_allclose(prec[5, :, k, 0], curves["precision_iou0.75"][str(cid)], rtol=0, atol=1e-12)
        assert rep.extra["recall"][0, k, 0, 2] == pytest.approx(curves["recall_iou0.50_all_100"][str(cid)], abs=1e-12)


def test_b2_review_sampled(ev, expected):
    e = expected["coco_review_sampled_bbox"]
    rep = coco_stats(ev / "review_object_detection_metrics/tests/test_coco_eval/gts/sampled_gts_bbox_area.json",
                     ev / "review_object_detection_metrics/tests/test_coco_eval/dets/sampled_bbox_results.json")
    np.testing.assert_allclose(rep.stats, e["documented"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(rep.stats, e["reproduced_full_precision"], rtol=0, atol=1e-12)


def test_b3_detectron2_small(ev, expected):
    e = expected["coco_detectron2_small"]
    rep = coco_stats(ev / "extracted/detectron2_coco_small/gt.json", ev / "extracted/detectron2_coco_small/dt.json")
    np.testing.assert_allclose(rep.stats, e["documented_bbox"], rtol=0, atol=1e-12)


def test_b4_faster_dummy4(ev, expected):
    e = expected["coco_faster_dummy4"]
    rep = coco_stats(ev / "extracted/faster_coco_eval_dummy4/gt.json", ev / "extracted/faster_coco_eval_dummy4/dt.json")
    assert [round(s, 4) for s in rep.stats[:6]] == e["documented_bbox_first6_round4"]
    np.testing.assert_allclose(rep.stats, e["reproduced_all12"], rtol=0, atol=1e-12)


def test_b5_torchmetrics_docstring(ev, expected):
    e = expected["torchmetrics_docstring"]
    inp = json.loads((ev / e["inputs"].split()[0]).read_text())
    gts = [ImageGT(i, t["boxes"], t["labels"]) for i, t in enumerate(inp["target"])]
    dets = [ImageDets(i, p["boxes"], p["scores"], p["labels"]) for i, p in enumerate(inp["preds"])]
    n_cls = 1 + max(max(t["labels"]) for t in inp["target"])
    rep = evaluate(gts, dets, [str(c) for c in range(n_cls)], metric="coco")
    d = e["documented"]
    names = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
             "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]
    np.testing.assert_allclose(rep.stats, [d[n] for n in names], rtol=0, atol=1e-12)


def test_b6_torchmetrics_inputs4(ev, expected):
    e = expected["torchmetrics_inputs4"]
    rep = coco_stats(ev / "extracted/torchmetrics_inputs4/coco_gt.json", ev / "extracted/torchmetrics_inputs4/coco_dt.json")
    np.testing.assert_allclose(rep.stats, e["reproduced"], rtol=0, atol=1e-12)
    d = e["documented"]
    names = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
             "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]
    np.testing.assert_allclose(rep.stats, [d[n] for n in names], rtol=0, atol=1e-3)
    gt = json.loads((ev / "extracted/torchmetrics_inputs4/coco_gt.json").read_text())
    cat_ids = sorted(c["id"] for c in gt["categories"])
    by_id = {cid: rep.classes[k] for k, cid in enumerate(cat_ids)}
    for cid, ap_doc, ap_rep in zip(d["classes"], d["map_per_class"], e["reproduced_per_class_map"]):
        row = by_id[cid]
        if ap_rep == -1.0:
            assert math.isnan(row.ap)
        else:
            assert row.ap == pytest.approx(ap_rep, abs=1e-12)
            assert row.ap == pytest.approx(ap_doc, abs=1e-2)


def test_toyexample_coco_with_annotation_id_zero_matches_pycocotools(ev):
    """Real data with an annotation of id 0: detkit and pycocotools agree (the quirk included)."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = ev / "review_object_detection_metrics/toyexample/gts_coco_format/toy_example_coco.JSON"
    dt = ev / "review_object_detection_metrics/toyexample/dets_coco_format/coco_dets.json"
    doc = json.loads(dt.read_text())
    anns = doc["annotations"] if isinstance(doc, dict) else doc
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(str(gt))
        e = COCOeval(cg, cg.loadRes(anns), "bbox")
        e.evaluate(); e.accumulate(); e.summarize()
    np.testing.assert_allclose(coco_stats(gt, dt).stats, e.stats, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- VOC (B7-B10)

def load_txt_pairs(gdir: Path, ddir: Path, fmt: str):
    """Cartucho / ODM / review txt layouts: '<class> [conf] a b c d [difficult]' per line, one file per image."""
    gts, dets, names = [], [], []

    def cid(n):
        if n not in names:
            names.append(n)
        return names.index(n)

    def box(v):
        v = [float(x) for x in v]
        return [v[0], v[1], v[0] + v[2], v[1] + v[3]] if fmt == "xywh" else v

    for f in sorted(gdir.glob("*.txt")):
        rows = [ln.split() for ln in f.read_text().splitlines() if ln.strip()]
        gts.append(ImageGT(f.stem, np.array([box(r[1:5]) for r in rows]).reshape(-1, 4), [cid(r[0]) for r in rows],
                           [len(r) > 5 and r[5] == "difficult" for r in rows]))
    for f in sorted(ddir.glob("*.txt")):
        rows = [ln.split() for ln in f.read_text().splitlines() if ln.strip()]
        dets.append(ImageDets(f.stem, np.array([box(r[2:6]) for r in rows]).reshape(-1, 4),
                              [float(r[1]) for r in rows], [cid(r[0]) for r in rows]))
    return gts, dets, names


def check_computed(ev: Path, key: str, gts, dets, names) -> None:
    """COMPUTED_voc.json: every (IoU, +1, rule, interpolation) variant, per class AP/TP/FP/npos."""
    comp = json.loads((ev / "COMPUTED_voc.json").read_text())[key]
    assert comp
    for variant, val in comp.items():
        p = variant.split("|")
        iou, plus, cmp, interp = float(p[0].split("=")[1]), p[1].split("=")[1] == "True", p[2][len("cmp="):], p[3]
        r = evaluate(gts, dets, names, metric="voc" if interp == "allpoint" else "voc07", iou_threshold=iou,
                     plus_one=plus, iou_rule=cmp, conf_threshold=float("-inf"))
        assert r.map == pytest.approx(val["mAP"], abs=1e-12), variant
        rb = {c.name: c for c in r.classes}
        for n, pc in val["per_class"].items():
            assert rb[n].ap == pytest.approx(pc["AP"], abs=1e-12), (variant, n)
            assert (rb[n].tp, rb[n].fp, rb[n].n_gt) == (pc["TP"], pc["FP"], pc["npos"]), (variant, n)


def test_b7_cartucho(ev, expected):
    e = expected["voc_cartucho_sample"]
    gts, dets, names = load_txt_pairs(ev / "Cartucho_mAP/input/ground-truth", ev / "Cartucho_mAP/input/detection-results",
                                      "xyxy")
    rep = evaluate(gts, dets, names, metric="voc", plus_one=True, conf_threshold=0)
    assert rep.map == pytest.approx(e["mAP_exact_reproduced"], abs=1e-12)
    assert round(rep.map * 100, 2) == e["mAP_percent"]
    by = {c.name: c for c in rep.classes}
    for n, pct in e["per_class_percent"].items():
        assert round(by[n].ap * 100, 2) == pct, n
    check_computed(ev, "Cartucho_mAP", gts, dets, names)
    v = e["variants_computed"]
    assert evaluate(gts, dets, names, plus_one=False).map == pytest.approx(v["no_plus1"], abs=1e-12)
    assert evaluate(gts, dets, names, "voc07", plus_one=True).map == pytest.approx(v["11pt"], abs=1e-12)
    assert evaluate(gts, dets, names, plus_one=True, iou_rule=">").map == pytest.approx(
        v["py-faster-rcnn strict '>'"], abs=1e-12)
    # the reference tool's own printed tp/fp per class (generated_by_reference/output.txt)
    out = (ev / "Cartucho_mAP/generated_by_reference/output.txt").read_text()
    for ln in out.split("# Number of detected objects per class")[1].strip().splitlines():
        n, rest = ln.split(":", 1)
        tp = int(rest.split("tp:")[1].split(",")[0])
        fp = int(rest.split("fp:")[1].rstrip(")"))
        assert (by[n].tp, by[n].fp) == (tp, fp), n


def test_b8_object_detection_metrics(ev, expected):
    e = expected["voc_odm_sample"]
    gts, dets, names = load_txt_pairs(ev / "Object-Detection-Metrics/groundtruths", ev / "Object-Detection-Metrics/detections",
                                      "xywh")
    check_computed(ev, "Object-Detection-Metrics", gts, dets, names)
    r = evaluate(gts, dets, names, "voc", iou_threshold=0.3, plus_one=True, conf_threshold=0)
    assert r.map == pytest.approx(e["reproduced_exact"]["allpoint"], abs=1e-12)
    assert f"{r.map * 100:.2f}" == "24.57"  # results/results.txt
    c = r.classes[0]
    assert (c.tp, c.fp, c.n_gt) == (e["documented"]["TP"], e["documented"]["FP"], e["documented"]["npos"])
    r11 = evaluate(gts, dets, names, "voc07", iou_threshold=0.3, plus_one=True)
    assert r11.map == pytest.approx(e["reproduced_exact"]["11pt"], abs=1e-12)
    assert f"{r11.map * 100:.2f}" == "26.84"
    # precision/recall sequence printed by the reference (2 d.p.)
    txt = (ev / "Object-Detection-Metrics/results/results.txt").read_text()
    prec_doc = [float(x) for x in txt.split("Precision: [")[1].split("]")[0].replace("'", "").split(",")]
    rec_doc = [float(x) for x in txt.split("Recall: [")[1].split("]")[0].replace("'", "").split(",")]
    np.testing.assert_allclose(r.pr_curves[0].precision, prec_doc, atol=0.005 + 1e-12)
    np.testing.assert_allclose(r.pr_curves[0].recall, rec_doc, atol=0.005 + 1e-12)
    # tie sensitivity: reversing the file order changes the numbers (stable sort matters)
    rev = evaluate(gts, dets[::-1], names, "voc", iou_threshold=0.3, plus_one=True)
    assert f"{rev.map * 100:.2f}" == "22.35"
    assert f"{evaluate(gts, dets[::-1], names, 'voc07', iou_threshold=0.3, plus_one=True).map * 100:.2f}" == "23.81"
    assert f"{evaluate(gts, dets, names, 'voc', iou_threshold=0.3, plus_one=False).map * 100:.2f}" == "22.54"
    assert f"{evaluate(gts, dets, names, 'voc', iou_threshold=0.1, plus_one=False).map * 100:.2f}" == "28.01"


def test_b9_review_test_case_1(ev, expected):
    e = expected["voc_review_test_case_1"]
    base = ev / "review_object_detection_metrics/tests/test_case_1"
    gts, dets, names = load_txt_pairs(base / "gts", base / "dets", "xywh")
    check_computed(ev, "review_object_detection_metrics/test_case_1", gts, dets, names)
    for t, v in e["documented_11pt"].items():
        assert math.isclose(evaluate(gts, dets, names, "voc07", float(t), plus_one=True).map, v, rel_tol=1e-9, abs_tol=1e-10)
    for t, v in e["documented_allpoint"].items():
        assert math.isclose(evaluate(gts, dets, names, "voc", float(t), plus_one=True).map, v, rel_tol=1e-9, abs_tol=1e-10)


@pytest.mark.parametrize("dets_dir,fmt", [("dets_classname_abs_xyx2y2", "files"), ("dets_classname_abs_xywh", "xywh")])
def test_b10_review_toyexample_voc_xml(ev, expected, dets_dir, fmt):
    e = expected["voc_review_toyexample_cat"]
    base = ev / "review_object_detection_metrics/toyexample"
    for key, doc in e["documented"].items():
        t, interp = key.split("_")
        metric = "voc" if interp == "allpoint" else "voc07"
        iou = float(t[1:])
        if fmt == "files":  # through the file readers: VOC XML folder + per-image txt
            rep = evaluate_files(base / "gts_vocpascal_format", base / dets_dir, metric=metric, iou_threshold=iou).report
        else:
            from detkit.evaluate.ground_truth import load_voc_gt
            g = load_voc_gt(base / "gts_vocpascal_format")
            gts = [ImageGT(i, g.table.boxes[g.table.image_index == k], g.table.labels[g.table.image_index == k],
                           g.table.difficult[g.table.image_index == k]) for k, i in enumerate(g.table.image_ids)]
            _, dets, _ = load_txt_pairs(base / "gts_vocpascal_format", base / dets_dir, "xywh")
            rep = evaluate(gts, dets, g.class_names, metric, iou, plus_one=True)
            check_computed(ev, "review_object_detection_metrics/toyexample_cat", gts, dets, g.class_names)
        assert round(rep.map * 100, 2) == doc, key
        assert rep.map == pytest.approx(e["reproduced_exact"][key], abs=1e-10), key
