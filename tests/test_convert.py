"""convert-voc on synthetic trees: layouts, exact labels, dirty and hostile input, determinism, atomicity.

Every test hashes SRC before and after (the ``untouched`` helper) because SRC must never change.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detkit.convert.headers import check_image, fast_size
from detkit.convert.options import ConvertOptions
from detkit.convert.summary import imbalance_warning
from detkit.convert.voc_to_yolo import convert_voc
from detkit.data.datafiles import label_path_for, load_data_config, read_names, read_yolo_labels
from detkit.errors import DataError
from helpers import tree_digest

# --------------------------------------------------------------------------- builders


def make_image(path: Path, w: int, h: int, mode: str = "RGB", fmt: str | None = None,
               orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(w * 1000 + h)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    ext = path.suffix.lower()
    fmt = fmt or {".png": "PNG", ".bmp": "BMP"}.get(ext, "JPEG")
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    path.write_bytes(buf.getvalue())
    return path


def make_xml(path: Path, filename: str | None, size: tuple | None, objects=(), raw_size: str | None = None,
             extra: str = "") -> Path:
    """objects: (name, xmin, ymin, xmax, ymax[, difficult]) tuples; values written as given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = ["<annotation>", "<folder>x</folder>"]
    if filename is not None:
        parts.append(f"<filename>{filename}</filename>")
    parts.append("<path>C:\\Users\\someone\\Desktop\\img.jpg</path>")
    if raw_size is not None:
        parts.append(raw_size)
    elif size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for o in objects:
        diff = f"<difficult>{int(o[5])}</difficult>" if len(o) > 5 else ""
        parts.append(f"<object><name>{o[0]}</name><pose>Unspecified</pose>{diff}<bndbox><xmin>{o[1]}</xmin>"
                     f"<ymin>{o[2]}</ymin><xmax>{o[3]}</xmax><ymax>{o[4]}</ymax></bndbox></object>")
    parts.append(extra + "</annotation>\n")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def convert(src: Path, out: Path, on_write=None, **kw):
    before = tree_digest(src)
    try:
        return convert_voc(src, out, ConvertOptions(**kw), on_write=on_write)
    finally:
        assert tree_digest(src) == before, "SRC was modified"


def report(out: Path) -> dict:
    return json.loads((out / "convert_report.json").read_text(encoding="utf-8"))


