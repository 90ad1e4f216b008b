"""``detkit demo``: every stage runs and leaves its outputs (fast tier, tiny settings); the real
default demo reaches VOC mAP@0.5 >= 0.8 on its held-out split (slow tier)."""
from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from detkit.cli import main
from detkit.demo.pipeline import DemoSettings, demo_threads, run_demo
from detkit.data.datafiles import load_data_config, read_names
from detkit.errors import DataError


def test_demo_cli_tiny_run_writes_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    threads_before = torch.get_num_threads()
    rc = main(["demo", "--out", str(out), "--images", "12", "--epochs", "1", "--img-size", "64",
               "--batch", "4", "--workers", "0", "--threads", "1", "--seed", "3"])
    assert rc == 0
    assert torch.get_num_threads() == threads_before  # the demo's thread setting does not leak
    printed = capsys.readouterr().out
    # 1. generated VOC dataset with a Chinese root folder and some Chinese file names
    voc = out / "voc" / "数据集"
    assert len(list((voc / "Annotations").glob("*.xml"))) == 12
    assert any(not p.name.isascii() for p in (voc / "JPEGImages").iterdir())
    # 2. converted: ASCII-only image paths, the VOC split kept, the rename map lists the Chinese names
    data = load_data_config(out / "yolo" / "obj.data")
    assert read_names(out / "yolo" / "obj.names") == ["circle", "square"]
    assert len(data.train) == 9 and len(data.val) == 3
    assert all(str(p.relative_to(out)).isascii() for p in data.train + data.val)
    with (out / "yolo" / "rename_map.csv").open(encoding="utf-8") as f:
        originals = [row[0] for row in csv.reader(f)][1:]
    assert any("数据集" in o for o in originals) and any("图片" in o for o in originals)
    # 3. cfg with anchors from the data (6 pairs at 64 px input, all smaller than the input)
    cfg = (out / "yolov3-tiny-demo.cfg").read_text(encoding="utf-8")
    anchors = re.findall(r"(?m)^anchors\s*=\s*(.+)$", cfg)
    assert len(anchors) == 2 and anchors[0] == anchors[1]
    values = [int(v) for v in re.split(r"[,\s]+", anchors[0].strip())]
    assert len(values) == 12 and max(values) <= 64 and values != [10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319]
    # 4. training run folder
    run = out / "train"
    for name in ("last.pt", "results.csv", "settings.json"):
        assert (run / name).is_file(), name
    settings = json.loads((run / "settings.json").read_text())
    assert settings["weights"] is None and settings["num_classes"] == 2 and settings["img_size"] == [64, 64]
    assert settings["epochs"] == 1 and settings["mosaic"] is False
    # 5. evaluation of the held-out split: JSON, plots, the printed table
    metrics = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["metric"] == "voc" and metrics["n_images"] == 3
    assert [c["name"] for c in metrics["classes"]] == ["circle", "square"]
    assert any(p.suffix == ".png" for p in (out / "eval").iterdir())
    summary = json.loads((out / "demo_summary.json").read_text(encoding="utf-8"))
    assert set(summary["timings_s"]) == {"generate", "convert", "anchors", "train", "evaluate", "total"}
    assert re.search(r"(?m)^circle\s+\d+", printed) and re.search(r"(?m)^square\s+\d+", printed)
    assert "mAP = " in printed and str(out / "eval") in printed
    assert "(1 CPU threads, 0 data workers)" in printed


def test_demo_threads_leave_cores_to_data_workers():
    assert demo_threads(3, 1, env={"OMP_NUM_THREADS": "2"}) == 3  # explicit --threads wins
    assert demo_threads(0, 1, env={"OMP_NUM_THREADS": "2"}) is None  # the user's OMP setting is kept
    assert demo_threads(0, 10**6, env={}) == 1  # never below one thread
    all_cores = demo_threads(0, 0, env={})
    assert all_cores >= 1 and demo_threads(0, 1, env={}) == max(1, all_cores - 1)


@pytest.mark.parametrize("kw, match", [({"images": 4}, "--images"), ({"epochs": 0}, "--epochs"),
                                       ({"img_size": 100}, "multiple of 32"),
                                       ({"val_fraction": 1.0}, "--val-fraction"),
                                       ({"threads": -1}, "--threads")])
def test_demo_settings_reject_bad_values(kw, match):
    with pytest.raises(DataError, match=match):
        DemoSettings(**kw)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # ~4 min on an idle 2-core CPU; far longer on a loaded one
def test_default_demo_reaches_map_08_on_held_out_split(tmp_path):
    result = run_demo(DemoSettings(out=str(tmp_path / "demo")), echo=lambda *_: None)
    assert result.map50 >= 0.8, result.table
