"""How an annotation finds its image (issue 13's data-integrity bug): an exact ``<filename>`` or stem
match always wins over case-insensitive / Unicode-normalised fallbacks, two sources are never merged,
and a named file without an image extension is judged by its content.

The property test generates trees with case variants, NFC/NFD variants, transliteration collisions
and extension variants and checks that every label line in OUT comes from the XML that names exactly
that image, and that every annotated image appears in OUT exactly once.
"""
from __future__ import annotations

import io
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from test_convert import convert, label_text, make_image, make_xml, out_name, rename_map, report


def _labels_by_source(out: Path) -> dict[str, str]:
    rows = [r for r in rename_map(out) if r["kind"] == "image"]
    return {r["source"]: label_text(out, r["output"].removeprefix("images/")) for r in rows}


def test_case_variant_images_each_keep_their_own_annotation(tmp_path):
    """Issue 13: ``Mao.jpg``/``Mao.xml`` and ``mao.JPG``/``mao.xml`` in one folder."""
    src = tmp_path / "src"
    make_image(src / "Mao.jpg", 100, 100)
    make_xml(src / "Mao.xml", "Mao.jpg", (100, 100), [("cat", 1, 1, 50, 50)])
    make_image(src / "mao.JPG", 100, 100)
    make_xml(src / "mao.xml", "mao.JPG", (100, 100), [("cat", 51, 51, 100, 100)])
    res = convert(src, tmp_path / "out")
    rep = report(tmp_path / "out")
    assert res.images == 2 and rep["skipped"] == [] and rep["warnings"] == []
    labels = _labels_by_source(tmp_path / "out")
    assert labels == {"Mao.jpg": "0 0.250000 0.250000 0.500000 0.500000\n",
                      "mao.JPG": "0 0.750000 0.750000 0.500000 0.500000\n"}


def test_case_fallback_never_takes_an_image_named_exactly_elsewhere(tmp_path):
    src = tmp_path / "src"
    make_image(src / "photo.jpg", 40, 40)
    # a.xml sorts first and matches photo.jpg only case-insensitively; b.xml names it exactly
    make_xml(src / "a.xml", "PHOTO.JPG", (40, 40), [("x", 1, 1, 10, 10)])
    make_xml(src / "b.xml", "photo.jpg", (40, 40), [("x", 1, 1, 20, 20)])
    res = convert(src, tmp_path / "out")
    rep = report(tmp_path / "out")
    assert res.images == 1
    assert _labels_by_source(tmp_path / "out") == {"photo.jpg": "0 0.250000 0.250000 0.500000 0.500000\n"}
    [skip] = rep["skipped"]
    assert skip["file"] == "a.xml" and skip["code"] == "no_image" and "'b.xml'" in skip["reason"]


def test_ambiguous_case_fallback_is_not_guessed(tmp_path):
    src = tmp_path / "src"
    make_image(src / "Dog.jpg", 40, 40)
    make_image(src / "dog.JPG", 40, 40)
    make_xml(src / "x.xml", "DOG.jpg", (40, 40), [("x", 1, 1, 10, 10)])
    make_xml(src / "Dog.xml", "Dog.jpg", (40, 40), [("x", 1, 1, 20, 20)])
    res = convert(src, tmp_path / "out")
    rep = report(tmp_path / "out")
    assert res.images == 1
    assert {(s["file"], s["code"]) for s in rep["skipped"]} == {("x.xml", "no_image"), ("dog.JPG", "no_annotation")}


def test_unicode_normalisation_variants(tmp_path):
    src = tmp_path / "src"
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    make_image(src / f"{nfd}.jpg", 40, 40)  # macOS writes NFD names; the annotator typed NFC
    make_xml(src / "one.xml", f"{nfc}.jpg", (40, 40), [("x", 1, 1, 10, 10)])
    res = convert(src, tmp_path / "out")
    assert res.images == 1 and report(tmp_path / "out")["skipped"] == []
    # both forms on disk: each exact name keeps its own XML
    src2 = tmp_path / "src2"
    make_image(src2 / f"{nfc}.jpg", 40, 40)
    make_image(src2 / f"{nfd}.jpg", 40, 40)
    make_xml(src2 / "a.xml", f"{nfc}.jpg", (40, 40), [("x", 1, 1, 10, 10)])
    make_xml(src2 / "b.xml", f"{nfd}.jpg", (40, 40), [("x", 1, 1, 20, 20)])
    res = convert(src2, tmp_path / "out2")
    assert res.images == 2 and report(tmp_path / "out2")["skipped"] == []
    assert _labels_by_source(tmp_path / "out2") == {f"{nfc}.jpg": "0 0.125000 0.125000 0.250000 0.250000\n",
                                                    f"{nfd}.jpg": "0 0.250000 0.250000 0.500000 0.500000\n"}


