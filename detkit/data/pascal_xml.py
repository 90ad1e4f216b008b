"""Writing Pascal VOC / labelImg annotation XML (reading is :mod:`detkit.data.voc`).

Coordinates: ``<bndbox>`` holds VOC 1-based inclusive pixels; a box in continuous pixels
``x1 .. x2`` is written ``xmin = x1 + 1``, ``xmax = x2`` (the inverse of the reader's rule, so a
VOC file read and written again is unchanged). Whole numbers are written as integers, others with
up to 6 decimals.
"""
from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape


@dataclass(frozen=True)
class XmlObject:
    name: str
    x1: float
    y1: float
    x2: float
    y2: float
    difficult: bool = False


def voc_number(v: float) -> str:
    r = round(v, 6)
    if r == int(r):
        return str(int(r))
    return f"{r:.6f}".rstrip("0").rstrip(".")


def format_voc_xml(filename: str, width: int, height: int, depth: int, objects: list[XmlObject],
                   folder: str = "JPEGImages") -> str:
    """labelImg-style XML text for one image (UTF-8, no ``<path>``)."""
    lines = ["<annotation>", f"\t<folder>{escape(folder)}</folder>", f"\t<filename>{escape(filename)}</filename>",
             "\t<size>", f"\t\t<width>{width}</width>", f"\t\t<height>{height}</height>",
             f"\t\t<depth>{depth}</depth>", "\t</size>", "\t<segmented>0</segmented>"]
    for o in objects:
        lines += ["\t<object>", f"\t\t<name>{escape(o.name)}</name>", "\t\t<pose>Unspecified</pose>",
                  "\t\t<truncated>0</truncated>", f"\t\t<difficult>{int(o.difficult)}</difficult>", "\t\t<bndbox>",
                  f"\t\t\t<xmin>{voc_number(o.x1 + 1)}</xmin>", f"\t\t\t<ymin>{voc_number(o.y1 + 1)}</ymin>",
                  f"\t\t\t<xmax>{voc_number(o.x2)}</xmax>", f"\t\t\t<ymax>{voc_number(o.y2)}</ymax>",
                  "\t\t</bndbox>", "\t</object>"]
    lines.append("</annotation>")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + "\n".join(lines) + "\n"
