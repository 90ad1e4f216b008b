"""Dataset files: names, obj.data, data.yaml, list files, label paths, YOLO label files."""
from __future__ import annotations

import os

import numpy as np
import pytest

from detkit.data.datafiles import (DataConfig, label_path_for, load_data_config, read_list_file, read_names,
                                   read_yolo_labels, write_names, write_text_atomic, write_yolo_labels)
from detkit.errors import AnnotationError, DataError


def test_read_names_tolerates_bom_crlf_trailing_blank(tmp_path):
    p = tmp_path / "obj.names"
    p.write_bytes("\ufeffcat \r\n猫咪\r\n\r\n\n".encode("utf-8"))
    assert read_names(p) == ["cat", "猫咪"]


@pytest.mark.parametrize("text,line,msg", [
    ("a\n\nb\n", 2, "blank line"),
    ("a\nb\na\n", 3, "duplicate"),
])
def test_read_names_errors(tmp_path, text, line, msg):
    p = tmp_path / "n.names"
    p.write_text(text)
    with pytest.raises(AnnotationError, match=msg) as e:
        read_names(p)
    assert e.value.line == line


def test_read_names_empty_and_not_utf8(tmp_path):
    (tmp_path / "e.names").write_text("\n\n")
    with pytest.raises(AnnotationError, match="no class names"):
        read_names(tmp_path / "e.names")
    (tmp_path / "g.names").write_bytes("a\n猫咪\n".encode("gbk"))
    with pytest.raises(AnnotationError, match="not UTF-8") as e:
        read_names(tmp_path / "g.names")
    assert e.value.line == 2


def test_write_names_roundtrip(tmp_path):
    p = tmp_path / "o.names"
    write_names(p, ["b", "猫", "a b"])
    assert p.read_bytes() == "b\n猫\na b\n".encode()
    assert read_names(p) == ["b", "猫", "a b"]
    with pytest.raises(DataError):
        write_names(p, ["ok", "bad\nname"])


def test_write_text_atomic_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    write_text_atomic(p, "new\n")
    assert p.read_text() == "new\n"
    assert sorted(os.listdir(tmp_path)) == ["f.txt"]


def test_write_text_atomic_failure_keeps_old(tmp_path, monkeypatch):
    p = tmp_path / "f.txt"
    p.write_text("old")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_text_atomic(p, "new")
    assert p.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["f.txt"]


def test_label_path_for_darknet_rules():
    assert label_path_for("/d/images/a.jpg") == label_path_for("/d/images/a.jpg")
    assert str(label_path_for("/d/images/a.jpg")) == "/d/labels/a.txt"
    assert str(label_path_for("/d/VOC2007/JPEGImages/a.JPEG")) == "/d/VOC2007/labels/a.txt"
    assert str(label_path_for("/x/images/d/images/s/a.png")) == "/x/images/d/labels/s/a.txt"  # last one
    assert str(label_path_for("/d/pics/a.bmp")) == "/d/pics/a.txt"  # beside the image
    assert str(label_path_for("rel/images/images.jpg")) == "rel/labels/images.txt"  # the file name is not a folder


def test_read_list_file_rules(tmp_path, monkeypatch):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "images" / "a.jpg").write_bytes(b"x")
    (tmp_path / "cwdimg").mkdir()
    (tmp_path / "cwdimg" / "c.jpg").write_bytes(b"x")
    absimg = tmp_path / "abs.jpg"
    absimg.write_bytes(b"x")
    lst = tmp_path / "data" / "train.txt"
    lst.write_text(f"# comment\n./images/a.jpg\r\n\n  images/a.jpg  \ncwdimg/c.jpg\n{absimg}\n")
    monkeypatch.chdir(tmp_path)
    got = read_list_file(lst, extra_bases=[tmp_path], must_exist=True)
    assert got == [tmp_path / "data/images/a.jpg", tmp_path / "data/images/a.jpg", tmp_path / "cwdimg/c.jpg", absimg]
    lst.write_text("images/a.jpg\nmissing.jpg\n")
    with pytest.raises(DataError, match="missing.jpg") as e:
        read_list_file(lst, must_exist=True)
    assert e.value.line == 2
    assert read_list_file(lst)[1] == tmp_path / "data" / "missing.jpg"


