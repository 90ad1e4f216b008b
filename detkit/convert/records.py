"""Internal records of one ``detkit convert-voc`` run, shared by the ``convert_*`` modules.

* :class:`ConvertedImage`: one converted image while OUT is being built (paths, real size, YOLO rows);
* :class:`SourceBox`, :class:`SourceImage`: one image of any source format (``detkit convert``),
  boxes in continuous pixels;
* :class:`BoxTable`: the boxes of all the images of a source as numpy columns (the COCO reader's
  fast path; :meth:`BoxTable.materialise` gives the :class:`SourceBox` lists);
* :class:`ReportLog`: the warnings and skipped files that go into ``convert_report.json``;
* ``log``: the engine's logger (named ``detkit.convert.voc_to_yolo``, as before the modules were split).
"""
from __future__ import annotations

import logging
from itertools import islice
from dataclasses import dataclass

import numpy as np

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
class BoxTable:
    """The boxes of ``items`` (a :class:`SourceRead`'s, in order) as columns: the boxes of item
    ``k`` are rows ``offsets[k]:offsets[k + 1]``, in the order the reader found them; ``cls``
    indexes ``names``. The items' own ``boxes`` lists stay empty while a table holds them."""

    names: tuple[str, ...]
    cls: np.ndarray  # (n,) int64
    x1: np.ndarray  # (n,) float64, continuous pixels, checked and clipped
    y1: np.ndarray
    x2: np.ndarray
    y2: np.ndarray
    difficult: np.ndarray  # (n,) bool
    crowd: np.ndarray  # (n,) bool
    offsets: np.ndarray  # (items + 1,) int64

    @staticmethod
    def concat(tables: list["BoxTable"]) -> "BoxTable":
        cols = {k: np.concatenate([getattr(t, k) for t in tables])
                for k in ("cls", "x1", "y1", "x2", "y2", "difficult", "crowd")}
        offs, base = [np.zeros(1, np.int64)], 0
        for t in tables:
            offs.append(t.offsets[1:] + base)
            base += int(t.offsets[-1])
        return BoxTable(tables[0].names, offsets=np.concatenate(offs), **cols)

    def item_index(self) -> np.ndarray:
        """Per row, the index of its item."""
        return np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))

    def materialise(self, items: list[SourceImage]) -> None:
        """Fill each item's ``boxes`` with :class:`SourceBox` records (what the reference reader makes)."""
        rows = zip(self.cls.tolist(), self.x1.tolist(), self.y1.tolist(), self.x2.tolist(), self.y2.tolist(),
                   self.difficult.tolist(), self.crowd.tolist())
        names = self.names
        for k, it in enumerate(items):
            n = int(self.offsets[k + 1] - self.offsets[k])
            it.boxes = [SourceBox(names[c], x1, y1, x2, y2, difficult=d, crowd=cr)
                        for c, x1, y1, x2, y2, d, cr in islice(rows, n)]


@dataclass
class SourceRead:
    """What a source reader found: the images, the class order the source fixes (None: the sorted
    class names), and counts for the report. ``table``: the boxes as columns (see
    :class:`BoxTable`), or None when they are in the items' ``boxes`` lists."""

    items: list[SourceImage]
    classes: tuple[str, ...] | None
    info: dict
    table: BoxTable | None = None


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
