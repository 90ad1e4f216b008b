"""COCO results JSON: the typed msgspec fast path reads exactly what the checked orjson path reads.

Every input (clean, odd but valid, and malformed) is loaded twice, once with the fast path and once
with it switched off; tables must be bit-identical and errors must carry the same one-line message.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from detkit.evaluate.predictions import load_predictions
from detkit.errors import AnnotationError, EvalError
from detkit.evaluate.ground_truth import load_ground_truth

pytest.importorskip("msgspec")

GT = {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 30, 40], "area": 100, "iscrowd": 0}],
      "categories": [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}]}
R = '{"image_id":1,"category_id":3,"bbox":[1,2,3,4],"score":0.5}'
CASES = [
    f"[{R}]", "[]", f'{{"annotations":[{R}]}}',
    f'[{R},{{"image_id":2,"category_id":5,"bbox":[0.1,2.25,3e2,4],"score":1}}]',
    f'[{R},{{"image_id":1,"category_id":3,"bbox":[1,2,3,4],"score":0.5,"extra":[1,{{"a":2}}]}}]',
    f'[{R},{{"image_id":1,"category_id":9,"bbox":[1,2,3,4],"score":0.5}}]',  # unknown class: dropped
    f'[{R},{{"image_id":1,"category_id":3,"bbox":[1,2,3],"score":0.5}}]',
    f'[{R},{{"image_id":1,"category_id":3,"bbox":[1,2,3,4,5],"score":0.5}}]',
    f'[{R},{{"image_id":true,"category_id":3,"bbox":[1,2,3,4],"score":0.5}}]',
    f'[{R},{{"image_id":7,"category_id":3,"bbox":[1,2,3,4],"score":0.5}}]',
    f'[{R},{{"image_id":"1","category_id":3,"bbox":[1,2,3,4],"score":0.5}}]',
    f'[{R},{{"image_id":1,"category_id":3.0,"bbox":[1,2,3,4],"score":0.5}}]',
    f'[{R},{{"image_id":1,"category_id":3,"bbox":[1,2,3,4],"score":1e400}}]',
    f'[{R},{{"image_id":1,"category_id":3,"bbox":[1,2,3,-1e999],"score":0.5}}]',
    f'[{R},{{"image_id":1,"category_id":3,"bbox":[1,2,3,true],"score":0.5}}]',
    f'[{R},{{"image_id":1,"category_id":3,"bbox":[1,2,3,4],"score":"x"}}]',
    f'[{R},{{"image_id":1,"category_id":3,"bbox":[1,2,3,4],"score":null}}]',
    f'[{R},{{"image_id":1,"category_id":3,"bbox":[1,2,3,4]}}]',
    f'[{R},{{"image_id":1,"category_id":3,"bbox":"1,2,3,4","score":0.5}}]',
    f"[{R},5]", f"[{R}", "{}", '"x"', "[" * 3000 + "]" * 3000,
]


def _load(path: Path, gt, fast: bool):
    try:
        dt, _, _ = load_predictions(path, gt, fast=fast)
        return ("ok", dt.image_index.tobytes(), dt.boxes.tobytes(), dt.scores.tobytes(), dt.labels.tobytes())
    except EvalError as exc:
        return ("EvalError", str(exc))
    except AnnotationError as exc:
        return ("AnnotationError", str(exc))


@pytest.mark.parametrize("text", CASES)
def test_fast_and_checked_paths_agree(tmp_path, caplog, text):
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    gt = load_ground_truth(tmp_path / "gt.json")
    (tmp_path / "dt.json").write_text(text)
    caplog.set_level(logging.WARNING)
    fast = _load(tmp_path / "dt.json", gt, True)
    checked = _load(tmp_path / "dt.json", gt, False)
    assert fast == checked
    if fast[0] != "ok":
        assert "\n" not in fast[1]


def test_random_results_identical(tmp_path, caplog):
    """Many random numbers (all decimal lengths, ints and floats): same float64 bits on both paths."""
    rng = np.random.default_rng(3)
    n = 3000
    vals = rng.uniform(-1e4, 1e4, (n, 5)) * 10.0 ** rng.integers(-8, 8, (n, 5))
    rows = [{"image_id": int(rng.integers(1, 3)), "category_id": int(rng.choice([3, 5])),
             "bbox": [float(v) if k % 2 else int(v) for k, v in enumerate(vals[i, :4])],
             "score": float(np.round(vals[i, 4], int(rng.integers(0, 17))))} for i in range(n)]
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    gt = load_ground_truth(tmp_path / "gt.json")
    (tmp_path / "dt.json").write_text(json.dumps(rows))
    caplog.set_level(logging.DEBUG, logger="detkit.evaluate.predictions")
    fast = _load(tmp_path / "dt.json", gt, True)
    assert not any("checked reader" in r.getMessage() for r in caplog.records), \
        "clean results must not need the checked path"
    checked = _load(tmp_path / "dt.json", gt, False)
    assert any("checked reader" in r.getMessage() for r in caplog.records)
    assert fast[0] == "ok" and fast == checked
    scores = np.frombuffer(fast[3], np.float64)
    assert np.array_equal(scores, np.array([r["score"] for r in rows]))
