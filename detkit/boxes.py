"""Pure box math: format conversions, IoU, clipping. The one place for box conventions.

Conventions (see README "Conventions"):

* internal boxes are absolute-pixel ``xyxy`` floats in continuous coordinates: a box covering
  pixel columns 0..9 inclusive is ``x1=0, x2=10``;
* YOLO label files hold normalised ``cx cy w h`` in [0, 1];
* COCO boxes are absolute ``x y w h``;
* VOC XML boxes are 1-based inclusive integer pixels: continuous ``x1 = xmin - 1``, ``x2 = xmax``
  (see :func:`voc_to_xyxy`).

Functions accept numpy arrays or torch tensors of shape ``(..., 4)`` and return the same type.
"""
from __future__ import annotations

import sys
from typing import TypeVar

import numpy as np

Array = TypeVar("Array")


def _is_tensor(arr) -> bool:
    """A torch tensor? Never imports torch (importing it costs seconds at start-up, and no tensor
    can exist before torch is imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(arr, torch.Tensor)


def _stack(arr, parts):
    if _is_tensor(arr):
        return sys.modules["torch"].stack(parts, dim=-1)
    return np.stack(parts, axis=-1)


def xyxy_to_cxcywh(b: Array) -> Array:
    """(x1, y1, x2, y2) -> (cx, cy, w, h), same units."""
    x1, y1, x2, y2 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return _stack(b, [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])


def cxcywh_to_xyxy(b: Array) -> Array:
    """(cx, cy, w, h) -> (x1, y1, x2, y2), same units."""
    cx, cy, w, h = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return _stack(b, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def xywh_to_xyxy(b: Array) -> Array:
    """COCO (x, y, w, h) -> (x1, y1, x2, y2)."""
    x, y, w, h = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return _stack(b, [x, y, x + w, y + h])


def xyxy_to_xywh(b: Array) -> Array:
    """(x1, y1, x2, y2) -> COCO (x, y, w, h)."""
    x1, y1, x2, y2 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return _stack(b, [x1, y1, x2 - x1, y2 - y1])


def normalize_cxcywh(b: Array, width: float, height: float) -> Array:
    """Absolute (cx, cy, w, h) pixels -> YOLO normalised (cx, cy, w, h)."""
    return _stack(b, [b[..., 0] / width, b[..., 1] / height, b[..., 2] / width, b[..., 3] / height])


def denormalize_cxcywh(b: Array, width: float, height: float) -> Array:
    """YOLO normalised (cx, cy, w, h) -> absolute pixels."""
    return _stack(b, [b[..., 0] * width, b[..., 1] * height, b[..., 2] * width, b[..., 3] * height])


def voc_to_xyxy(b: Array) -> Array:
    """VOC 1-based inclusive (xmin, ymin, xmax, ymax) -> continuous xyxy.

    Pixel ``xmin`` (1-based) is pixel ``xmin - 1`` (0-based), whose left edge is at ``xmin - 1``;
    pixel ``xmax`` (1-based, inclusive) has its right edge at ``xmax``. So width = xmax - xmin + 1,
    the devkit's "+1" rule.
    """
    return _stack(b, [b[..., 0] - 1, b[..., 1] - 1, b[..., 2], b[..., 3]])


def xyxy_to_voc(b: Array) -> Array:
    """Inverse of :func:`voc_to_xyxy`."""
    return _stack(b, [b[..., 0] + 1, b[..., 1] + 1, b[..., 2], b[..., 3]])


def clip_xyxy(b: Array, width: float, height: float) -> Array:
    """Clip xyxy boxes to the image rectangle [0, width] x [0, height]."""
    if _is_tensor(b):
        return _stack(b, [b[..., 0].clamp(0, width), b[..., 1].clamp(0, height),
                          b[..., 2].clamp(0, width), b[..., 3].clamp(0, height)])
    return _stack(b, [np.clip(b[..., 0], 0, width), np.clip(b[..., 1], 0, height),
                      np.clip(b[..., 2], 0, width), np.clip(b[..., 3], 0, height)])


def box_area(b: Array, plus_one: bool = False) -> Array:
    """Area of xyxy boxes; ``plus_one`` applies the VOC devkit's inclusive-pixel rule (w = x2-x1+1)."""
    e = 1.0 if plus_one else 0.0
    return (b[..., 2] - b[..., 0] + e) * (b[..., 3] - b[..., 1] + e)


def iou_matrix(a: np.ndarray, b: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """Pairwise IoU of xyxy boxes (numpy).

    Args:
        a: (N, 4) boxes. b: (M, 4) boxes.
        plus_one: VOC devkit rule, widths/heights are ``x2 - x1 + 1`` (integer pixel boxes).
    Returns:
        (N, M) float64 IoU; intersections with non-positive width or height count as 0.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    e = 1.0 if plus_one else 0.0
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + e
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + e
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = box_area(a, plus_one)[:, None] + box_area(b, plus_one)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(union > 0, inter / union, 0.0)
    return out


def letterbox_params(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[float, float, float]:
    """Scale and padding for letterboxing (aspect-preserving resize, centred, grey padding).

    Returns ``(scale, pad_x, pad_y)`` (integer pads, extra pixel right/bottom): a source point (x, y) lands at (x*scale + pad_x, y*scale + pad_y).
    """
    scale = min(dst_w / src_w, dst_h / src_h)
    new_w, new_h = round(src_w * scale), round(src_h * scale)
    return scale, float((dst_w - new_w) // 2), float((dst_h - new_h) // 2)


def unletterbox_xyxy(b: Array, scale: float, pad_x: float, pad_y: float) -> Array:
    """Map xyxy boxes from letterboxed network-input pixels back to source-image pixels."""
    return _stack(b, [(b[..., 0] - pad_x) / scale, (b[..., 1] - pad_y) / scale,
                      (b[..., 2] - pad_x) / scale, (b[..., 3] - pad_y) / scale])
