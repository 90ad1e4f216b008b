"""The in-place cfg text editor: class-count propagation (every ``[yolo]`` ``classes=`` and its
head conv's ``filters=``) and anchor patching. Edits change only the values they name; line endings,
spacing and comments stay byte for byte.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from detkit.darknet.cfg import Section, parse_cfg
from detkit.darknet.section_reader import REGION_KNOWN, REGION_USED, YOLO_KNOWN, YOLO_USED, SectionReader
from detkit.errors import CfgError


@dataclass(frozen=True)
class CfgEdit:
    """One value the class-count writer changes: ``key`` at ``line`` from ``old`` to ``new``.

    ``old is None`` means the key was absent and a ``key=new`` line is inserted after ``line``.
    """

    line: int
    key: str
    old: str | None
    new: str
    section: str


#: detection head sections whose preceding conv's filters follow the class count
HEAD_SECTIONS = ("yolo", "region", "gaussian_yolo")


def head_conv(sections: list[Section], yolo_pos: int) -> Section:
    """The ``[convolutional]`` section right before the head (``[yolo]``, ``[region]``,
    ``[Gaussian_yolo]``) at ``sections[yolo_pos]``."""
    prev = sections[yolo_pos - 1] if yolo_pos >= 1 else None
    if prev is None or prev.type != "convolutional":
        yolo = sections[yolo_pos]
        raise CfgError(f"[{yolo.type}] must directly follow the [convolutional] that feeds it "
                       f"(found [{prev.type if prev else 'nothing'}])", path=yolo.source, line=yolo.line)
    return prev


def head_filters(section: Section, num_classes: int) -> int:
    """The ``filters=`` darknet needs in the conv before this head for ``num_classes`` classes:
    ``[yolo]`` ``(classes + 5) * len(mask)``, ``[Gaussian_yolo]`` ``(classes + 9) * len(mask)``
    (4 box values, 4 uncertainties, objectness), ``[region]`` ``num * (classes + coords + 1)``."""
    if section.type == "region":
        r = SectionReader(section, REGION_USED, REGION_KNOWN, warn=False)
        return r.int("num", 1, minimum=1) * (num_classes + r.int("coords", 4, minimum=0) + 1)
    r = SectionReader(section, YOLO_USED, YOLO_KNOWN, warn=False)  # warnings come from build_specs
    num = r.int("num", 1, minimum=1)
    mask = r.ints("mask")
    n_mask = len(mask) if mask is not None else num
    return (num_classes + (9 if section.type == "gaussian_yolo" else 5)) * n_mask


# -- class-count propagation and the in-place writer -------------------------------------
def class_count_edits(sections: list[Section], num_classes: int) -> list[CfgEdit]:
    """The edits that give every head ``classes=num_classes`` and its conv the matching filters.

    Only values that change are listed. For each ``[yolo]`` / ``[region]`` / ``[Gaussian_yolo]``: its
    ``classes=`` and the preceding ``[convolutional]``'s ``filters=`` (:func:`head_filters`; 4 edits for
    yolov3-tiny, 6 for yolov3 when the count changes).

    Raises:
        CfgError: ``num_classes < 1``, a ``[yolo]`` without a conv right before it, or a bad mask.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        src = sections[0].source if sections else "<cfg>"
        raise CfgError(f"number of classes must be a positive integer, got {num_classes!r}", path=src)
    edits: list[CfgEdit] = []
    for pos, section in enumerate(sections):
        if section.type not in HEAD_SECTIONS:
            continue
        conv = head_conv(sections, pos)
        want_filters = str(head_filters(section, num_classes))
        for sec, key, new in ((conv, "filters", want_filters), (section, "classes", str(num_classes))):
            opts = sec.all(key)
            if not opts:
                edits.append(CfgEdit(sec.line, key, None, new, sec.type))
            for opt in opts:
                if opt.value != new:
                    edits.append(CfgEdit(opt.line, key, opt.value, new, sec.type))
    edits.sort(key=lambda e: e.line)
    return edits


