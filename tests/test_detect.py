"""Predictor and ``detkit detect``: geometry through an oracle model, CLI outputs and error paths,
and (real tier) darknet's own detections on dog.jpg."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import detkit
from detkit.boxes import iou_matrix
from detkit.cli import main
from detkit.infer.predict import Predictor, parse_img_size
from helpers import detect_argv, write_tiny_model


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """detect converts cfg + weights to a cached OpenVINO IR: keep it out of the user's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

class BrightBoxOracle(nn.Module):
    """Stand-in model: reports the extent of the bright (> 0.9) pixels of each input as one box
    of class 1 with score 0.9, in the eval-output format (N, R=1, 5 + 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = []
        for img in x:
            ys, xs = torch.nonzero(img.min(dim=0).values > 0.9, as_tuple=True)
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            rows.append(torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]).float())
        boxes = torch.stack(rows)[:, None, :]  # (N, 1, 4)
        scores = torch.tensor([1.0, 0.0, 0.9]).expand(len(x), 1, 3)
        return torch.cat([boxes, scores], dim=2)


@pytest.mark.parametrize("letterbox", [True, False])
@pytest.mark.parametrize("size", [(300, 200), (160, 240)])
def test_predictor_maps_boxes_back_to_original_pixels(letterbox, size):
    w, h = size
    box = np.array([0.15 * w, 0.3 * h, 0.55 * w, 0.8 * h]).round()
    img = np.zeros((h, w, 3), np.uint8)
    img[int(box[1]):int(box[3]), int(box[0]):int(box[2])] = 255
    pred = Predictor(BrightBoxOracle(), img_size="320x192", letterbox=letterbox)
    det = pred.predict([img, img[:, ::-1].copy()])
    assert [len(d) for d in det] == [1, 1]
    assert det[0].class_ids.tolist() == [1] and det[0].scores[0] == pytest.approx(0.9)
    tol = 1.5 * max(w / 320, h / 192) + 0.5  # one network pixel, in source pixels
    np.testing.assert_allclose(det[0].boxes[0], box, atol=tol)
    mirrored = np.array([w - box[2], box[1], w - box[0], box[3]])
    np.testing.assert_allclose(det[1].boxes[0], mirrored, atol=tol)


def test_predict_paths_keeps_order_and_reports_bad_files(tmp_path):
    paths = []
    for i in range(5):
        img = np.zeros((40 + 8 * i, 60, 3), np.uint8)
        img[10:30, 5 + i:25 + i] = 255
        p = tmp_path / f"图{i}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    paths.insert(2, tmp_path / "bad.jpg")
    paths.append(tmp_path / "missing.jpg")
    results = list(Predictor(BrightBoxOracle(), img_size=64).predict_paths(paths, batch_size=2, keep_images=True))
    assert [r.path for r in results] == paths
    assert [r.error is None for r in results] == [True, True, False, True, True, True, False]
    good = [r for r in results if r.error is None]
    for i, r in enumerate(good):
        assert r.image.shape == (40 + 8 * i, 60, 3)
        np.testing.assert_allclose(r.detections.boxes[0], [5 + i, 10, 25 + i, 30], atol=1.5)
    assert "not a recognised image" in str(results[2].error) and "not found" in str(results[6].error)


def test_predict_paths_boxes_follow_exif_orientation(tmp_path):
    """A photo stored landscape with EXIF orientation 6 (rotate 90 clockwise) is detected in the
    displayed (portrait) frame, the frame annotation tools and viewers use."""
    stored = np.zeros((60, 100, 3), np.uint8)
    stored[10:30, 20:50] = 255  # stored box x 20..50, y 10..30
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rot.jpg", quality=100, exif=exif)
    (res,) = Predictor(BrightBoxOracle(), img_size=128).predict_paths([tmp_path / "rot.jpg"], keep_images=True)
    assert res.image.shape == (100, 60, 3)
    # clockwise rotation: displayed x = H - 1 - stored y (continuous: 60 - y), displayed y = stored x
    np.testing.assert_allclose(res.detections.boxes[0], [60 - 30, 20, 60 - 10, 50], atol=1.5)


def test_parse_img_size():
    assert parse_img_size(416) == (416, 416)
    assert parse_img_size("608x352") == (608, 352)
    assert parse_img_size((320, 256)) == (320, 256)
    for bad in ("400", "0", "abc", "32x33", -32):
        with pytest.raises(ValueError):
            parse_img_size(bad)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-class tiny darknet model (cfg says 80 classes; names decide) whose head fires everywhere."""
    d = tmp_path_factory.mktemp("tiny")
    (d / "two.names").write_text("圆 circle\nsquare\n")
    # objectness ~0.98, class 0 ~0.95
    model = write_tiny_model(d, cfg_classes=80, num_classes=2, head_scale=0.1, zero_bias=True,
                             head_bias=(4.0, 3.0, -4.0))
    assert model.layers[3].conv.out_channels == 21  # (2 + 5) * 3 filters
    imgs = d / "images"
    (imgs / "子目录").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), np.uint8)).save(imgs / "狗 dog.jpg")
    Image.fromarray(rng.integers(0, 255, (70, 50), np.uint8), mode="L").save(imgs / "子目录" / "grey.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), np.uint8)).convert("CMYK").save(imgs / "cmyk.jpg")
    return d


def _detect(tiny: Path, out: Path, *extra: str) -> int:
    return main(detect_argv(tiny, out, *extra))


def test_cli_detect_folder_with_non_ascii_names(tiny, tmp_path, capsys):
    out = tmp_path / "结果"
    assert _detect(tiny, out, "--source", str(tiny / "images"), "--batch", "2") == 0
    printed = capsys.readouterr().out
    assert "3 image(s) processed" in printed and "0 unreadable" in printed
    assert {p.name for p in out.iterdir()} == {"狗 dog.jpg", "grey.png", "cmyk.jpg", "detections.json"}
    assert Image.open(out / "狗 dog.jpg").size == (80, 48)
    assert Image.open(out / "grey.png").size == (50, 70)
    entries = json.loads((out / "detections.json").read_text(encoding="utf-8"))
    assert entries, "the tiny model's head is biased to fire everywhere"
    sizes = {"狗 dog.jpg": (80, 48), "grey.png": (50, 70), "cmyk.jpg": (30, 30)}
    for e in entries:
        assert set(e) == {"image", "class_id", "class_name", "score", "box_xyxy"}
        assert Path(e["image"]).name in sizes
        assert Path(e["image"]).exists()  # the path as found under --source
        assert e["class_id"] == 0 and e["class_name"] == "圆 circle"
        assert 0.25 < e["score"] <= 1.0
        w, h = sizes[Path(e["image"]).name]
        x1, y1, x2, y2 = e["box_xyxy"]
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
    assert "圆 circle" in printed


def test_cli_detect_list_file_reports_and_skips_unreadable(tiny, tmp_path, capsys):
    good = tiny / "images" / "狗 dog.jpg"
    data = good.read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "list.txt").write_text(f"{good}\nhalf.jpg\nmissing.png\n{good}\n", encoding="utf-8")
    out = tmp_path / "out"
    assert _detect(tiny, out, "--source", str(tmp_path / "list.txt"), "--resize") == 0
    cap = capsys.readouterr()
    skipped = [ln for ln in cap.err.splitlines() if ln.startswith("skipped:")]
    assert len(skipped) == 2
    assert "half.jpg" in skipped[0] and "truncated" in skipped[0]
    assert "missing.png" in skipped[1] and "not found" in skipped[1]
    assert "2 image(s) processed" in cap.out and "2 unreadable image(s) skipped" in cap.out
    assert {p.name for p in out.iterdir()} == {"狗 dog.jpg", "狗 dog_2.jpg", "detections.json"}


