"""Fuzz the evaluation inputs: COCO ground-truth JSON, COCO results JSON (mutated valid documents
with NaN/inf, huge ids, wrong types, missing keys), per-image txt / comp4 prediction files, and
the whole ``evaluate_files`` pipeline (VOC and COCO metrics). Each input is scored or refused
with a DetkitError (one line); nothing else escapes.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fuzzlib
from detkit.evaluate.run import evaluate_files
from detkit.evaluate.ground_truth import load_coco_gt, load_ground_truth
from detkit.evaluate.predictions import load_predictions
from detkit.errors import AnnotationError, DetkitError

ODD = st.sampled_from([None, True, False, 0, -1, 1, 2, 10**30, -(10**30), 2**63, 2**64, 1.5, -0.0,
                       math.nan, math.inf, -math.inf, 1e308, "", "1", "x", "\u732b", [], {}, [1, 2, 3, 4],
                       [1, 2, 3], [[1, 2, 3, 4]], ["1", "2", "3", "4"], [math.nan, 0, 1, 1], [0, 0, -5, -5],
                       {"id": 1}, [[[[[]]]]]])


@st.composite
def coco_gt(draw) -> dict:
    n_img = draw(st.integers(0, 4))
    cats = [{"id": c, "name": f"c{c}"} for c in draw(st.lists(st.integers(1, 4), min_size=1, max_size=3,
                                                                unique=True))]
    images = [{"id": i + 1, "width": draw(st.integers(1, 200)), "height": draw(st.integers(1, 200)),
               "file_name": f"{i + 1}.jpg"} for i in range(n_img)]
    anns = []
    for k in range(draw(st.integers(0, 6))):
        if not images:
            break
        x, y = draw(st.floats(0, 150)), draw(st.floats(0, 150))
        w, h = draw(st.floats(0, 80)), draw(st.floats(0, 80))
        anns.append({"id": k + 1, "image_id": draw(st.sampled_from(images))["id"],
                     "category_id": draw(st.sampled_from(cats))["id"], "bbox": [x, y, w, h], "area": w * h,
                     "iscrowd": draw(st.sampled_from([0, 0, 0, 1]))})
    return {"images": images, "annotations": anns, "categories": cats}


@st.composite
def coco_results(draw, gt: dict) -> list:
    img_ids = [im["id"] for im in gt["images"]] or [1]
    cat_ids = [c["id"] for c in gt["categories"]]
    out = []
    for _ in range(draw(st.integers(0, 8))):
        out.append({"image_id": draw(st.sampled_from(img_ids)), "category_id": draw(st.sampled_from(cat_ids)),
                    "bbox": [draw(st.floats(-10, 150)), draw(st.floats(-10, 150)), draw(st.floats(0, 80)),
                             draw(st.floats(0, 80))], "score": draw(st.floats(0, 1))})
    return out


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutate(draw, doc):
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(0, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            return draw(ODD) if draw(st.booleans()) else doc
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["replace", "replace", "delete", "dup"]))
        if op == "replace":
            parent[path[-1]] = copy.deepcopy(draw(ODD))
        elif op == "delete":
            del parent[path[-1]]
        elif op == "dup" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[path[-1]]))
    return doc


def check_eval(tmp: Path, gt_doc, res_doc) -> None:
    gt_path, res_path = tmp / "gt.json", tmp / "res.json"
    gt_path.write_text(json.dumps(gt_doc, allow_nan=True))
    res_path.write_text(json.dumps(res_doc, allow_nan=True))
    gt, err = fuzzlib.outcome("coco_gt.load", load_coco_gt, gt_path)
    if gt is None:
        return
    dt, err = fuzzlib.outcome("coco_results.load", load_predictions, res_path, gt, "coco")
    if dt is None:
        return
    for metric in ("voc", "coco"):
        run, err = fuzzlib.outcome(f"evaluate.{metric}", evaluate_files, gt_path, res_path, metric)
        if run is not None:
            m = run.report.map
            # -1: no ground truth at all (pycocotools' convention)
            assert m is None or (isinstance(m, float) and (math.isnan(m) or m == -1.0 or 0.0 <= m <= 1.0)), m


@fuzzlib.fast(50)
@given(data=st.data())
def test_coco_gt_and_results(tmp_path, data):
    gt = data.draw(coco_gt())
    res = data.draw(coco_results(gt))
    check_eval(tmp_path, data.draw(mutate(gt)), data.draw(mutate(res)))


@fuzzlib.long()
@given(data=st.data())
def test_coco_gt_and_results_long(tmp_path, data):
    gt = data.draw(coco_gt())
    res = data.draw(coco_results(gt))
    check_eval(tmp_path, data.draw(mutate(gt)), data.draw(mutate(res)))


# --------------------------------------------------------------------------- VOC GT + text predictions

VOC_XML = ("<annotation><filename>{0}.jpg</filename><size><width>100</width><height>80</height></size>"
           "<object><name>cat</name><difficult>0</difficult><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>50</xmax>"
           "<ymax>40</ymax></bndbox></object></annotation>")
FIELD = st.one_of(st.sampled_from(["img1", "img2", "cat", "dog", "0", "1", "0.5", "-1", "nan", "inf", "1e309",
                                   "10", "99", "x", "#"]), st.floats(allow_nan=True).map(repr))


@st.composite
def pred_lines(draw) -> str:
    rows = []
    for _ in range(draw(st.integers(0, 5))):
        rows.append(" ".join(draw(FIELD) for _ in range(draw(st.sampled_from([6, 6, 6, 5, 7])))))
    return "\n".join(rows) + "\n"


def _voc_gt(tmp: Path) -> Path:
    ann = tmp / "Annotations"
    ann.mkdir(exist_ok=True)
    for stem in ("img1", "img2"):
        (ann / f"{stem}.xml").write_text(VOC_XML.format(stem))
    return ann


def check_text_preds(tmp: Path, fmt: str, files: dict[str, str]) -> None:
    gt_dir = _voc_gt(tmp)
    pred = tmp / f"pred_{fmt}"
    pred.mkdir(exist_ok=True)
    for old in pred.iterdir():
        old.unlink()
    for name, text in files.items():
        (pred / name).write_text(text, encoding="utf-8")
    run, err = fuzzlib.outcome(f"predictions.{fmt}", evaluate_files, gt_dir, pred, "voc", None, 0.5, 0.25, None,
                               ">=", fmt)
    if run is not None:
        assert all(0.0 <= ap <= 1.0 or math.isnan(ap) for ap in run.report.ap.values()) if hasattr(
            run.report, "ap") and isinstance(run.report.ap, dict) else True


@fuzzlib.fast(30)
@given(st.sampled_from(["txt", "comp4", "auto"]), pred_lines(), pred_lines())
def test_text_predictions(tmp_path, fmt, a, b):
    names = {"txt": ("img1.txt", "img2.txt"), "auto": ("img1.txt", "zzz.txt"),
             "comp4": ("comp4_det_test_cat.txt", "comp4_det_test_dog.txt")}[fmt]
    check_text_preds(tmp_path, fmt, {names[0]: a, names[1]: b})


@fuzzlib.long()
@given(st.sampled_from(["txt", "comp4", "auto", "yolo"]), pred_lines(), pred_lines())
def test_text_predictions_long(tmp_path, fmt, a, b):
    names = {"txt": ("img1.txt", "img2.txt"), "auto": ("img1.txt", "zzz.txt"), "yolo": ("img1.txt", "img2.txt"),
             "comp4": ("comp4_det_test_cat.txt", "comp4_det_test_dog.txt")}[fmt]
    check_text_preds(tmp_path, fmt, {names[0]: a, names[1]: b})


# --------------------------------------------------------------------------- hostile JSON

@pytest.mark.parametrize("parser", ["default", "json"])
def test_deeply_nested_json_is_refused_not_a_recursion_error(tmp_path, parser):
    from detkit.evaluate.jsonio import read_json  # the parser every COCO reader goes through
    p = tmp_path / "deep.json"
    p.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(AnnotationError) as exc:
        if parser == "default":
            load_ground_truth(p)
        else:
            read_json(p, parser="json")  # the standard library parser raises RecursionError
    fuzzlib.check_one_line(exc.value)


def test_json_claiming_billions_of_elements_stays_bounded(tmp_path):
    """JSON has no size fields: every claim is a literal value. Huge ids, a width of 1e300, and an
    annotation id beyond int64 are refused or carried without allocating anything proportional."""
    doc = {"images": [{"id": 7, "width": 1e300, "height": 10}], "annotations": [], "categories": [{"id": 1}]}
    p = tmp_path / "gt.json"
    p.write_text(json.dumps(doc))
    with fuzzlib.measure_memory() as mem:
        with pytest.raises(AnnotationError, match="absurd size"):
            load_coco_gt(p)
    doc["images"][0].update(id=10**30, width=100)
    doc["annotations"] = [{"id": 2**70, "image_id": 10**30, "category_id": 10**40, "bbox": [0, 0, 1, 1]}]
    p.write_text(json.dumps(doc))
    with fuzzlib.measure_memory() as mem2:
        gt, err = fuzzlib.outcome("coco_gt.hostile", load_coco_gt, p)
    assert gt is not None or isinstance(err, AnnotationError)
    for m in (mem, mem2):
        assert m["traced_peak"] < 1 << 20 and m["rss_delta"] < 32 << 20, m
    fuzzlib.figure("json_huge_claim_traced_peak_bytes", max(mem["traced_peak"], mem2["traced_peak"]))


def test_large_results_file_memory_is_linear(tmp_path):
    """50k results: peak traced memory stays under 4 kB per result (parsed JSON + arrays)."""
    n = 50_000
    gt = {"images": [{"id": i, "width": 640, "height": 480} for i in range(100)], "annotations": [],
          "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    rng = np.random.default_rng(0)
    res = [{"image_id": int(i % 100), "category_id": 1, "bbox": [float(v) for v in rng.random(4) * 100],
            "score": float(rng.random())} for i in range(n)]
    (tmp_path / "res.json").write_text(json.dumps(res))
    del res
    g = load_coco_gt(tmp_path / "gt.json")
    with fuzzlib.measure_memory() as mem:
        dt, _, _ = load_predictions(tmp_path / "res.json", g, "coco")
    assert len(dt.scores) == n
    per = mem["traced_peak"] / n
    fuzzlib.figure("coco_results_50k_traced_peak_bytes", mem["traced_peak"])
    fuzzlib.figure("coco_results_50k_rss_delta_bytes", mem["rss_delta"])
    assert per < 4000, per


@pytest.mark.parametrize("ids", [("a", "b"), (1, 2**63)], ids=["string-ids", "beyond-int64"])
def test_results_with_ids_the_vectorised_path_cannot_map(tmp_path, ids):
    """Regression (found by the fuzzer): string image ids, or an id beyond int64, made the results
    loader raise StopIteration instead of scoring."""
    gt = {"images": [{"id": i, "width": 10, "height": 10} for i in ids],
          "annotations": [{"id": 1, "image_id": ids[0], "category_id": 1, "bbox": [1, 1, 5, 5]}],
          "categories": [{"id": 1, "name": "x"}]}
    res = [{"image_id": ids[0], "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.9}]
    (tmp_path / "g.json").write_text(json.dumps(gt))
    (tmp_path / "r.json").write_text(json.dumps(res))
    assert evaluate_files(tmp_path / "g.json", tmp_path / "r.json", "coco").report.map == pytest.approx(1.0)
    res[0]["image_id"] = "zzz" if isinstance(ids[0], str) else 3
    (tmp_path / "r.json").write_text(json.dumps(res))
    with pytest.raises(DetkitError, match=r"results\[0\]: image_id"):
        evaluate_files(tmp_path / "g.json", tmp_path / "r.json", "coco")


@pytest.mark.parametrize("where", ["category", "annotation_image", "annotation_category"])
def test_unhashable_ids_are_refused(tmp_path, where):
    """Regression (found by the fuzzer): a list as an id raised TypeError (unhashable)."""
    gt = {"images": [{"id": 1, "width": 10, "height": 10}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
          "categories": [{"id": 1, "name": "x"}]}
    res = [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.9}]
    if where == "category":
        gt["categories"][0]["id"] = [1]
    elif where == "annotation_image":
        gt["annotations"][0]["image_id"] = [1]
    else:
        gt["annotations"][0]["category_id"] = {"id": 1}
    (tmp_path / "g.json").write_text(json.dumps(gt))
    (tmp_path / "r.json").write_text(json.dumps(res))
    with pytest.raises(DetkitError) as exc:
        evaluate_files(tmp_path / "g.json", tmp_path / "r.json", "coco")
    fuzzlib.check_one_line(exc.value)