def rename_map(out: Path) -> list[dict]:
    with open(out / "rename_map.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def label_text(out: Path, image_rel_out: str) -> str:
    return (out / "labels" / (image_rel_out.rsplit(".", 1)[0] + ".txt")).read_text()


def out_name(out: Path, source: str) -> str:
    """New path (relative to images/) of a source image, from rename_map.csv."""
    rows = {r["source"]: r["output"] for r in rename_map(out) if r["kind"] == "image"}
    return rows[source].removeprefix("images/")


# --------------------------------------------------------------------------- exact numbers


def test_hand_computed_labels_and_legacy_offset(tmp_path):
    src = tmp_path / "src"
    make_image(src / "a.jpg", 100, 50)
    make_xml(src / "a.xml", "a.jpg", (100, 50), [("dog", 1, 1, 100, 50), ("cat", 11, 6, 30, 25)])
    out = tmp_path / "out"
    res = convert(src, out)
    assert res.class_names == ("cat", "dog")  # sorted
    # cat: x1 = 11-1 = 10, x2 = 30 -> cx 20/100, w 20/100; y1 = 5, y2 = 25 -> cy 15/50, h 20/50
    # dog: the whole image -> 0.5 0.5 1 1
    assert label_text(out, "a.jpg") == "1 0.500000 0.500000 1.000000 1.000000\n0 0.200000 0.300000 0.200000 0.400000\n"
    assert read_names(out / "obj.names") == ["cat", "dog"]

    out2 = tmp_path / "legacy"
    convert(src, out2, legacy_offset=True)
    # voc_label.py: cx = (11+30)/2 - 1 = 19.5, w = 30-11 = 19; cy = (6+25)/2 - 1 = 14.5, h = 19
    # dog: cx = (1+100)/2 - 1 = 49.5, w = 99; cy = (1+50)/2 - 1 = 24.5, h = 49
    assert label_text(out2, "a.jpg") == ("1 0.495000 0.490000 0.990000 0.980000\n"
                                         "0 0.195000 0.290000 0.190000 0.380000\n")


def test_roundtrip_voc_yolo_boxes_within_1e6(tmp_path):
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    truth = {}
    for k in range(6):
        w, h = int(rng.integers(40, 200)), int(rng.integers(40, 200))
        make_image(src / f"img{k}.png", w, h)
        objs = []
        for _ in range(int(rng.integers(1, 5))):
            x1, x2 = sorted(rng.choice(np.arange(1, w + 1), 2, replace=False))
            y1, y2 = sorted(rng.choice(np.arange(1, h + 1), 2, replace=False))
            objs.append(("obj", int(x1), int(y1), int(x2), int(y2)))
        make_xml(src / f"img{k}.xml", f"img{k}.png", (w, h), objs)
        truth[f"img{k}.png"] = (w, h, objs)
    out = tmp_path / "out"
    convert(src, out)
    for name, (w, h, objs) in truth.items():
        got = read_yolo_labels(out / "labels" / (out_name(out, name).rsplit(".", 1)[0] + ".txt"), num_classes=1)
        # plain devkit rule written here: continuous box = (xmin - 1, ymin - 1, xmax, ymax)
        exp = np.array([[(o[1] - 1 + o[3]) / 2 / w, (o[2] - 1 + o[4]) / 2 / h,
                         (o[3] - o[1] + 1) / w, (o[4] - o[2] + 1) / h] for o in objs])
        assert np.abs(got[:, 1:] - exp).max() < 1e-6
        # and back to VOC pixels
        cx, cy, bw, bh = got[:, 1] * w, got[:, 2] * h, got[:, 3] * w, got[:, 4] * h
        back = np.stack([cx - bw / 2 + 1, cy - bh / 2 + 1, cx + bw / 2, cy + bh / 2], 1)
        assert np.abs(back - np.array([o[1:5] for o in objs])).max() < 1e-6 * max(w, h) * 2


# --------------------------------------------------------------------------- layouts


def _voc_year(root: Path, ids: list[str], sets: dict[str, list[str]] | None, cls="car"):
    for i, s in enumerate(ids):
        make_image(root / "JPEGImages" / f"{s}.jpg", 64, 48)
        make_xml(root / "Annotations" / f"{s}.xml", f"{s}.jpg", (64, 48), [(cls, 5 + i, 5, 30, 40)])
    if sets:
        (root / "ImageSets" / "Main").mkdir(parents=True)
        for k, v in sets.items():
            (root / "ImageSets" / "Main" / f"{k}.txt").write_text("".join(f"{x}\n" for x in v))


def _lines(p: Path) -> list[str]:
    return p.read_text().splitlines()


def test_voc_year_folder_split_honoured(tmp_path):
    src = tmp_path / "VOC2012"
    ids = [f"2012_{i:06d}" for i in range(7)]
    _voc_year(src, ids, {"train": ids[:4], "val": ids[4:6], "trainval": ids[:6], "test": ids[6:]})
    out = tmp_path / "out"
    res = convert(src, out)
    assert res.splits == {"train": 4, "val": 2, "test": 1}
    assert _lines(out / "train.txt") == [f"./images/{i}.jpg" for i in ids[:4]]
    assert _lines(out / "val.txt") == [f"./images/{i}.jpg" for i in ids[4:6]]
    assert _lines(out / "test.txt") == [f"./images/{ids[6]}.jpg"]
    cfg = load_data_config(out / "data.yaml")
    assert [p.name for p in cfg.val] == [f"{i}.jpg" for i in ids[4:6]]


def test_vocdevkit_several_years(tmp_path):
    src = tmp_path / "VOCdevkit"
    _voc_year(src / "VOC2007", ["000001", "000002", "000003"], {"trainval": ["000001", "000002"], "test": ["000003"]})
    make_image(src / "VOC2007" / "SegmentationClass" / "000001.png", 64, 48)  # not a detection image
    make_image(src / "VOC2007" / "JPEGImages" / "000009.jpg", 64, 48)  # no annotation: reported
    _voc_year(src / "VOC2012", ["000001", "000002"], {"train": ["000002"], "val": ["000001"]}, cls="bus")
    out = tmp_path / "out"
    res = convert(src, out)
    assert res.class_names == ("bus", "car") and res.images == 5
    assert _lines(out / "train.txt") == ["./images/voc2007/000001.jpg", "./images/voc2007/000002.jpg",
                                         "./images/voc2012/000002.jpg"]
    assert _lines(out / "val.txt") == ["./images/voc2007/000003.jpg", "./images/voc2012/000001.jpg"]
    assert not (out / "test.txt").exists()
    assert label_text(out, "voc2012/000001.jpg").startswith("0 ")  # bus
    assert label_text(out, "voc2007/000001.jpg").startswith("1 ")  # car
    rep = report(out)
    assert rep["skipped"] == [{"file": "VOC2007/JPEGImages/000009.jpg", "code": "no_annotation",
                               "reason": "image without an XML annotation"}]
    assert rep["year_folder_other_images"] == 1 and rep["warnings"] == []


def test_labelimg_nested_chinese_names_and_collision(tmp_path):
    src = tmp_path / "标注"
    make_image(src / "猫咪" / "红色 汽车.jpg", 80, 60)
    make_xml(src / "猫咪" / "红色 汽车.xml", "红色 汽车.jpg", (80, 60), [("汽车", 1, 1, 40, 30)])
    make_image(src / "猫咪" / "红色_汽车.JPEG", 80, 60)  # collides after transliteration
    make_xml(src / "猫咪" / "红色_汽车.xml", "红色_汽车.JPEG", (80, 60), [("汽车", 1, 1, 80, 60)])
    make_image(src / "flat.jpg", 30, 30)
    make_xml(src / "flat.xml", "flat.jpg", (30, 30), [("cat", 2, 2, 10, 10)])
    out = tmp_path / "输出"
    res = convert(src, out)
    assert res.images == 3
    assert out_name(out, "猫咪/红色 汽车.jpg") == "mao_mi/hong_se_qi_che.jpg"
    assert out_name(out, "猫咪/红色_汽车.JPEG") == "mao_mi/hong_se_qi_che_1.jpg"
    assert out_name(out, "flat.jpg") == "flat.jpg"
    assert read_names(out / "obj.names") == ["cat", "汽车"]  # class names as written, UTF-8
    for p in out.rglob("*"):
        rel = p.relative_to(out).as_posix()
        assert rel.isascii(), rel
    folders = [r for r in rename_map(out) if r["kind"] == "folder"]
    assert folders == [{"kind": "folder", "source": "猫咪", "output": "images/mao_mi"}]


def test_rename_map_reversible(tmp_path):
    src = tmp_path / "src"
    for i, name in enumerate(["Ä b.jpg", "a b.PNG", "数据/图 1.jpg", "数据/图_1.bmp", "x.JPG"]):
        make_image(src / name, 20 + i, 20)
        make_xml((src / name).with_suffix(".xml"), Path(name).name, (20 + i, 20), [("o", 1, 1, 5, 5)])
    out = tmp_path / "out"
    convert(src, out)
    rows = rename_map(out)
    outputs = {r["output"] for r in rows}
    assert len(outputs) == len(rows)  # one-to-one
    for r in rows:
        assert (src / r["source"]).exists(), r
        assert (out / r["output"]).exists(), r
        if r["kind"] == "image" and r["source"].endswith(".bmp"):  # re-encoded as PNG, same pixels
            assert r["output"].endswith(".png")
            np.testing.assert_array_equal(np.asarray(Image.open(src / r["source"])),
                                          np.asarray(Image.open(out / r["output"])))
        elif r["kind"] == "image":
            assert (src / r["source"]).read_bytes() == (out / r["output"]).read_bytes()
    images = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.suffix != ".txt" and p.is_file()}
    assert images == {r["output"] for r in rows if r["kind"] == "image"}


