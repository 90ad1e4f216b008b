"""Hostile files: XML entity tricks (billion laughs in UTF-16/UTF-7, external DTDs and entities),
path escapes in XML and list files, symlinks leading out of a VOC tree, pickles that run code,
decompression bombs, YAML alias bombs. Complements the owners' tests (tests/test_voc.py,
test_convert.py, test_checkpoint.py, test_images.py) with the variants they do not cover.
"""
from __future__ import annotations

import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fuzzlib
from detkit.cli import main
from detkit.convert.options import ConvertOptions
from detkit.convert.voc_to_yolo import convert_voc
from detkit.data.datafiles import load_data_config, read_list_file
from detkit.data.images import read_image, read_image_size
from detkit.data.voc import parse_voc_annotation
from detkit.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from detkit.evaluate.ground_truth import load_ground_truth
from detkit.errors import AnnotationError, DataError, DetkitError, ImageError, TrainError

LAUGHS = ('<?xml version="1.0" encoding="{enc}"?>\n<!DOCTYPE annotation [\n<!ENTITY a "aaaaaaaaaa">\n'
          + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">\n' for i in range(9))
          + ']>\n<annotation><filename>&j;</filename></annotation>\n')


def _jpeg(path: Path, w: int = 32, h: int = 24, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, "JPEG")
    return path


def _xml(path: Path, filename: str, w: int = 32, h: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height>"
                    "</size><object><name>a</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>20</xmax><ymax>20</ymax>"
                    "</bndbox></object></annotation>", encoding="utf-8")
    return path