def test_cli_detect_all_unreadable_fails(tiny, tmp_path, capsys):
    (tmp_path / "x.jpg").write_bytes(b"")
    assert _detect(tiny, tmp_path / "out", "--source", str(tmp_path / "x.jpg")) == 1
    assert "empty" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "detections.json").read_text()) == []


@pytest.mark.parametrize("extra,message", [
    (["--classes", "3"], "--classes 3 but the names file has 2 names"),
    (["--img-size", "400"], "multiples of 32"),
    (["--conf", "1.5"], "--conf"),
    (["--source", "/nonexistent/dir"], "source not found"),
    (["--compile", "--no-fast"], "--compile applies to the fast path"),
    (["--precision", "fp16"] if not torch.cuda.is_available() else ["--batch", "0"],
     "fp16 is for CUDA" if not torch.cuda.is_available() else "--batch"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--nms", "0"], "cuda" if not torch.cuda.is_available() else "--nms"),
])
def test_cli_detect_user_errors_are_one_line(tiny, tmp_path, capsys, extra, message):
    args = ["--source", str(tiny / "images")] if "--source" not in extra else []
    assert _detect(tiny, tmp_path / "out", *args, *extra) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("detkit: error:") and message in err[0]


def test_cli_detect_refuses_to_overwrite_inputs(tiny, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "a.png")
    before = (folder / "a.png").read_bytes()
    assert _detect(tiny, folder, "--source", str(folder)) == 1
    assert "would overwrite" in capsys.readouterr().err
    assert (folder / "a.png").read_bytes() == before and not (folder / "detections.json").exists()


def test_cli_detect_names_not_matching_weights(tiny, tmp_path, capsys):
    (tmp_path / "three.names").write_text("a\nb\nc\n")
    code = main(["detect", "--cfg", str(tiny / "tiny.cfg"), "--weights", str(tiny / "tiny.weights"),
                 "--names", str(tmp_path / "three.names"), "--source", str(tiny / "images"),
                 "--out", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("detkit: error:") and "holds 2 classes" in err[-1] and "has 3 names" in err[-1]
    assert not (tmp_path / "out").exists()


def test_cli_error_from_a_fresh_process(tiny, tmp_path):
    """The console entry point prints one line and exits non-zero (no traceback)."""
    proc = subprocess.run(
        [sys.executable, "-m", "detkit", "detect", "--cfg", str(tiny / "tiny.cfg"),
         "--weights", str(tmp_path / "none.weights"), "--names", str(tiny / "two.names"),
         "--source", str(tiny / "images"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"detkit: error: {tmp_path / 'none.weights'}: weights file not found"]


# ----------------------------------------------------------------------------- real tier

# darknet `detector test cfg/yolov3-tiny.cfg yolov3-tiny.weights data/dog.jpg` (plain resize, 0.25):
# class, left, top, width, height (pixels), score
DARKNET_DOG = [("dog", 124, 220, 258, 298, 0.81), ("car", 465, 83, 222, 89, 0.71),
               ("truck", 530, 95, 100, 67, 0.62), ("bicycle", 229, 196, 330, 249, 0.38)]


@pytest.mark.real
def test_real_detect_dog_matches_darknet(shared, repo, tmp_path, capsys):
    code = main(["detect", "--cfg", str(repo / "cfg" / "yolov3-tiny.cfg"),
                 "--weights", str(shared / "weights" / "yolov3-tiny.weights"),
                 "--names", str(shared / "weights" / "coco.names"),
                 "--source", str(shared / "images" / "dog.jpg"), "--out", str(tmp_path),
                 "--resize", "--conf", "0.25", "--device", "cpu"])
    assert code == 0
    entries = json.loads((tmp_path / "detections.json").read_text())
    for name, left, top, w, h, score in DARKNET_DOG:
        mine = [e for e in entries if e["class_name"] == name]
        assert mine, f"darknet finds a {name}, detkit does not"
        ious = iou_matrix(np.array([[left, top, left + w, top + h]]), np.array([e["box_xyxy"] for e in mine]))[0]
        best = int(np.argmax(ious))
        assert ious[best] >= 0.8, (name, mine[best], ious[best])
        # the issue allows 0.07; --resize reproduces darknet's resize_image, so scores agree with
        # darknet's printed percentages up to their rounding
        assert abs(mine[best]["score"] - score) <= 0.015, (name, mine[best]["score"], score)
    assert (tmp_path / "dog.jpg").is_file()
    # nothing else above threshold except darknet's own "lower-scored truck/car pair"
    assert len(entries) <= 6


# ----------------------------------------------------------------------------- --save-txt -> detkit eval


def test_save_txt_round_trips_through_detkit_eval(tiny, tmp_path, capsys):
    """``--save-txt`` files read back by ``detkit eval`` give detections.json's boxes, and the same
    mAP as a COCO results file written from detections.json (an independent reader)."""
    from detkit.evaluate.ground_truth import load_ground_truth
    from detkit.evaluate.predictions import load_predictions

    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "labels").mkdir()
    rng = np.random.default_rng(1)
    sizes = {"a": (120, 90), "b": (64, 150), "c": (200, 200)}
    for stem, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(ds / "images" / f"{stem}.jpg", quality=95)
        (ds / "labels" / f"{stem}.txt").write_text("0 0.5 0.5 0.4 0.5\n1 0.3 0.3 0.2 0.2\n")
    # an EXIF-rotated photo: detect and eval must agree on the displayed (rotated) frame
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 255, (60, 100, 3), np.uint8)).save(ds / "images" / "rot.jpg", exif=exif)
    (ds / "labels" / "rot.txt").write_text("0 0.5 0.5 0.6 0.3\n")
    sizes["rot"] = (60, 100)
    (ds / "val.txt").write_text("".join(f"images/{s}.jpg\n" for s in sizes))

    out = tmp_path / "out"
    assert _detect(tiny, out, "--source", str(ds / "val.txt"), "--save-txt", "--no-images", "--conf", "0.5",
                   "--no-fast") == 0
    capsys.readouterr()
    assert sorted(p.name for p in (out / "labels").iterdir()) == sorted(f"{s}.txt" for s in sizes)
    entries = json.loads((out / "detections.json").read_text(encoding="utf-8"))
    assert len(entries) > 8

    # the files read back by eval's YOLO prediction reader equal detections.json
    gt = load_ground_truth(ds / "val.txt", ["圆 circle", "square"])
    dt, voc_px, _ = load_predictions(out / "labels", gt, "yolo")
    assert not voc_px and len(dt.scores) == len(entries)
    stems = [str(i) for i in gt.table.image_ids]
    got = sorted((stems[i], int(c), round(float(s), 5), *np.round(b, 2))
                 for i, c, s, b in zip(dt.image_index, dt.labels, dt.scores, dt.xyxy()))
    want = sorted((Path(e["image"]).stem, e["class_id"], round(e["score"], 5), *np.round(e["box_xyxy"], 2))
                  for e in entries)
    assert len(got) == len(want)
    for g, w_ in zip(got, want):
        assert g[:3] == w_[:3]
        np.testing.assert_allclose(g[3:], w_[3:], atol=0.02)

    # detkit eval on the label folder == detkit eval on a COCO results file made from detections.json
    coco = [{"image_id": Path(e["image"]).stem, "category_id": e["class_id"], "score": e["score"],
             "bbox": [e["box_xyxy"][0], e["box_xyxy"][1], e["box_xyxy"][2] - e["box_xyxy"][0],
                      e["box_xyxy"][3] - e["box_xyxy"][1]]} for e in entries]
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    reports = []
    for pred, fmt in ((out / "labels", "yolo"), (tmp_path / "coco.json", "coco")):
        j = tmp_path / f"{fmt}.report.json"
        assert main(["eval", "--gt", str(ds / "val.txt"), "--names", str(tiny / "two.names"), "--pred", str(pred),
                     "--pred-format", fmt, "--json", str(j)]) == 0
        reports.append(json.loads(j.read_text()))
    assert reports[0]["n_detections"] == reports[1]["n_detections"] == len(entries)
    assert reports[0]["map"] == pytest.approx(reports[1]["map"], abs=1e-9)
    assert [c["tp"] for c in reports[0]["classes"]] == [c["tp"] for c in reports[1]["classes"]]
    assert sum(c["tp"] for c in reports[0]["classes"]) > 0


def test_save_txt_duplicate_stems_are_kept_apart(tiny, tmp_path, caplog):
    for sub in ("x", "y"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(tmp_path / "in" / sub / "same.png")
    assert _detect(tiny, tmp_path / "out", "--source", str(tmp_path / "in"), "--save-txt", "--quiet") == 0
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == ["same.txt", "same_2.txt"]
    assert "same_2.txt" in caplog.text


# ----------------------------------------------------------------------------- real tier: fast path accuracy


@pytest.mark.real
def test_real_fast_path_finds_what_fp32_finds(shared, repo):
    """The default fast path (BN folded, channels_last, bf16 where native) against the plain float32
    model with the real yolov3-tiny weights on 25 raccoon photos: the same objects, scores within
    0.03, boxes IoU >= 0.95 (detections of either path above 0.30 are looked up in the other's
    detections above 0.15, so threshold crossings are not mismatches)."""
    model = detkit.build_model(repo / "cfg" / "yolov3-tiny.cfg")
    detkit.load_darknet_weights(model, shared / "weights" / "yolov3-tiny.weights")
    paths = sorted((shared / "data" / "raccoon" / "JPEGImages").glob("*.jpg"))[::5]
    fast = Predictor(model, conf=0.15, fast=True, device="cpu")
    plain = Predictor(model, conf=0.15, fast=False, device="cpu")
    res_fast = {str(r.path): r.detections for r in fast.predict_paths(paths, batch_size=4)}
    res_plain = {str(r.path): r.detections for r in plain.predict_paths(paths, batch_size=4)}
    checked, score_diffs = 0, []
    for p in res_plain:
        for a, b in ((res_plain[p], res_fast[p]), (res_fast[p], res_plain[p])):
            for box, score, cid in zip(a.boxes, a.scores, a.class_ids):
                if score <= 0.30:
                    continue
                same = b.class_ids == cid
                assert same.any(), (p, int(cid), float(score))
                ious = iou_matrix(box[None].astype(np.float64), b.boxes[same].astype(np.float64))[0]
                j = int(np.argmax(ious))
                assert ious[j] >= 0.95, (p, int(cid), ious[j])
                score_diffs.append(abs(float(b.scores[same][j]) - float(score)))
                checked += 1
    assert checked >= 40
    assert max(score_diffs) <= 0.03 and float(np.mean(score_diffs)) <= 0.006, (max(score_diffs), np.mean(score_diffs))
