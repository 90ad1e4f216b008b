"""Per-image results: each image's TP / FP / FN at the confidence threshold and its error types.

TP / FP are the metric's own flags (as in the per-class table) among the image's detections with
score >= ``conf``; FN = the image's positives (objects the metric counts: VOC non-difficult; COCO
non-crowd, non-difficult) - TP, so every column sums to the table's totals. The error columns are
the TIDE types (:mod:`detkit.metrics.tide`) of the image's detections with score >= ``conf`` (Cls,
Loc, Both, Dupe, Bkg) and the image's objects TIDE calls missed (Miss, over all detections).

Rows are written worst first: by FP + FN descending, then ground-truth image order.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detkit.errors import EvalError
from detkit.fileio import write_bytes_atomic
from detkit.metrics.tide import BKG, BOTH, CLS, DUPE, ERROR_TYPES, LOC, TideResult

PER_IMAGE_FORMATS = (".csv", ".jsonl")


@dataclass(frozen=True)
class PerImageResult:
    """Per image (ground-truth image order): ids, counts (I,) and error counts (I, 6) in
    ``ERROR_TYPES`` order (all zero without a TIDE result)."""

    image_ids: tuple
    n_gt: np.ndarray
    n_det: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    errors: np.ndarray
    conf_threshold: float

    def worst_first(self) -> np.ndarray:
        """Image indices by FP + FN descending (stable: ground-truth order on ties)."""
        return np.argsort(-(self.fp + self.fn), kind="stable")

    def rows(self) -> list[dict]:
        """One dict per image, worst first."""
        out = []
        for i in self.worst_first():
            i = int(i)
            iid = self.image_ids[i]
            row = {"image_id": iid if isinstance(iid, (int, str)) else str(iid), "n_gt": int(self.n_gt[i]),
                   "n_det": int(self.n_det[i]), "tp": int(self.tp[i]), "fp": int(self.fp[i]), "fn": int(self.fn[i])}
            row.update({t.lower(): int(self.errors[i, j]) for j, t in enumerate(ERROR_TYPES)})
            out.append(row)
        return out

    def write(self, path: str | Path) -> Path:
        """Write ``.csv`` or ``.jsonl`` (by extension), atomically.

        Raises:
            EvalError: another extension.
        """
        path = Path(path)
        ext = path.suffix.lower()
        if ext not in PER_IMAGE_FORMATS:
            raise EvalError(f"{path}: per-image output must end in {' or '.join(PER_IMAGE_FORMATS)}")
        rows = self.rows()
        if ext == ".jsonl":
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
        else:
            buf = io.StringIO()
            cols = ["image_id", "n_gt", "n_det", "tp", "fp", "fn"] + [t.lower() for t in ERROR_TYPES]
            w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
            data = buf.getvalue().encode("utf-8")
        write_bytes_atomic(path, data, fsync=False, make_parents=True)
        return path


def per_image_results(image_ids: tuple, gt_image_index: np.ndarray, gt_counted: np.ndarray,
                      det_image_index: np.ndarray, det_scores: np.ndarray, det_tp: np.ndarray, det_fp: np.ndarray,
                      conf_threshold: float, tide: TideResult | None = None) -> PerImageResult:
    """Per-image counts (module docstring).

    Args:
        image_ids: the ground truth's image ids. gt_image_index: (N,) image of each object.
        gt_counted: (N,) bool objects that are positives for the metric.
        det_image_index, det_scores: (M,) of every input detection. det_tp, det_fp: (M,) bool
            metric flags (False for detections the metric did not score).
        conf_threshold: counting threshold. tide: the error breakdown of the same tables, or None.
    """
    n_img = len(image_ids)
    above = np.asarray(det_scores) >= conf_threshold
    img = np.asarray(det_image_index, np.int64)
    n_gt = np.bincount(np.asarray(gt_image_index, np.int64)[np.asarray(gt_counted, bool)], minlength=n_img)[:n_img]
    tp = np.bincount(img[above & det_tp], minlength=n_img)[:n_img]
    fp = np.bincount(img[above & det_fp], minlength=n_img)[:n_img]
    n_det = np.bincount(img[above], minlength=n_img)[:n_img]
    errors = np.zeros((n_img, len(ERROR_TYPES)), np.int64)
    if tide is not None:
        for j, code in enumerate((CLS, LOC, BOTH, DUPE, BKG)):
            errors[:, j] = np.bincount(img[above & (tide.det_type == code)], minlength=n_img)[:n_img]
        errors[:, 5] = np.bincount(np.asarray(gt_image_index, np.int64)[tide.gt_missed], minlength=n_img)[:n_img]
    return PerImageResult(image_ids=tuple(image_ids), n_gt=n_gt.astype(np.int64), n_det=n_det.astype(np.int64),
                          tp=tp.astype(np.int64), fp=fp.astype(np.int64), fn=(n_gt - tp).astype(np.int64),
                          errors=errors, conf_threshold=float(conf_threshold))
