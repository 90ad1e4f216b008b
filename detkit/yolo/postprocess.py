"""Detections from the eval-mode model output: score threshold, per-class NMS, back to image pixels.

The model's eval forward gives ``(N, R, 5 + C)`` rows ``cx, cy, w, h, objectness, class probs``
(network-input pixels, probabilities). Like darknet (``get_yolo_detections`` + ``do_nms_sort``):

* the score of class ``c`` for a row is ``objectness * p(c)``; a row yields one candidate for every
  class whose score is ``> conf_thres`` (multi-label: one box may be reported as two classes);
* NMS runs per class, dropping a candidate whose IoU with a higher-scored candidate of the same
  class is ``> nms_thres``: ``torchvision.ops.batched_nms`` for torch tensors (on their device),
  OpenCV's ``cv2.dnn.NMSBoxesBatched`` (the same greedy rule, in C++) for numpy arrays, so the
  OpenVINO and onnxruntime paths never import torch (seconds of start-up).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from detkit.boxes import clip_xyxy, cxcywh_to_xyxy, unletterbox_xyxy

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class Detections:
    """Detections of one image, sorted by decreasing score.

    Attributes:
        boxes: (K, 4) float32 xyxy, pixels (network-input pixels straight out of
            :func:`postprocess`; original-image pixels after :func:`unletterbox_detections` /
            :func:`unresize_detections`).
        scores: (K,) float32, objectness * class probability, in (0, 1].
        class_ids: (K,) int64 class indices.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        k = len(self.scores)
        if self.boxes.shape != (k, 4) or self.scores.shape != (k,) or self.class_ids.shape != (k,):
            raise ValueError(f"inconsistent Detections shapes: boxes {self.boxes.shape}, "
                             f"scores {self.scores.shape}, class_ids {self.class_ids.shape}")

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_thres: float) -> np.ndarray:
    """Per-class greedy NMS of xyxy ``boxes`` (K, 4): indices kept, by decreasing score, as
    ``torchvision.ops.batched_nms`` keeps them (a candidate is dropped when its IoU with a kept one
    of the same class is ``> iou_thres``).

    OpenCV's ``NMSBoxesBatched`` does the work; boxes of zero area are kept outside it, because
    OpenCV counts two empty boxes as overlapping fully while torchvision (and darknet) give them no
    overlap (0 / 0), so they never suppress or get suppressed.
    """
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    import cv2

    b = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float32)
    wh = b[:, 2:] - b[:, :2]
    solid = np.flatnonzero((wh[:, 0] > 0) & (wh[:, 1] > 0))
    keep = np.flatnonzero(~((wh[:, 0] > 0) & (wh[:, 1] > 0)))  # empty boxes: kept
    if solid.size:
        xywh = np.concatenate([b[solid, :2], wh[solid]], axis=1)  # OpenCV's Rect2d (x, y, w, h)
        picked = cv2.dnn.NMSBoxesBatched(xywh, scores[solid], np.asarray(class_ids, np.int32)[solid],
                                         -1.0, float(iou_thres))  # no score filter here
        keep = np.concatenate([keep, solid[np.asarray(picked, dtype=np.int64).reshape(-1)]])
    return keep[np.argsort(-scores[keep], kind="stable")]


def _select_numpy(pred: np.ndarray, conf_thres: float, nms_thres: float, max_det: int,
                  max_candidates: int) -> Detections:
    """:func:`_select` for a numpy (R, 5 + C) float32 array."""
    scores = pred[:, 4:5] * pred[:, 5:]
    rows, cls = np.nonzero(scores > conf_thres)
    cand = scores[rows, cls]
    if cand.size > max_candidates:
        top = np.argpartition(-cand, max_candidates - 1)[:max_candidates]
        rows, cls, cand = rows[top], cls[top], cand[top]
    boxes = cxcywh_to_xyxy(pred[rows, :4])
    keep = nms_numpy(boxes, cand, cls, nms_thres)[:max_det]
    return Detections(boxes=boxes[keep].astype(np.float32), scores=cand[keep].astype(np.float32),
                      class_ids=cls[keep].astype(np.int64))


