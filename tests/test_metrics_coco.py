"""COCO evaluation vs pycocotools itself on generated edge cases (crowd, area ranges, maxDets, ties,
empty sets, categories without GT, images without GT or detections, annotation id 0)."""
from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from detkit.evaluate.run import evaluate_files
from detkit.metrics.records import DetTable, GTTable, ImageDets, ImageGT
from detkit.metrics.evaluator import evaluate

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


def reference(gt: dict, dets: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' 12 stats and per-category AP (-1: no GT). Empty results: the defined answer
    (pycocotools' loadRes crashes on []), i.e. evaluate with no detection at all."""
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = copy.deepcopy(gt)
        cg.createIndex()
        if dets:
            cd = cg.loadRes(copy.deepcopy(dets))
        else:
            cd = COCO()
            cd.dataset = {"images": copy.deepcopy(gt["images"]), "annotations": [],
                          "categories": copy.deepcopy(gt["categories"])}
            cd.createIndex()
        e = COCOeval(cg, cd, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    prec = e.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    per_cat = np.array([prec[:, :, k][prec[:, :, k] > -1].mean() if (prec[:, :, k] > -1).any() else -1.0
                        for k in range(prec.shape[2])])
    return np.asarray(e.stats), per_cat


def make_case(seed: int, n_img: int = 6, n_cat: int = 4, mode: str = "mixed") -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    img_ids = rng.choice(np.arange(1, 1000), size=n_img, replace=False).tolist()
    cat_ids = sorted(rng.choice(np.arange(1, 100), size=n_cat, replace=False).tolist())
    images = [{"id": int(i), "width": 640, "height": 480} for i in rng.permutation(img_ids)]
    anns, dets = [], []
    next_id = 0 if seed % 3 == 0 else 1  # annotation id 0 on a third of the cases
    gt_cats = cat_ids[:-1] if n_cat > 1 else cat_ids  # the last category has no GT
    for k, iid in enumerate(img_ids):
        if k == 0:
            continue  # an image without GT
        for _ in range(int(rng.integers(0, 6))):
            scale = float(rng.choice([4.0, 20.0, 60.0, 150.0]))
            w, h = (rng.uniform(0.3, 1.5, 2) * scale)
            if mode == "ints":
                w, h = float(np.ceil(w)), float(np.ceil(h))
            x, y = rng.uniform(0, 400, 2)
            if mode == "ints":
                x, y = float(np.floor(x)), float(np.floor(y))
            crowd = int(rng.random() < 0.15)
            area = float(w * h) if rng.random() < 0.7 else float(w * h * rng.uniform(0.3, 1.2))
            c = int(rng.choice(gt_cats))
            anns.append({"id": next_id, "image_id": int(iid), "category_id": c, "bbox": [float(x), float(y), float(w), float(h)],
                         "area": area, "iscrowd": crowd})
            next_id += 1
            if rng.random() < 0.2 or next_id == 1:  # exact duplicate object: IoU ties between objects
                anns.append({"id": next_id, "image_id": int(iid), "category_id": c,
                             "bbox": [float(x), float(y), float(w), float(h)],
                             "area": area if rng.random() < 0.5 else float(rng.uniform(0, 12000)), "iscrowd": 0})
                next_id += 1
    scores_pool = np.round(rng.uniform(0, 1, 5), 2)  # few distinct scores: many ties
    for a in anns:
        for _ in range(int(rng.integers(0, 4))):
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.15 * max(w, h), 4) if rng.random() < 0.8 else np.zeros(4)
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"] if rng.random() < 0.9
                         else int(rng.choice(cat_ids)),
                         "bbox": [float(x + j[0]), float(y + j[1]), float(max(w + j[2], 0.5)), float(max(h + j[3], 0.5))],
                         "score": float(rng.choice(scores_pool)) if rng.random() < 0.5 else float(rng.uniform())})
    for _ in range(int(rng.integers(0, 15))):  # background detections, some on the image without GT
        iid = int(rng.choice(img_ids[:-1]))  # the last image gets no detection
        dets.append({"image_id": iid, "category_id": int(rng.choice(cat_ids)),
                     "bbox": [float(v) for v in rng.uniform(0, 300, 2)] + [float(v) for v in rng.uniform(1, 120, 2)],
                     "score": float(rng.choice(scores_pool))})
    if mode == "maxdets" and anns:  # > 100 detections of one (image, category): maxDets cut-off
        a = anns[0]
        x, y, w, h = a["bbox"]
        for i in range(130):
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                         "bbox": [x + rng.normal(0, 2), y + rng.normal(0, 2), w, h],
                         "score": float(scores_pool[i % 3])})
    dets = [d for d in dets if d["image_id"] != img_ids[-1]]
    rng.shuffle(dets)
    cats = [{"id": int(c), "name": f"c{c}"} for c in rng.permutation(cat_ids)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def detkit_stats(tmp_path, gt: dict, dets: list[dict]):
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    run = evaluate_files(tmp_path / "gt.json", tmp_path / "dt.json", metric="coco")
    return np.asarray(run.report.stats), np.array([-1.0 if np.isnan(c.ap) else c.ap for c in run.report.classes])


@pytest.mark.parametrize("seed", range(40))
def test_random_cases_match_pycocotools(tmp_path, seed):
    mode = ("mixed", "ints", "maxdets")[seed % 3]
    gt, dets = make_case(seed, n_img=int(3 + seed % 6), n_cat=int(1 + seed % 5), mode=mode)
    ref_stats, ref_cat = reference(gt, dets)
    stats, per_cat = detkit_stats(tmp_path, gt, dets)
    np.testing.assert_allclose(stats, ref_stats, rtol=0, atol=1e-12)
    np.testing.assert_allclose(per_cat, ref_cat, rtol=0, atol=1e-12)


def test_many_images_dense_case(tmp_path):
    gt, dets = make_case(1234, n_img=60, n_cat=7, mode="maxdets")
    ref_stats, ref_cat = reference(gt, dets)
    stats, per_cat = detkit_stats(tmp_path, gt, dets)
    np.testing.assert_allclose(stats, ref_stats, rtol=0, atol=1e-12)
    np.testing.assert_allclose(per_cat, ref_cat, rtol=0, atol=1e-12)


def _one_image_gt(anns):
    return {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": anns}


@pytest.mark.parametrize("name,anns,dets", [
    ("empty results", [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}], []),
    ("no ground truth at all", [], [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": .9}]),
    ("crowd absorbs many", [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 1},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [200, 200, 10, 10], "area": 100, "iscrowd": 0}],
     [{"image_id": 1, "category_id": 1, "bbox": [5 * i, 5 * i, 20, 20], "score": 0.9 - 0.01 * i} for i in range(6)]
     + [{"image_id": 1, "category_id": 1, "bbox": [200, 200, 10, 10], "score": 0.5}]),
    ("annotation id 0 never matches", [
        {"id": 0, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "area": 100, "iscrowd": 0}],
     [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
      {"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.8}]),
    ("IoU tie between objects: the later object wins", [
        {"id": 0, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 8, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 9, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 2000, "iscrowd": 0}],
     [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "score": 0.9},
      {"image_id": 2, "category_id": 1, "bbox": [1, 1, 10, 10], "score": 0.9}]),
    ("tied scores across images keep image order", [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}],
     [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5},
      {"image_id": 1, "category_id": 1, "bbox": [30, 30, 10, 10], "score": 0.5},
      {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5}]),
    ("area field, not box area, decides the range", [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 100, 100], "area": 500, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [200, 200, 20, 20], "area": 9000, "iscrowd": 0}],
     [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 100, 100], "score": 0.7},
      {"image_id": 1, "category_id": 2, "bbox": [300, 300, 5, 5], "score": 0.6}]),
    ("IoU exactly 0.5 and 0.75", [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 10], "area": 400, "iscrowd": 0}],
     [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 5], "score": 0.9},
      {"image_id": 2, "category_id": 1, "bbox": [0, 0, 30, 10], "score": 0.8}]),
])
def test_hand_cases_match_pycocotools(tmp_path, name, anns, dets):
    gt = _one_image_gt(anns)
    ref_stats, ref_cat = reference(gt, dets)
    stats, per_cat = detkit_stats(tmp_path, gt, dets)
    np.testing.assert_allclose(stats, ref_stats, rtol=0, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(per_cat, ref_cat, rtol=0, atol=1e-12, err_msg=name)


def test_annotation_id_zero_counts_as_false_positive(tmp_path):
    """Documented quirk: the perfect detection of annotation 0 is a FP and that object is missed."""
    gt = _one_image_gt([{"id": 0, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 1}]))
    rep = evaluate_files(tmp_path / "gt.json", tmp_path / "dt.json", metric="coco", conf_threshold=0).report
    assert rep.stats[0] == 0.0
    assert (rep.classes[0].tp, rep.classes[0].fp, rep.classes[0].fn) == (0, 1, 1)


