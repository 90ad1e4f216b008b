"""detkit anchors: shape IoU vs boxes.iou_matrix, known clusters recovered, letterbox scaling,
determinism, the cfg anchor patcher (byte-preserving), and the CLI."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detkit.boxes import iou_matrix
from detkit.cli import main
from detkit.darknet.specs import parse_network
from detkit.darknet.cfg_edit import patch_anchors
from detkit.data.anchors import (
    compute_anchors, format_anchors, kmeans_anchors, letterboxed_box_sizes, mean_best_iou, read_box_sizes,
    round_anchors, shape_iou,
)
from detkit.errors import CfgError

REPO = Path(__file__).resolve().parents[1]
TRUE_SHAPES = np.array([[12, 16], [30, 62], [82, 40], [150, 150], [300, 210], [60, 260]], dtype=np.float64)


def _synthetic_wh(shapes: np.ndarray, per: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = [s * np.exp(noise * rng.standard_normal((per, 2))) for s in shapes]
    wh = np.concatenate(parts)
    return wh[rng.permutation(len(wh))]


def _centred(wh: np.ndarray) -> np.ndarray:
    return np.stack([-wh[:, 0] / 2, -wh[:, 1] / 2, wh[:, 0] / 2, wh[:, 1] / 2], axis=1)


# --------------------------------------------------------------------------- maths

def test_shape_iou_equals_iou_of_boxes_centred_at_origin():
    rng = np.random.default_rng(3)
    a = rng.uniform(1, 300, (40, 2))
    b = rng.uniform(1, 300, (7, 2))
    np.testing.assert_allclose(shape_iou(a, b), iou_matrix(_centred(a), _centred(b)), rtol=1e-12, atol=1e-12)


def test_mean_best_iou_matches_a_plain_loop():
    rng = np.random.default_rng(4)
    wh = rng.uniform(2, 200, (50, 2))
    anchors = rng.uniform(2, 200, (5, 2))
    expected = 0.0
    for w, h in wh:
        best = 0.0
        for aw, ah in anchors:
            inter = min(w, aw) * min(h, ah)
            best = max(best, inter / (w * h + aw * ah - inter))
        expected += best
    assert mean_best_iou(wh, anchors) == pytest.approx(expected / len(wh), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [3, 6])
def test_known_clusters_recovered(seed, k):
    shapes = TRUE_SHAPES[:k] if k == 6 else TRUE_SHAPES[[0, 3, 5]]
    wh = _synthetic_wh(shapes, per=150, noise=0.03, seed=seed + 10)
    anchors, assign, iters = kmeans_anchors(wh, k, seed=seed)
    want = shapes[np.argsort(shapes[:, 0] * shapes[:, 1], kind="stable")]
    np.testing.assert_allclose(anchors, want, rtol=0.03)
    assert np.all(np.diff(anchors[:, 0] * anchors[:, 1]) > 0)  # sorted by area
    assert np.bincount(assign, minlength=k).tolist() == [150] * k
    assert 1 <= iters < 300


def test_avg_iou_of_recovered_anchors_is_high_and_beats_wrong_anchors():
    wh = _synthetic_wh(TRUE_SHAPES, per=100, noise=0.05, seed=7)
    res = compute_anchors(wh, 6, seed=0)
    assert res.avg_iou == pytest.approx(mean_best_iou(wh, res.rounded))
    assert res.avg_iou > 0.9
    yolo_tiny = np.array([[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]], dtype=float)
    assert mean_best_iou(wh, yolo_tiny) < res.avg_iou - 0.1


def test_deterministic_for_a_seed_and_seed_matters_only_for_init():
    wh = _synthetic_wh(TRUE_SHAPES, per=40, noise=0.3, seed=1)  # heavy noise: init can matter
    a1, s1, _ = kmeans_anchors(wh, 6, seed=5)
    a2, s2, _ = kmeans_anchors(wh.copy(), 6, seed=5)
    assert np.array_equal(a1, a2) and np.array_equal(s1, s2)


def test_more_clusters_than_distinct_shapes_and_bad_input():
    wh = np.array([[10, 10]] * 5 + [[50, 20]] * 5, dtype=float)
    anchors, assign, _ = kmeans_anchors(wh, 3, seed=0)
    assert anchors.shape == (3, 2) and np.isfinite(anchors).all()
    assert mean_best_iou(wh, anchors) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        kmeans_anchors(wh, 11)
    with pytest.raises(ValueError):
        kmeans_anchors(np.array([[0.0, 5.0], [3, 3]]), 1)


def test_round_and_format_like_darknet():
    a = np.array([[10.4, 13.6], [0.2, 22.5], [344.49, 319.51]])
    assert round_anchors(a).tolist() == [[10, 14], [1, 22], [344, 320]]  # at least 1; half to even
    assert format_anchors(a) == "10,14,  1,22,  344,320"


# --------------------------------------------------------------------------- letterbox scaling

def test_letterboxed_box_sizes():
    wh = np.array([[0.5, 0.5], [0.1, 1.0]])
    # 800x400 into 416x416: scale = min(416/800, 416/400) = 0.52
    np.testing.assert_allclose(letterboxed_box_sizes(wh, (800, 400), (416, 416)), [[208, 104], [41.6, 208]])
    # 200x400 into 320x256 (W x H): scale = min(320/200, 256/400) = 0.64
    np.testing.assert_allclose(letterboxed_box_sizes(wh, (200, 400), (320, 256)), [[64, 128], [12.8, 256]])


def _write_image(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.zeros((h, w, 3), dtype=np.uint8))


def _make_dataset(root: Path, items: list[tuple[str, int, int, list[list[float]] | None]]) -> Path:
    """items: (stem, width, height, label rows or None for no label file) -> obj.data path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for stem, w, h, rows in items:
        _write_image(root / "images" / f"{stem}.png", w, h)
        if rows is not None:
            (root / "labels" / f"{stem}.txt").write_text("".join(
                f"{int(r[0])} {r[1]} {r[2]} {r[3]} {r[4]}\n" for r in rows))
    (root / "train.txt").write_text("".join(f"images/{s}.png\n" for s, *_ in items))
    (root / "obj.names").write_text("a\nb\n")
    (root / "obj.data").write_text("classes = 2\ntrain = train.txt\nnames = obj.names\n")
    return root / "obj.data"


