"""Internal records of one ``detkit convert-voc`` run, shared by the ``convert_*`` modules.

* :class:`ConvertedImage`: one converted image while OUT is being built (paths, real size, YOLO rows);
* :class:`SourceBox`, :class:`SourceImage`: one image of any source format (``detkit convert``),
  boxes in continuous pixels;
* :class:`ReportLog`: the warnings and skipped files that go into ``convert_report.json``;
* ``log``: the engine's logger (named ``detkit.convert.voc_to_yolo``, as before the modules were split).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("detkit.convert.voc_to_yolo")


@dataclass
class ConvertedImage:
    """One converted image (internal, mutable while building)."""

    xml_rel: str
    image_rel: str
    logical: str  # path used for the output name
    group: str | None  # VOC year root (relative), None for labelImg layout
    split_id: str  # ImageSets id (the XML stem)
    width: int
    height: int
    objects: list[tuple[str, float, float, float, float]]  # class name, cx, cy, w, h (normalised)
    difficult_names: list[str]
    kind: str | None = None  # image type from the content when the file name has no image extension


@dataclass(frozen=True)
class SourceBox:
    """One object in continuous pixels (``x1 .. x2``), already checked and clipped to the image."""

    name: str
    x1: float
    y1: float
    x2: float
    y2: float
    difficult: bool = False
    crowd: bool = False


@dataclass
class SourceImage:
    """One image of SRC in any format, as read (``detkit convert``)."""

    image_rel: str  # as shown in rename_map.csv / the report (relative to SRC, or to --images)
    image_path: str  # the file read and linked
    ann_rel: str  # the annotation file it came from (relative to SRC)
    logical: str  # path the output name is derived from
    width: int
    height: int
    boxes: list[SourceBox]
    split: str | None = None  # train / val / test given by the source; None: ImageSets or the draw
    group: str | None = None  # VOC year root (ImageSets/Main splits)
    split_id: str = ""  # VOC ImageSets id
    kind: str | None = None  # image type from the content when the name has no image extension

    @property
    def xml_rel(self) -> str:  # the name the split assignment reports warnings under
        return self.ann_rel


@dataclass
class SourceRead:
    """What a source reader found: the images, the class order the source fixes (None: the sorted
    class names), and counts for the report."""

    items: list[SourceImage]
    classes: tuple[str, ...] | None
    info: dict


class ReportLog:
    """Collects warnings and skipped files for the report (paths relative to SRC)."""

    def __init__(self) -> None:
        self.warnings: list[dict] = []
        self.skipped: list[dict] = []

    def warn(self, file: str, code: str, message: str, line: int | None = None) -> None:
        entry = {"file": file, "code": code, "message": message}
        if line is not None:
            entry["line"] = line
        self.warnings.append(entry)
        log.debug("%s: %s", file, message)

    def skip(self, file: str, code: str, reason: str) -> None:
        self.skipped.append({"file": file, "code": code, "reason": reason})
        log.debug("skipped %s: %s", file, reason)
