"""Dataset statistics: images, objects per class, unlabelled images, box sizes and aspect ratios.

Counts are exact (every label line of every listed image). Box sizes are reported three ways:
relative width/height (the label values), area in pixels at the network size after letterboxing
(``scale = min(W / w_img, H / h_img)``, the size the model sees) and aspect ratio ``w / h`` in
original-image pixels. Plots use matplotlib's Agg backend (no display needed) and are written
atomically.
"""
from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from detkit.data.datafiles import DataConfig, label_path_for, read_yolo_labels, write_text_atomic
from detkit.fileio import write_bytes_atomic
from detkit.data.images import read_image_size
from detkit.errors import DataError, DetkitError

log = logging.getLogger(__name__)

Split = Literal["train", "val", "all"]
#: warn when the most frequent class has more than this many times the objects of the rarest one
IMBALANCE_RATIO = 10.0
#: a class holding less than this share of all objects is called rare
RARE_SHARE = 0.01
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
QUANTILE_NAMES = ("min", "p05", "p25", "median", "p75", "p95", "max")


@dataclass(frozen=True)
class Distribution:
    """Quantiles (:data:`QUANTILES`) and mean of one box measure; all NaN when there are no boxes."""

    count: int
    mean: float
    quantiles: tuple[float, ...]

    @classmethod
    def of(cls, values: np.ndarray) -> "Distribution":
        v = np.asarray(values, dtype=np.float64).ravel()
        if len(v) == 0:
            return cls(0, float("nan"), tuple(float("nan") for _ in QUANTILES))
        return cls(len(v), float(v.mean()), tuple(float(q) for q in np.quantile(v, QUANTILES)))

    def as_dict(self) -> dict:
        return {"count": self.count, "mean": _num(self.mean),
                **{n: _num(q) for n, q in zip(QUANTILE_NAMES, self.quantiles)}}


@dataclass(frozen=True)
class DatasetStats:
    """Statistics of one split of a dataset.

    Attributes:
        split: ``train``, ``val`` or ``all`` (train and val, an image listed in both counted once).
        names: class names (index = class id).
        img_size: network input ``(W, H)`` used for ``area_px``.
        images: distinct images listed; ``duplicates``: list entries naming an image already counted.
        objects_per_class, images_per_class: ``(C,)`` exact counts.
        missing_label: images without a label file; ``empty_label``: images whose label file holds
            no objects; ``unreadable``: images whose size could not be read (their boxes are counted
            in the class counts but not in the size distributions).
        missing_examples, empty_examples, unreadable_examples: up to 10 paths each.
        overlap: images listed in both train and val (only for ``split="all"``).
        rel_w, rel_h: ``(N,)`` normalised box widths/heights; ``area_px``: ``(N,)`` box area in pixels
            at ``img_size`` after letterboxing; ``aspect``: ``(N,)`` ``w / h`` in image pixels
            (zero-height boxes left out).
        warnings: human-readable warnings (class imbalance, empty classes, unlabelled images).
    """

    split: str
    names: tuple[str, ...]
    img_size: tuple[int, int]
    images: int
    duplicates: int
    objects_per_class: tuple[int, ...]
    images_per_class: tuple[int, ...]
    missing_label: int
    empty_label: int
    unreadable: int
    overlap: int
    rel_w: np.ndarray = field(repr=False)
    rel_h: np.ndarray = field(repr=False)
    area_px: np.ndarray = field(repr=False)
    aspect: np.ndarray = field(repr=False)
    missing_examples: tuple[str, ...] = ()
    empty_examples: tuple[str, ...] = ()
    unreadable_examples: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def objects(self) -> int:
        return int(sum(self.objects_per_class))

    @property
    def labelled_images(self) -> int:
        return self.images - self.missing_label - self.empty_label

    def distributions(self) -> dict[str, Distribution]:
        return {"rel_w": Distribution.of(self.rel_w), "rel_h": Distribution.of(self.rel_h),
                "area_px": Distribution.of(self.area_px), "aspect_w_over_h": Distribution.of(self.aspect)}

    def as_dict(self) -> dict:
        """JSON-ready summary (no per-box arrays)."""
        return {
            "split": self.split, "img_size": list(self.img_size), "images": self.images,
            "duplicate_entries": self.duplicates, "objects": self.objects,
            "labelled_images": self.labelled_images, "images_missing_label_file": self.missing_label,
            "images_empty_label_file": self.empty_label, "unreadable_images": self.unreadable,
            "train_val_overlap": self.overlap,
            "classes": [{"id": i, "name": n, "objects": o, "images": m}
                        for i, (n, o, m) in enumerate(zip(self.names, self.objects_per_class,
                                                          self.images_per_class))],
            "box": {k: d.as_dict() for k, d in self.distributions().items()},
            "examples": {"missing_label_file": list(self.missing_examples),
                         "empty_label_file": list(self.empty_examples),
                         "unreadable": list(self.unreadable_examples)},
            "warnings": list(self.warnings),
        }


