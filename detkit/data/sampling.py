"""Class balance of a training set, rare-class warnings and an opt-in class-weighted sampler.

Weights of :func:`image_weights` (used by :func:`class_weighted_sampler`):

* class weight ``w_c = (N / (C' * n_c)) ** power`` — inverse object frequency, ``N`` objects in
  total, ``n_c`` objects of class ``c``, ``C'`` classes present (so a perfectly balanced set gets
  ``w_c = 1``); classes with no objects get no weight;
* an image's weight is the largest ``w_c`` over the classes it contains (an image holding one
  rare object is as valuable as the rare class), and images without objects get the smallest
  class weight (background images stay in the mix but are not up-weighted).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from detkit.data.datafiles import read_yolo_labels

log = logging.getLogger(__name__)

#: default rare-class thresholds: under 1% of all objects, or fewer than 10 instances
RARE_FRACTION = 0.01
RARE_COUNT = 10


@dataclass(frozen=True)
class ClassBalance:
    """Object and image counts per class of a labelled image set.

    Attributes:
        objects: per class, number of objects.
        images: per class, number of images containing at least one object of the class.
        num_images: images in the set.
        empty_images: images without any object.
    """

    objects: tuple[int, ...]
    images: tuple[int, ...]
    num_images: int
    empty_images: int

    @property
    def total_objects(self) -> int:
        return int(sum(self.objects))


def _labels_of(source: Any, num_classes: int) -> list[np.ndarray]:
    """Per-image (K, 5) label arrays from a dataset (``.labels``), label paths or arrays."""
    if hasattr(source, "labels"):
        return [np.asarray(lab).reshape(-1, 5) for lab in source.labels]
    out = []
    for item in source:
        if isinstance(item, (str, os.PathLike)):
            out.append(read_yolo_labels(item, num_classes=num_classes, missing_ok=True))
        else:
            out.append(np.asarray(item, dtype=np.float64).reshape(-1, 5))
    return out


def _classes_of(labels: Sequence[np.ndarray], num_classes: int) -> list[np.ndarray]:
    classes = []
    for i, lab in enumerate(labels):
        c = lab[:, 0].astype(np.int64)
        if c.size and (c.min() < 0 or c.max() >= num_classes):
            raise ValueError(f"image {i}: class id {int(c.max()) if c.max() >= num_classes else int(c.min())} "
                             f"outside [0, {num_classes})")
        classes.append(c)
    return classes


def class_balance(source: Any, num_classes: int) -> ClassBalance:
    """Count objects and images per class.

    Args:
        source: a :class:`detkit.data.dataset.YoloDataset` (uses its already-read ``labels``), or
            an iterable of label-file paths (missing file = no objects) or of ``(K, 5)`` arrays.
        num_classes: number of classes.
    Raises:
        AnnotationError: a label file is malformed (file:line).
    """
    classes = _classes_of(_labels_of(source, num_classes), num_classes)
    objects = np.zeros(num_classes, dtype=np.int64)
    images = np.zeros(num_classes, dtype=np.int64)
    empty = 0
    for c in classes:
        objects += np.bincount(c, minlength=num_classes)
        images[np.unique(c)] += 1
        empty += int(c.size == 0)
    return ClassBalance(tuple(int(v) for v in objects), tuple(int(v) for v in images), len(classes), empty)


def rare_classes(balance: ClassBalance, min_fraction: float = RARE_FRACTION,
                 min_count: int = RARE_COUNT) -> list[int]:
    """Classes with fewer than ``min_count`` objects or under ``min_fraction`` of all objects."""
    total = balance.total_objects
    return [c for c, n in enumerate(balance.objects)
            if n < min_count or (total > 0 and n / total < min_fraction)]


def format_class_balance(balance: ClassBalance, names: Sequence[str] | None = None,
                         min_fraction: float = RARE_FRACTION, min_count: int = RARE_COUNT
                         ) -> tuple[str, list[str]]:
    """Printable table of the class balance and one warning line per rare class.

    Returns:
        ``(table, warnings)``; ``table`` has columns id, class, objects, % of objects, images.
    """
    n_cls = len(balance.objects)
    names = list(names) if names is not None else [str(i) for i in range(n_cls)]
    if len(names) != n_cls:
        raise ValueError(f"{len(names)} names for {n_cls} classes")
    total = balance.total_objects
    width = max([5, *(len(n) for n in names)])
    lines = [f"{'id':>3}  {'class':<{width}}  {'objects':>8}  {'%':>6}  {'images':>7}"]
    for c, (name, n, m) in enumerate(zip(names, balance.objects, balance.images)):
        pct = 100.0 * n / total if total else 0.0
        lines.append(f"{c:>3}  {name:<{width}}  {n:>8}  {pct:>5.1f}%  {m:>7}")
    lines.append(f"{'':>3}  {'all':<{width}}  {total:>8}  {100.0 if total else 0.0:>5.1f}%  "
                 f"{balance.num_images:>7}  ({balance.empty_images} without objects)")
    warnings = []
    for c in rare_classes(balance, min_fraction, min_count):
        n = balance.objects[c]
        pct = 100.0 * n / total if total else 0.0
        warnings.append(f"class {c} '{names[c]}' is rare: {n} objects ({pct:.1f}% of {total}); "
                        f"consider more data or class-weighted sampling")
    return "\n".join(lines), warnings


def image_weights(source: Any, num_classes: int, power: float = 1.0) -> np.ndarray:
    """Sampling weight per image (see module docstring), float64 ``(num_images,)``, mean 1."""
    classes = _classes_of(_labels_of(source, num_classes), num_classes)
    counts = np.zeros(num_classes, dtype=np.float64)
    for c in classes:
        counts += np.bincount(c, minlength=num_classes)
    present = counts > 0
    if not present.any():
        return np.ones(len(classes), dtype=np.float64)
    cw = np.zeros(num_classes, dtype=np.float64)
    cw[present] = (counts.sum() / (present.sum() * counts[present])) ** power
    floor = cw[present].min()
    w = np.array([cw[np.unique(c)].max() if c.size else floor for c in classes], dtype=np.float64)
    return w / w.mean()


class ClassWeightedSampler(WeightedRandomSampler):
    """``WeightedRandomSampler`` (with replacement) reseeded from ``(seed, epoch)`` by ``set_epoch``."""

    def __init__(self, weights: Iterable[float], num_samples: int, seed: int):
        self.seed = int(seed)
        super().__init__(torch.as_tensor(list(weights), dtype=torch.double), num_samples, replacement=True,
                         generator=self._generator(0))

    def _generator(self, epoch: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, int(epoch), 0xC1A55]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def set_epoch(self, epoch: int) -> None:
        self.generator = self._generator(epoch)


def class_weighted_sampler(source: Any, num_classes: int, seed: int, num_samples: int | None = None,
                           power: float = 1.0) -> ClassWeightedSampler:
    """Opt-in remedy for rare classes: sample images by :func:`image_weights`.

    Args:
        source: dataset or label paths/arrays, as for :func:`class_balance`.
        num_classes: number of classes.
        seed: seed; the draw of an epoch depends only on ``(seed, epoch)`` (``set_epoch``).
        num_samples: draws per epoch (default: number of images).
        power: 1 = full inverse frequency, 0.5 = its square root (milder), 0 = uniform.
    """
    w = image_weights(source, num_classes, power)
    n = len(w) if num_samples is None else int(num_samples)
    return ClassWeightedSampler(w, n, seed)
