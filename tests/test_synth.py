"""Synthetic VOC dataset generator (detkit.data.synth): determinism, exact boxes, valid VOC files."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from detkit.data.synth import CLASS_NAMES, generate_voc_dataset, render_scene
from detkit.data.voc import read_voc_annotation
from detkit.errors import DataError


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_voc_dataset(tmp_path / "a", 6, seed=3, img_size=(64, 48))
    b = generate_voc_dataset(tmp_path / "b", 6, seed=3, img_size=(64, 48))
    c = generate_voc_dataset(tmp_path / "c", 6, seed=4, img_size=(64, 48))
    da, db, dc = _tree_digest(a.root), _tree_digest(b.root), _tree_digest(c.root)
    assert da == db
    assert len(da) == 6 * 2 + 3  # images + XMLs + train/val/trainval
    assert da != dc
    assert dataclasses.replace(b, root=a.root) == a  # same summary apart from the folder


def test_boxes_are_exactly_the_drawn_pixels(tmp_path):
    # PNG is lossless: the shape's pixels carry exactly its fill colour. Find the colour at the box
    # centre, take every pixel of that colour in a window around the box, and compare its extent
    # with the XML box (VOC: 1-based inclusive).
    s = generate_voc_dataset(tmp_path, 24, seed=1, img_size=(96, 80), image_ext=".png")
    checked = 0
    for xml in sorted((s.root / "Annotations").glob("*.xml")):
        rec = read_voc_annotation(xml)
        img = _read_rgb(s.root / "JPEGImages" / rec.filename)
        assert img.shape == (80, 96, 3)
        for o in rec.objects:
            x0, y0, x1, y1 = int(o.xmin) - 1, int(o.ymin) - 1, int(o.xmax) - 1, int(o.ymax) - 1
            assert 0 <= x0 < x1 <= 95 and 0 <= y0 < y1 <= 79  # fully inside the image
            colour = img[(y0 + y1) // 2, (x0 + x1) // 2]
            wy0, wy1, wx0, wx1 = max(y0 - 4, 0), min(y1 + 5, 80), max(x0 - 4, 0), min(x1 + 5, 96)
            ys, xs = np.nonzero(np.all(img[wy0:wy1, wx0:wx1] == colour, axis=-1))
            assert (xs.min() + wx0, ys.min() + wy0, xs.max() + wx0, ys.max() + wy0) == (x0, y0, x1, y1)
            # circles touch their box only mid-edge, squares fill it
            corner_is_shape = bool(np.all(img[y0, x0] == colour))
            assert corner_is_shape == (o.name == "square")
            checked += 1
    assert checked >= 24


def test_xml_and_split_files_are_valid_voc(tmp_path):
    s = generate_voc_dataset(tmp_path, 40, seed=0, img_size=(64, 64), val_fraction=0.25)
    xmls = sorted((s.root / "Annotations").glob("*.xml"))
    assert len(xmls) == 40
    counts = {c: 0 for c in CLASS_NAMES}
    empty = 0
    for xml in xmls:
        rec = read_voc_annotation(xml)
        assert (rec.width, rec.height, rec.depth) == (64, 64, 3)
        assert rec.filename == xml.stem + ".jpg"
        img = _read_rgb(s.root / "JPEGImages" / rec.filename)
        assert img.shape == (64, 64, 3)
        boxes = rec.boxes_xyxy()
        for i, o in enumerate(rec.objects):
            assert o.name in CLASS_NAMES and not o.difficult and not o.truncated
            counts[o.name] += 1
            for j in range(i):  # shapes never overlap
                a, b = boxes[i], boxes[j]
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
        empty += not rec.objects
    assert counts == s.objects_per_class and empty == s.empty_images
    assert empty >= 1 and min(counts.values()) >= 10  # some empty images, both classes common
    sets = s.root / "ImageSets" / "Main"
    train = sets.joinpath("train.txt").read_text(encoding="utf-8").split()
    val = sets.joinpath("val.txt").read_text(encoding="utf-8").split()
    trainval = sets.joinpath("trainval.txt").read_text(encoding="utf-8").split()
    assert len(val) == 10 and len(train) == 30
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(trainval) == sorted(x.stem for x in xmls)
    assert tuple(train) == s.train and tuple(val) == s.val


def test_chinese_names_present_in_both_layouts(tmp_path):
    voc = generate_voc_dataset(tmp_path / "v", 4, seed=0, img_size=(48, 48))
    names = [p.name for p in voc.root.rglob("*")]
    assert not voc.root.name.isascii()
    assert any(not n.isascii() for n in names) and any(n.isascii() and n.endswith(".jpg") for n in names)
    lab = generate_voc_dataset(tmp_path / "l", 4, seed=0, img_size=(48, 48), layout="labelimg")
    files = sorted(p.relative_to(lab.root) for p in lab.root.rglob("*") if p.is_file())
    assert len(files) == 8
    assert any(not f.parts[0].isascii() for f in files)  # a Chinese sub-folder
    for f in files:  # each XML sits beside its image
        if f.suffix == ".xml":
            assert (lab.root / f.with_suffix(".jpg")).is_file()
            assert read_voc_annotation(lab.root / f).filename == f.with_suffix(".jpg").name


def test_refuses_non_empty_target_and_bad_arguments(tmp_path):
    s = generate_voc_dataset(tmp_path, 2, seed=0, img_size=(48, 48))
    before = _tree_digest(s.root)
    with pytest.raises(DataError, match="not empty"):
        generate_voc_dataset(tmp_path, 2, seed=1, img_size=(48, 48))
    assert _tree_digest(s.root) == before
    with pytest.raises(DataError, match="num_images"):
        generate_voc_dataset(tmp_path / "x", 1)
    with pytest.raises(DataError, match="layout"):
        generate_voc_dataset(tmp_path / "y", 4, layout="coco")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="32x32"):
        render_scene(np.random.default_rng(0), 16, 64)