def _select(pred: "torch.Tensor", conf_thres: float, nms_thres: float, max_det: int,
            max_candidates: int) -> Detections:
    """One image: pred (R, 5 + C) -> Detections in the same pixels as pred."""
    import torch
    from torchvision.ops import batched_nms

    scores = pred[:, 4:5] * pred[:, 5:]  # (R, C) objectness * class probability
    rows, cls = torch.nonzero(scores > conf_thres, as_tuple=True)  # candidates (box, class)
    cand_scores = scores[rows, cls]
    if cand_scores.numel() > max_candidates:  # bound NMS cost at very low thresholds
        cand_scores, top = cand_scores.topk(max_candidates)
        rows, cls = rows[top], cls[top]
    boxes = cxcywh_to_xyxy(pred[rows, :4])  # (K, 4) xyxy
    keep = batched_nms(boxes, cand_scores, cls, nms_thres)[:max_det]  # sorted by decreasing score
    return Detections(
        boxes=boxes[keep].cpu().numpy().astype(np.float32, copy=False),
        scores=cand_scores[keep].cpu().numpy().astype(np.float32, copy=False),
        class_ids=cls[keep].cpu().numpy().astype(np.int64, copy=False),
    )


def postprocess(pred: "torch.Tensor | np.ndarray", conf_thres: float = 0.25, nms_thres: float = 0.45,
                max_det: int = 300, max_candidates: int = 30000) -> list[Detections]:
    """Threshold and NMS the model's eval output.

    Args:
        pred: (N, R, 5 + C) eval-mode model output (cx, cy, w, h in network-input pixels,
            objectness probability, class probabilities): a torch tensor of any float dtype on any
            device (the work stays on that device, in float32), or a numpy array.
        conf_thres: keep (box, class) pairs with objectness * p(class) > conf_thres.
        nms_thres: per-class NMS IoU threshold (a candidate overlapping a better one of the same
            class by IoU > nms_thres is dropped).
        max_det: at most this many detections per image (the highest scores).
        max_candidates: at most this many candidates per image enter NMS (the highest scores).
    Returns:
        One :class:`Detections` per image, boxes xyxy in network-input pixels, sorted by score.
    """
    if pred.ndim != 3 or pred.shape[-1] < 6:
        raise ValueError(f"expected model output of shape (N, R, 5 + C), got {tuple(pred.shape)}")
    if not 0.0 <= conf_thres < 1.0:
        raise ValueError(f"conf_thres must be in [0, 1), got {conf_thres}")
    if not 0.0 < nms_thres <= 1.0:
        raise ValueError(f"nms_thres must be in (0, 1], got {nms_thres}")
    if isinstance(pred, np.ndarray):
        arr = pred.astype(np.float32, copy=False)
        return [_select_numpy(p, conf_thres, nms_thres, max_det, max_candidates) for p in arr]
    pred = pred.detach().float()
    return [_select(p, conf_thres, nms_thres, max_det, max_candidates) for p in pred]


def _finish(det: Detections, boxes: np.ndarray, width: int, height: int) -> Detections:
    boxes = clip_xyxy(boxes.astype(np.float32), width, height)
    ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # drop boxes fully outside
    return Detections(np.ascontiguousarray(boxes[ok], dtype=np.float32), det.scores[ok], det.class_ids[ok])


def unletterbox_detections(det: Detections, scale: float, pad_x: float, pad_y: float,
                           width: int, height: int) -> Detections:
    """Map letterboxed network-input boxes back to the (width x height) original image, clipped.

    ``scale, pad_x, pad_y`` are what :func:`detkit.data.images.letterbox` returned.
    """
    return _finish(det, unletterbox_xyxy(det.boxes.astype(np.float64), scale, pad_x, pad_y), width, height)


def unresize_detections(det: Detections, input_size: tuple[int, int], width: int, height: int) -> Detections:
    """Map boxes from a plainly stretched network input ``input_size`` = (W, H) back to the
    (width x height) original image, clipped (darknet's non-letterbox mode)."""
    sx, sy = width / input_size[0], height / input_size[1]
    boxes = det.boxes.astype(np.float64) * np.array([sx, sy, sx, sy])
    return _finish(det, boxes, width, height)
