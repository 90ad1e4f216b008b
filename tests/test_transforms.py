"""Albumentations pipelines: boxes follow the pixels, degenerate boxes go, eval = images.letterbox, HSV mapping."""
from __future__ import annotations

import colorsys
import random

import numpy as np
import pytest

from detkit.data.images import letterbox
from detkit.data.transforms import (LABEL_FIELD, DarknetHSV, apply_hsv, build_eval_transforms,
                                    build_train_transforms, darknet_rand_scale, find_letterbox)
from detkit.errors import TrainError

# two rectangles on black: box 0 pure red, box 1 pure green (continuous xyxy, integer edges)
BOXES = np.array([[12, 8, 52, 40], [70, 30, 110, 72]], dtype=np.float32)
CLASSES = np.array([0, 1])


def _scene(w: int = 120, h: int = 80) -> np.ndarray:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    x1, y1, x2, y2 = BOXES[0].astype(int)
    img[y1:y2, x1:x2, 0] = 255
    x1, y1, x2, y2 = BOXES[1].astype(int)
    img[y1:y2, x1:x2, 1] = 255
    return img


def _extent(mask: np.ndarray) -> np.ndarray | None:
    """Continuous xyxy extent of the True pixels (pixel column c covers [c, c+1))."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def _run(t, img, boxes=BOXES, classes=CLASSES, seed=0):
    t.set_random_state(np.random.default_rng(seed), random.Random(seed))
    out = t(image=img, bboxes=boxes, **{LABEL_FIELD: classes})
    return out["image"], np.asarray(out["bboxes"], np.float32).reshape(-1, 4), np.asarray(out[LABEL_FIELD])


def _check_boxes_follow_pixels(img_out, boxes_out, classes_out, tol=2.0):
    """Every output box equals the extent of its colour in the output image (within tol pixels)."""
    for b, c in zip(boxes_out, classes_out):
        others = [k for k in range(3) if k != int(c)]
        ext = _extent((img_out[..., int(c)] > 128) & np.all(img_out[..., others] < 128, axis=-1))
        assert ext is not None, f"class {c}: box {b} but no pixels"
        np.testing.assert_allclose(b, ext, atol=tol, err_msg=f"class {c}")


def test_eval_transform_equals_images_letterbox():
    img = _scene()
    t = build_eval_transforms((64, 48))
    out, boxes, cls = _run(t, img)
    ref, scale, px, py = letterbox(img, (64, 48))
    np.testing.assert_array_equal(out, ref)  # identical pixels, not just geometry
    expected = BOXES * scale + np.array([px, py, px, py], np.float32)
    np.testing.assert_allclose(boxes, expected, atol=1e-4)
    assert list(cls) == [0, 1]
    lb = find_letterbox(t)
    assert (lb.params["scale"], lb.params["pad_x"], lb.params["pad_y"]) == (scale, px, py)
    _check_boxes_follow_pixels(out, boxes, cls)


@pytest.mark.parametrize("size", [(64, 64), (96, 32), (160, 160)])
def test_eval_letterbox_boxes_follow_pixels(size):
    out, boxes, cls = _run(build_eval_transforms(size), _scene())
    assert out.shape == (size[1], size[0], 3)
    _check_boxes_follow_pixels(out, boxes, cls)


def test_flip_only_moves_boxes_with_pixels():
    t = build_train_transforms((120, 80), hsv=(0, 1, 1), flip=True, jitter=0.0)
    seen = set()
    for seed in range(12):
        out, boxes, cls = _run(t, _scene(), seed=seed)
        _check_boxes_follow_pixels(out, boxes, cls, tol=0.5)  # same size: no resampling at all
        flipped = bool(np.isclose(boxes[0, 0], 120 - BOXES[0, 2]))
        if not flipped:
            np.testing.assert_allclose(boxes, BOXES, atol=1e-4)
        else:
            np.testing.assert_allclose(boxes[:, [0, 2]], 120 - BOXES[:, [2, 0]], atol=1e-4)
        seen.add(flipped)
    assert seen == {True, False}


def test_jitter_scale_translate_keeps_boxes_on_pixels():
    t = build_train_transforms((64, 64), hsv=(0, 1, 1), flip=True, jitter=0.3, min_visibility=0.0,
                               min_area=0.0, min_size=3.0)
    centres = []
    for seed in range(40):
        out, boxes, cls = _run(t, _scene(), seed=seed)
        assert out.shape == (64, 64, 3)
        _check_boxes_follow_pixels(out, boxes, cls)
        if len(boxes) and cls[0] == 0:
            centres.append((boxes[0, 0] + boxes[0, 2]) / 2)
            # every kept box is inside the image and not degenerate
        assert np.all(boxes >= -1e-4) and np.all(boxes[:, [0, 2]] <= 64) and np.all(boxes[:, [1, 3]] <= 64)
        assert np.all(boxes[:, 2] - boxes[:, 0] >= 3 - 1e-4) and np.all(boxes[:, 3] - boxes[:, 1] >= 3 - 1e-4)
    assert np.ptp(centres) > 10  # the jitter really moved things


def test_jitter_bounded_by_setting():
    # each side moves by at most jitter * side: the picture (non-pad area) of a full-frame image
    # spans between (1 - 2j) and (1 + 2j) of the original, relative to the padded result
    t = build_train_transforms((200, 200), hsv=(0, 1, 1), flip=False, jitter=0.2)
    img = np.full((100, 100, 3), 255, np.uint8)
    cut = 0
    for seed in range(30):
        t.set_random_state(np.random.default_rng(seed), random.Random(seed))
        t(image=img, bboxes=np.zeros((0, 4), np.float32), **{LABEL_FIELD: np.zeros(0)})
        crop = [s for s in t.transforms if type(s).__name__ == "CropAndPad"][0].params
        top, bottom, left, right = crop["pad_params"] or [0, 0, 0, 0]
        assert max(top, bottom, left, right) <= 20
        if crop["crop_params"]:
            x1, y1, x2, y2 = crop["crop_params"]
            assert x1 <= 20 and y1 <= 20 and x2 >= 80 and y2 >= 80
            cut += 1
    assert cut > 0


def test_degenerate_and_outside_boxes_dropped():
    img = _scene()
    boxes = np.array([[12, 8, 52, 40],       # fine
                      [30, 30, 30, 50],      # zero width
                      [200, 10, 230, 40],    # entirely outside (x beyond 120)
                      [118, 0, 140, 20],     # mostly outside: 2 px visible of 22
                      [5, 5, 5.5, 5.5]],     # sub-pixel
                     np.float32)
    cls = np.array([0, 1, 1, 1, 1])
    _, out_boxes, out_cls = _run(build_eval_transforms((120, 80)), img, boxes, cls)
    # eval keeps any box with positive area inside the image (clipped), drops the rest
    assert len(out_boxes) == 3
    np.testing.assert_allclose(out_boxes[1], [118, 0, 120, 20])
    t = build_train_transforms((120, 80), hsv=(0, 1, 1), flip=False, jitter=0.0)
    _, out_boxes, out_cls = _run(t, img, boxes, cls)
    np.testing.assert_allclose(out_boxes, boxes[:1])  # visibility/size filters remove the slivers
    assert list(out_cls) == [0]


def test_empty_boxes_pass_through():
    t = build_train_transforms((64, 64))
    out, boxes, cls = _run(t, _scene(), np.zeros((0, 4), np.float32), np.zeros(0))
    assert out.shape == (64, 64, 3) and boxes.shape == (0, 4) and cls.size == 0


def test_same_state_same_result_and_different_state_differs():
    t = build_train_transforms((64, 64))
    a = _run(t, _scene(), seed=5)
    b = _run(t, _scene(), seed=5)
    c = _run(t, _scene(), seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("hue,sat,val", [(0.1, 1.5, 0.7), (-0.25, 0.5, 1.3), (0.45, 1.0, 1.0)])
def test_apply_hsv_matches_colorsys(hue, sat, val):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    out = apply_hsv(img, hue, sat, val)
    for y in range(img.shape[0]):
        for x in range(img.shape[1]):
            h, s, v = colorsys.rgb_to_hsv(*(img[y, x] / 255.0))
            r, g, b = colorsys.hsv_to_rgb((h + hue) % 1.0, min(s * sat, 1.0), min(v * val, 1.0))
            np.testing.assert_allclose(out[y, x], np.round(np.array([r, g, b]) * 255), atol=1)


def test_hsv_identity_returns_copy():
    img = _scene()
    out = apply_hsv(img, 0.0, 1.0, 1.0)
    np.testing.assert_array_equal(out, img)
    assert out is not img


def test_darknet_rand_scale_range_and_symmetry():
    rng = np.random.default_rng(0)
    xs = np.array([darknet_rand_scale(1.5, rng) for _ in range(4000)])
    assert xs.min() >= 1 / 1.5 - 1e-12 and xs.max() <= 1.5 + 1e-12
    assert xs.min() < 1 / 1.45 and xs.max() > 1.45           # reaches both ends
    assert abs(np.mean(xs > 1) - 0.5) < 0.05                 # half above, half below 1
    assert abs(np.median(np.log(xs))) < 0.05                 # log-symmetric
    assert darknet_rand_scale(1.0, rng) == 1.0


def test_darknet_hsv_param_ranges():
    t = DarknetHSV(hue=0.1, saturation=1.5, exposure=2.0)
    t.set_random_state(np.random.default_rng(1), random.Random(1))
    ps = [t.get_params() for _ in range(3000)]
    hues = np.array([p["hue_shift"] for p in ps])
    sats = np.array([p["sat_scale"] for p in ps])
    vals = np.array([p["val_scale"] for p in ps])
    assert hues.min() >= -0.1 and hues.max() <= 0.1 and hues.min() < -0.09 and hues.max() > 0.09
    assert sats.min() >= 1 / 1.5 - 1e-9 and sats.max() <= 1.5 + 1e-9
    assert vals.min() >= 0.5 - 1e-9 and vals.max() <= 2.0 + 1e-9 and vals.min() < 0.55 and vals.max() > 1.9


def test_train_pipeline_changes_saturation_within_bounds():
    # a single saturated colour with S=1/2: after the pipeline S/0.5 must lie in [1/1.5, 1.5]
    img = np.zeros((40, 40, 3), np.uint8)
    img[:] = (200, 100, 100)  # S = 0.5, V = 200/255
    t = build_train_transforms((40, 40), hsv=(0.0, 1.5, 1.0), flip=False, jitter=0.0)
    ratios = []
    for seed in range(30):
        out, _, _ = _run(t, img, np.zeros((0, 4), np.float32), np.zeros(0), seed=seed)
        _, s, v = colorsys.rgb_to_hsv(*(out[20, 20] / 255.0))
        ratios.append(s / 0.5)
        assert abs(v - 200 / 255) < 2 / 255  # exposure off: value unchanged
    assert min(ratios) >= 1 / 1.5 - 0.02 and max(ratios) <= 1.5 + 0.02
    assert min(ratios) < 0.95 and max(ratios) > 1.05


@pytest.mark.parametrize("kwargs", [{"hsv": (0.7, 1.5, 1.5)}, {"hsv": (0.1, 0.5, 1.5)},
                                    {"jitter": 0.6}, {"img_size": (0, 416)}])
def test_bad_settings_raise(kwargs):
    args = {"img_size": (64, 64), **kwargs}
    with pytest.raises(TrainError):
        build_train_transforms(**args)


def test_import_does_not_touch_network():
    # albumentations checks PyPI for updates on import unless NO_ALBUMENTATIONS_UPDATE is set
    import os
    import subprocess
    import sys
    code = ("import socket, warnings\n"
            "def deny(*a, **k):\n    raise SystemExit('network access: %r' % (a,))\n"
            "socket.socket.connect = deny\nsocket.create_connection = deny\nsocket.getaddrinfo = deny\n"
            "warnings.simplefilter('error')\n"
            "import detkit.data.dataset, detkit.data.sampling, detkit.data.transforms\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
