"""Block-sparse pairing of detections with the ground truth of the same (image, class) group.

Only pairs inside one group are ever formed, so memory grows with the sum over groups of
``detections x objects`` (never with a dense images x detections x objects matrix), and large
sets are processed in chunks of at most ``max_pairs`` pairs.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

DEFAULT_MAX_PAIRS = 1 << 22


def group_pairs(det_keys: np.ndarray, gt_keys: np.ndarray, det_ids: np.ndarray | None = None,
                max_pairs: int = DEFAULT_MAX_PAIRS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(det_index, gt_index)`` pair arrays for detections and objects with equal keys.

    Args:
        det_keys: (M,) int64 group key of every detection (e.g. ``image * C + class``).
        gt_keys: (N,) int64 group key of every ground-truth object.
        det_ids: detections to pair, in the order pairs should come out (default ``arange(M)``).
        max_pairs: upper bound of pairs per yielded chunk (a single detection's pairs are never
            split, so a chunk may exceed it when one group alone is larger).
    Yields:
        (P,) int64 detection indices, non-decreasing in ``det_ids`` order, each detection's pairs
        contiguous; (P,) int64 ground-truth indices, in input order within a detection.
    """
    det_keys = np.asarray(det_keys, np.int64)
    gt_keys = np.asarray(gt_keys, np.int64)
    if det_ids is None:
        det_ids = np.arange(det_keys.shape[0], dtype=np.int64)
    if det_ids.size == 0 or gt_keys.size == 0:
        return
    k = det_keys[det_ids]
    hi_key = int(max(gt_keys.max(), k.max())) + 1 if k.size else 0
    if 0 <= min(int(gt_keys.min()), int(k.min()) if k.size else 0) and hi_key <= 8 * (gt_keys.size + k.size) + 4096:
        # dense key space: O(1) lookups through a per-key table instead of binary searches
        count_of = np.bincount(gt_keys, minlength=hi_key)
        start_of = np.cumsum(count_of) - count_of
        gt_order = np.argsort(gt_keys, kind="stable")
        start, count = start_of[k], count_of[k]
    else:
        gt_order = np.argsort(gt_keys, kind="stable")
        sorted_keys = gt_keys[gt_order]
        start = np.searchsorted(sorted_keys, k, side="left")
        count = np.searchsorted(sorted_keys, k, side="right") - start
    keep = count > 0
    det_ids, start, count = det_ids[keep], start[keep], count[keep]
    if det_ids.size == 0:
        return
    csum = np.cumsum(count)
    lo = 0
    n = det_ids.size
    while lo < n:
        base = csum[lo - 1] if lo else 0
        hi = int(np.searchsorted(csum, base + max_pairs, side="right"))
        hi = max(hi, lo + 1)
        cnt = count[lo:hi]
        total = int(cnt.sum())
        first = np.cumsum(cnt) - cnt  # (n_chunk,) offset of each detection's first pair
        d = np.repeat(det_ids[lo:hi], cnt)
        off = np.arange(total, dtype=np.int64) - np.repeat(first, cnt)
        g = gt_order[np.repeat(start[lo:hi], cnt) + off]
        yield d, g
        lo = hi


def segment_starts(sorted_ids: np.ndarray) -> np.ndarray:
    """Start positions of runs of equal values in a grouped (run-contiguous) id array."""
    if sorted_ids.size == 0:
        return np.zeros(0, np.int64)
    change = np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1
    return np.concatenate(([0], change)).astype(np.int64)