def _num(v: float) -> float | None:
    return None if v != v else round(float(v), 6)


def _dedupe(paths: Sequence[Path]) -> tuple[list[Path], int]:
    seen: set[str] = set()
    out: list[Path] = []
    for p in paths:
        key = os.path.normcase(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out, len(paths) - len(out)


def imbalance_warnings(names: Sequence[str], objects_per_class: Sequence[int],
                       ratio: float = IMBALANCE_RATIO, rare_share: float = RARE_SHARE) -> list[str]:
    """Warnings for classes without objects, a max/min object ratio above ``ratio`` and classes
    below ``rare_share`` of all objects."""
    counts = np.asarray(objects_per_class, dtype=np.int64)
    out: list[str] = []
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        out.append(f"{len(empty)} class(es) without objects: {', '.join(empty[:10])}"
                   + (" ..." if len(empty) > 10 else ""))
    present = np.flatnonzero(counts > 0)
    if len(present) >= 2:
        hi, lo = present[counts[present].argmax()], present[counts[present].argmin()]
        r = counts[hi] / counts[lo]
        if r > ratio:
            out.append(f"class imbalance: {names[hi]!r} has {counts[hi]} objects, {names[lo]!r} {counts[lo]} "
                       f"(ratio {r:.1f} > {ratio:g}); consider more data for rare classes or class weights")
        total = counts.sum()
        rare = [names[i] for i in present if counts[i] / total < rare_share]
        if rare:
            out.append(f"rare class(es) below {rare_share:.0%} of all objects: {', '.join(rare[:10])}"
                       + (" ..." if len(rare) > 10 else ""))
    return out


def compute_stats(config: DataConfig, split: Split = "train", img_size: tuple[int, int] = (416, 416),
                  max_examples: int = 10) -> DatasetStats:
    """Read every label file (and image header) of ``split`` -> :class:`DatasetStats`.

    Raises:
        DataError: unknown split, or the split lists no images.
        AnnotationError: a malformed label line (file:line) or a class id out of range.
    """
    if split == "train":
        listed = list(config.train)
    elif split == "val":
        listed = list(config.val)
    elif split == "all":
        listed = list(config.train) + list(config.val)
    else:
        raise DataError(f"unknown split {split!r} (train, val or all)", path=config.source)
    if not listed:
        raise DataError(f"the {split} split lists no images", path=config.source)
    images, dups = _dedupe(listed)
    overlap = 0
    if split == "all":
        train_keys = {os.path.normcase(os.path.abspath(p)) for p in config.train}
        overlap = len({os.path.normcase(os.path.abspath(p)) for p in config.val} & train_keys)
    c = config.num_classes
    obj = np.zeros(c, dtype=np.int64)
    img_cls = np.zeros(c, dtype=np.int64)
    missing: list[str] = []
    empty: list[str] = []
    unreadable: list[str] = []
    n_missing = n_empty = n_unreadable = 0
    rel, px, asp = [], [], []
    W, H = img_size
    for img in images:
        lp = label_path_for(img)
        if not lp.exists():
            n_missing += 1
            if len(missing) < max_examples:
                missing.append(str(img))
            continue
        labels = read_yolo_labels(lp, c)
        if len(labels) == 0:
            n_empty += 1
            if len(empty) < max_examples:
                empty.append(str(img))
            continue
        cls = labels[:, 0].astype(np.int64)
        obj += np.bincount(cls, minlength=c)
        img_cls[np.unique(cls)] += 1
        try:
            w_img, h_img = read_image_size(img)
        except DetkitError as exc:
            n_unreadable += 1
            if len(unreadable) < max_examples:
                unreadable.append(str(img))
            log.warning("box sizes skipped: %s", exc)
            continue
        scale = min(W / w_img, H / h_img)
        wh = labels[:, 3:5]
        rel.append(wh)
        px.append(wh[:, 0] * w_img * scale * wh[:, 1] * h_img * scale)
        ok = wh[:, 1] > 0
        asp.append((wh[ok, 0] * w_img) / (wh[ok, 1] * h_img))
    rel_all = np.concatenate(rel) if rel else np.zeros((0, 2))
    warns = imbalance_warnings(config.names, obj)
    if n_missing:
        warns.append(f"{n_missing} image(s) have no label file (trained on as background)")
    if n_empty:
        warns.append(f"{n_empty} image(s) have an empty label file (background images)")
    if n_unreadable:
        warns.append(f"{n_unreadable} image(s) could not be read (size unknown)")
    if dups:
        warns.append(f"{dups} list entr{'y names' if dups == 1 else 'ies name'} an image already listed")
    if overlap:
        warns.append(f"{overlap} image(s) are in both train and val (validation leak)")
    return DatasetStats(
        split=split, names=tuple(config.names), img_size=(int(W), int(H)), images=len(images), duplicates=dups,
        objects_per_class=tuple(int(v) for v in obj), images_per_class=tuple(int(v) for v in img_cls),
        missing_label=n_missing, empty_label=n_empty, unreadable=n_unreadable, overlap=overlap,
        rel_w=rel_all[:, 0].copy(), rel_h=rel_all[:, 1].copy(),
        area_px=np.concatenate(px) if px else np.zeros(0), aspect=np.concatenate(asp) if asp else np.zeros(0),
        missing_examples=tuple(missing), empty_examples=tuple(empty), unreadable_examples=tuple(unreadable),
        warnings=tuple(warns),
    )


def format_stats(stats: DatasetStats) -> str:
    """Plain-text tables: summary, per-class counts, box-size quantiles."""
    lines = [f"split {stats.split}: {stats.images} images, {stats.objects} objects, "
             f"{stats.labelled_images} labelled, {stats.missing_label} without a label file, "
             f"{stats.empty_label} with an empty label file"
             + (f", {stats.unreadable} unreadable" if stats.unreadable else ""), ""]
    total = max(stats.objects, 1)
    wid = max([5] + [len(n) for n in stats.names])
    lines.append(f"{'id':>3}  {'class':<{wid}}  {'objects':>8}  {'share':>6}  {'images':>7}")
    for i, (n, o, m) in enumerate(zip(stats.names, stats.objects_per_class, stats.images_per_class)):
        lines.append(f"{i:>3}  {n:<{wid}}  {o:>8}  {o / total:>6.1%}  {m:>7}")
    lines.append("")
    head = "  ".join(f"{q:>8}" for q in ("mean",) + QUANTILE_NAMES)
    lines.append(f"{'box':<16}  {head}")
    labels = {"rel_w": "rel. width", "rel_h": "rel. height",
              "area_px": f"area px@{stats.img_size[0]}x{stats.img_size[1]}", "aspect_w_over_h": "aspect w/h"}
    for key, d in stats.distributions().items():
        vals = (d.mean,) + d.quantiles
        spec = ".0f" if key == "area_px" else ".3f"
        fmt = (lambda v, spec=spec: f"{'-':>8}" if v != v else f"{v:>8{spec}}")  # NaN: no boxes
        lines.append(f"{labels[key]:<16}  " + "  ".join(fmt(v) for v in vals))
    return "\n".join(lines)


def write_stats_json(stats: DatasetStats, path: str | os.PathLike) -> None:
    """The :meth:`DatasetStats.as_dict` summary as JSON (UTF-8), atomically."""
    write_text_atomic(path, json.dumps(stats.as_dict(), indent=2, ensure_ascii=False) + "\n")


def _save_png(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes_atomic(path, buf.getvalue())


def write_stats_plots(stats: DatasetStats, folder: str | os.PathLike) -> list[Path]:
    """PNG plots in ``folder`` (created): ``classes.png`` (objects and images per class),
    ``box_wh.png`` (relative width vs height), ``box_area.png`` (area histogram, log scale),
    ``box_aspect.png`` (aspect-ratio histogram, log scale). Returns the paths written."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display backend needed

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    x = np.arange(len(stats.names))

    fig = Figure(figsize=(max(6.0, 0.35 * len(stats.names) + 2), 4.5))
    ax = fig.add_subplot()
    ax.bar(x - 0.2, stats.objects_per_class, width=0.4, label="objects")
    ax.bar(x + 0.2, stats.images_per_class, width=0.4, label="images")
    ax.set_xticks(x, list(stats.names), rotation=60 if len(stats.names) > 6 else 0, ha="right"
                  if len(stats.names) > 6 else "center")
    ax.set_ylabel("count")
    ax.set_title(f"{stats.split}: {stats.objects} objects in {stats.images} images")
    ax.legend()
    fig.tight_layout()
    _save_png(fig, out / "classes.png")
    written.append(out / "classes.png")

    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.scatter(stats.rel_w, stats.rel_h, s=4, alpha=0.4)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("relative width")
    ax.set_ylabel("relative height")
    ax.set_title("box sizes")
    fig.tight_layout()
    _save_png(fig, out / "box_wh.png")
    written.append(out / "box_wh.png")

    for name, values, label in (
            ("box_area.png", stats.area_px, f"box area (px at {stats.img_size[0]}x{stats.img_size[1]})"),
            ("box_aspect.png", stats.aspect, "aspect ratio w / h")):
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        v = values[values > 0]
        if len(v):
            lo, hi = float(v.min()), float(v.max())
            bins = np.geomspace(lo, hi if hi > lo else lo * 1.01, 40)
            ax.hist(v, bins=bins)
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("boxes")
        fig.tight_layout()
        _save_png(fig, out / name)
        written.append(out / name)
    return written
