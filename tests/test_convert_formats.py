"""``detkit convert`` between VOC, YOLO and COCO on synthetic trees with Chinese names: every format
pair, dirty input per format (report entries, one-line errors), exact round trips, the same mAP
from ground truth written in each format, kill -9 then rerun.

Outputs are read back here with the standard library (json, ElementTree, plain text), not with
detkit's readers, and compared by image content (every synthetic image has its own size, so its
own bytes). SRC is hashed before and after every conversion.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from detkit.convert.any_format import convert_dataset, detect_format
from detkit.convert.options import DatasetOptions
from detkit.errors import DetkitError
from detkit.evaluate.run import evaluate_files
from helpers import tree_digest
from test_convert import make_image, make_xml

ROOT = Path(__file__).resolve().parents[1]

#: (relative path, W, H, [(class, x1, y1, x2, y2, difficult)]) in continuous pixels; split for the
#: sources that carry one. Classes sort as ("dog", "猫").
TRUTH = [
    ("猫咪 01.jpg", 64, 48, [("猫", 0, 0, 20, 20, False), ("dog", 10, 5, 60, 40, True)], "train"),
    ("红色汽车.png", 50, 40, [("dog", 3, 4, 30, 33, False), ("dog", 20, 10, 49, 39, False)], "train"),
    ("空的.jpg", 40, 30, [], "val"),
    ("Straße.jpg", 72, 36, [("猫", 5.5, 2.25, 33.75, 30, False)], "val"),
    ("子目录/狗 狗.jpg", 45, 55, [("dog", 1, 1, 44, 54, False), ("猫", 12, 13, 14, 15, False)], "train"),
]
CLASSES = ("dog", "猫")


def sha(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def tol(w: float) -> float:
    return 0.75e-6 * w + 1e-9  # YOLO labels' 6 decimals


# --------------------------------------------------------------------------- sources


def voc_source(root: Path, truth=TRUTH) -> Path:
    """labelImg layout: XML beside each image (VOC 1-based inclusive: xmin = x1 + 1, xmax = x2)."""
    for rel, w, h, objs, _ in truth:
        img = make_image(root / rel, w, h)
        make_xml(img.with_suffix(".xml"), img.name, (w, h),
                 [(c, x1 + 1, y1 + 1, x2, y2, d) for c, x1, y1, x2, y2, d in objs])
    return root


def coco_source(root: Path, truth=TRUTH, cat_ids=(7, 3)) -> Path:
    """A Label-Studio-like export: ``result.json`` + ``images/``; category ids not contiguous
    (dog = 7, 猫 = 3, so the contiguous order by id is 猫, dog)."""
    cid = dict(zip(CLASSES, cat_ids))
    images, anns = [], []
    for k, (rel, w, h, objs, _) in enumerate(truth, 1):
        make_image(root / "images" / rel, w, h)
        images.append({"id": 100 + k, "file_name": rel, "width": w, "height": h})
        for c, x1, y1, x2, y2, d in objs:
            a = {"id": len(anns) + 1, "image_id": 100 + k, "category_id": cid[c], "bbox": [x1, y1, x2 - x1, y2 - y1],
                 "area": (x2 - x1) * (y2 - y1), "iscrowd": 0, "segmentation": [[x1, y1, x2, y1, x2, y2]]}
            if d:
                a["difficult"] = 1
            anns.append(a)
    cats = sorted(({"id": i, "name": n} for n, i in cid.items()), key=lambda c: -c["id"])
    (root / "result.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats},
                                                 ensure_ascii=False), encoding="utf-8")
    return root


def yolo_line(c: int, x1, y1, x2, y2, w, h) -> str:
    return f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n"


def yolo_source(root: Path, truth=TRUTH, layout: str = "ultralytics") -> Path:
    """``ultralytics``: data.yaml with ``path:``, ``images/{train,val}`` + ``labels/...``, names as a
    dict; ``darknet``: obj.data + train.txt/valid.txt lists, labels beside the images; ``plain``:
    classes.txt and labels beside the images."""
    lines = {"train": [], "val": []}
    for rel, w, h, objs, split in truth:
        text = "".join(yolo_line(CLASSES.index(c), x1, y1, x2, y2, w, h) for c, x1, y1, x2, y2, _ in objs)
        if layout == "ultralytics":
            img = make_image(root / "images" / split / rel, w, h)
            lab = root / "labels" / split / Path(rel).with_suffix(".txt")
        else:
            img = make_image(root / "data" / rel, w, h)
            lab = img.with_suffix(".txt")
        lab.parent.mkdir(parents=True, exist_ok=True)
        lab.write_text(text, encoding="utf-8")
        lines[split].append(img.relative_to(root).as_posix())
    if layout == "ultralytics":
        (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: dog\n  1: 猫\n",
                                        encoding="utf-8")
    elif layout == "darknet":
        (root / "obj.names").write_text("dog\n猫\n", encoding="utf-8")
        (root / "train.txt").write_text("".join(f"{p}\n" for p in lines["train"]), encoding="utf-8")
        (root / "valid.txt").write_text("".join(f"{p}\n" for p in lines["val"]), encoding="utf-8")
        (root / "obj.data").write_text("classes = 2\ntrain = train.txt\nvalid = valid.txt\nnames = obj.names\n",
                                       encoding="utf-8")
    else:
        (root / "classes.txt").write_text("dog\n猫\n", encoding="utf-8")
    return root


SOURCES = {"voc": voc_source, "coco": coco_source, "yolo": yolo_source}

# --------------------------------------------------------------------------- independent readers of OUT


def read_out(out: Path, fmt: str) -> tuple[tuple[str, ...], dict[str, tuple[int, int, list]]]:
    """(class order, image sha1 -> (W, H, sorted [(class, x1, y1, x2, y2, flag)])) of an OUT folder;
    ``flag`` is ``difficult`` for VOC, ``difficult`` or ``crowd`` for COCO, None for YOLO."""
    got: dict = {}
    if fmt == "yolo":
        names = tuple((out / "obj.names").read_text(encoding="utf-8").splitlines())
        for lst in ("train.txt", "val.txt", "test.txt"):
            if not (out / lst).exists():
                continue
            for e in (out / lst).read_text().splitlines():
                img = out / e
                lab = out / "labels" / Path(e).relative_to("images").with_suffix(".txt")
                assert img.with_suffix(".txt").read_bytes() == lab.read_bytes()  # the copy beside the image
                w, h = Image.open(img).size
                objs = []
                for s in lab.read_text().splitlines():
                    c, cx, cy, bw, bh = s.split()
                    assert all(len(v.split(".")[1]) == 6 for v in (cx, cy, bw, bh)), s
                    cx, cy, bw, bh = float(cx) * w, float(cy) * h, float(bw) * w, float(bh) * h
                    objs.append((names[int(c)], cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, None))
                got[sha(img)] = (w, h, sorted(objs))
        return names, got
    if fmt == "coco":
        names = None
        for jf in sorted((out / "annotations").glob("*.json")):
            doc = json.loads(jf.read_text(encoding="utf-8"))
            cats = sorted(doc["categories"], key=lambda c: c["id"])
            assert [c["id"] for c in cats] == list(range(1, len(cats) + 1))
            names = names or tuple(c["name"] for c in cats)
            cname = {c["id"]: c["name"] for c in cats}
            per = {im["id"]: [] for im in doc["images"]}
            for a in doc["annotations"]:
                assert isinstance(a["id"], int) and isinstance(a["image_id"], int)
                x, y, bw, bh = a["bbox"]
                assert a["area"] == pytest.approx(bw * bh, abs=1e-5)
                flag = "crowd" if a["iscrowd"] else ("difficult" if a.get("difficult") else "")
                per[a["image_id"]].append((cname[a["category_id"]], x, y, x + bw, y + bh, flag))
            for im in doc["images"]:
                img = out / "images" / im["file_name"]
                assert Image.open(img).size == (im["width"], im["height"])
                got[sha(img)] = (im["width"], im["height"], sorted(per[im["id"]]))
        return names, got
    names = set()
    for x in sorted((out / "Annotations").glob("*.xml")):
        r = ET.parse(x).getroot()
        img = out / "JPEGImages" / r.findtext("filename")
        w, h = int(r.findtext("size/width")), int(r.findtext("size/height"))
        objs = []
        for o in r.iter("object"):
            v = [float(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
            names.add(o.findtext("name"))
            objs.append((o.findtext("name"), v[0] - 1, v[1] - 1, v[2], v[3],
                         "difficult" if o.findtext("difficult") == "1" else ""))
        got[sha(img)] = (w, h, sorted(objs))
    return tuple(sorted(names)), got


def expected(src_root: Path, src_fmt: str, to: str, difficult: str = "skip") -> dict:
    """What OUT must hold for TRUTH read from ``src_fmt`` and written as ``to``."""
    exp = {}
    for rel, w, h, objs, split in TRUTH:
        img = {"voc": src_root / rel, "coco": src_root / "images" / rel,
               "yolo": src_root / "images" / split / rel}[src_fmt]
        rows = []
        for c, x1, y1, x2, y2, d in objs:
            d = d and src_fmt != "yolo"  # YOLO holds no difficult flag
            if to == "yolo":
                if d and difficult == "skip":
                    continue
                rows.append((c, x1, y1, x2, y2, None))
            else:
                rows.append((c, x1, y1, x2, y2, "difficult" if d else ""))
        exp[sha(img)] = (w, h, sorted(rows))
    return exp


def assert_same(got: dict, exp: dict) -> None:
    assert set(got) == set(exp)
    for k, (w, h, rows) in exp.items():
        gw, gh, grows = got[k]
        assert (gw, gh) == (w, h)
        assert len(grows) == len(rows), (grows, rows)
        for g, e in zip(grows, rows):
            assert g[0] == e[0] and g[5] == e[5], (g, e)
            for a, b, s in zip(g[1:5], e[1:5], (w, h, w, h)):
                assert abs(a - b) <= tol(s), (g, e)


def convert(src: Path, out: Path, to: str, **kw):
    before = tree_digest(src)
    res = convert_dataset(src, out, DatasetOptions(to=to, **kw))
    assert tree_digest(src) == before  # SRC is only read
    return res


def report_of(out: Path) -> dict:
    return json.loads((out / "convert_report.json").read_text(encoding="utf-8"))


def codes(res) -> list[str]:
    return sorted([w["code"] for w in res.warnings] + [s["code"] for s in res.skipped])


# --------------------------------------------------------------------------- every pair


@pytest.mark.parametrize("src_fmt", ["voc", "coco", "yolo"])
@pytest.mark.parametrize("to", ["voc", "coco", "yolo"])
def test_every_format_pair(tmp_path, src_fmt, to):
    src = SOURCES[src_fmt](tmp_path / "源")
    assert detect_format(src) == src_fmt
    res = convert(src, tmp_path / "out", to)
    assert res.warnings == () and res.skipped == ()
    names, got = read_out(tmp_path / "out", to)
    # class order: VOC sorted names; YOLO its names file; COCO contiguous by category id (3 = 猫, 7 = dog)
    order = {"voc": CLASSES, "yolo": CLASSES, "coco": ("猫", "dog")}[src_fmt]
    assert res.class_names == order
    if to != "voc":
        assert names == order
    assert_same(got, expected(src, src_fmt, to))
    rep = report_of(tmp_path / "out")
    assert rep["tool"] == "detkit convert" and rep["from"] == src_fmt and rep["to"] == to
    assert rep["images"] == len(TRUTH) and rep["empty_images"] == 1  # the image without objects is kept
    # ASCII-safe names, and rename_map.csv maps every output back to a source file
    for p in (tmp_path / "out").rglob("*"):
        rel = p.relative_to(tmp_path / "out").as_posix()
        if rel not in ("obj.names", "data.yaml", "convert_report.json", "rename_map.csv") and not rel.endswith(".json"):
            assert rel.isascii(), rel
    import csv
    with open(tmp_path / "out" / "rename_map.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    images = [r for r in rows if r["kind"] == "image"]
    assert len(images) == len(TRUTH)
    for r in images:
        assert (src / r["source"]).is_file() and (tmp_path / "out" / r["output"]).is_file()
        assert sha(src / r["source"]) == sha(tmp_path / "out" / r["output"])
    # the same SRC converted again gives byte-identical files
    convert(src, tmp_path / "again", to)
    assert tree_digest(tmp_path / "again") == tree_digest(tmp_path / "out")


@pytest.mark.parametrize("layout", ["darknet", "plain"])
def test_yolo_darknet_lists_and_plain_folders(tmp_path, layout):
    src = yolo_source(tmp_path / "src", layout=layout)
    res = convert(src, tmp_path / "out", "coco")
    assert res.class_names == CLASSES and not res.skipped
    _, got = read_out(tmp_path / "out", "coco")
    exp = {sha(src / "data" / rel): (w, h, sorted((c, x1, y1, x2, y2, "") for c, x1, y1, x2, y2, _ in objs))
           for rel, w, h, objs, _ in TRUTH}
    assert_same(got, exp)
    splits = res.report["splits"]
    if layout == "darknet":  # the lists' split is kept
        assert splits == {"train": 3, "val": 2}


def test_voc_difficult_kept_or_skipped_in_yolo(tmp_path):
    src = voc_source(tmp_path / "src")
    res = convert(src, tmp_path / "skip", "yolo")
    assert res.report["difficult"] == 1 and res.report["difficult_skipped"] == 1
    res = convert(src, tmp_path / "keep", "yolo", difficult="keep")
    assert res.report["difficult_skipped"] == 0
    _, got = read_out(tmp_path / "keep", "yolo")
    assert_same(got, expected(src, "voc", "yolo", difficult="keep"))


def test_images_option_and_coco_file_as_src(tmp_path):
    src = coco_source(tmp_path / "src")
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "instances_val.json").write_bytes((src / "result.json").read_bytes())
    with pytest.raises(DetkitError, match="nothing could be converted"):  # images are not beside the JSON
        convert(ann / "instances_val.json", tmp_path / "out0", "yolo")
    res = convert(ann / "instances_val.json", tmp_path / "out", "yolo", images=str(src / "images"))
    assert res.images == len(TRUTH) and res.splits == {"train": 0, "val": 5}  # split from the file name


# --------------------------------------------------------------------------- round trips


def test_round_trip_voc_yolo_coco_voc_exact(tmp_path):
    src = voc_source(tmp_path / "src")
    convert(src, tmp_path / "y", "yolo", difficult="keep")
    convert(tmp_path / "y", tmp_path / "c", "coco")
    res = convert(tmp_path / "c", tmp_path / "v", "voc")
    assert res.class_names == CLASSES  # order preserved through obj.names and the COCO categories
    _, back = read_out(tmp_path / "v", "voc")
    exp = expected(src, "voc", "voc")
    # YOLO holds no difficult flag: lost through it (documented); boxes exact
    exp = {k: (w, h, sorted((*r[:5], "") for r in rows)) for k, (w, h, rows) in exp.items()}
    assert_same(back, exp)
    for k, (_, _, rows) in back.items():  # whole-pixel boxes come back as the same integers
        for r, e in zip(rows, exp[k][2]):
            if all(float(v).is_integer() for v in e[1:5]):
                assert r[1:5] == e[1:5]
    # VOC -> COCO -> VOC keeps the difficult flag (COCO: iscrowd 0 + "difficult": 1)
    convert(src, tmp_path / "c2", "coco")
    diffs = [a for f in (tmp_path / "c2" / "annotations").glob("*.json")
             for a in json.loads(f.read_text(encoding="utf-8"))["annotations"] if a.get("difficult")]
    assert len(diffs) == 1 and diffs[0]["iscrowd"] == 0
    convert(tmp_path / "c2", tmp_path / "v2", "voc")
    _, back2 = read_out(tmp_path / "v2", "voc")
    assert_same(back2, expected(src, "voc", "voc"))


def test_round_trip_keeps_splits(tmp_path):
    src = yolo_source(tmp_path / "src")
    convert(src, tmp_path / "c", "coco")
    convert(tmp_path / "c", tmp_path / "v", "voc")
    res = convert(tmp_path / "v", tmp_path / "y", "yolo")
    assert res.splits == {"train": 3, "val": 2}
    _, got = read_out(tmp_path / "y", "yolo")
    assert_same(got, expected(src, "yolo", "yolo"))


# --------------------------------------------------------------------------- eval reads every output


def test_eval_same_map_from_every_format(tmp_path):
    truth = [(f"img{i:02d}.jpg", 40 + i, 30 + i, [("dog", 2, 3, 20 + i, 25, False), ("猫", 10, 5, 35, 20 + i, False)],
              "val") for i in range(6)]
    src = voc_source(tmp_path / "src", truth)
    convert(src, tmp_path / "y", "yolo", val_fraction=0.5)
    convert(src, tmp_path / "c", "coco", val_fraction=0.5)
    convert(tmp_path / "c", tmp_path / "cv", "voc")
    convert(tmp_path / "y", tmp_path / "yc", "coco")
    # detections: every box shifted by i px (some miss at IoU 0.5), one FP per image, in continuous pixels
    dets = []
    for i, (rel, w, h, objs, _) in enumerate(truth):
        for k, (c, x1, y1, x2, y2, _) in enumerate(objs):
            s = 4 * ((i + k) % 4)
            dets.append((Path(rel).stem, c, 0.9 - 0.05 * i - 0.01 * k, x1 + s, y1, x2 + s, y2))
        dets.append((Path(rel).stem, "dog", 0.97 - 0.1 * i, 0, 0, 5, 5))
    # the outputs hold the val half (a seeded draw, the same in every output): score the source on it too
    val_ids = {Path(im["file_name"]).stem for im in
               json.loads((tmp_path / "c" / "annotations" / "val.json").read_text())["images"]}
    assert len(val_ids) == 3
    dets = [d for d in dets if d[0] in val_ids]
    comp4 = tmp_path / "comp4"
    comp4.mkdir()
    for c in CLASSES:  # comp4: VOC 1-based pixels
        (comp4 / f"comp4_det_test_{c}.txt").write_text(
            "".join(f"{i} {s} {x1 + 1} {y1 + 1} {x2} {y2}\n" for i, cc, s, x1, y1, x2, y2 in dets if cc == c),
            encoding="utf-8")
    sub = tmp_path / "val_only"
    sub.mkdir()
    for rel, *_ in truth:
        if Path(rel).stem in val_ids:
            (sub / Path(rel).with_suffix(".xml").name).write_bytes((src / Path(rel).with_suffix(".xml")).read_bytes())

    def coco_results(gt_json: Path) -> Path:
        doc = json.loads(gt_json.read_text(encoding="utf-8"))
        ids = {Path(im["file_name"]).stem: im["id"] for im in doc["images"]}
        cats = {c["name"]: c["id"] for c in doc["categories"]}
        res = [{"image_id": ids[i], "category_id": cats[c], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
               for i, c, s, x1, y1, x2, y2 in dets]
        p = gt_json.parent / "results.json"
        p.write_text(json.dumps(res), encoding="utf-8")
        return p

    val_c, val_yc = tmp_path / "c" / "annotations" / "val.json", tmp_path / "yc" / "annotations" / "val.json"
    maps = {
        "voc source": evaluate_files(sub, comp4, "voc").report.map,
        "yolo": evaluate_files(tmp_path / "y" / "obj.data", comp4, "voc").report.map,
        "coco -> voc": evaluate_files(tmp_path / "cv", comp4, "voc", image_set="val").report.map,
        "coco": evaluate_files(val_c, coco_results(val_c), "voc").report.map,
        "yolo -> coco": evaluate_files(val_yc, coco_results(val_yc), "voc").report.map,
    }
    assert 0.2 < maps["voc source"] < 1.0
    for k, v in maps.items():
        assert v == pytest.approx(maps["voc source"], abs=1e-12), maps


# --------------------------------------------------------------------------- dirty COCO


def test_coco_dirty_entries_reported(tmp_path):
    src = tmp_path / "src"
    for n, (w, h) in {"a.jpg": (40, 30), "b.jpg": (50, 20), "空.jpg": (30, 30)}.items():
        make_image(src / n, w, h)
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.jpg", "width": 99, "height": 20},
                   {"id": 1, "file_name": "b.jpg"},  # duplicate id
                   {"id": 3, "file_name": "gone.jpg"},  # no such file
                   {"id": 4, "file_name": "空.jpg"},  # no annotations: kept, empty
                   {"id": 5, "file_name": "../escape.jpg"},
                   {"file_name": "x.jpg"}],  # no id
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10], "segmentation": [[1, 2, 3, 4]]},
            {"id": 2, "image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5]},  # missing image
            {"id": 3, "image_id": 1, "category_id": 42, "bbox": [1, 1, 5, 5]},  # unknown category
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [20, 5, -10, 10]},  # negative width: swapped
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10]},  # zero width: dropped
            {"id": 6, "image_id": 2, "category_id": 2, "bbox": [40, 5, 20, 10]},  # sticks out: clipped
            {"id": 7, "image_id": 2, "category_id": 2, "bbox": [60, 5, 5, 5]},  # outside: dropped
            {"id": 8, "image_id": 2, "category_id": 2, "bbox": [1, "x", 5, 5]},  # bad bbox
            {"id": 9, "image_id": 2, "category_id": 1, "bbox": [2, 2, 8, 8], "iscrowd": 1},
            {"id": 10, "image_id": 1, "category_id": 2, "bbox": [3, 3, 6, 6], "ignore": 1},
        ],
        "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "人"}],
    }
    (src / "instances_train.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    res = convert(src, tmp_path / "y", "yolo")
    assert codes(res) == sorted(["bad_bbox", "bad_entry", "clipped_box", "degenerate_box", "duplicate_image_id",
                                 "inverted_box", "missing_image", "no_image", "outside_image", "size_mismatch",
                                 "unknown_category", "unsafe_filename"])
    every = {w["code"]: w for w in [*res.warnings, *res.skipped]}
    assert every["missing_image"]["file"] == "instances_train.json"
    assert "annotations[1]" in every["missing_image"]["reason"] and "9" in every["missing_image"]["reason"]
    assert "annotations[2]" in every["unknown_category"]["reason"] and "42" in every["unknown_category"]["reason"]
    assert "images[2]" in every["duplicate_image_id"]["reason"]
    assert "annotations[7]" in every["bad_bbox"]["reason"]
    rep = res.report
    assert rep["crowd_skipped"] == 1 and rep["difficult_skipped"] == 1  # ignore: 1 reads as difficult
    assert rep["boxes"]["clipped"] == 1 and rep["boxes"]["inverted_swapped"] == 1
    assert rep["images"] == 3 and rep["empty_images"] == 1
    _, got = read_out(tmp_path / "y", "yolo")
    assert sorted(len(v[2]) for v in got.values()) == [0, 1, 2]  # 空: none; b: clipped; a: kept + swapped
    # COCO output keeps the crowd object as crowd and the ignored one as difficult
    convert(src, tmp_path / "c", "coco")
    _, got = read_out(tmp_path / "c", "coco")
    flags = sorted(r[5] for v in got.values() for r in v[2])
    assert flags == ["", "", "", "crowd", "difficult"]
    # VOC output: crowd written difficult, counted
    res = convert(src, tmp_path / "v", "voc")
    assert res.report["crowd_as_difficult"] == 1


def test_coco_broken_json_one_line_error_with_line(tmp_path, capsys):
    import detkit.cli as cli
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.json").write_text('{"images": [\n  {"id": 1,}\n], "annotations": []}\n')
    rc = cli.main(["convert", str(src / "x.json"), str(tmp_path / "out"), "--to", "yolo"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and err.startswith("detkit: error:")
    assert "x.json:2" in err and "invalid JSON" in err
    assert not (tmp_path / "out").exists()


def test_coco_bad_categories_are_errors(tmp_path):
    src = tmp_path / "src"
    make_image(src / "a.jpg", 20, 20)
    doc = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [],
           "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}
    (src / "c.json").write_text(json.dumps(doc))
    with pytest.raises(DetkitError, match=r"c\.json: categories\[1\]: category id 1 repeated"):
        convert(src, tmp_path / "out", "yolo")
    doc["categories"] = [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]
    (src / "c.json").write_text(json.dumps(doc))
    with pytest.raises(DetkitError, match="category name 'a' used by ids 1 and 2"):
        convert(src, tmp_path / "out", "yolo")
    (src / "c.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DetkitError, match="no 'categories' list"):
        convert(src / "c.json", tmp_path / "out", "yolo")


# --------------------------------------------------------------------------- dirty YOLO


def test_yolo_dirty_lines_reported(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "classes.txt").write_text("a\nb\n")
    make_image(src / "一.jpg", 40, 20)
    (src / "一.txt").write_text(
        "0 0.5 0.5 0.5 0.5\n"      # fine
        "2 0.5 0.5 0.1 0.1\n"      # class out of range
        "1 0.5 0.5 0.1\n"          # 4 fields
        "1 0.5 abc 0.1 0.1\n"      # not a number
        "1 nan 0.5 0.1 0.1\n"      # not finite
        "-1 0.5 0.5 0.1 0.1\n"     # negative class
        "1 1.2 0.5 0.6 0.2\n"      # sticks out on the right: clipped
        "1 2.0 0.5 0.1 0.1\n"      # outside: dropped
        "0 0.5 0.5 0 0.2\n"        # zero width: dropped
        "\n")
    make_image(src / "二.jpg", 30, 30)
    (src / "二.txt").write_text("")  # empty: kept, no objects
    make_image(src / "三.jpg", 31, 30)
    (src / "三.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (src / "坏.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "坏.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    res = convert(src, tmp_path / "out", "coco")
    bad = [w for w in res.warnings if w["code"] == "bad_label_line"]
    assert [w["line"] for w in bad] == [2, 3, 4, 5, 6]
    assert all(w["file"] == "一.txt" for w in bad)
    assert "class id '2' is not one of 0..1" in bad[0]["message"]
    assert "expected 5 fields" in bad[1]["message"] and "non-numeric" in bad[2]["message"]
    assert sorted({w["code"] for w in res.warnings} - {"bad_label_line"}) == ["clipped_box", "degenerate_box",
                                                                              "outside_image"]
    assert [s["code"] for s in res.skipped] == ["bad_image"] and res.skipped[0]["file"] == "坏.jpg"
    assert res.images == 3 and res.report["empty_images"] == 1
    _, got = read_out(tmp_path / "out", "coco")
    rows = got[sha(src / "一.jpg")][2]
    assert [r[0] for r in rows] == ["a", "b"]
    assert rows[1][1:5] == pytest.approx((36.0, 8.0, 40.0, 12.0))  # 36..60 clipped at x = W


def test_yolo_missing_label_is_an_empty_image_and_bad_yaml_is_one_line(tmp_path):
    src = tmp_path / "src"
    make_image(src / "images" / "train" / "a.jpg", 20, 20)
    make_image(src / "images" / "val" / "b.jpg", 21, 20)
    (src / "labels" / "val").mkdir(parents=True)
    (src / "labels" / "val" / "b.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (src / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [x]\n")
    res = convert(src, tmp_path / "out", "voc")
    assert res.report["label_missing"] == 1 and res.report["empty_images"] == 1
    (src / "data.yaml").write_text("train: images/train\nval: nowhere/val\nnames: [x]\n")
    with pytest.raises(DetkitError) as e:
        convert(src, tmp_path / "out", "voc")
    assert "\n" not in str(e.value) and "data.yaml" in str(e.value)


# --------------------------------------------------------------------------- dirty VOC through detkit convert


def test_voc_dirty_input_reported(tmp_path):
    src = tmp_path / "src"
    make_image(src / "好.jpg", 30, 30)
    make_xml(src / "好.xml", "好.jpg", (30, 30), [("a", 5, 5, 5, 9), ("a", 1, 1, 9, 9), ("a", 20, 20, 40, 40)])
    (src / "坏.xml").write_text("<annotation><object>")
    make_xml(src / "无图.xml", "无图.jpg", (10, 10), [("a", 1, 1, 5, 5)])
    res = convert(src, tmp_path / "out", "coco")
    assert codes(res) == ["bad_xml", "clipped_box", "degenerate_box", "no_image"]
    with pytest.raises(DetkitError, match="--strict"):
        convert(src, tmp_path / "strict", "coco", strict=True)
    assert not (tmp_path / "strict").exists()


def test_unknown_format_and_bad_options_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DetkitError, match="cannot tell the annotation format"):
        convert(tmp_path / "empty", tmp_path / "out", "yolo")
    src = voc_source(tmp_path / "src")
    with pytest.raises(DetkitError, match="OUT must not be inside SRC"):
        convert(src, src / "out", "yolo")
    with pytest.raises(DetkitError, match="formats are"):
        convert(src, tmp_path / "out", "darknet")


# --------------------------------------------------------------------------- CLI


def test_cli_convert_prints_order_table_and_imbalance(tmp_path, capsys):
    import detkit.cli as cli
    truth = [(f"p{i}.jpg", 30 + i, 30, [("many", 1, 1, 10, 10, False)] * 3, "train") for i in range(8)]
    truth.append(("稀有.jpg", 50, 30, [("rare", 1, 1, 10, 10, False)], "train"))
    src = voc_source(tmp_path / "src", truth)
    rc = cli.main(["convert", str(src), str(tmp_path / "out"), "--to", "coco"])
    cap = capsys.readouterr()
    assert rc == 0
    assert "converted 9 images (voc -> coco" in cap.out and "class order: many, rare" in cap.out
    table = cap.out.split("class order")[1]
    assert "many" in table and "24" in table and "rare" in table
    assert "warning:" in cap.err and "rare" in cap.err  # 1 object against 24
    assert "no warnings; report:" in cap.out


# --------------------------------------------------------------------------- kill -9, then rerun


@pytest.mark.parametrize("to", ["yolo", "voc"])
def test_sigkill_mid_write_then_rerun_matches(tmp_path, to):
    src = voc_source(tmp_path / "src")
    convert(src, tmp_path / "ref", to)
    out = tmp_path / "out"
    code = (  # the on_write seam kills the process at its 3rd per-image annotation file
        "import os, signal, sys\n"
        "from detkit.convert.any_format import convert_dataset\n"
        "from detkit.convert.options import DatasetOptions\n"
        "n = [0]\n"
        "def dying(path):\n"
        "    if path.parent.name in ('labels', 'Annotations'):\n"
        "        n[0] += 1\n"
        "        if n[0] == 3:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "convert_dataset(sys.argv[1], sys.argv[2], DatasetOptions(to=sys.argv[3]), on_write=dying)\n"
    )
    before = tree_digest(src)
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(out), to], cwd=ROOT, capture_output=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert tree_digest(src) == before and not out.exists()
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    assert len(left) == 1 and any(left[0].rglob("*.txt" if to == "yolo" else "*.xml"))
    convert(src, out, to)
    assert not any(p.name.startswith(".out.") for p in tmp_path.iterdir())
    assert tree_digest(out) == tree_digest(tmp_path / "ref")
    assert os.path.isfile(out / "convert_report.json")


def test_convert_to_yolo_writes_what_convert_voc_writes(tmp_path):
    from detkit.convert.voc_to_yolo import convert_voc
    src = voc_source(tmp_path / "src")
    convert_voc(src, tmp_path / "a")
    convert(src, tmp_path / "b", "yolo")
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert set(a) == set(b)
    # the report's tool / from / to fields, and data.yaml's "# written by <tool>" comment
    assert sorted(k for k in a if a[k] != b[k]) == ["convert_report.json", "data.yaml"]
    ya, yb = ((tmp_path / d / "data.yaml").read_text(encoding="utf-8").splitlines() for d in "ab")
    assert ya[1:] == yb[1:]