def _tree_hashes(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for f in filenames:
            p = Path(dirpath) / f
            out[os.path.relpath(p, root)] = os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
    return out


# --------------------------------------------------------------------------- XML

@pytest.mark.parametrize("enc", ["utf-8", "utf-16", "utf-16-le", "utf-7", "latin-1", "gbk"])
def test_billion_laughs_in_any_encoding_is_refused_fast_and_small(enc):
    """The entity bomb is refused whatever the encoding (UTF-16 hides '<!' from a byte check; UTF-7
    ('+ADw-!') is decoded by Python and re-encoded before any parse)."""
    codec = "utf-16-le" if enc == "utf-16-le" else enc
    data = LAUGHS.format(enc=enc).encode(codec)
    with fuzzlib.measure_memory() as mem:
        with pytest.raises(AnnotationError) as exc:
            parse_voc_annotation(data, "bomb.xml")
    fuzzlib.check_one_line(exc.value)
    assert mem["seconds"] < 5 and mem["traced_peak"] < 8 << 20, mem
    fuzzlib.figure("xml_bomb_traced_peak_bytes", mem["traced_peak"])


def test_external_dtd_and_entities_are_never_fetched(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    dtd = tmp_path / "evil.dtd"
    dtd.write_text(f'<!ENTITY x SYSTEM "file://{secret}">')
    docs = [
        f'<?xml version="1.0"?><!DOCTYPE annotation SYSTEM "file://{dtd}"><annotation><filename>&x;</filename>'
        "</annotation>",
        f'<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY % p SYSTEM "file://{dtd}"> %p;]><annotation>'
        "<filename>&x;</filename></annotation>",
        '<?xml version="1.0"?><!DOCTYPE annotation SYSTEM "http://127.0.0.1:9/evil.dtd"><annotation/>',
        f'<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY x SYSTEM "file://{secret}">]><annotation>'
        "<filename>&x;</filename></annotation>",
        '<annotation xmlns:xi="http://www.w3.org/2001/XInclude"><filename><xi:include href="'
        f'{secret}" parse="text"/></filename></annotation>',
    ]
    for i, d in enumerate(docs):
        try:
            rec = parse_voc_annotation(d.encode(), f"x{i}.xml")
        except AnnotationError as exc:
            fuzzlib.check_one_line(exc)
            assert "TOP-SECRET" not in str(exc)
        else:  # a DOCTYPE naming an external DTD without using it, and XInclude: inert, never fetched
            assert "TOP-SECRET" not in rec.filename and i in (2, 4)


def test_bomb_in_a_voc_tree_fails_eval_with_one_line_and_is_skipped_by_convert(tmp_path):
    src = tmp_path / "voc"
    _jpeg(src / "JPEGImages" / "ok.jpg")
    _xml(src / "Annotations" / "ok.xml", "ok.jpg")
    (src / "Annotations" / "bomb.xml").write_text(LAUGHS.format(enc="utf-8"))
    _jpeg(src / "JPEGImages" / "bomb.jpg", seed=1)
    with pytest.raises(AnnotationError, match="bomb.xml: unsafe XML refused"):
        load_ground_truth(src)
    res = convert_voc(src, tmp_path / "out", ConvertOptions())
    assert res.images == 1 and {s["file"]: s["code"] for s in res.skipped}["Annotations/bomb.xml"] == "bad_xml"


# --------------------------------------------------------------------------- paths

@pytest.mark.parametrize("fname", ["a/../../../outside.jpg", "/abs/outside.jpg", "C:\\outside.jpg", "~/outside.jpg",
                                   "..\\..\\outside.jpg", "sub/../../outside.jpg", "./../outside.jpg",
                                   "%2e%2e/outside.jpg", "x" * 5000 + ".jpg"])
def test_filename_escapes_never_reach_outside_src(tmp_path, fname):
    outside = _jpeg(tmp_path / "outside.jpg", seed=9)
    src = tmp_path / "src" / "deep"
    _xml(src / "Annotations" / "p.xml", fname)
    _jpeg(src / "JPEGImages" / "p.jpg")  # the XML's stem: the fallback
    before = _tree_hashes(tmp_path / "src")
    res = convert_voc(src, tmp_path / "out", ConvertOptions())
    assert _tree_hashes(tmp_path / "src") == before
    assert res.images == 1
    payload = outside.read_bytes()
    for p in (tmp_path / "out").rglob("*"):
        if p.is_file():
            assert p.read_bytes() != payload
    assert sorted(os.listdir(tmp_path)) == ["out", "outside.jpg", "src"]


def test_list_file_escapes_are_read_only_and_reported_per_entry(tmp_path):
    """List files may name '../' and absolute paths (documented: the user chose them); detkit only
    reads them, and a non-image gives an ImageError naming it."""
    (tmp_path / "d").mkdir()
    lst = tmp_path / "d" / "val.txt"
    lst.write_text("../../../../../../../etc/hostname\n/etc/hostname\n")
    entries = read_list_file(lst)
    assert entries[1] == Path("/etc/hostname")
    (tmp_path / "d" / "obj.names").write_text("a\n")
    before = os.listdir("/etc")
    with pytest.raises(DetkitError) as exc:
        load_ground_truth(lst, names=["a"])
    fuzzlib.check_one_line(exc.value)
    assert os.listdir("/etc") == before


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    """Regression: nested YAML aliases ('billion laughs') in data.yaml hung load_data_config."""
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    prev = "a"
    for c in "bcdefghi":
        lines.append(f"{c}: &{c} [" + ",".join(["*" + prev] * 10) + "]")
        prev = c
    for key in ("names", "train"):
        body = "\n".join(lines) + ("\nnames: *i\ntrain: t.txt\n" if key == "names" else "\nnames: [a]\ntrain: *i\n")
        p = tmp_path / f"{key}.yaml"
        p.write_text(body)
        with fuzzlib.measure_memory() as mem:
            with pytest.raises(DataError, match="aliases") as exc:
                load_data_config(p)
        fuzzlib.check_one_line(exc.value)
        assert mem["seconds"] < 5 and mem["rss_delta"] < 64 << 20, mem


# --------------------------------------------------------------------------- symlinks

def test_symlinked_folders_loops_and_files_leading_out_of_src(tmp_path):
    outside = tmp_path / "outside"
    _jpeg(outside / "JPEGImages" / "o1.jpg", seed=3)
    _xml(outside / "Annotations" / "o1.xml", "o1.jpg")
    secret = _jpeg(outside / "secret.jpg", seed=4)
    src = tmp_path / "src"
    _jpeg(src / "VOC" / "JPEGImages" / "in1.jpg", seed=5)
    _xml(src / "VOC" / "Annotations" / "in1.xml", "in1.jpg")
    # a year folder whose JPEGImages and Annotations are symlinks to a tree outside SRC
    (src / "LINKED").mkdir(parents=True)
    os.symlink(outside / "JPEGImages", src / "LINKED" / "JPEGImages")
    os.symlink(outside / "Annotations", src / "LINKED" / "Annotations")
    os.symlink(outside, src / "escape")  # a whole folder
    os.symlink(src / "loop", src / "loop")  # a loop
    os.symlink(src / "VOC", src / "VOC" / "again")  # a cycle inside SRC
    os.symlink(secret, src / "VOC" / "JPEGImages" / "in2.jpg")  # an image file leading out
    _xml(src / "VOC" / "Annotations" / "in2.xml", "in2.jpg")
    os.symlink(outside / "Annotations" / "o1.xml", src / "VOC" / "Annotations" / "o1.xml")  # an XML leading out
    before_src, before_out = _tree_hashes(src), _tree_hashes(outside)
    with fuzzlib.measure_memory() as mem:
        res = convert_voc(src, tmp_path / "out", ConvertOptions())
    assert mem["seconds"] < 60
    assert res.images == 1
    codes = {s["file"]: s["code"] for s in res.skipped}
    assert codes.get("VOC/JPEGImages/in2.jpg") == "symlink_outside"
    assert codes.get("VOC/Annotations/o1.xml") == "symlink_outside"
    assert codes.get("loop") == "symlink_loop"  # regression: a symlink loop crashed convert-voc (RuntimeError)
    out_files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    outside_payloads = {p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    assert not any(p.read_bytes() in outside_payloads for p in out_files)
    assert not any(p.is_symlink() for p in (tmp_path / "out").rglob("*"))
    assert _tree_hashes(src) == before_src and _tree_hashes(outside) == before_out


def test_out_given_as_a_symlink_is_refused(tmp_path):
    src = tmp_path / "src"
    _jpeg(src / "a.jpg")
    _xml(src / "a.xml", "a.jpg")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    os.symlink(target, tmp_path / "out")
    with pytest.raises(DataError, match="not a folder"):
        convert_voc(src, tmp_path / "out", ConvertOptions(force=True))
    assert (target / "keep.txt").read_text() == "keep" and sorted(os.listdir(target)) == ["keep.txt"]


# --------------------------------------------------------------------------- pickles

class _RunsCode:
    """Unpickling this runs ``os.system('touch MARKER')``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _evil_files(tmp: Path, marker: Path) -> list[Path]:
    payload = {"format": CHECKPOINT_FORMAT, "version": 1, "model": {"w": torch.zeros(2)}, "x": _RunsCode(marker)}
    zipped = tmp / "evil_zip.pt"
    torch.save(payload, zipped)
    legacy = tmp / "evil_legacy.pt"
    torch.save(payload, legacy, _use_new_zipfile_serialization=False)
    raw = tmp / "evil_raw.pt"  # a bare pickle (protocol 0 text opcodes, no torch container at all)
    raw.write_bytes(pickle.dumps(_RunsCode(marker), protocol=0))
    return [zipped, legacy, raw]


def test_pickles_carrying_code_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    for path in _evil_files(tmp_path, marker):
        with pytest.raises(TrainError) as exc:
            load_checkpoint(path)
        fuzzlib.check_one_line(exc.value)
        assert not marker.exists(), f"{path.name} ran code"
    # the same payload loaded the unsafe way really does run code: the test can fail
    torch.load(tmp_path / "evil_zip.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("cmd", ["export", "eval", "detect"])
def test_cli_commands_taking_weights_never_unpickle(tmp_path, cmd, monkeypatch, capsys):
    marker = tmp_path / "PWNED"
    evil = _evil_files(tmp_path, marker)[0]
    (tmp_path / "names.txt").write_text("a\nb\n")
    (tmp_path / "data.yaml").write_text("names: [a, b]\ntrain: imgs\nval: imgs\n")
    _jpeg(tmp_path / "imgs" / "x.jpg")
    monkeypatch.chdir(tmp_path)
    argv = {"export": ["export", "--cfg", "yolov3-tiny", "--weights", str(evil), "--classes", "2", "--format",
                       "darknet", "-o", "o.weights"],
            "eval": ["eval", "--cfg", "yolov3-tiny", "--weights", str(evil), "--data", "data.yaml"],
            "detect": ["detect", "--cfg", "yolov3-tiny", "--weights", str(evil), "--names", "names.txt",
                       "--source", "imgs", "--out", "det"]}[cmd]
    rc = main(["-q"] + argv)
    err = capsys.readouterr().err
    assert rc != 0 and "detkit: error:" in err and "Traceback" not in err, err
    assert not marker.exists()


# --------------------------------------------------------------------------- images

def _png_bomb(width: int, height: int) -> bytes:
    """A complete, valid 1-bit greyscale PNG of width x height zero pixels (compresses ~1000:1)."""
    import struct

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    row = b"\0" + b"\0" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [12_000, 20_000])
def test_real_png_bomb_is_refused_before_decoding(tmp_path, side):
    """Complete PNGs of 144 MP / 400 MP (0.4 / 1.2 GB as RGB) that are tens of kB on disk."""
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_bomb(side, side))
    assert p.stat().st_size < 200_000
    with fuzzlib.measure_memory() as mem:
        with pytest.raises(ImageError, match="megapixel|too large") as exc:
            read_image(p)
    fuzzlib.check_one_line(exc.value)
    assert mem["rss_delta"] < 64 << 20, mem
    fuzzlib.figure("png_bomb_rss_delta_bytes", mem["rss_delta"])
    if side == 12_000:  # under PIL's own hard limit the header is still readable (sizes, statistics)
        assert read_image_size(p) == (side, side)


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "WEBP", "BMP"])
def test_header_claims_above_the_limit_in_other_formats(tmp_path, fmt, monkeypatch):
    """The pixel limit is format independent (lowered here so the files stay small)."""
    import detkit.data.images as images
    p = tmp_path / f"x.{fmt.lower()}"
    Image.new("RGB", (300, 200)).save(p, fmt)
    monkeypatch.setattr(images, "MAX_PIXELS", 300 * 200 - 1)
    with pytest.raises(ImageError, match="megapixel"):
        read_image(p)
