"""Anchor boxes by k-means over the training boxes with the ``1 - IoU`` distance.

Boxes are compared by shape only: both boxes are centred at the origin, so
``IoU = min(w1, w2) * min(h1, h2) / (w1 * h1 + w2 * h2 - min(w1, w2) * min(h1, h2))``
(the YOLOv2 paper's "dimension clusters"). Box sizes are taken as they appear in the
*letterboxed* network input: an image of ``w_img x h_img`` is scaled by
``min(W / w_img, H / h_img)`` into a ``W x H`` input, so a normalised box ``(w, h)`` measures
``w * w_img * scale`` by ``h * h_img * scale`` network pixels (anchors in a cfg are in those units).

Pure numpy, vectorised, deterministic for a given seed (k-means++ initialisation).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from detkit.data.datafiles import DataConfig, label_path_for, read_yolo_labels
from detkit.data.images import read_image_size
from detkit.errors import DataError, DetkitError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoxSizes:
    """Box sizes of a split, in letterboxed network-input pixels.

    Attributes:
        wh: ``(N, 2)`` float64 width, height (pixels at ``img_size``); zero-size boxes left out.
        img_size: the network input ``(W, H)``.
        images: images read; ``missing_labels``: images without a label file (no boxes, as darknet);
        skipped_boxes: boxes with zero width or height (left out of ``wh``);
        unreadable: images whose size could not be read (their boxes are left out).
    """

    wh: np.ndarray
    img_size: tuple[int, int]
    images: int
    missing_labels: int
    skipped_boxes: int
    unreadable: int


@dataclass(frozen=True)
class AnchorResult:
    """k-means anchors.

    Attributes:
        anchors: ``(k, 2)`` float64 width, height in network pixels, sorted by area (ascending).
        rounded: ``(k, 2)`` int64, the anchors rounded for a cfg (at least 1), same order.
        avg_iou: mean over boxes of the best shape IoU with ``rounded`` (what the cfg will get).
        assignments: ``(N,)`` index into ``anchors`` of each box's cluster.
        iterations: Lloyd iterations until assignments stopped changing.
    """

    anchors: np.ndarray
    rounded: np.ndarray
    avg_iou: float
    assignments: np.ndarray
    iterations: int


def shape_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of boxes and anchors centred at the origin.

    Args:
        wh: ``(N, 2)`` positive widths, heights. anchors: ``(K, 2)`` positive widths, heights.
    Returns:
        ``(N, K)`` float64 IoU.
    """
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 2)
    inter = (np.minimum(wh[:, None, 0], anchors[None, :, 0])
             * np.minimum(wh[:, None, 1], anchors[None, :, 1]))  # (N, K)
    union = (wh[:, 0] * wh[:, 1])[:, None] + (anchors[:, 0] * anchors[:, 1])[None, :] - inter
    return inter / union


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    """Mean over boxes of the best :func:`shape_iou` with any anchor (darknet's "avg IoU")."""
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    if len(wh) == 0:
        raise ValueError("no boxes to measure anchors against")
    return float(shape_iou(wh, anchors).max(axis=1).mean())


