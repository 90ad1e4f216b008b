"""The column-wise COCO reader (``read_coco_columns`` + ``BoxTable`` + ``label_lines``) against the
reference reader (entry by entry, one SourceBox per object): on generated COCO sources full of
dirty cases, both give byte-identical OUT trees in every target format, and the same result."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from detkit.convert import coco_input
from detkit.convert.any_format import convert_dataset
from detkit.convert.fastlabels import label_lines
from detkit.convert.options import DatasetOptions
from detkit.data.coco import read_coco_columns, read_coco_file
from helpers import tree_digest
from test_convert import make_image

NAMES = ["car", "人", "dog", "bike", "猫"]


def dirty_coco(root: Path, seed: int) -> Path:
    """A COCO source with every semantic dirty case (all annotations well typed, so the fast
    reader takes it), plus images that are missing, truncated, duplicated or found by fallback."""
    rng = random.Random(seed)
    str_ids = seed % 3 == 1
    cat_ids = rng.sample(range(1, 200), len(NAMES))
    if seed % 3 == 2:
        cat_ids = [f"c{c}" for c in cat_ids]
    images, files = [], []
    for k in range(rng.randint(5, 9)):
        w, h = rng.choice([(40, 30), (31, 17), (64, 64), (25, 50)])
        name = rng.choice([f"img_{k}.jpg", f"图片_{k}.jpg", f"sub/pic {k}.png", f"Case_{k}.JPG"])
        on_disk = name.lower() if name.startswith("Case") else name  # found by the case-insensitive fallback
        make_image(root / "images" / on_disk, w, h)
        files.append((w, h))
        claimed = rng.choice([(w, h), (w, h), (h, w), (None, None), (w + 3, h)])
        im = {"id": f"i{k}" if str_ids else k + 1, "file_name": name}
        if claimed[0] is not None:
            im["width"], im["height"] = claimed
        images.append(im)
    bad = root / "images" / "cut.jpg"  # truncated: skipped bad_image
    make_image(bad, 40, 30)
    bad.write_bytes(bad.read_bytes()[: 300])
    images.append({"id": "icut" if str_ids else 900, "file_name": "cut.jpg", "width": 40, "height": 30})
    images.append({"id": "igone" if str_ids else 901, "file_name": "gone.jpg"})  # no such file
    images.append({"id": images[0]["id"], "file_name": "img_dup.jpg"})  # repeated id
    images.append({"id": "iesc" if str_ids else 902, "file_name": "../escape.jpg"})
    images.append({"file_name": "noid.jpg"})
    anns = []
    n_real = len(files)
    for j in range(rng.randint(40, 90)):
        k = rng.randrange(n_real + 2)
        iid = images[k]["id"] if k < len(images) else "nope"
        if rng.random() < 0.04:
            iid = "missing" if str_ids else 7777
        w, h = files[k] if k < n_real else (40, 30)
        kind = rng.random()
        if kind < 0.5:  # inside, some on exact 1/128 ties of the 6-decimal rounding
            x, y = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            bw, bh = rng.uniform(0.5, w - x), rng.uniform(0.5, h - y)
            if rng.random() < 0.3:
                x, bw = 0.0, w * rng.choice([1, 3, 5, 7]) / 128
        elif kind < 0.6:
            x, y, bw, bh = -0.5, -1.0, w / 2, h / 2  # within 1 px outside: clipped silently
        elif kind < 0.7:
            x, y, bw, bh = w * 0.6, h * 0.5, w, h  # sticks out: clipped, warned
        elif kind < 0.78:
            x, y, bw, bh = w + 5, 1, 4, 4  # outside: dropped
        elif kind < 0.86:
            x, y, bw, bh = w * 0.8, h * 0.9, -w / 3, -h / 4  # negative: swapped
        elif kind < 0.89:
            x, y, bw, bh = 3, 3, 0, 5  # zero width: dropped
        elif kind < 0.92:  # only one side out, by under or over 1 px
            x, y, bw, bh = rng.choice([(1, h / 2, w / 3, h / 2 + 0.4), (1, 2, w / 3, h + 3),
                                       (w / 2, 1, w / 2 + 0.3, 2), (w / 2, 1, w / 2 + 2, 2)])
        else:
            x, y, bw, bh = 1, 1, int(w / 2), int(h / 3)  # integers
        a = {"id": j + 1, "image_id": iid, "category_id": rng.choice(cat_ids), "bbox": [x, y, bw, bh],
             "area": abs(bw * bh), "segmentation": [[1, 2, 3, 4, 5, 6]] * rng.randint(0, 3)}
        if rng.random() < 0.05:
            a["category_id"] = "zzz" if seed % 3 == 2 else 4242  # unknown category
        for flag in ("iscrowd", "ignore", "difficult"):
            if rng.random() < 0.12:
                a[flag] = rng.choice([0, 1, 2])
        anns.append(a)
    rng.shuffle(anns)
    doc = {"info": {"x": 1}, "images": images, "annotations": anns,
           "categories": [{"id": c, "name": n} for c, n in zip(cat_ids, NAMES)]}
    jf = root / "annotations" / "instances_train.json"
    jf.parent.mkdir(parents=True, exist_ok=True)
    jf.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return jf


def both(monkeypatch, src: Path, tmp: Path, tag: str, **kw):
    """Convert with the fast reader and with the reference reader; (fast result, ref result, digests)."""
    res = {}
    for fast in (True, False):
        monkeypatch.setattr(coco_input, "FAST", fast)
        out = tmp / f"{tag}_{'fast' if fast else 'ref'}"
        res[fast] = (convert_dataset(src, out, DatasetOptions(**kw)), tree_digest(out))
    return res[True], res[False]


def assert_identical(fast, ref) -> None:
    (rf, df), (rr, dr) = fast, ref
    assert df == dr  # every file of OUT byte for byte (labels, lists, names, rename_map.csv, report)
    assert rf.report == rr.report and rf.per_class == rr.per_class and rf.class_names == rr.class_names


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("to", ["yolo", "coco", "voc"])
def test_fast_reader_matches_reference_on_dirty_coco(tmp_path, monkeypatch, seed, to):
    src = tmp_path / "src"
    jf = dirty_coco(src, seed)
    assert read_coco_columns(jf, lambda *a: None) is not None  # the fast reader really takes this file
    kw = {"to": to, "images": str(src / "images"), "difficult": "keep" if seed % 2 else "skip"}
    if seed % 4 == 3:
        kw["names"] = ("dog", "car", "猫")  # some classes left out: unknown_class
    fast, ref = both(monkeypatch, jf, tmp_path, "o", **kw)
    assert_identical(fast, ref)
    rep = fast[0].report
    codes = {e["code"] for e in rep["warnings"] + rep["skipped"]}
    assert {"bad_image", "no_image", "duplicate_image_id", "unsafe_filename", "bad_entry"} <= codes
    assert rep["objects_written"] > 0


@pytest.mark.parametrize("change", ["bool_flag", "string_flag", "bad_bbox", "big_id", "null_id"])
def test_files_the_fast_reader_refuses_go_the_reference_way(tmp_path, monkeypatch, change):
    src = tmp_path / "src"
    jf = dirty_coco(src, 5)
    doc = json.loads(jf.read_text(encoding="utf-8"))
    a = doc["annotations"][3]
    if change == "bool_flag":
        a["iscrowd"] = True
    elif change == "string_flag":
        a["difficult"] = "1"
    elif change == "bad_bbox":
        a["bbox"] = [1, "x", 2, 3]
    elif change == "big_id":
        a["image_id"] = 2 ** 64  # orjson reads it as a float: bad_entry
    else:
        a["image_id"] = None
    jf.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    assert read_coco_columns(jf, lambda *a: None) is None
    fast, ref = both(monkeypatch, jf, tmp_path, "o", to="yolo", images=str(src / "images"))
    assert_identical(fast, ref)


def test_folder_of_coco_files_mixing_fast_and_reference(tmp_path, monkeypatch):
    """One file read column-wise, one entry by entry: the column-wise boxes are materialised."""
    src = tmp_path / "src"
    for sub, seed in (("a", 2), ("b", 3)):
        jf = dirty_coco(src / sub, seed)
        doc = json.loads(jf.read_text(encoding="utf-8"))
        for im in doc["images"]:  # found under SRC: a/images/..., b/images/...
            if "file_name" in im and not im["file_name"].startswith(".."):
                im["file_name"] = f"{sub}/images/{im['file_name']}"
        if sub == "a":
            cats = doc["categories"]
        else:  # the same categories; category ids of a's doc
            ids = [c["id"] for c in doc["categories"]]
            for a in doc["annotations"]:
                a["category_id"] = cats[ids.index(a["category_id"])]["id"] if a["category_id"] in ids else 4242
            doc["categories"] = cats
            doc["annotations"][0]["iscrowd"] = False  # not an integer: the reference reader
        split = "val" if sub == "a" else "train"
        jf.unlink()
        (src / sub / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc, ensure_ascii=False),
                                                                          encoding="utf-8")
    assert read_coco_columns(src / "a" / "annotations" / "instances_val.json", lambda *a: None) is not None
    assert read_coco_columns(src / "b" / "annotations" / "instances_train.json", lambda *a: None) is None
    for to in ("yolo", "coco"):
        fast, ref = both(monkeypatch, src, tmp_path, to, to=to)
        assert_identical(fast, ref)
        assert fast[0].report["splits"]["val"] > 0


def test_columns_read_what_the_reference_reads(tmp_path):
    jf = dirty_coco(tmp_path / "s", 4)
    issues_ref, issues_fast = [], []
    ref = read_coco_file(jf, lambda *a: issues_ref.append(a))
    cols = read_coco_columns(jf, lambda *a: issues_fast.append(a))
    assert issues_fast == issues_ref and cols.images == ref.images and cols.categories == ref.categories
    got = [(i, c, tuple(b), bool(cr), bool(ig), bool(d)) for i, c, b, cr, ig, d in
           zip(cols.image_ids, cols.category_ids, cols.bbox.tolist(), cols.iscrowd, cols.ignore, cols.difficult)]
    assert got == [(a.image_id, a.category_id, a.bbox, a.iscrowd, a.ignore, a.difficult) for a in ref.annotations]


def _python(cls, x1, y1, x2, y2, w, h) -> bytes:
    return "".join(f"{c} {(a + b) / 2 / W:.6f} {(c2 + d) / 2 / H:.6f} {(b - a) / W:.6f} {(d - c2) / H:.6f}\n"
                   for c, a, c2, b, d, W, H in zip(cls, x1, y1, x2, y2, w, h)).encode()


@pytest.mark.parametrize("seed", range(4))
def test_label_lines_are_pythons_bytes(seed):
    rng = np.random.default_rng(seed)
    n = 20000
    w = rng.integers(1, 8000, n).astype(float)
    h = rng.integers(1, 8000, n).astype(float)
    x1 = rng.uniform(0, 1, n) * w
    x2 = x1 + rng.uniform(0, 1, n) * (w - x1)
    y1 = np.zeros(n)
    y2 = h * (2 * rng.integers(0, 64, n) + 1) / 128  # cy, h on exact halves of the 6th decimal
    x1[:50], x2[:50] = 0.0, w[:50]  # 0.5 and 1.0
    x2[50:100] = x1[50:100] + w[50:100] * (np.round(rng.uniform(0, 1, 50) * 1e6) + 0.5) / 1e6  # near ties
    x2 = np.minimum(np.maximum(x2, x1 + 1e-9), w)
    cls = rng.integers(0, [1, 10, 100, 5000][seed], n)
    blob, off = label_lines(cls, x1, y1, x2, y2, w, h)
    ref = _python(cls.tolist(), x1.tolist(), y1.tolist(), x2.tolist(), y2.tolist(), w.astype(int).tolist(),
                  h.astype(int).tolist())
    assert blob == ref
    assert off[0] == 0 and off[-1] == len(blob) and all(blob[o - 1] == 10 for o in off[1:].tolist())


def test_label_lines_fall_back_to_python_outside_the_unit_range():
    vals = [(-0.0, 0.0, 1.0, 1.0), (12.5, 3.0, 1.0, 1.0), (0.0, 0.0, 10.0, 10.0)]
    x1, y1, x2, y2 = (np.array(v, float) for v in zip(*vals))
    cls = np.array([3, 0, 11])
    w, h = np.full(3, 1.0), np.full(3, 1.0)
    blob, off = label_lines(cls, x1, y1, x2, y2, w, h)
    assert blob == _python(cls.tolist(), x1.tolist(), y1.tolist(), x2.tolist(), y2.tolist(), [1] * 3, [1] * 3)
    blob, off = label_lines(np.zeros(0, int), *([np.zeros(0)] * 6))
    assert blob == b"" and off.tolist() == [0]
