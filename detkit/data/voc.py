"""Pascal VOC XML annotation reader (hardened parser, tolerant of real-world dirt).

Pixel convention: VOC ``<bndbox>`` values are 1-based *inclusive* pixel indices. They are kept as
written in :class:`~detkit.data.records.ObjectRecord`; :func:`detkit.boxes.voc_to_xyxy` maps them
to continuous coordinates (``x1 = xmin - 1``, ``x2 = xmax``, so width = ``xmax - xmin + 1``).

Tolerated: float coordinates (``"12.5"``), missing or empty ``<difficult>``/``<truncated>``
(False), missing/empty/zero/non-numeric ``<size>`` (``None``: read the image instead), a missing
``<filename>`` (empty string: the caller falls back to the XML stem). ``<path>`` is ignored.

Rejected with :class:`~detkit.errors.AnnotationError` naming the file (and line where known):
malformed XML, a root element other than ``<annotation>``, an ``<object>`` without ``<name>`` or
without numeric ``<bndbox>`` coordinates, non-finite coordinates, and any XML using entity
declarations or external references (billion laughs, XXE) — refused by ``defusedxml`` before
anything is expanded or fetched.
"""
from __future__ import annotations

import codecs
import math
import os
import re
from xml.etree import ElementTree as _ET
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from detkit.data.records import ImageRecord, ObjectRecord
from detkit.errors import AnnotationError

_TRUE = {"1", "true", "yes", "y"}
_FALSE = {"", "0", "false", "no", "n", "unspecified"}


class _LineTreeBuilder(TreeBuilder):
    """TreeBuilder that remembers the source line of every element (for error messages)."""

    def __init__(self) -> None:
        super().__init__()
        self.parser = None  # set after the parser exists; gives expat's current line
        self.lines: dict[int, int] = {}

    def start(self, tag, attrs):  # noqa: D102 - TreeBuilder API
        el = super().start(tag, attrs)
        if self.parser is not None:
            self.lines[id(el)] = self.parser.parser.CurrentLineNumber
        return el


_DECL = re.compile(rb"^(\xef\xbb\xbf)?\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")
_EXPAT_ENCODINGS = {"utf-8", "utf-16", "utf-16-le", "utf-16-be", "ascii", "latin-1"}


def _to_expat_encoding(data: bytes, path: str) -> bytes:
    """Re-encode files declared in an encoding expat cannot read (GBK, Shift-JIS...) as UTF-8.

    Chinese Windows annotation tools write ``encoding="GBK"``; expat only knows UTF-8/16 and
    Latin-1, so such files are decoded with Python's codec and the declaration rewritten.
    """
    m = _DECL.match(data[:512])
    if not m:
        return data
    name = m.group(2).decode("ascii")
    try:
        canonical = codecs.lookup(name).name
    except LookupError:
        raise AnnotationError(f"unknown XML encoding {name!r}", path=path, line=1) from None
    if canonical in _EXPAT_ENCODINGS:
        return data
    try:
        text = data.decode(canonical)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise AnnotationError(f"bytes not valid in the declared encoding {name!r}", path=path, line=line) from None
    text = re.sub(r"encoding\s*=\s*[\"'][A-Za-z0-9._-]+[\"']", 'encoding="utf-8"', text, count=1)
    return text.lstrip("\ufeff").encode("utf-8")


def _parse_fast(data: bytes) -> Element | None:
    """C-accelerated parse, only for documents that cannot declare entities.

    A document without any ``<!`` (no DOCTYPE, hence no entity declarations; also no comments
    or CDATA) and without NUL bytes (an ASCII-compatible encoding, so the byte check cannot be
    dodged with UTF-16) can only use the five predefined entities: nothing to expand or fetch.
    Everything else, and every error, goes through the hardened ``defusedxml`` parser.
    """
    if b"<!" in data or b"\x00" in data:
        return None
    try:
        parser = _ET.XMLParser()
        parser.feed(data)
        return parser.close()
    except (ParseError, ValueError, UnicodeError):
        return None


