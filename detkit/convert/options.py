"""The types of a conversion's API: :class:`ConvertOptions` (the settings, the CLI flags),
:class:`ConvertResult` (what it produced) and :class:`ClassStats` (per-class counts)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from detkit.convert.output import REPORT_NAME


@dataclass(frozen=True)
class ConvertOptions:
    """Settings of one conversion (the CLI flags).

    Attributes:
        names: fixed class order; objects of other classes are skipped and counted. None: the
            sorted set of class names found.
        val_fraction: share of images drawn for ``val.txt`` when SRC has no ImageSets split.
        seed: seed of that draw.
        difficult: ``"skip"`` leaves difficult objects out of the labels, ``"keep"`` writes them.
        link: ``"link"`` hard-links images (copies where the file system refuses), ``"copy"`` copies.
        legacy_offset: darknet ``voc_label.py`` arithmetic (see :mod:`detkit.convert.boxes`).
        strict: any warning is an error (nothing is written).
        force: replace an existing OUT even when it is not an earlier detkit output.
        progress: show a tqdm progress bar.
    """

    names: tuple[str, ...] | None = None
    val_fraction: float = 0.2
    seed: int = 0
    difficult: Literal["skip", "keep"] = "skip"
    link: Literal["link", "copy"] = "link"
    legacy_offset: bool = False
    strict: bool = False
    force: bool = False
    progress: bool = False


@dataclass(frozen=True)
class DatasetOptions:
    """Settings of ``detkit convert SRC OUT --to ...`` (any format to any format).

    Attributes:
        to: the format written: ``"yolo"``, ``"coco"`` or ``"voc"``.
        source: the format read: ``"auto"`` (detected, see :func:`detkit.convert.any_format.detect_format`),
            ``"voc"``, ``"yolo"`` or ``"coco"``.
        images: folder holding a COCO file's images when they are not beside it (``--images``).
        names, val_fraction, seed, link, strict, force, progress: as in :class:`ConvertOptions`.
        difficult: YOLO output only (YOLO has no difficult flag): ``"skip"`` or ``"keep"``;
            COCO and VOC outputs always keep difficult objects with their flag.
    """

    to: Literal["yolo", "coco", "voc"] = "yolo"
    source: Literal["auto", "voc", "yolo", "coco"] = "auto"
    images: str | None = None
    names: tuple[str, ...] | None = None
    val_fraction: float = 0.2
    seed: int = 0
    difficult: Literal["skip", "keep"] = "skip"
    link: Literal["link", "copy"] = "link"
    strict: bool = False
    force: bool = False
    progress: bool = False


@dataclass(frozen=True)
class ClassStats:
    """Per-class counts: images with at least one written object, written objects, difficult objects."""

    images: int
    objects: int
    difficult: int


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion produced (the full detail is in ``report``, also written to OUT)."""

    out: Path
    class_names: tuple[str, ...]
    per_class: dict[str, ClassStats]
    images: int
    splits: dict[str, int]
    warnings: tuple[dict, ...]
    skipped: tuple[dict, ...]
    report: dict = field(repr=False)

    @property
    def report_path(self) -> Path:
        return self.out / REPORT_NAME