def _kmeans_pp_init(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with ``d = 1 - IoU``: each next centre drawn with probability ~ d^2."""
    centres = [wh[rng.integers(len(wh))]]
    d = 1.0 - shape_iou(wh, centres[0][None])[:, 0]  # (N,) distance to the nearest centre
    for _ in range(1, k):
        weights = d * d
        total = weights.sum()
        if total <= 0:  # every box coincides with a centre: fewer distinct shapes than k
            idx = rng.integers(len(wh))
        else:
            idx = rng.choice(len(wh), p=weights / total)
        centres.append(wh[idx])
        d = np.minimum(d, 1.0 - shape_iou(wh, wh[idx][None])[:, 0])
    return np.array(centres, dtype=np.float64)


def kmeans_anchors(wh: np.ndarray, k: int, seed: int = 0, max_iter: int = 300
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """k-means (Lloyd) with the ``1 - IoU`` distance; centres are the mean width/height of a cluster.

    Args:
        wh: ``(N, 2)`` positive box widths, heights (any units; anchors come out in the same).
        k: number of anchors, ``1 <= k <= N``.
        seed: seeds the k-means++ initialisation (same input + seed -> same anchors).
        max_iter: cap on Lloyd iterations.
    Returns:
        ``(anchors (k, 2) sorted by area, assignments (N,), iterations)``.
    Raises:
        ValueError: ``k`` out of range, or non-positive / non-finite sizes.
    """
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    if not 1 <= k <= len(wh):
        raise ValueError(f"need 1 <= k <= number of boxes ({len(wh)}), got k={k}")
    if not np.all(np.isfinite(wh)) or np.any(wh <= 0):
        raise ValueError("box sizes must be positive and finite")
    rng = np.random.default_rng(seed)
    centres = _kmeans_pp_init(wh, k, rng)
    assign = np.full(len(wh), -1, dtype=np.int64)
    iterations = 0
    for iterations in range(1, max_iter + 1):
        iou = shape_iou(wh, centres)  # (N, k)
        new = iou.argmax(axis=1)
        counts = np.bincount(new, minlength=k)
        for empty in np.flatnonzero(counts == 0):  # re-seed an empty cluster with the worst-fit box
            worst = int(iou.max(axis=1).argmin())
            centres[empty] = wh[worst]
            iou[worst] = 0.0
            iou[worst, empty] = 1.0
            new[worst] = empty
            counts = np.bincount(new, minlength=k)
        if np.array_equal(new, assign):
            break
        assign = new
        sums = np.zeros((k, 2), dtype=np.float64)
        np.add.at(sums, assign, wh)
        centres = sums / counts[:, None]
    order = np.argsort(centres[:, 0] * centres[:, 1], kind="stable")
    remap = np.empty(k, dtype=np.int64)
    remap[order] = np.arange(k)
    return centres[order], remap[assign], iterations


def round_anchors(anchors: np.ndarray) -> np.ndarray:
    """Anchors rounded to whole pixels as written in a cfg (at least 1), ``(k, 2)`` int64."""
    return np.maximum(np.rint(np.asarray(anchors, dtype=np.float64)), 1).astype(np.int64).reshape(-1, 2)


def format_anchors(anchors: np.ndarray | Sequence[Sequence[float]]) -> str:
    """``[[10, 14], [23, 27]]`` -> ``"10,14,  23,27"`` (darknet's cfg layout; rounded to ints)."""
    return ",  ".join(f"{w},{h}" for w, h in round_anchors(np.asarray(anchors, dtype=np.float64)))


def compute_anchors(wh: np.ndarray, k: int, seed: int = 0) -> AnchorResult:
    """k-means anchors for box sizes ``wh`` ``(N, 2)`` (network pixels); see :func:`kmeans_anchors`."""
    anchors, assign, iters = kmeans_anchors(wh, k, seed=seed)
    rounded = round_anchors(anchors)
    return AnchorResult(anchors=anchors, rounded=rounded, avg_iou=mean_best_iou(wh, rounded),
                        assignments=assign, iterations=iters)


def letterboxed_box_sizes(labels_wh: np.ndarray, image_size: tuple[int, int],
                          img_size: tuple[int, int]) -> np.ndarray:
    """Normalised box sizes of one image -> network pixels after letterboxing.

    Args:
        labels_wh: ``(K, 2)`` normalised widths, heights (YOLO label columns 3, 4).
        image_size: the original image ``(w_img, h_img)`` in pixels.
        img_size: the network input ``(W, H)``.
    Returns:
        ``(K, 2)`` float64 widths, heights in network pixels (``scale = min(W / w_img, H / h_img)``).
    """
    w_img, h_img = image_size
    scale = min(img_size[0] / w_img, img_size[1] / h_img)
    lw = np.asarray(labels_wh, dtype=np.float64).reshape(-1, 2)
    return np.stack([lw[:, 0] * w_img * scale, lw[:, 1] * h_img * scale], axis=1)


def read_box_sizes(images: Sequence[str | os.PathLike], num_classes: int | None,
                   img_size: tuple[int, int]) -> BoxSizes:
    """Read the label files and image headers of ``images`` -> :class:`BoxSizes`.

    Images without a label file count as having no boxes (darknet's behaviour); a bad label line
    raises. An image whose header cannot be read is skipped with a warning (its boxes cannot be
    scaled).

    Raises:
        AnnotationError: a malformed label file (file:line).
    """
    parts: list[np.ndarray] = []
    missing = skipped = unreadable = 0
    for img in images:
        lp = label_path_for(img)
        if not lp.exists():
            missing += 1
            continue
        labels = read_yolo_labels(lp, num_classes)
        if len(labels) == 0:
            continue
        try:
            size = read_image_size(img)
        except DetkitError as exc:
            log.warning("skipped (cannot read the image size): %s", exc)
            unreadable += 1
            continue
        wh = letterboxed_box_sizes(labels[:, 3:5], size, img_size)
        ok = (wh > 0).all(axis=1)
        skipped += int((~ok).sum())
        parts.append(wh[ok])
    wh_all = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.float64)
    return BoxSizes(wh=wh_all, img_size=(int(img_size[0]), int(img_size[1])), images=len(images),
                    missing_labels=missing, skipped_boxes=skipped, unreadable=unreadable)


def dataset_anchors(config: DataConfig, k: int, img_size: tuple[int, int], seed: int = 0
                    ) -> tuple[AnchorResult, BoxSizes]:
    """Anchors for the training split of ``config`` at network size ``img_size`` ``(W, H)``.

    Raises:
        DataError: the training split has fewer boxes than ``k`` (or none).
    """
    if k < 1:
        raise DataError(f"number of anchors must be >= 1, got {k}", path=config.source)
    sizes = read_box_sizes(config.train, config.num_classes, img_size)
    if len(sizes.wh) < k:
        raise DataError(f"the training split has {len(sizes.wh)} usable boxes in {sizes.images} images; "
                        f"k-means needs at least {k} (--num)", path=config.source)
    return compute_anchors(sizes.wh, k, seed=seed), sizes

