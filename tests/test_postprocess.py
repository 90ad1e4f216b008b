"""detkit.yolo.postprocess against a plain-loop reference of darknet's thresholding + do_nms_sort,
for torch tensors (torchvision's NMS) and numpy arrays (OpenCV's NMS: the onnxruntime / OpenVINO
path, which never imports torch)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detkit.data.images import letterbox
from detkit.yolo.postprocess import Detections, nms_numpy, postprocess, unletterbox_detections, unresize_detections


@pytest.fixture(params=["torch", "numpy"])
def kind(request):
    return request.param


def _as(kind: str, rows) -> "torch.Tensor | np.ndarray":
    arr = np.asarray(rows, dtype=np.float32)
    return torch.from_numpy(arr) if kind == "torch" else arr


def _iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _reference(pred: np.ndarray, conf: float, nms: float) -> list[tuple[int, float, tuple]]:
    """darknet semantics, one image: per class, candidates with obj*p > conf, sorted by score,
    greedily suppress same-class candidates with IoU > nms. Returns (class, score, box) triples."""
    out = []
    for c in range(pred.shape[1] - 5):
        cands = []
        for row in pred:
            s = float(row[4]) * float(row[5 + c])
            if s > conf:
                cx, cy, w, h = (float(v) for v in row[:4])
                cands.append((s, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)))
        cands.sort(key=lambda t: -t[0])
        kept = []
        for s, box in cands:
            if all(_iou(box, kb) <= nms for _, kb in kept):
                kept.append((s, box))
        out += [(c, s, box) for s, box in kept]
    return sorted(out, key=lambda t: -t[1])


def _random_pred(rng, n_img, rows, classes, size=416.0) -> np.ndarray:
    """Boxes clustered around a few centres so that NMS has real work to do."""
    centres = rng.uniform(50, size - 50, (n_img, 6, 2))
    pick = rng.integers(0, 6, (n_img, rows))
    xy = np.take_along_axis(centres, pick[..., None], axis=1) + rng.normal(0, 8, (n_img, rows, 2))
    wh = rng.uniform(20, 120, (n_img, rows, 2))
    obj = rng.uniform(0, 1, (n_img, rows, 1))
    cls = rng.uniform(0, 1, (n_img, rows, classes)) ** 3
    return np.concatenate([xy, wh, obj, cls], axis=2).astype(np.float32)


@pytest.mark.parametrize("seed,conf,nms", [(0, 0.25, 0.45), (1, 0.1, 0.5), (2, 0.5, 0.3), (3, 0.05, 0.7)])
def test_matches_plain_loop_reference(seed, conf, nms, kind):
    rng = np.random.default_rng(seed)
    pred = _random_pred(rng, 3, 120, 4)
    dets = postprocess(_as(kind, pred), conf, nms)
    assert len(dets) == 3
    for img_pred, det in zip(pred, dets):
        ref = _reference(img_pred, conf, nms)
        assert len(det) == len(ref) > 0
        assert det.boxes.dtype == np.float32 and det.scores.dtype == np.float32 and det.class_ids.dtype == np.int64
        assert np.all(np.diff(det.scores) <= 0)  # sorted by decreasing score
        np.testing.assert_allclose(det.scores, [r[1] for r in ref], rtol=1e-6)
        np.testing.assert_array_equal(det.class_ids, [r[0] for r in ref])
        np.testing.assert_allclose(det.boxes, np.array([r[2] for r in ref]), atol=1e-3)


def test_threshold_is_strict_and_score_is_objectness_times_class(kind):
    #          cx   cy   w   h   obj  p0    p1
    rows = [[100, 100, 20, 20, 1.0, 0.75, 0.0],    # score exactly at the threshold: dropped
            [300, 300, 20, 20, 0.5, 1.0, 0.0],     # obj 0.5 * p 1.0 = 0.5: kept
            [200, 200, 20, 20, 0.9, 0.5, 0.0]]     # 0.45: dropped
    det = postprocess(_as(kind, [rows]), conf_thres=0.46, nms_thres=0.45)[0]
    np.testing.assert_allclose(det.scores, [0.75, 0.5])
    np.testing.assert_allclose(det.boxes, [[90, 90, 110, 110], [290, 290, 310, 310]])
    det = postprocess(_as(kind, [rows]), conf_thres=0.5, nms_thres=0.45)[0]
    np.testing.assert_allclose(det.scores, [0.75])  # 0.5 is not > 0.5
    assert len(postprocess(_as(kind, [rows]), conf_thres=0.75, nms_thres=0.45)[0]) == 0


def test_multi_label_box_reported_for_each_class(kind):
    rows = [[100, 100, 40, 40, 1.0, 0.9, 0.8, 0.1]]
    det = postprocess(_as(kind, [rows]), conf_thres=0.25, nms_thres=0.45)[0]
    assert det.class_ids.tolist() == [0, 1]
    np.testing.assert_allclose(det.scores, [0.9, 0.8])
    np.testing.assert_allclose(det.boxes[0], det.boxes[1])


def test_nms_is_per_class(kind):
    # two heavily overlapping boxes: same class -> one survives; different classes -> both
    same = [[100, 100, 40, 40, 1.0, 0.9, 0.0], [102, 101, 40, 40, 1.0, 0.8, 0.0]]
    diff = [[100, 100, 40, 40, 1.0, 0.9, 0.0], [102, 101, 40, 40, 1.0, 0.0, 0.8]]
    assert len(postprocess(_as(kind, [same]), 0.25, 0.45)[0]) == 1
    assert len(postprocess(_as(kind, [diff]), 0.25, 0.45)[0]) == 2


def test_empty_inputs(kind):
    assert postprocess(_as(kind, np.zeros((0, 10, 7))), 0.25, 0.45) == []
    dets = postprocess(_as(kind, np.zeros((2, 0, 7))), 0.25, 0.45)
    assert [len(d) for d in dets] == [0, 0]
    assert dets[0].boxes.shape == (0, 4) and dets[0].boxes.dtype == np.float32
    low = _as(kind, np.random.default_rng(0).random((2, 50, 7)) * 0.2)  # every score below 0.25
    assert [len(d) for d in postprocess(low, 0.25, 0.45)] == [0, 0]


def test_max_det_keeps_the_best_and_images_are_independent(kind):
    rng = np.random.default_rng(5)
    pred = _as(kind, _random_pred(rng, 2, 200, 3))
    full = postprocess(pred, 0.05, 0.5)
    capped = postprocess(pred, 0.05, 0.5, max_det=7)
    for f, c in zip(full, capped):
        assert len(f) > 7 and len(c) == 7
        np.testing.assert_allclose(c.scores, f.scores[:7])
    alone = postprocess(pred[1:], 0.05, 0.5)[0]
    np.testing.assert_allclose(alone.scores, full[1].scores)
    np.testing.assert_allclose(alone.boxes, full[1].boxes)


@pytest.mark.parametrize("seed", range(6))
def test_numpy_and_torch_paths_agree(seed):
    """The same detections from both NMS implementations: many classes, crowded clusters, exact
    duplicate boxes, zero-area boxes, a candidate cap (max_candidates) and max_det."""
    rng = np.random.default_rng(100 + seed)
    pred = _random_pred(rng, 2, 300, 5)
    pred[:, 10:20] = pred[:, 0:1]  # duplicates of row 0 (same box, same scores)
    pred[:, 20:25, 2] = 0.0  # zero-width boxes
    for conf, nms, cap, max_det in ((0.05, 0.45, 30000, 300), (0.01, 0.6, 150, 40), (0.3, 0.3, 30000, 5)):
        a = postprocess(torch.from_numpy(pred), conf, nms, max_det=max_det, max_candidates=cap)
        b = postprocess(pred, conf, nms, max_det=max_det, max_candidates=cap)
        for x, y in zip(a, b):
            assert len(x) == len(y) > 0
            np.testing.assert_allclose(y.scores, x.scores, rtol=1e-6)
            np.testing.assert_array_equal(np.sort(y.class_ids), np.sort(x.class_ids))
            order_x = np.lexsort((x.boxes[:, 0], x.class_ids, -x.scores))
            order_y = np.lexsort((y.boxes[:, 0], y.class_ids, -y.scores))
            np.testing.assert_allclose(y.boxes[order_y], x.boxes[order_x], atol=1e-4)


def test_nms_numpy_against_torchvision_on_random_boxes():
    from torchvision.ops import batched_nms

    rng = np.random.default_rng(7)
    for _ in range(20):
        k = int(rng.integers(1, 400))
        xy = rng.uniform(0, 300, (k, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(0.5, 80, (k, 2))], axis=1).astype(np.float32)
        scores = rng.random(k).astype(np.float32)
        cls = rng.integers(0, 4, k)
        thr = float(rng.uniform(0.1, 0.9))
        ref = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(cls), thr).numpy()
        np.testing.assert_array_equal(nms_numpy(boxes, scores, cls, thr), ref)
    assert nms_numpy(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5).shape == (0,)


def test_bfloat16_input_and_bad_arguments():
    pred = torch.from_numpy(_random_pred(np.random.default_rng(6), 1, 50, 2))
    assert len(postprocess(pred.to(torch.bfloat16), 0.25, 0.45)[0]) > 0
    with pytest.raises(ValueError, match="N, R, 5"):
        postprocess(pred[0], 0.25, 0.45)
    with pytest.raises(ValueError, match="conf_thres"):
        postprocess(pred, 1.5, 0.45)
    with pytest.raises(ValueError, match="nms_thres"):
        postprocess(pred, 0.25, 0.0)


def test_unletterbox_round_trip_and_clipping():
    img = np.zeros((300, 500, 3), np.uint8)
    _, scale, pad_x, pad_y = letterbox(img, (416, 416))
    orig = np.array([[10, 20, 110, 220], [400, 250, 560, 320]], np.float64)  # 2nd leaves the image
    net = orig * scale + np.array([pad_x, pad_y, pad_x, pad_y])
    det = Detections(net.astype(np.float32), np.array([0.9, 0.8], np.float32), np.array([1, 2], np.int64))
    back = unletterbox_detections(det, scale, pad_x, pad_y, 500, 300)
    np.testing.assert_allclose(back.boxes[0], orig[0], atol=1e-3)
    np.testing.assert_allclose(back.boxes[1], [400, 250, 500, 300], atol=1e-3)
    assert back.class_ids.tolist() == [1, 2]
    outside = Detections(np.array([[0, 0, 5, 5]], np.float32), np.array([0.5], np.float32), np.array([0]))
    assert len(unletterbox_detections(outside, scale, pad_x, pad_y, 500, 300)) == 0  # all in padding


def test_unresize_scales_each_axis():
    det = Detections(np.array([[41.6, 41.6, 208, 416]], np.float32), np.array([0.7], np.float32),
                     np.array([3], np.int64))
    out = unresize_detections(det, (416, 416), 800, 600)
    np.testing.assert_allclose(out.boxes[0], [80, 60, 400, 600], rtol=1e-5)


def test_detections_validates_shapes():
    with pytest.raises(ValueError, match="inconsistent"):
        Detections(np.zeros((2, 4), np.float32), np.zeros(3, np.float32), np.zeros(2, np.int64))
    assert len(Detections.empty()) == 0
