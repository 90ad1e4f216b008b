"""Fuzz the VOC XML reader with byte-level and element-level mutations of synthetic files (fast
tier, no data needed) and of the real raccoon/BCCD annotations (``shared``, real tier).

Each input gives an ImageRecord with finite coordinates or an AnnotationError (one line).
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fuzzlib
from detkit.data.voc import parse_voc_annotation, read_voc_annotation

SYNTH = [
    b"""<annotation><folder>VOC2007</folder><filename>000001.jpg</filename>
<size><width>353</width><height>500</height><depth>3</depth></size><segmented>0</segmented>
<object><name>dog</name><pose>Left</pose><truncated>1</truncated><difficult>0</difficult>
<bndbox><xmin>48</xmin><ymin>240</ymin><xmax>195</xmax><ymax>371</ymax></bndbox></object>
<object><name>person</name><pose>Left</pose><truncated>1</truncated><difficult>0</difficult>
<bndbox><xmin>8</xmin><ymin>12</ymin><xmax>352</xmax><ymax>498</ymax></bndbox></object>
</annotation>
""",
    '<?xml version="1.0" encoding="utf-8"?>\n<annotation>\n  <filename>\u6d63\u718a 01.JPG</filename>\n'
    '  <size><width>640</width><height>480</height></size>\n  <object><name>\u732b</name>\n'
    '    <difficult></difficult><bndbox><xmin>1.5</xmin><ymin>2</ymin><xmax>640</xmax><ymax>480</ymax>'
    '</bndbox>\n  </object>\n</annotation>\n'.encode("utf-8"),
    b'<?xml version="1.0" encoding="GBK"?><annotation><filename>\xc3\xa8.jpg</filename><object><name>\xc3\xa8'
    b'</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>',
]

FRAGMENTS = [b"<", b">", b"</", b"&", b"&amp;", b"&#0;", b"&#x110000;", b"&lt;", b"<!DOCTYPE a>", b"<![CDATA[x]]>",
             b"<!-- c -->", b"<?pi x?>", b"\x00", b"\xff\xfe", b"\xef\xbb\xbf", b"<object>", b"</object>",
             b"<bndbox>", b"<xmin>nan</xmin>", b"<xmax>1e400</xmax>", b"<name></name>", b"<annotation>",
             b'<?xml version="1.0" encoding="utf-16"?>', b'<?xml version="1.0" encoding="bogus-enc"?>',
             b'<?xml version="1.0" encoding="utf-7"?>', b"\r\n", b"\xc3", b"\xe4\xb8\xad"]

TAGS = ["annotation", "filename", "size", "width", "height", "depth", "object", "name", "bndbox", "xmin", "ymin",
        "xmax", "ymax", "difficult", "truncated", "path", "folder"]
TEXTS = st.one_of(st.sampled_from(["", " ", "0", "1", "-1", "1.5", "nan", "inf", "-inf", "1e308", "1e309", "abc",
                                   "True", "unspecified", "99999999999999999999", "0x10", "\u4e2d", "../x.jpg",
                                   "/etc/passwd"]), st.text(max_size=20))


def _check_record(data: bytes) -> None:
    rec, err = fuzzlib.outcome("voc.parse", parse_voc_annotation, data, "<fuzz>.xml")
    if rec is not None:
        for o in rec.objects:
            assert all(math.isfinite(v) for v in (o.xmin, o.ymin, o.xmax, o.ymax)), o
            assert o.name
        for v in (rec.width, rec.height, rec.depth):
            assert v is None or (isinstance(v, int) and v > 0)


@st.composite
def byte_mutation(draw, sources: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(sources)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "fragment", "truncate", "dup"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 16))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "fragment":
            data[i:i] = draw(st.sampled_from(FRAGMENTS))
        elif op == "truncate":
            del data[i:]
        elif op == "dup":
            j = draw(st.integers(i, min(len(data), i + 200)))
            data[j:j] = data[i:j]
    return bytes(data)


@st.composite
def element_mutation(draw, sources: list[bytes]) -> bytes:
    """Parse a valid file, then remove / duplicate / retag / retext random elements."""
    root = ET.fromstring(draw(st.sampled_from(sources)))
    for _ in range(draw(st.integers(1, 5))):
        nodes = list(root.iter())
        parents = {c: p for p in nodes for c in p}
        el = draw(st.sampled_from(nodes))
        op = draw(st.sampled_from(["text", "text", "remove", "dup", "retag", "child", "attr"]))
        if op == "text":
            el.text = draw(TEXTS)
        elif op == "remove" and el in parents:
            parents[el].remove(el)
        elif op == "dup" and el in parents:
            parents[el].append(el)
        elif op == "retag":
            el.tag = draw(st.sampled_from(TAGS))
        elif op == "child":
            ET.SubElement(el, draw(st.sampled_from(TAGS))).text = draw(TEXTS)
        elif op == "attr":
            el.set(draw(st.sampled_from(["a", "xmlns", "x"])), draw(TEXTS))
    try:
        return ET.tostring(root, encoding="utf-8")
    except (ValueError, TypeError):  # a mutation the serializer refuses (surrogates): keep the bytes
        return ET.tostring(ET.fromstring(draw(st.sampled_from(sources))), encoding="utf-8")


# UTF-8 sources for the element mutator (the GBK one is for byte mutations)
ELEMENT_SOURCES = [SYNTH[0], SYNTH[1]]


@fuzzlib.fast(40)
@given(byte_mutation(SYNTH))
def test_byte_mutations_synthetic(data):
    _check_record(data)


@fuzzlib.fast(30)
@given(element_mutation(ELEMENT_SOURCES))
def test_element_mutations_synthetic(data):
    _check_record(data)


@fuzzlib.fast(20)
@given(st.binary(max_size=600))
def test_random_bytes(data):
    _check_record(data)


@fuzzlib.long()
@given(st.one_of(byte_mutation(SYNTH), element_mutation(ELEMENT_SOURCES), st.binary(max_size=2000)))
def test_synthetic_long(data):
    _check_record(data)


# --------------------------------------------------------------------------- real files (shared)

def _real_sources(shared: Path, n: int = 60) -> list[bytes]:
    files = sorted((shared / "data" / "raccoon" / "Annotations").glob("*.xml")) + \
        sorted((shared / "data" / "bccd" / "Annotations").glob("*.xml"))
    if not files:
        pytest.skip("no real VOC annotations under shared/data")
    picked = random.Random(7).sample(files, min(n, len(files)))
    return [f.read_bytes() for f in picked]


@pytest.fixture(scope="module")
def real_sources(shared):
    return _real_sources(shared)


@pytest.mark.real
def test_real_files_parse(shared, real_sources):
    files = sorted((shared / "data" / "raccoon" / "Annotations").glob("*.xml"))[:20]
    for f in files:
        rec = read_voc_annotation(f)
        assert rec.objects


@pytest.mark.real
@fuzzlib.fast(40)
@given(data=st.data())
def test_real_file_mutations(real_sources, data):
    src = data.draw(st.sampled_from(["byte", "element"]))
    if src == "byte":
        _check_record(data.draw(byte_mutation(real_sources)))
    else:
        _check_record(data.draw(element_mutation(real_sources)))


@pytest.mark.real
@fuzzlib.long()
@given(data=st.data())
def test_real_file_mutations_long(real_sources, data):
    src = data.draw(st.sampled_from(["byte", "element"]))
    if src == "byte":
        _check_record(data.draw(byte_mutation(real_sources)))
    else:
        _check_record(data.draw(element_mutation(real_sources)))
