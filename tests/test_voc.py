"""VOC XML reader: tolerant of real-world dirt, strict about malformed and hostile files."""
from __future__ import annotations

import numpy as np
import pytest

from detkit.boxes import voc_to_xyxy
from detkit.data.records import ImageRecord, ObjectRecord
from detkit.data.voc import parse_voc_annotation, read_voc_annotation
from detkit.errors import AnnotationError


def _xml(objects: str = "", size: str = "<size><width>100</width><height>50</height><depth>3</depth></size>",
         filename: str = "<filename>a.jpg</filename>") -> bytes:
    return f"<annotation>{filename}<path>/Users/x/a.jpg</path>{size}{objects}</annotation>".encode()


def _obj(name="cat", box=("11", "6", "30", "25"), extra="<difficult>0</difficult><truncated>0</truncated>"):
    b = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<object><name>{name}</name>{extra}<bndbox>{b}</bndbox></object>"


def test_basic_record_and_xyxy(tmp_path):
    p = tmp_path / "a.xml"
    p.write_bytes(_xml(_obj() + _obj("dog", ("1", "1", "100", "50"), "<difficult>1</difficult>")))
    rec = read_voc_annotation(p)
    assert isinstance(rec, ImageRecord)
    assert (rec.filename, rec.width, rec.height, rec.depth, rec.source) == ("a.jpg", 100, 50, 3, str(p))
    assert rec.objects[0] == ObjectRecord("cat", 11.0, 6.0, 30.0, 25.0, False, False)
    assert rec.objects[1].difficult and not rec.objects[1].truncated
    # 1-based inclusive -> continuous: x1 = xmin - 1, x2 = xmax
    assert rec.objects[0].xyxy() == (10.0, 5.0, 30.0, 25.0)
    assert rec.objects[1].xyxy() == (0.0, 0.0, 100.0, 50.0)
    np.testing.assert_array_equal(rec.boxes_xyxy(), voc_to_xyxy(np.array([[11, 6, 30, 25], [1, 1, 100, 50]], float)))


def test_records_are_frozen():
    o = ObjectRecord("a", 1, 2, 3, 4, False, False)
    with pytest.raises(AttributeError):
        o.name = "b"  # type: ignore[misc]


@pytest.mark.parametrize("extra,diff,trunc", [
    ("", False, False),
    ("<difficult></difficult><truncated/>", False, False),
    ("<difficult> 1 </difficult><truncated>1</truncated>", True, True),
    ("<difficult>true</difficult>", True, False),
])
def test_flags_missing_or_empty(extra, diff, trunc):
    rec = parse_voc_annotation(_xml(_obj(extra=extra)), "f.xml")
    assert (rec.objects[0].difficult, rec.objects[0].truncated) == (diff, trunc)


def test_float_coordinates():
    rec = parse_voc_annotation(_xml(_obj(box=("10.5", "5.25", "30.0", "25.75"))), "f.xml")
    assert rec.objects[0].voc() == (10.5, 5.25, 30.0, 25.75)


@pytest.mark.parametrize("size", ["", "<size></size>", "<size><width>0</width><height>0</height></size>",
                                  "<size><width></width><height>x</height></size>"])
def test_missing_or_zero_size_is_none(size):
    rec = parse_voc_annotation(_xml(_obj(), size=size), "f.xml")
    assert rec.width is None and rec.height is None


def test_missing_filename_is_empty():
    assert parse_voc_annotation(_xml(_obj(), filename=""), "f.xml").filename == ""


def test_no_objects():
    assert parse_voc_annotation(_xml(""), "f.xml").objects == ()


def test_malformed_names_file_and_line(tmp_path):
    p = tmp_path / "bad.xml"
    p.write_bytes(b"<annotation>\n<filename>a.jpg</filename>\n<object>\n</annotation>\n")
    with pytest.raises(AnnotationError) as e:
        read_voc_annotation(p)
    assert e.value.path == str(p) and e.value.line == 4
    assert str(e.value).startswith(f"{p}:4:")