def _split_ending(line: str) -> tuple[str, str]:
    for ending in ("\r\n", "\n", "\r"):
        if line.endswith(ending):
            return line[: -len(ending)], ending
    return line, ""


def _replace_value(line: str, key: str, new: str) -> str:
    body, ending = _split_ending(line)
    eq = body.find("=")
    if eq < 0 or body[:eq].strip() != key:  # internal invariant: edits come from parse_cfg lines
        raise AssertionError(f"line {line!r} does not hold {key}=")
    rest = body[eq + 1:]
    cut = min([p for p in (rest.find("#"), rest.find(";")) if p >= 0], default=len(rest))
    region = rest[:cut]
    if region.strip():
        lead = len(region) - len(region.lstrip())
        tail = len(region.rstrip())
    else:
        lead = tail = len(region)
    return body[: eq + 1] + rest[:lead] + new + rest[tail:] + ending


def apply_edits(text: str, edits: list[CfgEdit]) -> str:
    """Patch ``text`` so that only the edited values change; every other byte stays as it was.

    Line endings (LF, CRLF, CR), spacing around ``=`` and inline comments are preserved.
    """
    lines = text.splitlines(keepends=True)
    inserts: dict[int, list[CfgEdit]] = {}
    for edit in edits:
        if edit.old is None:
            inserts.setdefault(edit.line, []).append(edit)
        else:
            lines[edit.line - 1] = _replace_value(lines[edit.line - 1], edit.key, edit.new)
    for line_no in sorted(inserts, reverse=True):
        header = lines[line_no - 1]
        body, ending = _split_ending(header)
        if not ending:
            ending = "\r\n" if "\r\n" in text else "\n"
            lines[line_no - 1] = body + ending
        lines[line_no:line_no] = [f"{e.key}={e.new}{ending}" for e in inserts[line_no]]
    return "".join(lines)


def set_num_classes(text: str, num_classes: int, source: str | os.PathLike = "<cfg>") -> tuple[str, list[CfgEdit]]:
    """Return ``(patched text, edits)`` with every head set to ``num_classes``."""
    edits = class_count_edits(parse_cfg(text, source), num_classes)
    return apply_edits(text, edits), edits


def _format_anchor_value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{float(v):g}"


def patch_anchors(cfg_text: str, anchors, source: str | os.PathLike = "<cfg>") -> str:
    """Return ``cfg_text`` with every ``[yolo] anchors=`` set to ``anchors`` (darknet layout
    ``10,14,  23,27, ...``); every other byte (line endings, comments, spacing) stays as it was.

    Args:
        anchors: ``(num, 2)`` widths, heights in network-input pixels (any sequence of pairs).
    Raises:
        CfgError: no ``[yolo]`` section, a non-positive anchor, or a head whose ``num=`` differs from
            the number of pairs (masks and head filters depend on it; regenerate with that many).
    """
    pairs = [(float(w), float(h)) for w, h in anchors]
    if any(not (w > 0 and h > 0) for w, h in pairs):  # also rejects NaN
        raise CfgError(f"anchors must be positive, got {pairs}", path=source)
    value = ",  ".join(f"{_format_anchor_value(w)},{_format_anchor_value(h)}" for w, h in pairs)
    sections = parse_cfg(cfg_text, source)
    edits: list[CfgEdit] = []
    for section in sections:
        if section.type != "yolo":
            continue
        r = SectionReader(section, YOLO_USED, YOLO_KNOWN, warn=False)  # warnings come from build_specs
        num = r.int("num", 1, minimum=1)
        if num != len(pairs):
            raise r.error("num", f"[yolo] has num={num} anchors but {len(pairs)} were given")
        opts = section.all("anchors")
        if not opts:
            edits.append(CfgEdit(section.line, "anchors", None, value, section.type))
        for opt in opts:
            if opt.value != value:
                edits.append(CfgEdit(opt.line, "anchors", opt.value, value, section.type))
    if not any(s.type == "yolo" for s in sections):
        raise CfgError("the cfg has no [yolo] section to take anchors", path=source)
    edits.sort(key=lambda e: e.line)
    return apply_edits(cfg_text, edits)