# --------------------------------------------------------------------------- dirty input


def _zoo(src: Path) -> None:
    make_image(src / "float.jpg", 100, 100)
    make_xml(src / "float.xml", "float.jpg", (100, 100), [("a", "10.5", "20.0", "50.5", "60")])
    make_image(src / "nosize.jpg", 60, 40)
    make_xml(src / "nosize.xml", "nosize.jpg", None, [("a", 1, 1, 60, 40)])
    make_image(src / "zerosize.jpg", 60, 40)
    make_xml(src / "zerosize.xml", "zerosize.jpg", (0, 0), [("a", 1, 1, 30, 20)])
    make_image(src / "wrongsize.jpg", 60, 40)
    make_xml(src / "wrongsize.xml", "wrongsize.jpg", (600, 400), [("a", 1, 1, 30, 20)])
    make_image(src / "outside.jpg", 50, 50)
    make_xml(src / "outside.xml", "outside.jpg", (50, 50), [("a", -9, 11, 70, 40), ("a", 0, 1, 50, 50),
                                                           ("a", 60, 60, 80, 80)])
    make_image(src / "inverted.jpg", 50, 50)
    make_xml(src / "inverted.xml", "inverted.jpg", (50, 50), [("a", 40, 30, 11, 6)])
    make_image(src / "degenerate.jpg", 50, 50)
    make_xml(src / "degenerate.xml", "degenerate.jpg", (50, 50), [("a", 20, 20, 20, 30), ("b", 5, 5, 9, 9)])
    make_image(src / "empty.jpg", 50, 50)
    make_xml(src / "empty.xml", "empty.jpg", (50, 50), [])
    (src / "malformed.xml").write_text("<annotation><filename>x.jpg</filename><object>")
    make_image(src / "malformed.jpg", 20, 20)
    (src / "notvoc.xml").write_text('<?xml version="1.0"?><project><item/></project>')
    make_xml(src / "orphan.xml", "orphan.jpg", (10, 10), [("a", 1, 1, 5, 5)])
    make_image(src / "lonely.jpg", 20, 20)
    good = make_image(src / "truncated.jpg", 120, 90).read_bytes()
    (src / "truncated.jpg").write_bytes(good[: len(good) // 2])
    make_xml(src / "truncated.xml", "truncated.jpg", (120, 90), [("a", 1, 1, 5, 5)])
    (src / "garbage.jpg").write_bytes(b"this is not an image at all")
    make_xml(src / "garbage.xml", "garbage.jpg", (10, 10), [("a", 1, 1, 5, 5)])
    make_image(src / "grey.jpg", 40, 30, mode="L")
    make_xml(src / "grey.xml", "grey.jpg", (40, 30), [("b", 1, 1, 40, 30)])
    make_image(src / "cmyk.jpg", 40, 30, mode="CMYK")
    make_xml(src / "cmyk.xml", "cmyk.jpg", (40, 30), [("b", 1, 1, 20, 30)])
    # EXIF orientation 6: stored 40x30, displayed 30x40; the annotator saw 30x40
    make_image(src / "rotated.jpg", 40, 30, orientation=6)
    make_xml(src / "rotated.xml", "rotated.jpg", (30, 40), [("b", 1, 1, 30, 20)])
    make_image(src / "CaseExt.JPG", 20, 20)
    make_xml(src / "caseext.xml", "caseext.jpg", (20, 20), [("b", 1, 1, 10, 10)])
    make_image(src / "noext.png", 20, 20)
    make_xml(src / "noext.xml", "noext", (20, 20), [("b", 1, 1, 10, 10)])
    make_image(src / "renamed.jpg", 20, 20)
    make_xml(src / "renamed.xml", "IMG_0001.jpg", (20, 20), [("b", 1, 1, 10, 10)])
    make_image(src / "diff.jpg", 20, 20)
    make_xml(src / "diff.xml", "diff.jpg", (20, 20), [("a", 1, 1, 10, 10, True), ("b", 1, 1, 20, 20, False)])
    make_image(src / "flags.jpg", 20, 20)
    make_xml(src / "flags.xml", "flags.jpg", (20, 20), [],
             extra="<object><name>a</name><difficult></difficult><truncated/><bndbox><xmin>1</xmin>"
                   "<ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object>")


def _by_file(entries, key="code"):
    out: dict[str, set] = {}
    for e in entries:
        out.setdefault(e["file"], set()).add(e[key])
    return out


def test_dirty_input_zoo(tmp_path):
    src = tmp_path / "src"
    _zoo(src)
    out = tmp_path / "out"
    res = convert(src, out)
    rep = report(out)
    skipped = _by_file(rep["skipped"])
    assert skipped == {"malformed.xml": {"bad_xml"}, "notvoc.xml": {"bad_xml"}, "orphan.xml": {"no_image"},
                       "lonely.jpg": {"no_annotation"}, "malformed.jpg": {"no_annotation"},
                       "truncated.jpg": {"bad_image"}, "garbage.jpg": {"bad_image"}}
    assert any("truncated" in s["reason"] for s in rep["skipped"] if s["file"] == "truncated.jpg")
    warned = _by_file(rep["warnings"])
    assert warned == {"wrongsize.xml": {"size_mismatch"}, "outside.xml": {"clipped_box", "outside_image"},
                      "inverted.xml": {"inverted_box"}, "degenerate.xml": {"degenerate_box"},
                      "renamed.xml": {"filename_mismatch"}}
    assert rep["size_missing"] == 2
    assert rep["boxes"] == {"inverted_swapped": 1, "degenerate_dropped": 1, "outside_dropped": 1,
                            "clipped": 1, "clipped_1px": 1}
    assert rep["difficult"] == 1 and rep["difficult_skipped"] == 1
    assert res.images == 16 and rep["empty_images"] == 1

    L = lambda name: label_text(out, name)  # noqa: E731
    assert L("float.jpg") == "0 0.300000 0.395000 0.410000 0.410000\n"  # x 9.5..50.5, y 19..60
    assert L("nosize.jpg") == "0 0.500000 0.500000 1.000000 1.000000\n"
    assert L("zerosize.jpg") == "0 0.250000 0.250000 0.500000 0.500000\n"
    assert L("wrongsize.jpg") == "0 0.250000 0.250000 0.500000 0.500000\n"  # normalised by the real 60x40
    # x -10..70 clipped to 0..50; y 10..40 ; second: xmin 0 -> -1 clipped silently; third dropped
    assert L("outside.jpg") == "0 0.500000 0.500000 1.000000 0.600000\n0 0.500000 0.500000 1.000000 1.000000\n"
    assert L("inverted.jpg") == "0 0.500000 0.350000 0.600000 0.500000\n"  # 10..40, 5..30
    assert L("degenerate.jpg") == "1 0.130000 0.130000 0.100000 0.100000\n"  # 4..9
    assert L("empty.jpg") == ""
    assert L("grey.jpg") == "1 0.500000 0.500000 1.000000 1.000000\n"
    assert L("cmyk.jpg") == "1 0.250000 0.500000 0.500000 1.000000\n"
    assert L("rotated.jpg") == "1 0.500000 0.250000 1.000000 0.500000\n"  # 30x40 as displayed
    assert L("caseext.jpg") == "1 0.250000 0.250000 0.500000 0.500000\n"
    assert L("noext.png") == "1 0.250000 0.250000 0.500000 0.500000\n"
    assert L("renamed.jpg") == "1 0.250000 0.250000 0.500000 0.500000\n"
    assert L("diff.jpg") == "1 0.500000 0.500000 1.000000 1.000000\n"  # difficult 'a' skipped
    assert L("flags.jpg") == "0 0.100000 0.100000 0.200000 0.200000\n"  # empty flags: not difficult
    assert rep["per_class"]["a"]["difficult"] == 1

    keep = tmp_path / "keep"
    convert(src, keep, difficult="keep")
    assert label_text(keep, "diff.jpg") == "0 0.250000 0.250000 0.500000 0.500000\n1 0.500000 0.500000 1.000000 1.000000\n"


def test_strict_turns_warnings_into_errors_and_writes_nothing(tmp_path):
    src = tmp_path / "src"
    _zoo(src)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="--strict"):
        convert(src, out, strict=True)
    assert not out.exists() and os.listdir(tmp_path) == ["src"]


def test_unknown_classes_with_names(tmp_path):
    src = tmp_path / "src"
    make_image(src / "a.jpg", 20, 20)
    make_xml(src / "a.xml", "a.jpg", (20, 20), [("dog", 1, 1, 10, 10), ("cat", 1, 1, 20, 20), ("cow", 1, 1, 5, 5),
                                                ("cow", 2, 2, 5, 5)])
    out = tmp_path / "out"
    res = convert(src, out, names=("dog", "cat"))
    assert res.class_names == ("dog", "cat")
    assert label_text(out, "a.jpg") == "0 0.250000 0.250000 0.500000 0.500000\n1 0.500000 0.500000 1.000000 1.000000\n"
    rep = report(out)
    assert rep["unknown_class_skipped"] == {"cow": 2}
    assert [w["code"] for w in rep["warnings"]] == ["unknown_class"]
    with pytest.raises(DataError, match="cow"):
        convert(src, tmp_path / "strict", names=("dog", "cat"), strict=True)


# --------------------------------------------------------------------------- hostile input


def test_hostile_filenames_symlinks_and_entities(tmp_path):
    secret_img = make_image(tmp_path / "secret.jpg", 33, 33)  # outside SRC
    src = tmp_path / "src"
    sub = src / "sub"
    make_xml(sub / "up.xml", "../../secret.jpg", (33, 33), [("a", 1, 1, 5, 5)])
    make_xml(sub / "abs.xml", str(secret_img), (33, 33), [("a", 1, 1, 5, 5)])
    make_image(sub / "win.jpg", 20, 20)
    make_xml(sub / "win.xml", "..\\..\\secret.jpg", (20, 20), [("a", 1, 1, 5, 5)])  # falls back to win.jpg
    os.symlink(secret_img, sub / "link.jpg")
    make_xml(sub / "link.xml", "link.jpg", (33, 33), [("a", 1, 1, 5, 5)])
    (sub / "lol.xml").write_text('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>'
                                 "<annotation><filename>&b;</filename></annotation>")
    (sub / "xxe.xml").write_text(f'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY x SYSTEM "file://{secret_img}">]>'
                                 "<annotation><filename>&x;</filename></annotation>")
    out = tmp_path / "out"
    outside_before = secret_img.read_bytes()
    res = convert(src, out)
    rep = report(out)
    assert res.images == 1 and out_name(out, "sub/win.jpg") == "sub/win.jpg"
    assert _by_file(rep["skipped"]) == {"sub/up.xml": {"no_image"}, "sub/abs.xml": {"no_image"},
                                        "sub/link.jpg": {"symlink_outside"}, "sub/link.xml": {"no_image"},
                                        "sub/lol.xml": {"bad_xml"}, "sub/xxe.xml": {"bad_xml"}}
    assert {w["file"] for w in rep["warnings"] if w["code"] == "unsafe_filename"} == {"sub/up.xml", "sub/abs.xml",
                                                                                     "sub/win.xml"}
    for p in out.rglob("*"):  # nothing of the outside file made it into OUT
        if p.is_file():
            assert p.read_bytes() != outside_before
    assert sorted(os.listdir(tmp_path)) == ["out", "secret.jpg", "src"]


def test_out_inside_src_or_src_inside_out_refused(tmp_path):
    src = tmp_path / "src"
    make_image(src / "a.jpg", 10, 10)
    make_xml(src / "a.xml", "a.jpg", (10, 10), [("a", 1, 1, 5, 5)])
    with pytest.raises(DataError, match="inside SRC"):
        convert(src, src / "out")
    with pytest.raises(DataError, match="contain SRC"):
        convert(src, tmp_path, force=True)
    with pytest.raises(DataError, match="not a folder"):
        convert(tmp_path / "missing", tmp_path / "o")


def test_nothing_convertible(tmp_path):
    src = tmp_path / "src"
    (src).mkdir()
    (src / "bad.xml").write_text("<annotation>")
    with pytest.raises(DataError, match="nothing could be converted"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- OUT handling


def _small(src: Path, n: int = 10) -> None:
    for i in range(n):
        make_image(src / f"img{i:02d}.jpg", 30 + i, 30)
        make_xml(src / f"img{i:02d}.xml", f"img{i:02d}.jpg", (30 + i, 30), [("a" if i % 3 else "b", 1, 1, 10, 10 + i)])


def test_existing_out_refused_unless_detkit_output_or_force(tmp_path):
    src = tmp_path / "src"
    _small(src, 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="--force"):
        convert(src, out)
    assert (out / "precious.txt").read_text() == "keep me"
    convert(src, out, force=True)
    assert not (out / "precious.txt").exists()
    first = tree_digest(out)
    convert(src, out)  # an earlier detkit output may be replaced without --force
    assert tree_digest(out) == first
    empty = tmp_path / "empty"
    empty.mkdir()
    convert(src, empty)  # an empty folder is fine
    # weights darknet saved in backup/ survive a re-run; unknown files need --force
    (out / "backup" / "yolo_last.weights").write_bytes(b"w" * 10)
    convert(src, out)
    assert (out / "backup" / "yolo_last.weights").read_bytes() == b"w" * 10
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="notes.txt"):
        convert(src, out)
    assert (out / "notes.txt").read_text() == "mine"


def test_deterministic_outputs(tmp_path):
    src = tmp_path / "src"
    _small(src)
    make_image(src / "猫" / "图.jpg", 20, 20)
    make_xml(src / "猫" / "图.xml", "图.jpg", (20, 20), [("b", 1, 1, 9, 9)])
    a, b = tmp_path / "a", tmp_path / "b"
    convert(src, a, seed=3)
    convert(src, b, seed=3, link="copy")
    sa, sb = tree_digest(a), tree_digest(b)
    ra, rb = report(a), report(b)
    assert ra["image_files"] == {"link": 11} and rb["image_files"] == {"copy": 11}
    del sa["convert_report.json"], sb["convert_report.json"]
    assert sa == sb
    ra.pop("options"), rb.pop("options"), ra.pop("image_files"), rb.pop("image_files")
    assert ra == rb


def test_random_split_fraction_and_seed(tmp_path):
    src = tmp_path / "src"
    _small(src, 10)
    r0 = convert(src, tmp_path / "o0", val_fraction=0.3, seed=0)
    assert r0.splits == {"train": 7, "val": 3}
    val0 = _lines(tmp_path / "o0" / "val.txt")
    r1 = convert(src, tmp_path / "o1", val_fraction=0.3, seed=0)
    assert _lines(tmp_path / "o1" / "val.txt") == val0
    vals = {tuple(_lines(convert(src, tmp_path / f"s{s}", val_fraction=0.3, seed=s).out / "val.txt"))
            for s in range(1, 6)}
    assert len(vals) > 1  # the seed matters
    all_lines = set(_lines(tmp_path / "o0" / "train.txt")) | set(val0)
    assert len(all_lines) == 10 and r1.images == 10


def test_link_and_copy_modes(tmp_path):
    src = tmp_path / "src"
    _small(src, 2)
    convert(src, tmp_path / "l")
    convert(src, tmp_path / "c", link="copy")
    s, l, c = src / "img00.jpg", tmp_path / "l/images/img00.jpg", tmp_path / "c/images/img00.jpg"
    assert os.path.samefile(s, l) and not os.path.samefile(s, c)
    assert s.read_bytes() == c.read_bytes()


def test_link_falls_back_to_copy(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _small(src, 2)

    def no_links(*a, **k):
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", no_links)
    convert(src, tmp_path / "o")
    assert report(tmp_path / "o")["image_files"] == {"copy": 2}
    assert (tmp_path / "o/images/img00.txt").read_text() == (tmp_path / "o/labels/img00.txt").read_text()


def test_interrupted_run_leaves_previous_or_nothing_and_rerun_matches(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _small(src, 6)
    ref = tmp_path / "ref"
    convert(src, ref)
    out = tmp_path / "out"
    calls = {"n": 0}

    def dying_write(path):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C half-way
    with pytest.raises(KeyboardInterrupt):
        convert(src, out, on_write=dying_write)
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["ref", "src"]
    # a killed process leaves its build folder behind: simulate one from a dead pid
    stale = tmp_path / ".out.tmp-999999999"
    (stale / "images").mkdir(parents=True)
    (stale / "junk.txt").write_text("half")
    convert(src, out)
    assert not stale.exists()
    assert tree_digest(out) == tree_digest(ref)
    # killed between the two renames: the previous output (with its weights) is put back, then replaced
    (out / "backup" / "w.weights").write_bytes(b"123")
    os.replace(out, tmp_path / ".out.old-999999998")
    convert(src, out)
    assert (out / "backup" / "w.weights").read_bytes() == b"123"
    assert not any(p.name.startswith(".out.") for p in tmp_path.iterdir())
    os.remove(out / "backup" / "w.weights")
    # interrupting a re-run keeps the complete previous output
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        convert(src, out, seed=5, on_write=dying_write)
    assert tree_digest(out) == tree_digest(ref)


# --------------------------------------------------------------------------- outputs usable by tools


def _alexeyab_label(line: str) -> str:
    """AlexeyAB darknet (replace_image_to_label): /JPEGImages/ -> /labels/, else beside; ext -> .txt."""
    p = line.replace("/JPEGImages/", "/labels/")
    for ext in (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG", ".BMP"):
        if p.endswith(ext):
            p = p[: -len(ext)] + ".txt"
    return p


def _first_replace(s: str, old: str, new: str) -> str:
    i = s.find(old)
    return s if i < 0 else s[:i] + new + s[i + len(old):]


def _pjreddie_label(line: str) -> str:
    """pjreddie darknet (fill_truth_detection): first 'images', 'JPEGImages', 'raw' -> 'labels', ext -> .txt."""
    p = line
    for old, new in (("images", "labels"), ("JPEGImages", "labels"), ("raw", "labels"), (".jpg", ".txt"),
                     (".png", ".txt"), (".JPG", ".txt"), (".JPEG", ".txt")):
        p = _first_replace(p, old, new)
    return p


def _ultralytics_label(out: Path, line: str) -> str:
    """PyTorch YOLO tools: './' relative to the list file; last /images/ -> /labels/; ext -> .txt."""
    full = (str(out) + "/" + line[2:]) if line.startswith("./") else line
    sa, sb = "/images/", "/labels/"
    return (sb.join(full.rsplit(sa, 1))).rsplit(".", 1)[0] + ".txt"


def check_label_rules(out: Path) -> int:
    """Every list entry finds its label under all three tools' rules (darknet runs in OUT)."""
    n = 0
    for lst in ("train.txt", "val.txt"):
        for line in _lines(out / lst):
            want = (out / "labels" / line.removeprefix("./images/")).with_suffix(".txt").read_text()
            assert (out / _alexeyab_label(line)).read_text() == want
            assert (out / _pjreddie_label(line)).read_text() == want
            assert Path(_ultralytics_label(out, line)).read_text() == want
            assert label_path_for(out / line).read_text() == want
            n += 1
    return n


def test_label_rules_of_darknet_forks_and_pytorch_tools(tmp_path):
    src = tmp_path / "src"
    _small(src, 4)
    make_image(src / "images" / "JPEGImages" / "pic.jpeg", 20, 20)  # hostile folder names
    make_xml(src / "images" / "JPEGImages" / "pic.xml", "pic.jpeg", (20, 20), [("a", 1, 1, 9, 9)])
    make_image(src / "labels" / "q.bmp", 20, 20)
    make_xml(src / "labels" / "q.xml", "q.bmp", (20, 20), [("b", 1, 1, 9, 9)])
    out = tmp_path / "out"
    convert(src, out, val_fraction=0.5)
    assert check_label_rules(out) == 6
    lines = _lines(out / "train.txt") + _lines(out / "val.txt")
    assert "./images/images_1/jpegimages_1/pic.jpg" in lines


def test_data_files_readable(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _small(src, 5)
    out = tmp_path / "out"
    res = convert(src, out)
    monkeypatch.chdir(tmp_path)
    for name in ("obj.data", "data.yaml"):
        cfg = load_data_config(out / name)
        assert cfg.names == list(res.class_names)
        assert len(cfg.train) + len(cfg.val) == 5
        for img in cfg.train + cfg.val:
            assert img.is_file()
            read_yolo_labels(label_path_for(img), num_classes=len(cfg.names))
    assert (out / "obj.data").read_text() == ("classes = 2\ntrain = train.txt\nvalid = val.txt\nnames = obj.names\n"
                                              "backup = backup/\n")
    assert (out / "backup").is_dir()


def test_imbalance_warning():
    from detkit.convert.options import ClassStats
    assert imbalance_warning({"a": ClassStats(5, 100, 0), "b": ClassStats(5, 9, 0)}) is not None
    assert imbalance_warning({"a": ClassStats(5, 100, 0), "b": ClassStats(5, 10, 0)}) is None
    assert imbalance_warning({"a": ClassStats(5, 100, 0)}) is None


# --------------------------------------------------------------------------- CLI


def test_cli_exit_codes_and_summary(tmp_path, monkeypatch, capsys):
    import detkit.cli as cli
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["convert_cmd"])
    src = tmp_path / "src"
    _small(src, 10)
    names = tmp_path / "order.names"
    names.write_text("b\na\n")
    rc = cli.main(["convert-voc", str(src), str(tmp_path / "out"), "--names", str(names), "--seed", "1"])
    cap = capsys.readouterr()
    assert rc == 0
    assert "converted 10 images" in cap.out and "class order (obj.names): b, a" in cap.out
    assert "no warnings" in cap.out
    assert read_names(tmp_path / "out" / "obj.names") == ["b", "a"]
    # nothing convertible -> non-zero exit, one-line error
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.xml").write_text("<nope")
    rc = cli.main(["convert-voc", str(bad), str(tmp_path / "out2")])
    cap = capsys.readouterr()
    assert rc == 1 and cap.err.startswith("detkit: error:") and "nothing could be converted" in cap.err
    # warnings: exit 0, count printed; --strict: exit 1
    make_image(src.parent / "src2" / "a.jpg", 20, 20)
    make_xml(src.parent / "src2" / "a.xml", "a.jpg", (20, 20), [("a", 5, 5, 5, 9), ("a", 1, 1, 9, 9)])
    assert cli.main(["convert-voc", str(tmp_path / "src2"), str(tmp_path / "out3")]) == 0
    assert "1 warnings" in capsys.readouterr().err
    assert cli.main(["convert-voc", str(tmp_path / "src2"), str(tmp_path / "out4"), "--strict"]) == 1
    assert not (tmp_path / "out4").exists()


# --------------------------------------------------------------------------- fast header reader


@pytest.mark.parametrize("mode,fmt,orientation,progressive", [
    ("RGB", "JPEG", None, False), ("RGB", "JPEG", 6, False), ("RGB", "JPEG", 8, True), ("RGB", "JPEG", 3, False),
    ("RGB", "JPEG", 5, False), ("L", "JPEG", None, True), ("CMYK", "JPEG", 7, False), ("RGB", "PNG", None, False),
    ("RGBA", "PNG", None, False), ("RGB", "BMP", None, False), ("L", "PNG", None, False),
])
def test_fast_size_matches_read_image_size(tmp_path, mode, fmt, orientation, progressive):
    from detkit.data.images import read_image, read_image_size
    p = tmp_path / f"x.{fmt.lower()}"
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (37, 53, 3), dtype=np.uint8)).convert(mode)
    kw = {"progressive": True} if progressive else {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        exif[0x010F] = "detkit test camera"  # more than one IFD entry
        kw["exif"] = exif.tobytes()
    img.save(p, fmt, **kw)
    ref = read_image_size(p)
    assert check_image(str(p)) == ref
    assert ref == read_image(p).shape[1::-1]  # and both agree with the decoded, oriented pixels
    if fmt != "BMP":
        assert fast_size(p.read_bytes()) == ref  # the marker parser itself answered


def test_sigkill_half_way_then_rerun_matches(tmp_path):
    """A process killed (SIGKILL, no cleanup) in the middle of writing labels leaves no OUT; the
    rerun removes the dead build folder and writes exactly what an uninterrupted run writes."""
    import signal
    import subprocess
    import sys
    src = tmp_path / "src"
    _small(src, 8)
    ref = tmp_path / "ref"
    convert(src, ref)
    out = tmp_path / "out"
    code = (  # the on_write seam: the 5th file written (a label file) kills the process
        "import os, signal, sys\n"
        "from detkit.convert.voc_to_yolo import convert_voc\n"
        "n = [0]\n"
        "def dying(path):\n"
        "    n[0] += 1\n"
        "    if n[0] == 5:\n"
        "        assert path.suffix == '.txt' and path.parent.name == 'labels', path\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "convert_voc(sys.argv[1], sys.argv[2], on_write=dying)\n"
    )
    before = tree_digest(src)
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(out)], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert tree_digest(src) == before
    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    assert len(leftovers) == 1 and any(leftovers[0].rglob("*.txt"))  # a half-built folder, as after a crash
    convert(src, out)
    assert not any(p.name.startswith(".out.") for p in tmp_path.iterdir())
    assert tree_digest(out) == tree_digest(ref)


def test_similar_class_names_warned(tmp_path):
    src = tmp_path / "src"
    make_image(src / "a.jpg", 20, 20)
    make_xml(src / "a.xml", "a.jpg", (20, 20), [("Traffic light", 1, 1, 5, 5), ("traffic_light", 1, 1, 9, 9),
                                                ("car", 2, 2, 6, 6)])
    res = convert(src, tmp_path / "out")
    assert res.class_names == ("Traffic light", "car", "traffic_light")  # kept as written, sorted
    assert [w["code"] for w in res.warnings] == ["similar_class_names"]
    assert "'Traffic light', 'traffic_light'" in res.warnings[0]["message"]