@pytest.mark.parametrize("data,msg", [
    (b"<foo><bar/></foo>", "not a VOC annotation"),
    (b"", "malformed"),
    (b"\x89PNG\r\n", "malformed"),
    (_xml("<object><bndbox><xmin>1</xmin></bndbox></object>"), "no <name>"),
    (_xml(_obj(box=("1", "1", "abc", "4"))), "not a number"),
    (_xml(_obj(box=("1", "1", "nan", "4"))), "not finite"),
    (_xml("<object><name>a</name></object>"), "no <bndbox><xmin>"),
])
def test_not_voc_or_broken(data, msg):
    with pytest.raises(AnnotationError, match=msg):
        parse_voc_annotation(data, "f.xml")


def test_object_error_gives_object_line():
    data = b"<annotation>\n<filename>a</filename>\n<object>\n<name>x</name>\n<bndbox><xmin>q</xmin></bndbox>\n</object>\n</annotation>"
    with pytest.raises(AnnotationError) as e:
        parse_voc_annotation(data, "f.xml")
    assert e.value.line == 3


def test_billion_laughs_rejected():
    lol = (b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
           + b"".join(f'<!ENTITY lol{i} "{"&lol%s;" % ("" if i == 1 else i - 1) * 10}">'.encode() for i in range(1, 10))
           + b']>\n<annotation><filename>&lol9;</filename></annotation>')
    with pytest.raises(AnnotationError, match="unsafe XML"):
        parse_voc_annotation(lol, "lol.xml")


def test_xxe_rejected_and_secret_not_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    data = (f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file://{secret}">]>'
            f"<annotation><filename>&xxe;</filename></annotation>").encode()
    with pytest.raises(AnnotationError, match="unsafe XML") as e:
        parse_voc_annotation(data, "xxe.xml")
    assert "TOPSECRET" not in str(e.value)


def test_parameter_entity_rejected():
    data = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY % p SYSTEM "http://127.0.0.1/x.dtd"> %p;]><annotation/>'
    with pytest.raises(AnnotationError):
        parse_voc_annotation(data, "pe.xml")


def test_gbk_declared_file_and_chinese_names():
    x = ('<?xml version="1.0" encoding="GBK"?>\n<annotation><filename>猫咪.jpg</filename>'
         + _obj("猫") + "</annotation>")
    rec = parse_voc_annotation(x.encode("gbk"), "g.xml")
    assert rec.filename == "猫咪.jpg" and rec.objects[0].name == "猫"
    rec8 = parse_voc_annotation(("\ufeff" + x.replace("GBK", "UTF-8")).encode("utf-8"), "u.xml")
    assert rec8.objects[0].name == "猫"


def test_unreadable_file(tmp_path):
    with pytest.raises(AnnotationError, match="cannot read"):
        read_voc_annotation(tmp_path / "missing.xml")


def test_real_raccoon_file(shared):
    pytest.importorskip("numpy")
    rec = read_voc_annotation(shared / "data/raccoon/Annotations/raccoon-1.xml")
    assert rec.filename == "raccoon-1.jpg" and len(rec.objects) >= 1
    assert all(o.name == "raccoon" for o in rec.objects)


test_real_raccoon_file = pytest.mark.real(test_real_raccoon_file)


def test_fast_and_hardened_parsers_agree():
    """DTD-free files take the C parser; a comment forces the hardened one: same record."""
    body = _obj() + _obj("狗", ("1.5", "2", "3", "4"), "<difficult>1</difficult>")
    plain = _xml(body)
    with_comment = plain.replace(b"<annotation>", b"<annotation><!-- labelImg -->")
    assert parse_voc_annotation(plain, "f.xml") == parse_voc_annotation(with_comment, "f.xml")


def test_utf16_file_goes_through_hardened_parser():
    x = '<?xml version="1.0" encoding="UTF-16"?><annotation><filename>a.jpg</filename></annotation>'
    assert parse_voc_annotation(x.encode("utf-16"), "f.xml").filename == "a.jpg"
    bad = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY e "x">]>'
           "<annotation><filename>&e;</filename></annotation>")
    with pytest.raises(AnnotationError, match="unsafe"):
        parse_voc_annotation(bad.encode("utf-16"), "f.xml")
