"""``detkit eval --cfg --weights --data``: the model-driven path runs the predictor on the validation
list and scores exactly what it predicted (checked by re-reading its saved COCO results)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detkit.cli import main
from detkit.evaluate.run import evaluate_files
from helpers import tiny_cfg


def test_model_driven_eval_matches_its_saved_predictions(tmp_path):
    torch.manual_seed(0)
    from detkit import build_model, save_darknet_weights

    (tmp_path / "m.cfg").write_text(tiny_cfg())
    model = build_model(tmp_path / "m.cfg", num_classes=2)
    with torch.no_grad():  # make objectness high so there are detections to score
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    save_darknet_weights(model, tmp_path / "m.weights")
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "images" / f"v{i}.png")
        (tmp_path / "labels" / f"v{i}.txt").write_text("0 0.5 0.5 0.4 0.4\n1 0.3 0.3 0.2 0.3\n")
        lines.append(f"images/v{i}.png")
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "obj.names").write_text("a\nb\n")
    (tmp_path / "obj.data").write_text("classes=2\ntrain=val.txt\nvalid=val.txt\nnames=obj.names\n")
    out = tmp_path / "r.json"
    rc = main(["eval", "--cfg", str(tmp_path / "m.cfg"), "--weights", str(tmp_path / "m.weights"),
               "--data", str(tmp_path / "obj.data"), "--device", "cpu", "--pred-conf", "0.001",
               "--save-pred", str(tmp_path / "pred.json"), "--json", str(out), "--conf", "0.01"])
    assert rc == 0
    saved = json.loads((tmp_path / "pred.json").read_text())
    assert saved and {d["image_id"] for d in saved} <= {"v0", "v1", "v2"}
    d = json.loads(out.read_text())
    again = evaluate_files(tmp_path / "obj.data", tmp_path / "pred.json", metric="voc", conf_threshold=0.01).report
    assert d["map"] == pytest.approx(again.map, abs=1e-9)
    assert [c["n_det"] for c in d["classes"]] == [c.n_det for c in again.classes]
    assert d["sources"]["cfg"].endswith("m.cfg")


def test_model_driven_needs_all_three(tmp_path, capsys):
    assert main(["eval", "--cfg", "x.cfg"]) == 1
    assert "--cfg, --weights and --data" in capsys.readouterr().err