def test_read_box_sizes_uses_each_images_own_size(tmp_path):
    _make_dataset(tmp_path, [
        ("wide", 800, 400, [[0, 0.5, 0.5, 0.5, 0.5], [1, 0.5, 0.5, 0.25, 0.0]]),  # zero-height box skipped
        ("tall", 200, 400, [[1, 0.5, 0.5, 0.5, 0.5]]),
        ("nolabel", 64, 64, None),
    ])
    imgs = [tmp_path / "images" / f"{s}.png" for s in ("wide", "tall", "nolabel")]
    sizes = read_box_sizes(imgs, 2, (416, 416))
    np.testing.assert_allclose(sizes.wh, [[208, 104], [104, 208]])
    assert (sizes.images, sizes.missing_labels, sizes.skipped_boxes, sizes.unreadable) == (3, 1, 1, 0)


# --------------------------------------------------------------------------- cfg patch

def test_patch_anchors_changes_only_anchor_values_and_keeps_crlf():
    text = (REPO / "cfg" / "yolov3-tiny.cfg").read_text().replace("\n", "\r\n")
    new = [[11, 15], [25, 30], [40, 60], [80, 90], [140, 170], [300, 320]]
    out = patch_anchors(text, new)
    old_lines, new_lines = text.splitlines(keepends=True), out.splitlines(keepends=True)
    assert len(old_lines) == len(new_lines)
    changed = [i for i, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b]
    assert len(changed) == 2  # the two [yolo] heads
    for i in changed:
        assert new_lines[i] == "anchors = 11,15,  25,30,  40,60,  80,90,  140,170,  300,320\r\n"
    spec = parse_network(out)
    assert all(h.anchors == tuple((float(w), float(h_)) for w, h_ in new) for h in spec.yolo_layers)
    assert patch_anchors(out, new) == out  # idempotent


def test_patch_anchors_errors():
    text = (REPO / "cfg" / "yolov3-tiny.cfg").read_text()
    with pytest.raises(CfgError, match="num=6"):
        patch_anchors(text, [[1, 2]] * 5)
    with pytest.raises(CfgError, match="positive"):
        patch_anchors(text, [[0, 2]] * 6)
    with pytest.raises(CfgError, match="no \\[yolo\\]"):
        patch_anchors("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=4\n", [[1, 2]])


# --------------------------------------------------------------------------- CLI