def _parse(data: bytes, path: str) -> tuple[Element, dict[int, int]]:
    """Hardened parse (defusedxml) that records every element's line."""
    builder = _LineTreeBuilder()
    parser = DET.DefusedXMLParser(target=builder, forbid_dtd=False, forbid_entities=True,
                                  forbid_external=True)
    builder.parser = parser
    try:
        parser.feed(data)
        root = parser.close()
    except DefusedXmlException as exc:
        raise AnnotationError(f"unsafe XML refused ({type(exc).__name__}: entity declarations and "
                              "external references are not allowed)", path=path) from None
    except ParseError as exc:
        line = exc.position[0] if getattr(exc, "position", None) else None
        raise AnnotationError(f"malformed XML: {exc}", path=path, line=line) from None
    except (ValueError, UnicodeError) as exc:  # e.g. unknown encoding declaration
        raise AnnotationError(f"malformed XML: {exc}", path=path) from None
    return root, builder.lines


def _text(el: Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    return el.text.strip()


def _flag(el: Element | None) -> bool:
    """VOC 0/1 flag; absent, empty or unrecognised text counts as False."""
    t = _text(el)
    if t is None:
        return False
    t = t.lower()
    if t in _TRUE:
        return True
    try:
        return float(t) != 0.0
    except ValueError:
        return False


def _positive_int(el: Element | None) -> int | None:
    """A ``<size>`` field: positive integer, else None (missing, empty, zero, junk)."""
    t = _text(el)
    if not t:
        return None
    try:
        v = float(t)
    except ValueError:
        return None
    if not math.isfinite(v) or v <= 0 or v != int(v):
        return None
    return int(v)


def _coord(obj: Element, tag: str, path: str, line: int | None) -> float:
    bb = obj.find("bndbox")
    t = _text(bb.find(tag)) if bb is not None else None
    if t is None or t == "":
        raise AnnotationError(f"<object> has no <bndbox><{tag}> value", path=path, line=line)
    try:
        v = float(t)
    except ValueError:
        raise AnnotationError(f"<bndbox><{tag}> is not a number: {t!r}", path=path, line=line) from None
    if not math.isfinite(v):
        raise AnnotationError(f"<bndbox><{tag}> is not finite: {t!r}", path=path, line=line)
    return v


def parse_voc_annotation(data: bytes, source: str | os.PathLike = "<bytes>") -> ImageRecord:
    """Parse VOC XML bytes into an :class:`ImageRecord` (see module docstring for the rules).

    Args:
        data: the raw file contents (any encoding the XML declaration names).
        source: path used in error messages and stored in ``ImageRecord.source``.
    Raises:
        AnnotationError: malformed/unsafe/non-VOC XML, with file and line where known.
    """
    path = os.fspath(source)
    data = _to_expat_encoding(data, path)
    root = _parse_fast(data)
    if root is not None:
        try:
            return _record(root, {}, path)
        except AnnotationError:
            pass  # parse again with line tracking for the message
    root, lines = _parse(data, path)
    return _record(root, lines, path)


def _record(root: Element, lines: dict[int, int], path: str) -> ImageRecord:
    if root.tag != "annotation":
        raise AnnotationError(f"not a VOC annotation: root element is <{root.tag}>, expected <annotation>",
                              path=path, line=lines.get(id(root)))
    filename = _text(root.find("filename")) or ""
    size = root.find("size")
    width = _positive_int(size.find("width")) if size is not None else None
    height = _positive_int(size.find("height")) if size is not None else None
    depth = _positive_int(size.find("depth")) if size is not None else None
    objects = []
    for obj in root.iter("object"):
        line = lines.get(id(obj))
        name = _text(obj.find("name"))
        if not name:
            raise AnnotationError("<object> has no <name>", path=path, line=line)
        xmin, ymin, xmax, ymax = (_coord(obj, t, path, line) for t in ("xmin", "ymin", "xmax", "ymax"))
        objects.append(ObjectRecord(name=name, xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax,
                                    difficult=_flag(obj.find("difficult")),
                                    truncated=_flag(obj.find("truncated"))))
    return ImageRecord(filename=filename, width=width, height=height, depth=depth,
                       objects=tuple(objects), source=path)


def read_voc_annotation(xml_path: str | os.PathLike) -> ImageRecord:
    """Read one VOC XML file (see :func:`parse_voc_annotation`).

    Raises:
        AnnotationError: unreadable, malformed, unsafe or non-VOC file (message names the file).
    """
    p = os.fspath(xml_path)
    try:
        with open(p, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise AnnotationError(f"cannot read annotation: {exc.strerror or exc}", path=p) from None
    return parse_voc_annotation(data, p)
