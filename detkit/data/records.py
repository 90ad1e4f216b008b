"""Plain records for annotated images, as read from VOC XML (and produced by other readers).

Coordinates in :class:`ObjectRecord` are kept exactly as VOC writes them: 1-based inclusive
pixel indices, possibly fractional. :meth:`ObjectRecord.xyxy` converts to the continuous
``xyxy`` convention used everywhere else in detkit (see :func:`detkit.boxes.voc_to_xyxy`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from detkit.boxes import voc_to_xyxy


@dataclass(frozen=True)
class ObjectRecord:
    """One annotated object.

    Attributes:
        name: class name as written in the annotation (stripped of surrounding whitespace).
        xmin, ymin, xmax, ymax: VOC 1-based inclusive pixel coordinates (floats allowed).
        difficult: VOC ``<difficult>`` flag (absent/empty -> False).
        truncated: VOC ``<truncated>`` flag (absent/empty -> False).
    """

    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool = False
    truncated: bool = False

    def voc(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` as written in the XML (1-based inclusive pixels)."""
        return (self.xmin, self.ymin, self.xmax, self.ymax)

    def xyxy(self) -> tuple[float, float, float, float]:
        """Continuous absolute-pixel ``(x1, y1, x2, y2)``: ``x1 = xmin - 1``, ``x2 = xmax``."""
        b = voc_to_xyxy(np.asarray(self.voc(), dtype=np.float64))
        return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))


@dataclass(frozen=True)
class ImageRecord:
    """One annotated image.

    Attributes:
        filename: the image file name as written in the annotation (``<filename>``), unresolved.
        width, height, depth: ``<size>`` values from the annotation, ``None`` when absent, empty
            or not a positive integer (the real size must then be read from the image).
        objects: the annotated objects, in file order.
        source: path of the annotation file this record was read from.
    """

    filename: str
    width: int | None
    height: int | None
    depth: int | None
    objects: tuple[ObjectRecord, ...] = field(default_factory=tuple)
    source: str = ""

    def boxes_xyxy(self) -> np.ndarray:
        """All objects' continuous boxes as a float64 array of shape (K, 4)."""
        if not self.objects:
            return np.zeros((0, 4), dtype=np.float64)
        return voc_to_xyxy(np.array([o.voc() for o in self.objects], dtype=np.float64))