def test_empty_results_give_zero_not_crash():
    gt = [ImageGT(1, [[0, 0, 10, 10]], [0]), ImageGT(2, np.zeros((0, 4)), [])]
    rep = evaluate(gt, [], ["a", "b"], metric="coco")
    assert rep.stats[0] == 0.0 and rep.stats[3] == 0.0  # a 100 px^2 object: small
    assert rep.stats[4] == -1.0 and rep.stats[5] == -1.0 and rep.stats[8] == 0.0
    assert np.isnan(rep.classes[1].ap)


def test_table_and_image_list_inputs_agree():
    rng = np.random.default_rng(0)
    gts, dets = [], []
    for i in range(5):
        b = rng.uniform(0, 100, (4, 2))
        boxes = np.concatenate([b, b + rng.uniform(5, 50, (4, 2))], axis=1)
        gts.append(ImageGT(f"im{i}", boxes, rng.integers(0, 3, 4)))
        dets.append(ImageDets(f"im{i}", boxes + rng.normal(0, 3, boxes.shape), rng.uniform(size=4), rng.integers(0, 3, 4)))
    a = evaluate(gts, dets, ["x", "y", "z"], metric="coco")
    from detkit.metrics.records import tables_from_images
    g, d = tables_from_images(gts, dets)
    assert isinstance(g, GTTable) and isinstance(d, DetTable)
    b = evaluate(g, d, ["x", "y", "z"], metric="coco")
    assert a.stats == b.stats