@pytest.fixture()
def clustered_dataset(tmp_path) -> Path:
    """Three box shapes (in 416 letterboxed pixels: 32x64, 128x96, 256x256) over 640x480 images."""
    rng = np.random.default_rng(0)
    items = []
    scale = 416 / 640  # 640x480 -> 416x312
    for i in range(30):
        rows = []
        for cls, (w, h) in enumerate([(32, 64), (128, 96), (256, 256)]):
            f = np.exp(0.02 * rng.standard_normal(2))
            rows.append([cls % 2, 0.5, 0.5, w * f[0] / scale / 640, h * f[1] / scale / 480])
        items.append((f"img{i:02d}", 640, 480, rows))
    return _make_dataset(tmp_path / "ds", items)


def test_cli_anchors_prints_anchors_and_compares_with_cfg(clustered_dataset, tmp_path, capsys):
    out_cfg = tmp_path / "new.cfg"
    cfg = tmp_path / "three.cfg"
    text = (REPO / "cfg" / "yolov3-tiny.cfg").read_text()
    # a 3-anchor variant: one head with all three, the other reusing them
    text = text.replace("mask = 3,4,5", "mask = 0,1,2").replace(
        "anchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319", "anchors = 10,14,  23,27,  37,58").replace(
        "num=6", "num=3")
    cfg.write_text(text)
    rc = main(["anchors", "--data", str(clustered_dataset), "--cfg", str(cfg), "--write-cfg", str(out_cfg)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "90 boxes in 30 training images" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("anchors = "))
    got = np.array([[int(v) for v in pair.split(",")] for pair in line[len("anchors = "):].split(",  ")])
    np.testing.assert_allclose(got, [[32, 64], [128, 96], [256, 256]], rtol=0.03)
    new_iou = float(out.split("avg IoU (new anchors): ")[1].split()[0])
    old_iou = float(out.split("avg IoU (cfg anchors 10,14,  23,27,  37,58): ")[1].split()[0])
    assert new_iou > 0.9 and old_iou < 0.5
    spec = parse_network(out_cfg.read_text())
    assert np.array_equal(np.array(spec.yolo_layers[0].anchors), got)


def test_cli_anchors_is_deterministic(clustered_dataset, capsys):
    assert main(["anchors", "--data", str(clustered_dataset), "--num", "4", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert main(["anchors", "--data", str(clustered_dataset), "--num", "4", "--seed", "3"]) == 0
    assert capsys.readouterr().out == first


@pytest.mark.parametrize("extra, message", [
    (["--num", "500"], "needs at least 500"),
    (["--num", "0"], "--num must be >= 1"),
    (["--img-size", "400"], "--img-size"),
    (["--write-cfg", "x.cfg"], "--write-cfg needs --cfg"),
    (["--cfg", "yolov3-tiny", "--num", "5", "--write-cfg", "x.cfg"], "differs from the cfg's num=6"),
])
def test_cli_anchors_errors(clustered_dataset, capsys, extra, message):
    rc = main(["anchors", "--data", str(clustered_dataset), *extra])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("detkit: error: ") and err.count("\n") == 1
    assert message in err


def test_cli_anchors_bad_label_names_file_and_line(clustered_dataset, capsys):
    bad = clustered_dataset.parent / "labels" / "img03.txt"
    bad.write_text(bad.read_text() + "7 0.5 0.5 0.1 0.1\n")
    assert main(["anchors", "--data", str(clustered_dataset), "--num", "3"]) == 1
    err = capsys.readouterr().err
    assert "img03.txt:4" in err and "out of range" in err and err.count("\n") == 1


def test_cli_cfg_anchors_writes_them_in_darknet_format(tmp_path, capsys):
    src = tmp_path / "in.cfg"
    src.write_bytes((REPO / "cfg" / "yolov3-tiny.cfg").read_bytes().replace(b"\n", b"\r\n"))
    out = tmp_path / "out.cfg"
    value = "11,15,  25,30,  40,60,  80,90,  140,170,  300,320"
    assert main(["cfg", "--cfg", str(src), "--anchors", value, "--classes", "2", "-o", str(out)]) == 0
    data = out.read_bytes()
    assert data.count(b"anchors = " + value.encode() + b"\r\n") == 2
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF kept everywhere
    spec = parse_network(data.decode())
    assert spec.num_classes == 2 and spec.yolo_layers[1].anchors[5] == (300.0, 320.0)
    capsys.readouterr()
    assert main(["cfg", "--cfg", str(src), "--anchors", "1,2,3", "-o", str(tmp_path / "x.cfg")]) == 1
    assert "even number" in capsys.readouterr().err
    assert main(["cfg", "--cfg", str(src), "--anchors", "1,2", "-o", str(tmp_path / "x.cfg")]) == 1
    assert "num=6" in capsys.readouterr().err
    assert not (tmp_path / "x.cfg").exists()
