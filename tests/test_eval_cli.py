"""``detkit eval`` end to end: every ground-truth and prediction format, JSON, plots, bad inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detkit.cli import main
from detkit.evaluate.run import evaluate_files
from detkit.metrics.records import ImageDets, ImageGT
from detkit.metrics.evaluator import evaluate

NAMES = ["cat", "dog"]


def write_voc_root(root: Path) -> dict:
    """A tiny VOC year root: 3 images, integer boxes, one difficult object; returns the raw truth."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    truth = {
        "a": (64, 48, [("cat", 10, 10, 30, 40, 0), ("dog", 35, 5, 60, 45, 0)]),
        "b": (80, 60, [("cat", 1, 1, 20, 20, 0), ("cat", 40, 30, 79, 59, 1)]),
        "c": (50, 50, []),
    }
    for stem, (w, h, objs) in truth.items():
        Image.new("RGB", (w, h), (120, 120, 120)).save(root / "JPEGImages" / f"{stem}.jpg")
        objects = "".join(
            f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for n, x1, y1, x2, y2, d in objs)
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objects}</annotation>")
    (root / "ImageSets" / "Main" / "test.txt").write_text("a\nb\n")
    return truth


# detections in VOC 1-based pixels: (image, class, score, x1, y1, x2, y2)
DETS = [("a", "cat", 0.9, 11, 10, 30, 41), ("a", "cat", 0.8, 10, 10, 30, 40), ("a", "dog", 0.7, 36, 6, 58, 44),
        ("b", "cat", 0.6, 40, 30, 79, 59), ("b", "cat", 0.5, 2, 2, 20, 20), ("c", "dog", 0.4, 5, 5, 20, 20),
        ("b", "dog", 0.3, 1, 1, 20, 20)]


def reference_voc(truth: dict, metric: str, plus_one: bool = True, stems=None) -> float:
    stems = stems or list(truth)
    gts = [ImageGT(s, np.array([o[1:5] for o in truth[s][2]], float).reshape(-1, 4),
                   [NAMES.index(o[0]) for o in truth[s][2]], [bool(o[5]) for o in truth[s][2]]) for s in stems]
    dets = [ImageDets(s, np.array([d[3:] for d in DETS if d[0] == s], float).reshape(-1, 4),
                      [d[2] for d in DETS if d[0] == s], [NAMES.index(d[1]) for d in DETS if d[0] == s])
            for s in stems]
    return evaluate(gts, dets, NAMES, metric=metric, plus_one=plus_one).map


def write_comp4(d: Path) -> None:
    d.mkdir()
    for n in NAMES:
        (d / f"comp4_det_test_{n}.txt").write_text(
            "".join(f"{img} {s} {x1} {y1} {x2} {y2}\n" for img, c, s, x1, y1, x2, y2 in DETS if c == n))


def write_yolo_preds(d: Path, truth: dict) -> None:
    """The same detections as continuous normalised boxes (VOC x1 - 1 .. x2)."""
    d.mkdir()
    for stem, (w, h, _) in truth.items():
        lines = []
        for img, c, s, x1, y1, x2, y2 in DETS:
            if img == stem:
                X1, Y1 = x1 - 1, y1 - 1
                lines.append(f"{NAMES.index(c)} {(X1 + x2) / 2 / w!r} {(Y1 + y2) / 2 / h!r} {(x2 - X1) / w!r} "
                             f"{(y2 - Y1) / h!r} {s}\n")
        (d / f"{stem}.txt").write_text("".join(lines))