def test_named_file_without_image_extension_judged_by_content(tmp_path):
    src = tmp_path / "src"
    jpeg = make_image(tmp_path / "tmp.jpg", 40, 20).read_bytes()
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "noext").write_bytes(jpeg)  # a JPEG by content
    make_xml(src / "sub" / "a.xml", "noext", (40, 20), [("x", 1, 1, 20, 10)])
    bmp = io.BytesIO()
    Image.new("RGB", (10, 10), (1, 2, 3)).save(bmp, "BMP")
    (src / "sub" / "pic.dat").write_bytes(bmp.getvalue())
    make_xml(src / "sub" / "b.xml", "pic.dat", (10, 10), [("x", 1, 1, 5, 5)])
    (src / "sub" / "notes").write_text("not an image")
    make_xml(src / "sub" / "c.xml", "notes", (10, 10), [("x", 1, 1, 5, 5)])
    out = tmp_path / "out"
    res = convert(src, out)
    rep = report(out)
    assert res.images == 2
    assert out_name(out, "sub/noext") == "sub/noext.jpg"
    assert (out / "images" / "sub" / "noext.jpg").read_bytes() == jpeg
    assert out_name(out, "sub/pic.dat") == "sub/pic_dat.png"
    with Image.open(out / "images" / "sub" / "pic_dat.png") as im:
        assert im.format == "PNG" and im.getpixel((0, 0)) == (1, 2, 3)
    assert [(s["file"], s["code"]) for s in rep["skipped"]] == [("sub/c.xml", "no_image")]


# --------------------------------------------------------------------------- property


_NFC_E, _NFD_E = "\u00e9", "e\u0301"
STEMS = ["Mao", "mao", "MAO", "猫", f"caf{_NFC_E}", f"caf{_NFD_E}", "Caf" + _NFC_E, "mao_1"]
EXTS = [".jpg", ".JPG", ".jpeg", ".png", ".PNG"]


def _image_bytes(ext: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buf, "PNG" if ext.lower() == ".png" else "JPEG")
    return buf.getvalue()


_BYTES = {e: _image_bytes(e) for e in EXTS}


@st.composite
def trees(draw):
    names = draw(st.lists(st.tuples(st.sampled_from(STEMS), st.sampled_from(EXTS)), min_size=1, max_size=8,
                          unique=True))
    names = [s + e for s, e in names]
    how = draw(st.lists(st.sampled_from(["filename", "stem", "none"]), min_size=len(names), max_size=len(names)))
    decoys = draw(st.lists(st.sampled_from(names), max_size=3))
    return names, how, decoys


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees())
def test_property_every_label_comes_from_the_xml_naming_that_image(tree):
    names, how, decoys = tree
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        stems = [Path(n).stem for n in names]
        expected = {}
        for k, (name, h) in enumerate(zip(names, how)):
            (src / name).write_bytes(_BYTES[Path(name).suffix])
            box = ("obj", 1, 1, k + 2, k + 2)  # the box encodes which image it belongs to
            if h == "filename":
                make_xml(src / f"{name}.xml", name, (64, 64), [box])
            elif h == "stem" and stems.count(stems[k]) == 1 and not (src / f"{stems[k]}.xml").exists():
                make_xml(src / f"{stems[k]}.xml", None, (64, 64), [box])
            else:
                continue
            expected[name] = f"0 {(k + 2) / 2 / 64:.6f} {(k + 2) / 2 / 64:.6f} {(k + 2) / 64:.6f} {(k + 2) / 64:.6f}\n"
        decoys = [d for d in decoys if d.swapcase() not in names]  # a name that exists exactly is no decoy
        for j, d in enumerate(decoys):  # another case spelling of an existing name
            make_xml(src / f"zz_decoy_{j}.xml", d.swapcase(), (64, 64), [("obj", 1, 1, 60, 60)])
        if not expected and not decoys:
            return
        out = Path(tmp) / "out"
        try:
            convert(src, out)
        except Exception as exc:  # nothing convertible is fine only when nothing was annotated exactly
            assert not expected, exc
            return
        got = _labels_by_source(out)
        decoy_line = f"0 {60 / 2 / 64:.6f} {60 / 2 / 64:.6f} {60 / 64:.6f} {60 / 64:.6f}\n"
        for name, text in expected.items():
            assert got.get(name) == text, (name, got)
        for name, text in got.items():
            if name not in expected:
                assert text == decoy_line, (name, text)
        sources = [r["source"] for r in rename_map(out) if r["kind"] == "image"]
        assert len(sources) == len(set(sources))
        outputs = [r["output"] for r in rename_map(out) if r["kind"] == "image"]
        assert len(outputs) == len(set(outputs)) == len(list((out / "images").rglob("*.[jp][pn]g")))
