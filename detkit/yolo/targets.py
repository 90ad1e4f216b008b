"""YOLOv3 target assignment: which head, anchor and grid cell is responsible for each ground truth.

darknet's rule (``yolo_layer.c``, ``forward_yolo_layer``): a ground-truth box is compared by *shape*
(width/height only, both centred at the origin) with **all** anchors of the cfg; the best anchor
wins and the box is learnt by the head whose ``mask`` contains that anchor, at the grid cell that
contains the box centre. AlexeyAB's fork adds ``iou_thresh``: every further anchor whose shape IoU
exceeds it is also made responsible. Nothing here assumes 3 anchors per head, a stride or an input
size: strides are measured from the feature maps (input size / feature size).

Everything is vectorised over the ground truths (no Python loop over boxes); the only loop is over
the heads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class HeadGeometry:
    """What target assignment needs to know about one yolo head.

    Attributes:
        mask: (A,) long, indices into the cfg's anchor list used by this head.
        anchors: (A, 2) float32, anchor (w, h) in network-input pixels (``all_anchors[mask]``).
        grid_hw: (H, W) of the head's feature map.
        stride_xy: (sx, sy) network-input pixels per grid cell, measured (input size / feature size).
    """

    mask: torch.Tensor
    anchors: torch.Tensor
    grid_hw: tuple[int, int]
    stride_xy: tuple[float, float]


@dataclass(frozen=True)
class HeadTargets:
    """The positives of one head; M = number of (ground truth, anchor) assignments on this head.

    Attributes:
        b: (M,) long, image index in the batch.
        a: (M,) long, anchor index *within the head* (0..A-1).
        gy, gx: (M,) long, grid cell row / column.
        gt_index: (M,) long, row of the ground truth in the batch's target tensor.
        cls: (M,) long, class id.
        box: (M, 4) float32, ground truth (cx, cy, w, h) in network-input pixels.
        cell_xy: (M, 2) float32, ground-truth centre in grid units relative to the cell (0..1).
        anchor_wh: (M, 2) float32, the responsible anchor's (w, h) in pixels.
    """

    b: torch.Tensor
    a: torch.Tensor
    gy: torch.Tensor
    gx: torch.Tensor
    gt_index: torch.Tensor
    cls: torch.Tensor
    box: torch.Tensor
    cell_xy: torch.Tensor
    anchor_wh: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.b.numel())


def shape_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    """IoU of boxes compared by shape only (both centred at the origin).

    Args:
        wh1: (K, 2) widths/heights. wh2: (T, 2) widths/heights, same units.
    Returns:
        (K, T) IoU.
    """
    inter = torch.min(wh1[:, None, 0], wh2[None, :, 0]) * torch.min(wh1[:, None, 1], wh2[None, :, 1])
    area1 = (wh1[:, 0] * wh1[:, 1])[:, None]
    area2 = (wh2[:, 0] * wh2[:, 1])[None, :]
    return inter / (area1 + area2 - inter).clamp_min(1e-12)


def assign_targets(
    targets: torch.Tensor,
    heads: list[HeadGeometry],
    all_anchors: torch.Tensor,
    input_wh: tuple[int, int],
    iou_thresh: float | None = None,
) -> list[HeadTargets]:
    """Assign every ground truth to (head, anchor, cell) positives, darknet style.

    Args:
        targets: (K, 6) float, rows ``[batch_idx, class, cx, cy, w, h]``, box normalised to the
            network input (0..1).
        heads: geometry of every yolo head, cfg order.
        all_anchors: (T, 2) float, every anchor (w, h) of the cfg in network-input pixels.
        input_wh: network input (width, height) in pixels.
        iou_thresh: when set (< 1), anchors whose shape IoU with the box exceeds it are responsible
            too (AlexeyAB's ``iou_thresh``); the best anchor is always responsible.
    Returns:
        One :class:`HeadTargets` per head (possibly empty). A ground truth whose best anchor is in
        no head's mask is learnt nowhere (as in darknet).
    """
    device = targets.device
    t = targets.to(torch.float32).reshape(-1, 6)
    in_w, in_h = float(input_wh[0]), float(input_wh[1])
    anchors = all_anchors.to(device=device, dtype=torch.float32).reshape(-1, 2)  # (T, 2)
    box = torch.stack([t[:, 2] * in_w, t[:, 3] * in_h, t[:, 4] * in_w, t[:, 5] * in_h], dim=1)  # (K, 4) px
    ious = shape_iou(box[:, 2:4], anchors)  # (K, T)
    if ious.numel():
        best = ious.argmax(dim=1)  # (K,)
        responsible = torch.zeros_like(ious, dtype=torch.bool)
        responsible[torch.arange(ious.shape[0], device=device), best] = True
        if iou_thresh is not None and iou_thresh < 1.0:
            responsible |= ious > iou_thresh
    else:
        responsible = torch.zeros((t.shape[0], anchors.shape[0]), dtype=torch.bool, device=device)

    out: list[HeadTargets] = []
    for head in heads:
        mask = head.mask.to(device=device, dtype=torch.long)
        k, a = responsible[:, mask].nonzero(as_tuple=True)  # (M,), (M,): GT row, anchor within head
        grid_h, grid_w = head.grid_hw
        sx, sy = head.stride_xy
        gxy = box[k, 0:2] / torch.tensor([sx, sy], device=device)  # (M, 2) centre in grid units
        gx = gxy[:, 0].long().clamp_(0, grid_w - 1)
        gy = gxy[:, 1].long().clamp_(0, grid_h - 1)
        cell_xy = gxy - torch.stack([gx, gy], dim=1).to(torch.float32)
        out.append(HeadTargets(
            b=t[k, 0].long(), a=a, gy=gy, gx=gx, gt_index=k, cls=t[k, 1].long(), box=box[k],
            cell_xy=cell_xy, anchor_wh=head.anchors.to(device=device, dtype=torch.float32)[a],
        ))
    return out