@pytest.mark.parametrize("metric", ["voc", "voc07"])
def test_voc_root_with_comp4_txt_yolo_and_coco_predictions(tmp_path, capsys, metric):
    truth = write_voc_root(tmp_path / "VOC2007")
    ref = reference_voc(truth, metric)
    write_comp4(tmp_path / "comp4")
    write_yolo_preds(tmp_path / "yolo", truth)
    (tmp_path / "txt").mkdir()
    for stem in truth:
        (tmp_path / "txt" / f"{stem}.txt").write_text(
            "".join(f"{c} {s} {x1} {y1} {x2} {y2}\n" for img, c, s, x1, y1, x2, y2 in DETS if img == stem))
    (tmp_path / "res.json").write_text(json.dumps([
        {"image_id": img, "category_id": c, "bbox": [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1], "score": s}
        for img, c, s, x1, y1, x2, y2 in DETS]))
    for pred in ("comp4", "yolo", "txt", "res.json"):
        out = tmp_path / f"{pred}.out.json"
        rc = main(["eval", "--metric", metric, "--gt", str(tmp_path / "VOC2007"), "--pred", str(tmp_path / pred),
                   "--conf", "0", "--json", str(out)])
        assert rc == 0
        d = json.loads(out.read_text())
        assert d["metric"] == metric and d["map"] == pytest.approx(ref, abs=1e-12), pred
        assert [c["name"] for c in d["classes"]] == NAMES
        cat = d["classes"][0]
        # cat: 4 non-difficult... a:1, b:1 -> n_gt 2; dets: a .9 TP, a .8 FP (duplicate), b .6 ignored (difficult),
        # b .5 TP (+1 IoU 19*19/(20*20) > .5)
        assert (cat["n_gt"], cat["tp"], cat["fp"], cat["fn"], cat["n_det"]) == (2, 2, 1, 0, 4)
        assert "+1 pixel IoU" in d["convention"]
    text = capsys.readouterr().out
    assert "difficult objects: ignored" in text and "mAP =" in text
    # --no-plus-one changes the numbers; --image-set restricts the images
    rc = main(["eval", "--metric", metric, "--gt", str(tmp_path / "VOC2007"), "--pred", str(tmp_path / "comp4"),
               "--no-plus-one", "--json", str(tmp_path / "np1.json")])
    assert json.loads((tmp_path / "np1.json").read_text())["map"] == pytest.approx(
        reference_voc(truth, metric, plus_one=False), abs=1e-12)
    with pytest.raises(Exception):
        evaluate_files(tmp_path / "VOC2007", tmp_path / "comp4", image_set="test")  # 'c' has detections
    (tmp_path / "res_ab.json").write_text(json.dumps([
        {"image_id": img, "category_id": c, "bbox": [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1], "score": s}
        for img, c, s, x1, y1, x2, y2 in DETS if img != "c"]))
    r = evaluate_files(tmp_path / "VOC2007", tmp_path / "res_ab.json", metric=metric, image_set="test")
    assert r.report.n_images == 2 and r.report.map == pytest.approx(reference_voc(truth, metric, stems=["a", "b"]))


