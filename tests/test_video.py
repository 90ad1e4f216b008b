"""``detkit detect --source VIDEO``: annotated video, per-frame JSON lines, YOLO label files, errors.

The clip is generated with cv2.VideoWriter (10 frames, 96x80, a square moving right); the model is
a tiny random darknet net whose head is biased to fire. The reference is the same model run by
:class:`Predictor` on frames decoded independently with cv2.VideoCapture.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import detkit
from detkit.cli import main
from detkit.infer.predict import Predictor
from helpers import detect_argv, write_tiny_model

N_FRAMES, FPS, W, H = 10, 10.0, 96, 80


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("video")
    (d / "two.names").write_text("blob\nsquare\n")
    write_tiny_model(d, head_scale=3.0, head_bias=(1.0, 2.0, -3.0))  # head x3: detections depend on the image
    src = d / "src"
    src.mkdir()
    writer = cv2.VideoWriter(str(src / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (W, H))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    background = rng.integers(0, 120, (H, W, 3), np.uint8)
    for i in range(N_FRAMES):
        frame = background.copy()
        cv2.rectangle(frame, (5 + 4 * i, 20), (40 + 4 * i, 60), (255, 255, 255), -1)
        writer.write(frame)
    writer.release()
    return d


def _detect(setup: Path, out: Path, *extra: str, backend: str = "torch") -> int:
    """detect on the clip; these tests check video I/O and the PyTorch paths, so the backend is pinned."""
    return main(detect_argv(setup, out, "--conf", "0.3", "--batch", "4", "--backend", backend, *extra))


def _reference_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def test_video_detect_writes_video_jsonl_and_labels(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert _detect(setup, out, "--source", str(setup / "src" / "clip.mp4"), "--save-txt",
                   "--precision", "fp32") == 0
    printed = capsys.readouterr().out
    assert f"{N_FRAMES} frame(s) processed" in printed
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4", "detections.jsonl", "labels"]

    lines = (out / "detections.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(ln) for ln in lines]
    assert [r["frame"] for r in records] == list(range(N_FRAMES))
    assert [r["time"] for r in records] == pytest.approx([i / FPS for i in range(N_FRAMES)])

    # the same model through Predictor on independently decoded frames (eager float32)
    model = detkit.build_model(setup / "tiny.cfg")
    detkit.load_darknet_weights(model, setup / "tiny.weights")
    frames = _reference_frames(setup / "src" / "clip.mp4")
    assert len(frames) == N_FRAMES
    expected = Predictor(model, img_size=64, conf=0.3).predict(frames)
    assert sum(len(d) for d in expected) > N_FRAMES  # the test checks real detections
    for rec, det in zip(records, expected):
        got = rec["detections"]
        assert [d["class_id"] for d in got] == det.class_ids.tolist()
        assert all(d["class_name"] == ["blob", "square"][d["class_id"]] for d in got)
        np.testing.assert_allclose([d["box_xyxy"] for d in got], det.boxes.reshape(-1, 4), atol=2e-3)
        np.testing.assert_allclose([d["score"] for d in got], det.scores, atol=1e-5)

    # YOLO labels: one file per frame, normalised by the frame size
    labels = sorted((out / "labels").iterdir())
    assert [p.name for p in labels] == [f"clip_{i:06d}.txt" for i in range(N_FRAMES)]
    for p, det in zip(labels, expected):
        rows = np.loadtxt(p, ndmin=2) if p.read_text() else np.zeros((0, 6))
        assert len(rows) == len(det)
        if len(det):
            x1, y1, x2, y2 = det.boxes.T
            np.testing.assert_allclose(rows[:, 0], det.class_ids)
            np.testing.assert_allclose(rows[:, 1:5], np.stack([(x1 + x2) / 2 / W, (y1 + y2) / 2 / H,
                                                                (x2 - x1) / W, (y2 - y1) / H], 1), atol=2e-6)
            np.testing.assert_allclose(rows[:, 5], det.scores, atol=2e-6)

    # the annotated video: same frame count and size, with boxes drawn on it
    annotated = _reference_frames(out / "clip.mp4")
    assert len(annotated) == N_FRAMES and annotated[0].shape == (H, W, 3)
    diff = [np.abs(a.astype(int) - f.astype(int)).max() for a, f in zip(annotated, frames)]
    assert min(diff) > 100  # coloured boxes and labels, far above codec noise


def test_video_no_images_writes_only_jsonl(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert _detect(setup, out, "--source", str(setup / "src" / "clip.mp4"), "--no-images", "--quiet") == 0
    assert [p.name for p in out.iterdir()] == ["detections.jsonl"]
    assert len((out / "detections.jsonl").read_text().splitlines()) == N_FRAMES
    assert "detect:" not in capsys.readouterr().err  # no progress bar off a terminal


def test_video_fast_path_agrees_with_fp32(setup, tmp_path):
    """Default precision (bf16 on CPUs with native bf16) finds the same boxes as float32."""
    out32, out_auto = tmp_path / "fp32", tmp_path / "auto"
    assert _detect(setup, out32, "--source", str(setup / "src" / "clip.mp4"), "--no-images", "--no-fast") == 0
    assert _detect(setup, out_auto, "--source", str(setup / "src" / "clip.mp4"), "--no-images") == 0
    a = [json.loads(ln) for ln in (out32 / "detections.jsonl").read_text().splitlines()]
    b = [json.loads(ln) for ln in (out_auto / "detections.jsonl").read_text().splitlines()]
    from detkit.boxes import iou_matrix
    assert len(a) == len(b) == N_FRAMES
    checked = 0
    for ra, rb in zip(a, b):
        strong = [d for d in ra["detections"] if d["score"] > 0.4]
        checked += len(strong)
        for d in strong:
            same = [e for e in rb["detections"] if e["class_id"] == d["class_id"]]
            assert same
            ious = iou_matrix(np.array([d["box_xyxy"]]), np.array([e["box_xyxy"] for e in same]))[0]
            j = int(ious.argmax())
            assert ious[j] > 0.95 and abs(same[j]["score"] - d["score"]) < 0.03
    assert checked >= N_FRAMES


def test_unreadable_video_is_one_line_error(setup, tmp_path, capsys):
    bad = tmp_path / "src" / "broken.mp4"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 4)
    out = tmp_path / "out"
    assert _detect(setup, out, "--source", str(bad)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("detkit: error:") and str(bad) in err[-1]
    assert "video" in err[-1]
    assert not out.exists() or list(out.iterdir()) == []  # no partial or temporary files left


def test_video_out_in_source_folder_is_refused(setup, capsys):
    src = setup / "src"
    before = sorted(p.name for p in src.iterdir())
    assert _detect(setup, src, "--source", str(src / "clip.mp4")) == 1
    assert "would overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in src.iterdir()) == before


def test_video_openvino_backend_agrees_with_torch(setup, tmp_path, monkeypatch):
    """The OpenVINO backend (float32 hint) on the clip gives PyTorch float32's boxes, frame by frame."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out_t, out_o = tmp_path / "t", tmp_path / "o"
    assert _detect(setup, out_t, "--source", str(setup / "src" / "clip.mp4"), "--no-images", "--precision", "fp32") == 0
    assert _detect(setup, out_o, "--source", str(setup / "src" / "clip.mp4"), "--no-images", "--precision", "fp32",
                   backend="openvino") == 0
    from detkit.boxes import iou_matrix
    a = [json.loads(ln) for ln in (out_t / "detections.jsonl").read_text().splitlines()]
    b = [json.loads(ln) for ln in (out_o / "detections.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == N_FRAMES
    for ra, rb in zip(a, b):
        for d in ra["detections"]:
            same = [e for e in rb["detections"] if e["class_id"] == d["class_id"]]
            assert same
            ious = iou_matrix(np.array([d["box_xyxy"]]), np.array([e["box_xyxy"] for e in same]))[0]
            assert ious.max() > 0.99
