"""convert-voc on the real datasets in ../shared (raccoon, BCCD): exact counts, split, usable output."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detkit.convert.options import ConvertOptions
from detkit.convert.voc_to_yolo import convert_voc
from detkit.data.datafiles import load_data_config, read_yolo_labels

from helpers import tree_digest
from test_convert import check_label_rules, rename_map, report

pytestmark = pytest.mark.real


def _xml_truth(ann_dir: Path) -> dict[str, tuple[str, list]]:
    """Independent reading with the standard library: stem -> (filename, [(name, xmin, ymin, xmax, ymax)])."""
    out = {}
    for x in sorted(ann_dir.glob("*.xml")):
        root = ET.parse(x).getroot()
        objs = [(o.findtext("name"), *(float(o.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")))
                for o in root.iter("object")]
        out[x.stem] = (root.findtext("filename"), objs)
    return out


def _check_labels_against_devkit_rule(src: Path, out: Path, truth: dict, classes: list[str]) -> int:
    """Every written label equals the devkit rule computed here from the XML and the real image size."""
    images = {r["source"]: r["output"] for r in rename_map(out) if r["kind"] == "image"}
    n = 0
    for stem, (fname, objs) in truth.items():
        src_img = f"JPEGImages/{fname}"
        if src_img not in images:
            src_img = next(k for k in images if Path(k).stem == stem)
        w, h = Image.open(src / src_img).size
        kept = [o for o in objs if o[1] != o[3] and o[2] != o[4]]  # zero-area (as drawn) are dropped
        exp = np.array([[classes.index(o[0]), (o[1] - 1 + o[3]) / 2 / w, (o[2] - 1 + o[4]) / 2 / h,
                         (o[3] - o[1] + 1) / w, (o[4] - o[2] + 1) / h] for o in kept]).reshape(-1, 5)
        got = read_yolo_labels(out / "labels" / Path(images[src_img].removeprefix("images/")).with_suffix(".txt"),
                               num_classes=len(classes))
        assert got.shape == exp.shape, stem
        np.testing.assert_allclose(got, exp, atol=1e-6, err_msg=stem)
        n += len(kept)
    return n


def test_raccoon(shared, tmp_path):
    src = shared / "data" / "raccoon"
    before = tree_digest(src)
    res = convert_voc(src, tmp_path / "raccoon", ConvertOptions())
    assert tree_digest(src) == before
    out = res.out
    rep = report(out)
    truth = _xml_truth(src / "Annotations")
    assert sum(len(o) for _, o in truth.values()) == 217
    assert res.images == 200 and rep["objects_read"] == 217 and rep["objects_written"] == 217
    assert res.class_names == ("raccoon",) and rep["per_class"]["raccoon"] == {"images": 200, "objects": 217,
                                                                              "difficult": 0}
    assert rep["warnings"] == [] and rep["skipped"] == []
    assert res.splits == {"train": 160, "val": 40}
    grey = [p for p in (src / "JPEGImages").glob("*.jpg") if Image.open(p).mode == "L"]
    assert len(grey) == 3
    assert _check_labels_against_devkit_rule(src, out, truth, ["raccoon"]) == 217
    assert check_label_rules(out) == 200


def test_bccd(shared, tmp_path):
    src = shared / "data" / "bccd"
    before = tree_digest(src)
    res = convert_voc(src, tmp_path / "bccd", ConvertOptions())
    assert tree_digest(src) == before
    out = res.out
    rep = report(out)
    truth = _xml_truth(src / "Annotations")
    per = Counter(o[0] for _, objs in truth.values() for o in objs)
    assert per == {"RBC": 4155, "WBC": 372, "Platelets": 361}
    assert res.images == 364 and rep["objects_read"] == 4888 and rep["objects_written"] == 4886
    assert {n: s.objects for n, s in res.per_class.items()} == {"Platelets": 361, "RBC": 4153, "WBC": 372}
    assert rep["boxes"]["degenerate_dropped"] == 2
    assert sorted(w["file"] for w in rep["warnings"] if w["code"] == "degenerate_box") == [
        "Annotations/BloodImage_00338.xml", "Annotations/BloodImage_00343.xml"]
    assert len(rep["warnings"]) == 2 and rep["skipped"] == []
    # the ImageSets split, exactly
    main = src / "ImageSets" / "Main"
    for split in ("train", "val", "test"):
        ids = [s.strip() for s in (main / f"{split}.txt").read_text().split() if s.strip()]
        lines = (out / f"{split}.txt").read_text().splitlines()
        assert sorted(lines) == sorted(f"./images/{i.lower()}.jpg" for i in ids), split
    assert res.splits == {"train": 205, "val": 87, "test": 72}
    assert _check_labels_against_devkit_rule(src, out, truth, ["Platelets", "RBC", "WBC"]) == 4886
    assert check_label_rules(out) == 205 + 87
    cfg = load_data_config(out / "obj.data")
    assert cfg.names == ["Platelets", "RBC", "WBC"] and len(cfg.train) == 205 and len(cfg.val) == 87