def write_yolo_dataset(root: Path) -> tuple[list, list]:
    """images/ + labels/ + val.txt + obj.names + obj.data (darknet layout); returns ImageGT list (continuous px)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(3)
    gts, paths = [], []
    for i in range(4):
        w, h = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        p = root / "images" / f"im{i}.png"
        Image.new("RGB", (w, h)).save(p)
        k = int(rng.integers(0, 4))
        cls = rng.integers(0, 2, k)
        cxcy = rng.uniform(0.3, 0.7, (k, 2))
        wh = rng.uniform(0.1, 0.4, (k, 2))
        (root / "labels" / f"im{i}.txt").write_text(
            "".join(f"{c} {float(a[0])!r} {float(a[1])!r} {float(b[0])!r} {float(b[1])!r}\n" for c, a, b in zip(cls, cxcy, wh)))
        boxes = np.concatenate([(cxcy - wh / 2) * [w, h], (cxcy + wh / 2) * [w, h]], axis=1)
        gts.append((f"im{i}", w, h, boxes, cls))
        paths.append(f"images/im{i}.png")
    (root / "val.txt").write_text("\n".join(paths) + "\n")
    (root / "obj.names").write_text("\n".join(NAMES) + "\n")
    (root / "obj.data").write_text("classes = 2\ntrain = val.txt\nvalid = val.txt\nnames = obj.names\n")
    return gts, paths


def test_yolo_dataset_with_yolo_predictions_coco_and_voc(tmp_path):
    gts, _ = write_yolo_dataset(tmp_path / "ds")
    rng = np.random.default_rng(5)
    (tmp_path / "pred").mkdir()
    ref_g, ref_d = [], []
    for stem, w, h, boxes, cls in gts:
        jit = boxes + rng.normal(0, 2, boxes.shape)
        scores = rng.uniform(size=len(cls))
        cx, cy = (jit[:, 0] + jit[:, 2]) / 2 / w, (jit[:, 1] + jit[:, 3]) / 2 / h
        bw, bh = (jit[:, 2] - jit[:, 0]) / w, (jit[:, 3] - jit[:, 1]) / h
        (tmp_path / "pred" / f"{stem}.txt").write_text(
            "".join(f"{c} {float(a)!r} {float(b)!r} {float(e)!r} {float(f)!r} {float(s)!r}\n"
                    for c, a, b, e, f, s in zip(cls, cx, cy, bw, bh, scores)))
        ref_g.append(ImageGT(stem, boxes, cls))
        ref_d.append(ImageDets(stem, np.stack([cx * w - bw * w / 2, cy * h - bh * h / 2, cx * w + bw * w / 2,
                                               cy * h + bh * h / 2], 1).reshape(-1, 4), scores, cls))
    for metric in ("voc", "coco"):
        rep = evaluate_files(tmp_path / "ds" / "obj.data", tmp_path / "pred", metric=metric).report
        ref = evaluate(ref_g, ref_d, NAMES, metric=metric)
        assert rep.map == pytest.approx(ref.map, abs=1e-9)
        assert "no +1 pixel" in rep.convention or metric == "coco"
    # a list file needs --names
    with pytest.raises(Exception, match="names"):
        evaluate_files(tmp_path / "ds" / "val.txt", tmp_path / "pred")
    rep2 = evaluate_files(tmp_path / "ds" / "val.txt", tmp_path / "pred", names=NAMES).report
    assert rep2.map == pytest.approx(evaluate(ref_g, ref_d, NAMES).map, abs=1e-9)


def test_coco_cli_json_and_plots(tmp_path, capsys):
    gt = {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
          "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "bird"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
                          {"id": 2, "image_id": 2, "category_id": 7, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 0},
                          {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 90, 90], "area": 8100, "iscrowd": 1}]}
    dets = [{"image_id": 1, "category_id": 3, "bbox": [11, 10, 20, 20], "score": 0.9},
            {"image_id": 2, "category_id": 7, "bbox": [50, 52, 40, 40], "score": 0.8},
            {"image_id": 2, "category_id": 3, "bbox": [5, 5, 30, 30], "score": 0.7},
            {"image_id": 2, "category_id": 9, "bbox": [5, 5, 30, 30], "score": 0.6}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    out, plots = tmp_path / "r.json", tmp_path / "plots"
    assert main(["eval", "--metric", "coco", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "dt.json"),
                 "--json", str(out), "--plots", str(plots)]) == 0
    d = json.loads(out.read_text())
    assert d["metric"] == "coco" and len(d["stats"]) == 12 and d["map"] == d["stats"][0]
    assert [c["name"] for c in d["classes"]] == ["cat", "dog", "bird"]
    assert d["classes"][2]["ap"] is None and d["classes"][2]["fp"] == 1
    assert {"name", "ap", "tp", "fp", "fn", "precision", "recall", "n_gt", "n_det"} <= set(d["classes"][0])
    names = sorted(p.name for p in plots.iterdir())
    assert {"pr_all.png", "pr_cat.png", "pr_dog.png", "pr_bird.png", "confusion_matrix.png", "pr_points.csv"} <= set(names)
    assert (plots / "pr_all.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = (plots / "pr_points.csv").read_text().splitlines()
    assert csv[0] == "class,point,recall,precision,score" and len(csv) == 1 + 3 * 101
    printed = capsys.readouterr().out
    assert "COCO bbox" in printed and "AP50" in printed


def test_confusion_matrix_counts():
    from detkit.metrics.records import tables_from_images
    from detkit.metrics.confusion import confusion_matrix
    g, d = tables_from_images(
        [ImageGT("a", [[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0, 1, 1])],
        [ImageDets("a", [[0, 0, 10, 10], [20, 20, 30, 30], [80, 80, 90, 90], [0, 0, 10, 10]], [.9, .8, .7, .1], [0, 0, 1, 1])])
    cm = confusion_matrix(g, d, 2, 0.5, 0.25)
    assert cm.tolist() == [[1, 0, 0], [1, 0, 1], [0, 1, 0]]


def _run_err(capsys, *args) -> str:
    assert main(["eval", *map(str, args)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("detkit: error: ") and err.count("\n") == 1
    return err


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    truth = write_voc_root(tmp_path / "VOC")
    write_comp4(tmp_path / "comp4")
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": 1, "width": 10, "height": 10}], "categories": [{"id": 1, "name": "a"}],
                              "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}]}))
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 1,\n "category_id": 1, "bbox": [0, 0, 5, 5], "score": }]')
    assert f"{bad}:2:" in _run_err(capsys, "--metric", "coco", "--gt", gt, "--pred", bad)
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, "x", 5], "score": 1}]))
    assert "results[0]" in _run_err(capsys, "--gt", gt, "--pred", bad)
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}]))
    assert "missing 'score'" in _run_err(capsys, "--gt", gt, "--pred", bad)
    bad.write_text(json.dumps([{"image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1}]))
    assert "image_id 99" in _run_err(capsys, "--gt", gt, "--pred", bad)
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": float("nan")}]).replace(
        "NaN", '"nan"'))
    assert "score" in _run_err(capsys, "--gt", gt, "--pred", bad)
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"images": [{"id": 1, "width": 10 ** 12, "height": 10 ** 12}], "categories": [],
                                "annotations": []}))
    assert "absurd size" in _run_err(capsys, "--gt", huge, "--pred", bad)
    (tmp_path / "comp4" / "comp4_det_test_cat.txt").write_text("a 0.9 1 2 3 4\na 0.8 1 2 3\n")
    assert "comp4_det_test_cat.txt:2:" in _run_err(capsys, "--gt", tmp_path / "VOC", "--pred", tmp_path / "comp4")
    (tmp_path / "comp4" / "comp4_det_test_cat.txt").write_text("zz 0.9 1 2 3 4\n")
    assert "comp4_det_test_cat.txt:1:" in _run_err(capsys, "--gt", tmp_path / "VOC", "--pred", tmp_path / "comp4")
    (tmp_path / "yolo").mkdir()
    (tmp_path / "yolo" / "a.txt").write_text("0 0.5 0.5 0.2 0.2 0.9\n7 0.5 0.5 0.2 0.2 0.9\n")
    assert "a.txt:2:" in _run_err(capsys, "--gt", tmp_path / "VOC", "--pred", tmp_path / "yolo", "--names",
                                  _names(tmp_path))
    (tmp_path / "yolo" / "a.txt").write_text("0 0.5 0.5 0.2 0.2 0.9\n")
    (tmp_path / "yolo" / "zz.txt").write_text("0 0.5 0.5 0.2 0.2 0.9\n")
    assert "zz" in _run_err(capsys, "--gt", tmp_path / "VOC", "--pred", tmp_path / "yolo")
    assert "not found" in _run_err(capsys, "--gt", tmp_path / "nope", "--pred", tmp_path / "yolo")
    assert "--gt and --pred" in _run_err(capsys, "--gt", gt)
    (tmp_path / "dt0.json").write_text("[]")
    assert "0.50, 0.55" in _run_err(capsys, "--metric", "coco", "--iou", "0.3", "--gt", gt, "--pred", tmp_path / "dt0.json")
    assert truth  # the VOC root was used


def _names(tmp_path: Path) -> Path:
    p = tmp_path / "names.txt"
    p.write_text("\n".join(NAMES) + "\n")
    return p


def test_empty_results_json_is_the_defined_answer(tmp_path):
    gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text("[]")
    rep = evaluate_files(tmp_path / "gt.json", tmp_path / "dt.json", metric="coco").report
    assert rep.stats == (0.0, 0.0, 0.0, -1.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0, -1.0)


def test_cli_on_documented_fixture_sets(shared, capsys):
    """The two documented fixture sets print their documented numbers (real tier)."""
    ev = shared / "evaldata"
    exp = json.loads((ev / "EXPECTED.json").read_text())
    assert main(["eval", "--metric", "coco", "--gt", str(ev / "faster_coco_eval/tests/dataset/cocoapi/instances_val2014_100.json"),
                 "--pred", str(ev / "cocoapi/results/instances_val2014_fakebbox100_results.json")]) == 0
    out = capsys.readouterr().out
    for name, v in zip(("AP", "AP50", "AR100"), (exp["coco_val2014_100_bbox"]["documented"][i] for i in (0, 1, 8))):
        assert f"{name:<6} = {v:.6f}" in out
    toy = ev / "review_object_detection_metrics/toyexample"
    for metric, key in (("voc", "t0.5_allpoint"), ("voc07", "t0.5_11pt")):
        assert main(["eval", "--metric", metric, "--gt", str(toy / "gts_vocpascal_format"),
                     "--pred", str(toy / "dets_classname_abs_xyx2y2")]) == 0
        out = capsys.readouterr().out
        assert f"mAP = {exp['voc_review_toyexample_cat']['documented'][key] / 100:.4f}" in out


test_cli_on_documented_fixture_sets = pytest.mark.real(test_cli_on_documented_fixture_sets)