def _dataset(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    for n in ("a", "b", "c"):
        (root / "images" / f"{n}.jpg").write_bytes(b"x")
    (root / "obj.names").write_text("cat\ndog\n")
    (root / "train.txt").write_text("./images/a.jpg\n./images/b.jpg\n")
    (root / "val.txt").write_text("images/c.jpg\n")
    return root


def test_obj_data_relative_to_data_file(tmp_path, monkeypatch):
    root = _dataset(tmp_path)
    (root / "obj.data").write_text("classes= 2\ntrain  = train.txt\nvalid = val.txt\nnames = obj.names\nbackup = backup/\n")
    monkeypatch.chdir(tmp_path)  # cwd is not the dataset folder
    cfg = load_data_config("ds/obj.data")
    assert isinstance(cfg, DataConfig)
    assert cfg.names == ["cat", "dog"] and cfg.num_classes == 2
    assert cfg.train == [root / "images/a.jpg", root / "images/b.jpg"] and cfg.val == [root / "images/c.jpg"]
    assert cfg.root == root and cfg.backup == root / "backup"


def test_obj_data_darknet_cwd_relative(tmp_path, monkeypatch):
    # darknet's own layout: every path relative to the directory darknet runs in
    root = _dataset(tmp_path)
    (root / "train.txt").write_text("ds/images/a.jpg\n")
    cfgdir = tmp_path / "cfg"
    cfgdir.mkdir()
    (cfgdir / "obj.data").write_text("classes=2\ntrain=ds/train.txt\nnames=ds/obj.names\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_data_config(cfgdir / "obj.data")
    assert cfg.train == [tmp_path / "ds/images/a.jpg"] and cfg.val == []


@pytest.mark.parametrize("text,line,msg", [
    ("classes=3\ntrain=train.txt\nnames=obj.names\n", 1, "has 2 names"),
    ("classes=two\ntrain=train.txt\nnames=obj.names\n", 1, "not an integer"),
    ("train=train.txt\nnames=obj.names\njunk line\n", 3, "key = value"),
])
def test_obj_data_errors(tmp_path, text, line, msg):
    root = _dataset(tmp_path)
    (root / "obj.data").write_text(text)
    with pytest.raises(DataError, match=msg) as e:
        load_data_config(root / "obj.data")
    assert e.value.line == line


def test_obj_data_missing_train(tmp_path):
    root = _dataset(tmp_path)
    (root / "obj.data").write_text("names=obj.names\n")
    with pytest.raises(DataError, match="train"):
        load_data_config(root / "obj.data")


@pytest.mark.parametrize("names", ["[cat, dog]", "{0: cat, 1: dog}", "obj.names"])
def test_data_yaml_names_forms(tmp_path, names):
    root = _dataset(tmp_path)
    (root / "data.yaml").write_text(f"train: train.txt\nval: val.txt\nnames: {names}\n")
    cfg = load_data_config(root / "data.yaml")
    assert cfg.names == ["cat", "dog"]
    assert cfg.train == [root / "images/a.jpg", root / "images/b.jpg"] and cfg.val == [root / "images/c.jpg"]


def test_data_yaml_path_key_and_folder_entries(tmp_path):
    root = _dataset(tmp_path)
    cfgdir = tmp_path / "configs"
    cfgdir.mkdir()
    (cfgdir / "d.yml").write_text("path: ../ds\ntrain: [images]\nval: images/c.jpg\nnames: {0: cat, 1: dog}\nnc: 2\n")
    cfg = load_data_config(cfgdir / "d.yml")
    assert [p.name for p in cfg.train] == ["a.jpg", "b.jpg", "c.jpg"] and cfg.val[0].name == "c.jpg"
    assert cfg.root.resolve() == root.resolve()


@pytest.mark.parametrize("text,msg", [
    ("train: train.txt\nnames: [a, b]\nnc: 3\n", "nc"),
    ("train: train.txt\n", "names"),
    ("names: [a]\n", "train"),
    ("train: train.txt\nnames: {0: a, 2: b}\n", "without gaps"),
    ("- a\n", "mapping"),
    ("train: [a\n", "invalid YAML"),
])
def test_data_yaml_errors(tmp_path, text, msg):
    root = _dataset(tmp_path)
    (root / "data.yaml").write_text(text)
    with pytest.raises(DataError, match=msg):
        load_data_config(root / "data.yaml")


def test_yolo_labels_roundtrip_6_decimals(tmp_path):
    p = tmp_path / "a.txt"
    rows = np.array([[0, 0.2, 0.3, 0.2, 0.4], [2, 1 / 3, 2 / 3, 0.123456789, 1.0]])
    write_yolo_labels(p, rows)
    assert p.read_text() == "0 0.200000 0.300000 0.200000 0.400000\n2 0.333333 0.666667 0.123457 1.000000\n"
    got = read_yolo_labels(p, num_classes=3)
    assert got.shape == (2, 5)
    np.testing.assert_allclose(got, rows, atol=5e-7)
    write_yolo_labels(p, np.zeros((0, 5)))
    assert p.read_text() == "" and read_yolo_labels(p).shape == (0, 5)


@pytest.mark.parametrize("text,line,msg", [
    ("0 0.5 0.5 0.1\n", 1, "5 fields"),
    ("0 0.5 0.5 0.1 0.1\n0 a 0.5 0.1 0.1\n", 2, "non-numeric"),
    ("\n0 0.5 0.5 0.1 0.1\n3 0.5 0.5 0.1 0.1\n", 3, "out of range"),
    ("0.5 0.5 0.5 0.1 0.1\n", 1, "not a non-negative integer"),
    ("-1 0.5 0.5 0.1 0.1\n", 1, "not a non-negative integer"),
    ("0 1.01 0.5 0.1 0.1\n", 1, "cx = 1.01 outside"),
    ("0 0.5 0.5 -0.2 0.1\n", 1, "w = -0.2 outside"),
    ("0 0.5 inf 0.1 0.1\n", 1, "non-finite"),
])
def test_yolo_label_errors(tmp_path, text, line, msg):
    p = tmp_path / "l.txt"
    p.write_text(text)
    with pytest.raises(AnnotationError, match=msg) as e:
        read_yolo_labels(p, num_classes=3)
    assert e.value.line == line and str(e.value).startswith(f"{p}:{line}:")


def test_yolo_labels_tolerance_and_missing(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text("1.0 1.0005 -0.0005 0.5 0.5\n")
    assert read_yolo_labels(p).tolist() == [[1.0, 1.0005, -0.0005, 0.5, 0.5]]
    assert read_yolo_labels(tmp_path / "none.txt", missing_ok=True).shape == (0, 5)
    with pytest.raises(AnnotationError):
        read_yolo_labels(tmp_path / "none.txt")
