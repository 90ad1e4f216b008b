"""``detkit convert`` on the real datasets in ../shared: raccoon and BCCD through VOC -> COCO ->
YOLO -> VOC give back the original objects (counts and boxes), and the COCO file loads in
pycocotools (``COCO()`` and ``loadRes`` with detections built from it)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from detkit.convert.any_format import convert_dataset
from detkit.convert.options import DatasetOptions
from helpers import tree_digest
from test_convert_formats import sha

pytestmark = pytest.mark.real


def _original(root: Path) -> dict[str, tuple[int, int, list]]:
    """image path relative to root -> (W, H, sorted objects) read from the VOC XMLs with the standard library, in
    continuous pixels, clipped to the real image and zero-area boxes left out (the documented
    dirty-input rules)."""
    out = {}
    for x in sorted((root / "Annotations").glob("*.xml")):
        r = ET.parse(x).getroot()
        img = root / "JPEGImages" / r.findtext("filename")
        if not img.is_file():
            img = next((root / "JPEGImages").glob(x.stem + ".*"))
        with Image.open(img) as im:
            w, h = ImageOps.exif_transpose(im).size
        objs = []
        for o in r.iter("object"):
            v = [float(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
            if v[0] == v[2] or v[1] == v[3]:
                continue
            x1, y1 = max(v[0] - 1, 0.0), max(v[1] - 1, 0.0)
            x2, y2 = min(v[2], w), min(v[3], h)
            objs.append((o.findtext("name"), x1, y1, x2, y2, ""))
        out[img.relative_to(root).as_posix()] = (w, h, sorted(objs))
    return out


def _images_map(out: Path) -> dict[str, str]:
    with open(out / "rename_map.csv", encoding="utf-8", newline="") as fh:
        return {r["source"]: r["output"] for r in csv.DictReader(fh) if r["kind"] == "image"}


def _voc_out(out: Path) -> dict[str, tuple[int, int, list]]:
    """JPEGImages/<name> -> (W, H, sorted objects) of a VOC OUT, read with ElementTree."""
    got = {}
    for x in sorted((out / "Annotations").glob("*.xml")):
        r = ET.parse(x).getroot()
        objs = []
        for o in r.iter("object"):
            v = [float(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
            objs.append((o.findtext("name"), v[0] - 1, v[1] - 1, v[2], v[3], ""))
        got["JPEGImages/" + r.findtext("filename")] = (int(r.findtext("size/width")), int(r.findtext("size/height")),
                                                       sorted(objs))
    return got


@pytest.mark.parametrize("name, n_images, n_objects", [("raccoon", 200, 217), ("bccd", 364, 4888 - 2)])
def test_real_voc_coco_yolo_voc(shared, tmp_path, name, n_images, n_objects):
    src = shared / "data" / name
    before = tree_digest(src)
    truth = _original(src)
    assert len(truth) == n_images and sum(len(v[2]) for v in truth.values()) == n_objects
    c = convert_dataset(src, tmp_path / "coco", DatasetOptions(to="coco"))
    y = convert_dataset(tmp_path / "coco", tmp_path / "yolo", DatasetOptions(to="yolo", difficult="keep"))
    v = convert_dataset(tmp_path / "yolo", tmp_path / "voc", DatasetOptions(to="voc"))
    assert tree_digest(src) == before
    for res in (c, y, v):
        assert res.images == n_images and res.report["objects_written"] == n_objects
    assert c.class_names == y.class_names == v.class_names
    back = _voc_out(tmp_path / "voc")
    m1, m2, m3 = (_images_map(tmp_path / d) for d in ("coco", "yolo", "voc"))
    chain = {k: m3[m2[m1[k]]] for k in truth}  # source image -> final VOC image, through the rename maps
    assert sorted(chain.values()) == sorted(back)
    for k, (w, h, rows) in truth.items():
        assert sha(src / k) == sha(tmp_path / "voc" / chain[k])
        got = back[chain[k]][2]
        assert back[chain[k]][:2] == (w, h) and len(got) == len(rows)
        for g, e in zip(got, rows):
            assert g[0] == e[0]
            assert g[1:5] == pytest.approx(e[1:5], abs=0.75e-6 * max(w, h) + 1e-9)
    assert splits_equal(c.splits, v.splits)

    from pycocotools.coco import COCO
    for jf in sorted((tmp_path / "coco" / "annotations").glob("*.json")):
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(jf))
            doc = json.loads(jf.read_text(encoding="utf-8"))
            assert len(gt.getImgIds()) == len(doc["images"]) and len(gt.getAnnIds()) == len(doc["annotations"])
            dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
                    for a in doc["annotations"]]
            if dets:
                dt = gt.loadRes(dets)
                assert len(dt.getAnnIds()) == len(dets)
                assert Counter(a["category_id"] for a in dt.dataset["annotations"]) == \
                    Counter(a["category_id"] for a in doc["annotations"])


def splits_equal(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if v} == {k: v for k, v in b.items() if v}
