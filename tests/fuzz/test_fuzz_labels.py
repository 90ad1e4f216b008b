"""Fuzz the dataset text files: YOLO label files, names files, list files, ``obj.data`` and
``data.yaml``. Each either reads or raises a DetkitError with a one-line message."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fuzzlib
from detkit.data.datafiles import load_data_config, read_list_file, read_names, read_yolo_labels
from detkit.errors import AnnotationError, DetkitError

NUM = st.one_of(st.sampled_from(["0", "1", "0.5", "1.0005", "1.01", "-0.0005", "-1", "2", "nan", "inf", "-inf",
                                 "1e309", "1e-400", "0x1", "1_0", "+0.5", ".5", "5.", "abc", "", "\u0661",
                                 "99999999999999999999999", "3.0", "0.0"]),
                st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-5, 100).map(str))
SEP = st.sampled_from([" ", "  ", "\t", " \t ", "\u3000", "\xa0", ","])
EOL = st.sampled_from(["\n", "\r\n", "\r", "", "\n\n", "\x0b", "\x1c", "\u2028"])


@st.composite
def label_text(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        n = draw(st.sampled_from([5, 5, 5, 4, 6, 0, 1]))
        lines.append(draw(SEP).join(draw(NUM) for _ in range(n)) + draw(EOL))
    text = "".join(lines)
    enc = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    return text.encode(enc, "replace")


def check_labels(data: bytes, path: Path, num_classes) -> None:
    path.write_bytes(data)
    arr, err = fuzzlib.outcome("yolo_labels.read", read_yolo_labels, path, num_classes)
    if arr is not None:
        assert arr.ndim == 2 and arr.shape[1] == 5 and arr.dtype == np.float64
        assert np.isfinite(arr).all()
        if len(arr):
            assert (arr[:, 0] >= 0).all() and (arr[:, 0] == np.round(arr[:, 0])).all()
            assert (arr[:, 1:] >= -1e-3).all() and (arr[:, 1:] <= 1 + 1e-3).all()
            if num_classes is not None:
                assert (arr[:, 0] < num_classes).all()


@fuzzlib.fast(40)
@given(st.one_of(label_text(), st.binary(max_size=200)), st.one_of(st.none(), st.integers(1, 5)))
def test_yolo_label_files(tmp_path, data, num_classes):
    check_labels(data, tmp_path / "l.txt", num_classes)


@fuzzlib.long()
@given(st.one_of(label_text(), st.binary(max_size=2000)), st.one_of(st.none(), st.integers(0, 100)))
def test_yolo_label_files_long(tmp_path, data, num_classes):
    check_labels(data, tmp_path / "l.txt", num_classes)


# --------------------------------------------------------------------------- names and list files

NAME = st.one_of(st.sampled_from(["person", "dog", " cat ", "", " ", "#x", "\u732b", "a b", "dog", "\ufeff",
                                  "\x00", "../x"]), st.text(max_size=12))


@st.composite
def names_bytes(draw) -> bytes:
    text = "".join(draw(NAME) + draw(EOL) for _ in range(draw(st.integers(0, 6))))
    return text.encode(draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"])), "replace")


def check_names(data: bytes, path: Path) -> None:
    path.write_bytes(data)
    names, err = fuzzlib.outcome("names.read", read_names, path)
    if names is not None:
        assert names and all(n and n == n.strip() for n in names) and len(set(names)) == len(names)
    listed, err = fuzzlib.outcome("list_file.read", read_list_file, path)
    if listed is not None:
        assert all(isinstance(p, Path) for p in listed)


@fuzzlib.fast(40)
@given(st.one_of(names_bytes(), st.binary(max_size=200)))
def test_names_and_list_files(tmp_path, data):
    check_names(data, tmp_path / "obj.names")


@fuzzlib.long()
@given(st.one_of(names_bytes(), st.binary(max_size=2000)))
def test_names_and_list_files_long(tmp_path, data):
    check_names(data, tmp_path / "obj.names")


# --------------------------------------------------------------------------- obj.data / data.yaml

# values stay inside the test folder: '..' and absolute paths would make a folder entry walk the
# whole file system (legitimate for a user, not for a test)
PATHV = st.sampled_from(["train.txt", "./train.txt", "obj.names", "images", "images/a.jpg", "missing.txt", "",
                         "backup/", "nope/", "\u732b.txt", "train.txt # comment", "obj.names\x00", "data.yaml"])
KEYS = st.sampled_from(["classes", "train", "valid", "names", "backup", "eval", "nc", "path", "val", "test"])
SCALAR = st.one_of(PATHV, st.sampled_from(["2", "-1", "0", "1e9", "abc", "nan", "3.5", "99999999999999999999"]),
                   st.text(alphabet=st.characters(blacklist_characters="/\\."), max_size=10))


@st.composite
def obj_data(draw) -> bytes:
    if draw(st.booleans()):  # a valid file with one or two lines changed
        lines = ["classes = 2\n", "train = train.txt\n", "valid = train.txt\n", "names = obj.names\n",
                 "backup = backup/\n"]
        for _ in range(draw(st.integers(0, 2))):
            i = draw(st.integers(0, len(lines) - 1))
            lines[i] = f"{lines[i].split('=')[0].strip()} = {draw(SCALAR)}{draw(EOL)}"
        return "".join(lines).encode("utf-8", "replace")
    lines = []
    for _ in range(draw(st.integers(0, 7))):
        sep = draw(st.sampled_from([" = ", "=", " ", ":", "=="]))
        lines.append(f"{draw(KEYS)}{sep}{draw(SCALAR)}{draw(EOL)}")
    return "".join(lines).encode("utf-8", "replace")


YAML_VALUE = st.recursive(
    st.one_of(SCALAR, st.integers(-3, 10), st.none(), st.booleans(), st.floats(allow_nan=True)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.integers(-1, 4), SCALAR),
                                                                        inner, max_size=4)),
    max_leaves=12)


@st.composite
def data_yaml(draw) -> bytes:
    import yaml
    doc = draw(st.dictionaries(KEYS, YAML_VALUE, max_size=6))
    if draw(st.booleans()):  # a valid file with some keys changed
        doc = {"train": "train.txt", "val": "images", "names": ["a", "b"], "nc": 2,
               **draw(st.dictionaries(KEYS, YAML_VALUE, max_size=2))}
    if draw(st.booleans()):
        return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8")
    text = yaml.safe_dump(doc, allow_unicode=True)
    i = draw(st.integers(0, len(text)))
    return (text[:i] + draw(st.sampled_from(["", ":", "- ", "&a ", "*a", "!!python/object:os.system", "{", "\t",
                                            "\x00", "'"])) + text[i:]).encode("utf-8", "replace")


def _tree(tmp: Path) -> None:
    (tmp / "images").mkdir(exist_ok=True)
    (tmp / "images" / "a.jpg").write_bytes(b"\xff\xd8")
    (tmp / "obj.names").write_text("a\nb\n")
    (tmp / "train.txt").write_text("images/a.jpg\n")


def check_data(data: bytes, tmp: Path, name: str) -> None:
    _tree(tmp)
    p = tmp / name
    p.write_bytes(data)
    cwd = os.getcwd()
    os.chdir(tmp)  # darknet resolves relative entries against the working directory too
    try:
        cfg, err = fuzzlib.outcome(f"data_config.{name}", load_data_config, p)
    finally:
        os.chdir(cwd)
    if cfg is not None:
        assert cfg.names and all(isinstance(n, str) for n in cfg.names)
        assert all(isinstance(q, Path) for q in cfg.train + cfg.val)


@fuzzlib.fast(40)
@given(st.one_of(obj_data(), st.binary(max_size=200)))
def test_obj_data(tmp_path, data):
    check_data(data, tmp_path, "obj.data")


@fuzzlib.fast(40)
@given(st.one_of(data_yaml(), st.binary(max_size=200)))
def test_data_yaml(tmp_path, data):
    check_data(data, tmp_path, "data.yaml")


@fuzzlib.long()
@given(st.one_of(obj_data(), st.binary(max_size=2000)))
def test_obj_data_long(tmp_path, data):
    check_data(data, tmp_path, "obj.data")


@fuzzlib.long()
@given(st.one_of(data_yaml(), st.binary(max_size=2000)))
def test_data_yaml_long(tmp_path, data):
    check_data(data, tmp_path, "data.yaml")


def test_nul_byte_in_a_path_is_an_annotation_error(tmp_path):
    """Regression (found by the long tier): ``names = obj.names\\0`` raised ValueError."""
    _tree(tmp_path)
    p = tmp_path / "obj.data"
    p.write_bytes(b"classes = 2\ntrain = train.txt\nnames = obj.names\x00\n")
    with pytest.raises(AnnotationError, match="embedded null byte") as exc:
        load_data_config(p)
    fuzzlib.check_one_line(exc.value)


@pytest.mark.parametrize("train", ["{a: {b: c}}", "x" * 5000])
def test_unusable_train_entries_are_data_errors(tmp_path, train):
    """Regression (found by the long tier): a mapping or a 5000-character name as ``train:`` raised
    OSError (file name too long) from pathlib."""
    _tree(tmp_path)
    p = tmp_path / "data.yaml"
    p.write_text(f"names: [a, b]\ntrain: {train}\n")
    with pytest.raises(DetkitError) as exc:
        load_data_config(p)
    fuzzlib.check_one_line(exc.value)


def test_newline_in_a_train_entry_stays_one_line(tmp_path):
    """Regression (found by the long tier): a YAML string with a newline made a two-line message."""
    p = tmp_path / "data.yaml"
    p.write_text('names: [a]\ntrain: "a\\nb"\n')
    with pytest.raises(DetkitError) as exc:
        load_data_config(p)
    fuzzlib.check_one_line(exc.value)