# ----------------------------------------------------------------------------- property-based

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_box = st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(1, 6), st.integers(1, 6))  # coarse grid: IoU ties


@st.composite
def coco_cases(draw):
    n_img = draw(st.integers(1, 3))
    anns, dets = [], []
    first_id = draw(st.sampled_from([0, 1]))
    for iid in range(1, n_img + 1):
        for _ in range(draw(st.integers(0, 4))):
            x, y, w, h = draw(_box)
            s = draw(st.sampled_from([1.0, 8.0]))  # x8: medium / large objects too
            anns.append({"id": first_id + len(anns), "image_id": iid, "category_id": draw(st.sampled_from([1, 2])),
                         "bbox": [x * s, y * s, w * s, h * s], "area": draw(st.sampled_from([w * h * s * s, 2000.0, 100.0])),
                         "iscrowd": int(draw(st.integers(0, 5)) == 0)})
        for _ in range(draw(st.integers(0, 5))):
            x, y, w, h = draw(_box)
            s = draw(st.sampled_from([1.0, 8.0]))
            dets.append({"image_id": iid, "category_id": draw(st.sampled_from([1, 2, 3])),
                         "bbox": [x * s, y * s, w * s, h * s], "score": draw(st.sampled_from([0.9, 0.5, 0.5, 0.1]))})
    gt = {"images": [{"id": i} for i in range(1, n_img + 1)],
          "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)], "annotations": anns}
    return gt, dets


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=coco_cases())
def test_property_matches_pycocotools(tmp_path, case):
    gt, dets = case
    ref_stats, ref_cat = reference(gt, dets)
    stats, per_cat = detkit_stats(tmp_path, gt, dets)
    np.testing.assert_allclose(stats, ref_stats, rtol=0, atol=1e-12)
    np.testing.assert_allclose(per_cat, ref_cat, rtol=0, atol=1e-12)
