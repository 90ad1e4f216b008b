"""Raw yolo head output -> boxes in network-input pixels (darknet's yolo-layer formula).

Used by the eval-mode forward of :class:`detkit.darknet.model.DarknetModel` and by the loss.
"""
from __future__ import annotations

import torch


def decode_head(
    raw: torch.Tensor,
    anchors: torch.Tensor,
    stride_xy: tuple[float, float],
    scale_x_y: float = 1.0,
    new_coords: bool = False,
) -> torch.Tensor:
    """Decode one yolo head.

    darknet: ``x = (sigmoid(tx) * s - (s - 1) / 2 + col) * stride_x``, same for y with the row;
    ``w = exp(tw) * anchor_w``, ``h = exp(th) * anchor_h``; objectness and class probabilities
    are ``sigmoid`` of their logits (class probabilities are *not* multiplied by objectness).

    With ``new_coords=True`` (scaled-YOLOv4, YOLOv7; darknet's ``get_yolo_box``) the conv before the
    head already applied the logistic, so ``raw`` holds probabilities: ``x = (t_x * s - (s - 1) / 2
    + col) * stride_x``, ``w = 4 * t_w^2 * anchor_w``, and objectness / classes are ``raw`` as is.

    Args:
        raw: ``(N, A, H, W, 5 + C)`` head output before any activation (any float dtype).
        anchors: ``(A, 2)`` anchor width, height in network-input pixels for this head's mask.
        stride_xy: ``(input_width / W, input_height / H)`` in pixels per cell.
        scale_x_y: darknet's ``scale_x_y`` (1 for yolov3, 1.05 for yolov4-tiny).

    Returns:
        ``(N, A * H * W, 5 + C)`` float32: cx, cy, w, h (input pixels), objectness, class probs;
        rows ordered by anchor, then y, then x.
    """
    if raw.dim() != 5 or raw.shape[-1] < 5:
        raise ValueError(f"raw must be (N, A, H, W, 5 + C), got {tuple(raw.shape)}")
    n, a, h, w, d = raw.shape
    if anchors.shape != (a, 2):
        raise ValueError(f"anchors must be ({a}, 2) for this head, got {tuple(anchors.shape)}")
    raw = raw.float()  # box maths stays float32, also under autocast
    anchors = anchors.to(device=raw.device, dtype=torch.float32)
    sx, sy = float(stride_xy[0]), float(stride_xy[1])
    cols = torch.arange(w, device=raw.device, dtype=torch.float32).view(1, 1, 1, w)
    rows = torch.arange(h, device=raw.device, dtype=torch.float32).view(1, 1, h, 1)
    shift = (scale_x_y - 1.0) / 2.0
    xy = raw[..., 0:2] if new_coords else torch.sigmoid(raw[..., 0:2])
    if scale_x_y != 1.0:
        xy = xy * scale_x_y - shift
    cx = (xy[..., 0] + cols) * sx  # (N, A, H, W)
    cy = (xy[..., 1] + rows) * sy
    if new_coords:
        wh = 4.0 * raw[..., 2:4].square() * anchors.view(1, a, 1, 1, 2)  # (N, A, H, W, 2)
        probs = raw[..., 4:]
    else:
        wh = torch.exp(raw[..., 2:4]) * anchors.view(1, a, 1, 1, 2)  # (N, A, H, W, 2)
        probs = torch.sigmoid(raw[..., 4:])  # objectness and class probabilities
    out = torch.cat([cx.unsqueeze(-1), cy.unsqueeze(-1), wh, probs], dim=-1)
    return out.reshape(n, a * h * w, d)


def decode_region(
    raw: torch.Tensor,
    grid_anchors: torch.Tensor,
    stride_xy: tuple[float, float],
    softmax: bool = True,
) -> torch.Tensor:
    """Decode one YOLOv2 ``[region]`` head (darknet's ``get_region_box`` and ``forward_region_layer``).

    ``x = (col + sigmoid(tx)) * stride_x``, ``w = exp(tw) * anchor_w * stride_x`` with anchors in grid
    cells; objectness ``sigmoid``; classes ``softmax`` over the class logits (``softmax=1``, every
    YOLOv2 cfg) or ``sigmoid``; class probabilities are not multiplied by objectness.

    Args:
        raw: ``(N, A, H, W, 5 + C)`` head output before any activation.
        grid_anchors: ``(A, 2)`` anchor width, height in grid cells.
        stride_xy: ``(input_width / W, input_height / H)``.

    Returns:
        ``(N, A * H * W, 5 + C)`` float32 as :func:`decode_head`.
    """
    if raw.dim() != 5 or raw.shape[-1] < 5:
        raise ValueError(f"raw must be (N, A, H, W, 5 + C), got {tuple(raw.shape)}")
    n, a, h, w, d = raw.shape
    raw = raw.float()
    sx, sy = float(stride_xy[0]), float(stride_xy[1])
    anchors_px = grid_anchors.to(device=raw.device, dtype=torch.float32) * torch.tensor([sx, sy], device=raw.device)
    out = decode_head(raw[..., :5], anchors_px, stride_xy)  # the same box formula with pixel anchors
    cls = raw[..., 5:].reshape(n, a * h * w, d - 5)
    cls = torch.softmax(cls, dim=-1) if softmax else torch.sigmoid(cls)
    return torch.cat([out, cls], dim=-1)
