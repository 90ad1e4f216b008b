"""ASCII-safe renaming: transliteration, unsafe characters, deterministic collision handling."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detkit.data.sanitize import safe_extension, safe_filename, safe_stem, sanitize_paths

SAFE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9]+)?$")


def test_issue_example():
    m = sanitize_paths(["猫咪/红色 汽车.jpg"])
    assert m["猫咪/红色 汽车.jpg"] == "mao_mi/hong_se_qi_che.jpg"
    assert m["猫咪/"] == "mao_mi/"


@pytest.mark.parametrize("name,expected", [
    ("Hello World", "hello_world"),
    ("a  --  b", "a_--_b"),
    ("__x__", "x"),
    ("Ünïcødé ß", "unicode_ss"),
    ("東京タワー", "dong_jing_ta_wa"),
    ("서울", "seo_ul"),  # Hangul syllables are set apart like other syllabic scripts
    ("img.v2.final", "img_v2_final"),  # no dots in stems (darknet replaces the first ".jpg")
    ("...", "unnamed"),
    ("", "unnamed"),
    ("CON", "con_"),
    ("a/b\\c:d*e?f", "a_b_c_d_e_f"),
    ("😀smile", "grinning_smile"),
])
def test_safe_stem(name, expected):
    assert safe_stem(name) == expected


def test_extensions():
    assert safe_extension(".JPEG") == ".jpg" and safe_extension(".JPG") == ".jpg"
    assert safe_extension(".Png") == ".png" and safe_extension("") == ""
    assert safe_filename("Photo 1.JPEG") == "photo_1.jpg"


def test_case_insensitive_and_stem_collisions():
    m = sanitize_paths(["A.JPG", "a.jpg", "x.jpg", "x.png", "猫咪/红色 汽车.jpg", "猫咪/红色_汽车.JPEG"])
    assert m["a.jpg"] == "a.jpg"  # already safe: keeps its name
    assert m["A.JPG"] == "a_1.jpg"
    assert m["x.jpg"] == "x.jpg" and m["x.png"] == "x_1.png"  # labels x.txt / x_1.txt differ
    assert m["猫咪/红色 汽车.jpg"] == "mao_mi/hong_se_qi_che.jpg"
    assert m["猫咪/红色_汽车.JPEG"] == "mao_mi/hong_se_qi_che_1.jpg"


def test_counter_skips_taken_names():
    m = sanitize_paths(["a b.jpg", "a_b.jpg", "a_b_1.jpg", "A B.png"])
    assert m["a_b.jpg"] == "a_b.jpg" and m["a_b_1.jpg"] == "a_b_1.jpg"
    # changed names take counters in sorted order of the originals ("A B.png" < "a b.jpg")
    assert m["A B.png"] == "a_b_2.png" and m["a b.jpg"] == "a_b_3.jpg"


def test_folder_collisions_and_reserved_names():
    m = sanitize_paths(["Cats/a.jpg", "cats/a.jpg", "images/b.jpg", "sub/labels/c.jpg"])
    assert m["cats/a.jpg"] == "cats/a.jpg" and m["Cats/a.jpg"] == "cats_1/a.jpg"
    assert m["images/b.jpg"] == "images_1/b.jpg"  # would confuse the last-/images/ label rule
    assert m["sub/labels/c.jpg"] == "sub/labels_1/c.jpg"


def test_rejects_unsafe_relative_paths():
    for bad in ["../x.jpg", "/abs/x.jpg", "a/../../x.jpg"]:
        with pytest.raises(ValueError):
            sanitize_paths([bad])


_name = st.text(alphabet=st.sampled_from(list("aAbB _.-猫咪红色汽车ÄäßéÉ東京タ서울😀")), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_name, min_size=1, max_size=3).map(lambda parts: "/".join(parts)),
                min_size=1, max_size=12, unique=True),
       st.randoms(use_true_random=False))
def test_properties_unique_safe_order_independent(paths, rnd):
    paths = [p for p in paths if ".." not in p.split("/") and all(c not in (".", "") for c in p.split("/"))]
    # a file path cannot also be a folder of another input
    files = [p for p in paths if not any(q.startswith(p + "/") for q in paths)]
    if not files:
        return
    m = sanitize_paths(files)
    shuffled = list(files)
    rnd.shuffle(shuffled)
    assert sanitize_paths(shuffled) == m  # same input set -> same output, whatever the order
    outs = [m[f] for f in files]
    for o in outs:
        assert o.isascii()
        for part in o.split("/"):
            assert SAFE.match(part), o
    # unique, also case-insensitively and by stem (label files derive from the stem)
    stems = [o.rsplit(".", 1)[0].lower() if "." in o.rsplit("/", 1)[-1] else o.lower() for o in outs]
    assert len(set(stems)) == len(stems)
    # folder structure preserved: files of one source folder stay together
    for f in files:
        src_parent = f.rsplit("/", 1)[0] if "/" in f else ""
        out_parent = m[f].rsplit("/", 1)[0] if "/" in m[f] else ""
        if src_parent:
            assert m[src_parent + "/"] == out_parent + "/"
