"""The YOLOv3 loss: box, objectness and class terms over all heads, always computed in float32.

Behaviour follows darknet's ``forward_yolo_layer`` (its deltas are the gradients of these terms):

* objectness and class: binary cross-entropy on logits (darknet's ``delta = target - sigmoid``);
  positives get objectness target 1, every other prediction target 0 unless its best IoU with any
  ground truth of its image exceeds the head's ``ignore_thresh`` (then it gets no objectness loss);
  with ``truth_thresh < 1`` such a prediction above ``truth_thresh`` is treated as an object.
* box, ``box_loss='auto'`` (default): each head's cfg ``iou_loss=``; ``mse`` is ``'darknet'`` below, iou /
  giou / diou / ciou (yolov4, yolov4-tiny) follow darknet's ``delta_yolo_box``: value ``iou_normalizer *
  (1 - IoU-family)``, gradient on the raw ``tx, ty, tw, th`` = minus darknet's delta (``dx_box_iou`` times
  ``iou_normalizer``, times ``exp(t)`` on the sizes, no logistic derivative on x, y, clipped to
  ``max_delta``) — :meth:`YoloLoss._darknet_iou_box`;
* box, ``box_loss='darknet'``: ``0.5 * (2 - w*h) * squared error`` on the cell offsets (after the
  sigmoid and ``scale_x_y``) and on ``tw, th`` against ``log(w / anchor_w)``, with w, h normalised
  to the input (small boxes weigh more); ``'giou'`` / ``'ciou'``: ``(2 - w*h) * (1 - IoU-family)``.
* every term is summed over predictions and divided by the number of images (darknet divides the
  learning rate by the batch instead — the same thing).

Anchors, masks, thresholds and ``scale_x_y`` come from each head of the model; strides are measured
from the feature maps. Class weights (an opt-in remedy for rare classes) multiply every term of a
positive (box, objectness, class) by the weight of its class.

Heads with ``new_coords=1`` (scaled-YOLOv4, YOLOv7) follow darknet's definition for them: the conv
before the head already applied the logistic, so the raw outputs ``p`` are probabilities and darknet's
deltas ``t - p`` act on them, i.e. the terms are squared errors on probabilities (the logistic's
derivative comes from the conv's backward pass):

* objectness: ``obj_normalizer * 0.5 * (t - p)^2``; negatives ``t = 0``; a prediction whose best IoU
  with a ground truth exceeds ``ignore_thresh`` gets no loss, or with ``objectness_smooth=1`` the
  target ``t = IoU`` (as darknet's ``best_match_iou``, only predictions with some class probability
  above 0.25 count for this, ``compare_yolo_class``); positives ``t = 1`` (with ``objectness_smooth=1``
  darknet only sets a positive's delta when the ignore pass left it at exactly 0, so in practice it
  keeps the IoU target there; detkit always uses 1 for positives);
* classes (positives): ``0.5 * sum (t_c - p_c)^2`` (darknet applies ``cls_normalizer`` only together
  with ``counters_per_class``, so plain cfgs use 1);
* box (positives): the value is ``iou_normalizer * (1 - IoU-family)`` with the cfg's ``iou_loss`` (iou,
  giou, diou, ciou) on the decoded box ``x = (p_x * s - (s - 1)/2 + col) * stride``, ``w = 4 p_w^2
  anchor_w``, and its gradient on ``p`` is exactly minus darknet's ``delta_yolo_box``: darknet's
  hand-made ``dx_box_iou`` (box.c) times ``iou_normalizer``, fed to ``p`` without the chain-rule factors
  of the decode (``w = 4 p^2 a``, ``scale_x_y``) — that is the rule these cfgs were tuned with, so
  detkit trains with it (:func:`darknet_dx_box_iou`, a surrogate whose value is the loss and whose
  gradient is darknet's delta). With ``iou_loss=mse``: ``iou_normalizer * 0.5 * (2 - w*h) * (t - p)^2``
  against darknet's targets ``t_xy = cell offset``, ``t_wh = sqrt(w / (4 anchor_w))``, its gradient
  taken on ``p`` as darknet does. tests/test_loss_new_coords.py checks every gradient entry against a
  line-by-line Python transcription of darknet's C code.

``[region]`` (YOLOv2) heads have no training loss in detkit: :meth:`YoloLoss.from_model` refuses them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import complete_box_iou_loss, generalized_box_iou_loss

from detkit.boxes import cxcywh_to_xyxy
from detkit.errors import TrainError
from detkit.yolo.decode import decode_head
from detkit.yolo.targets import HeadGeometry, HeadTargets, assign_targets

BoxLoss = Literal["auto", "darknet", "giou", "ciou"]
BOX_LOSSES: tuple[str, ...] = ("auto", "darknet", "giou", "ciou")
IOU_FAMILY: tuple[str, ...] = ("iou", "giou", "diou", "ciou")


@dataclass(frozen=True)
class LossConfig:
    """Loss options (all but ``box_loss`` are rarely changed).

    Attributes:
        box_loss: ``auto`` (each head's own cfg ``iou_loss``: ``mse`` -> ``darknet``; iou / giou / diou /
            ciou -> darknet's rule for them, module docstring), ``darknet`` (MSE on offsets and log
            sizes), ``giou`` or ``ciou`` (torchvision's, weighted by ``2 - w*h``) on every head.
        box_weight, obj_weight, cls_weight: multipliers of the three terms in the total.
        anchor_iou_thresh: extra responsible anchors above this shape IoU (AlexeyAB ``iou_thresh``);
            None: only the best anchor.
        class_weights: per-class weights of positives (length = number of classes) or None.
    """

    box_loss: BoxLoss = "auto"
    box_weight: float = 1.0
    obj_weight: float = 1.0
    cls_weight: float = 1.0
    anchor_iou_thresh: float | None = None
    class_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss={self.box_loss!r}: expected one of {', '.join(BOX_LOSSES)}")


@dataclass(frozen=True)
class HeadParams:
    """Per-head constants read from the cfg's ``[yolo]`` section.

    Attributes:
        mask: (A,) long anchor indices. anchors: (A, 2) float32 pixels.
        ignore_thresh, truth_thresh, scale_x_y: as in the cfg.
    """

    mask: torch.Tensor
    anchors: torch.Tensor
    ignore_thresh: float
    truth_thresh: float
    scale_x_y: float
    new_coords: bool = False
    iou_loss: str = "mse"
    iou_normalizer: float = 0.75
    obj_normalizer: float = 1.0
    objectness_smooth: bool = False
    max_delta: float = float("inf")


def batched_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of every prediction with every ground truth of the same image.

    Args:
        pred: (N, P, 4) xyxy. gt: (N, G, 4) xyxy (padding rows may be all zero).
    Returns:
        (N, P, G) IoU (0 where a box has no area).
    """
    lt = torch.max(pred[:, :, None, :2], gt[:, None, :, :2])  # (N, P, G, 2)
    rb = torch.min(pred[:, :, None, 2:], gt[:, None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(dim=-1)  # (N, P, G)
    area_p = (pred[..., 2:] - pred[..., :2]).clamp_min(0).prod(dim=-1)  # (N, P)
    area_g = (gt[..., 2:] - gt[..., :2]).clamp_min(0).prod(dim=-1)  # (N, G)
    union = area_p[:, :, None] + area_g[:, None, :] - inter
    return inter / union.clamp_min(1e-9)


def iou_family(pred: torch.Tensor, truth: torch.Tensor, kind: str) -> torch.Tensor:
    """darknet's ``box_iou`` / ``box_giou`` / ``box_diou`` / ``box_ciou`` (``box.c``) of row pairs.

    Args:
        pred, truth: (M, 4) cx, cy, w, h (any common unit).
        kind: ``iou``, ``giou``, ``diou`` or ``ciou``.
    Returns:
        (M,) the IoU-family value (1 = identical boxes).
    """
    p_l, p_r = pred[:, 0] - pred[:, 2] / 2, pred[:, 0] + pred[:, 2] / 2
    p_t, p_b = pred[:, 1] - pred[:, 3] / 2, pred[:, 1] + pred[:, 3] / 2
    t_l, t_r = truth[:, 0] - truth[:, 2] / 2, truth[:, 0] + truth[:, 2] / 2
    t_t, t_b = truth[:, 1] - truth[:, 3] / 2, truth[:, 1] + truth[:, 3] / 2
    iw = (torch.min(p_r, t_r) - torch.max(p_l, t_l)).clamp_min(0)
    ih = (torch.min(p_b, t_b) - torch.max(p_t, t_t)).clamp_min(0)
    inter = iw * ih
    union = pred[:, 2] * pred[:, 3] + truth[:, 2] * truth[:, 3] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))
    if kind == "iou":
        return iou
    cw = torch.max(p_r, t_r) - torch.min(p_l, t_l)
    ch = torch.max(p_b, t_b) - torch.min(p_t, t_t)
    if kind == "giou":
        c = cw * ch
        return torch.where(c > 0, iou - (c - union) / c.clamp_min(1e-12), iou)
    c = cw * cw + ch * ch
    d = ((pred[:, 0] - truth[:, 0]).square() + (pred[:, 1] - truth[:, 1]).square()) / c.clamp_min(1e-12)
    if kind == "diou":  # darknet's box_diou: pow(d / c, 0.6)
        return torch.where(c > 0, iou - d.clamp_min(0).pow(0.6), iou)
    v = 4 / math.pi ** 2 * (torch.atan(truth[:, 2] / truth[:, 3]) - torch.atan(pred[:, 2] / pred[:, 3])).square()
    alpha = v / (1 - iou + v + 0.000001)
    return torch.where(c > 0, iou - (d + alpha * v), iou)


def darknet_dx_box_iou(pred: torch.Tensor, truth: torch.Tensor, kind: str) -> torch.Tensor:
    """darknet's ``dx_box_iou`` (``box.c``), vectorised: its hand-made gradient of the IoU family with
    respect to the predicted ``(x, y, w, h)``, in the units of the boxes (darknet: relative to the input).

    It is what ``delta_yolo_box`` adds (times ``iou_normalizer``) for ``iou_loss`` iou / giou / diou / ciou,
    with darknet's own conventions: the w, h parts are ``d/dright - d/dleft`` (not halved), CIoU's aspect
    term uses ``8 / pi^2 * (atan(gt) - atan(pred)) * h`` (the ``1 / (w^2 + h^2)`` factor dropped), and
    boxes that do not overlap get only the GIoU / DIoU / CIoU part.

    Args:
        pred, truth: (M, 4) cx, cy, w, h.
        kind: ``iou``, ``giou``, ``diou`` or ``ciou``.
    Returns:
        (M, 4) ``(dx, dy, dw, dh)``.
    """
    zero = torch.zeros_like(pred[:, 0])
    one = torch.ones_like(zero)
    top, bot = pred[:, 1] - pred[:, 3] / 2, pred[:, 1] + pred[:, 3] / 2
    left, right = pred[:, 0] - pred[:, 2] / 2, pred[:, 0] + pred[:, 2] / 2
    pt, pb = torch.min(top, bot), torch.max(top, bot)
    pl, pr = torch.min(left, right), torch.max(left, right)
    tt, tb = truth[:, 1] - truth[:, 3] / 2, truth[:, 1] + truth[:, 3] / 2
    tl, tr = truth[:, 0] - truth[:, 2] / 2, truth[:, 0] + truth[:, 2] / 2
    x_area = (pb - pt) * (pr - pl)
    x_hat = (tb - tt) * (tr - tl)
    ih = torch.min(pb, tb) - torch.max(pt, tt)
    iw = torch.min(pr, tr) - torch.max(pl, tl)
    inter = iw * ih
    union = x_area + x_hat - inter
    s = (pred[:, 0] - truth[:, 0]).square() + (pred[:, 1] - truth[:, 1]).square()
    g_cw = torch.max(pr, tr) - torch.min(pl, tl)
    g_ch = torch.max(pb, tb) - torch.min(pt, tt)
    g_c = g_cw * g_ch
    dx_t, dx_b, dx_l, dx_r = -(pr - pl), pr - pl, -(pb - pt), pb - pt
    di_t = torch.where(pt > tt, -iw, zero)
    di_b = torch.where(pb < tb, iw, zero)
    di_l = torch.where(pl > tl, -ih, zero)
    di_r = torch.where(pr < tr, ih, zero)
    du_t, du_b, du_l, du_r = dx_t - di_t, dx_b - di_b, dx_l - di_l, dx_r - di_r
    dc_t = torch.where(pt < tt, -g_cw, zero)
    dc_b = torch.where(pb > tb, g_cw, zero)
    dc_l = torch.where(pl < tl, -g_ch, zero)
    dc_r = torch.where(pr > tr, g_ch, zero)
    u_pos = union > 0
    u2 = torch.where(u_pos, union * union, one)
    p_dt = torch.where(u_pos, (union * di_t - inter * du_t) / u2, zero)
    p_db = torch.where(u_pos, (union * di_b - inter * du_b) / u2, zero)
    p_dl = torch.where(u_pos, (union * di_l - inter * du_l) / u2, zero)
    p_dr = torch.where(u_pos, (union * di_r - inter * du_r) / u2, zero)
    tb_ok, lr_ok = top < bot, left < right  # darknet's corner selection (sequential, as in C)
    p_dt = torch.where(tb_ok, p_dt, p_db)
    p_db = torch.where(tb_ok, p_db, p_dt)
    p_dl = torch.where(lr_ok, p_dl, p_dr)
    p_dr = torch.where(lr_ok, p_dr, p_dl)
    apart = (iw <= 0) | (ih <= 0)
    if kind == "giou":
        c_pos = g_c > 0
        c2 = torch.where(c_pos, g_c * g_c, one)
        extra = [(g_c * du - union * dc) / c2 for du, dc in ((du_t, dc_t), (du_b, dc_b), (du_l, dc_l), (du_r, dc_r))]
        p_dt, p_db, p_dl, p_dr = (torch.where(c_pos, v + e, v) for v, e in zip((p_dt, p_db, p_dl, p_dr), extra))
        p_dt, p_db, p_dl, p_dr = (torch.where(apart, e, v) for v, e in zip((p_dt, p_db, p_dl, p_dr), extra))
    p_dx, p_dy = p_dl + p_dr, p_dt + p_db
    p_dw, p_dh = p_dr - p_dl, p_db - p_dt
    if kind in ("diou", "ciou"):
        ct = torch.min(pred[:, 1] - pred[:, 3] / 2, tt)
        cb = torch.max(pred[:, 1] + pred[:, 3] / 2, tb)
        cl = torch.min(pred[:, 0] - pred[:, 2] / 2, tl)
        cr = torch.max(pred[:, 0] + pred[:, 2] / 2, tr)
        cw, ch = cr - cl, cb - ct
        c = cw * cw + ch * ch
        dct_dy = torch.where(pt < tt, one, zero)
        dct_dh = torch.where(pt < tt, -0.5 * one, zero)
        dcb_dy = torch.where(pb > tb, one, zero)
        dcb_dh = torch.where(pb > tb, 0.5 * one, zero)
        dcl_dx = torch.where(pl < tl, one, zero)
        dcl_dw = torch.where(pl < tl, -0.5 * one, zero)
        dcr_dx = torch.where(pr > tr, one, zero)
        dcr_dw = torch.where(pr > tr, 0.5 * one, zero)
        dcw_dx, dcw_dw = dcr_dx - dcl_dx, dcr_dw - dcl_dw  # d Cw / dy = d Cw / dh = 0
        dch_dy, dch_dh = dcb_dy - dct_dy, dcb_dh - dct_dh  # d Ch / dx = d Ch / dw = 0
        c_pos = c > 0
        cc = torch.where(c_pos, c * c, one)
        e_dx = (2 * (truth[:, 0] - pred[:, 0]) * c - (2 * cw * dcw_dx) * s) / cc
        e_dy = (2 * (truth[:, 1] - pred[:, 1]) * c - (2 * ch * dch_dy) * s) / cc
        e_dw = (2 * cw * dcw_dw) * s / cc
        e_dh = (2 * ch * dch_dh) * s / cc
        if kind == "ciou":
            ar = torch.atan(truth[:, 2] / truth[:, 3]) - torch.atan(pred[:, 2] / pred[:, 3])
            v = 4 / (math.pi * math.pi) * ar * ar
            alpha = v / (1 - inter / union + v + 0.000001)  # as in C: the raw I / U, even for apart boxes
            e_dw = e_dw + alpha * (8 / (math.pi * math.pi) * ar * pred[:, 3])
            e_dh = e_dh + alpha * (-8 / (math.pi * math.pi) * ar * pred[:, 2])
        p_dx = torch.where(apart, e_dx, torch.where(c_pos, p_dx + e_dx, p_dx))
        p_dy = torch.where(apart, e_dy, torch.where(c_pos, p_dy + e_dy, p_dy))
        p_dw = torch.where(apart, e_dw, torch.where(c_pos, p_dw + e_dw, p_dw))
        p_dh = torch.where(apart, e_dh, torch.where(c_pos, p_dh + e_dh, p_dh))
    return torch.stack([p_dx, p_dy, p_dw, p_dh], dim=1)


def _darknet_iou_delta(pbox: torch.Tensor, truth_px: torch.Tensor, head: HeadParams, input_wh: tuple[int, int],
                       weight: torch.Tensor, size_factor: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The iou branch of darknet's ``delta_yolo_box`` for (M,) positives: boxes (cx, cy, w, h pixels) made
    relative to the input as darknet's, value ``weight * (1 - IoU-family)``, delta ``weight * dx_box_iou``
    (zero-size predictions count as size 1, as in C), the size parts times ``size_factor`` (classic heads:
    ``exp(tw), exp(th)``; new_coords: None), then darknet's ``fix_nan_inf`` and ``clip_value(max_delta)``.
    Returns ``(value (M,), delta (M, 4))``."""
    wh_in = torch.tensor([float(input_wh[0]), float(input_wh[1])] * 2, device=pbox.device)
    pred = pbox / wh_in
    truth = truth_px / wh_in
    value = weight * (1.0 - iou_family(pred, truth, head.iou_loss))
    pred[:, 2:4] = torch.where(pred[:, 2:4] == 0, torch.ones_like(pred[:, 2:4]), pred[:, 2:4])
    delta = weight[:, None] * darknet_dx_box_iou(pred, truth, head.iou_loss)
    if size_factor is not None:
        delta[:, 2:4] = delta[:, 2:4] * size_factor
    delta = torch.nan_to_num(delta, nan=0.0, posinf=0.0, neginf=0.0)  # darknet's fix_nan_inf
    return value, delta.clamp(-head.max_delta, head.max_delta)  # darknet's clip_value (max_delta=)


def _pad_per_image(targets: torch.Tensor, batch_size: int, input_wh: tuple[int, int]) -> torch.Tensor:
    """(K, 6) targets -> (N, G, 4) xyxy pixel boxes per image, zero-padded (G = max boxes per image)."""
    device = targets.device
    if targets.shape[0] == 0:
        return torch.zeros((batch_size, 0, 4), device=device)
    b = targets[:, 0].long()
    order = torch.argsort(b, stable=True)
    b_sorted = b[order]
    counts = torch.bincount(b_sorted, minlength=batch_size)  # (N,)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(b_sorted.numel(), device=device) - starts[b_sorted]  # rank within its image
    in_w, in_h = float(input_wh[0]), float(input_wh[1])
    scale = torch.tensor([in_w, in_h, in_w, in_h], device=device)
    boxes = cxcywh_to_xyxy(targets[order, 2:6] * scale)
    out = torch.zeros((batch_size, int(counts.max()), 4), device=device)
    out[b_sorted, slot] = boxes
    return out


class YoloLoss:
    """YOLOv3 loss over all heads of a model. Call with the train-mode outputs of the model.

    Args:
        heads: per-head constants, cfg order.
        all_anchors: (T, 2) every anchor of the cfg, pixels.
        num_classes: C.
        config: loss options.
    """

    def __init__(self, heads: Sequence[HeadParams], all_anchors: torch.Tensor, num_classes: int,
                 config: LossConfig = LossConfig()):
        self.heads = list(heads)
        self.all_anchors = torch.as_tensor(all_anchors, dtype=torch.float32).reshape(-1, 2)
        self.num_classes = int(num_classes)
        self.config = config
        if config.class_weights is not None and len(config.class_weights) != self.num_classes:
            raise ValueError(f"class_weights has {len(config.class_weights)} values, "
                             f"the model has {self.num_classes} classes")

    @classmethod
    def from_model(cls, model: torch.nn.Module, config: LossConfig = LossConfig()) -> "YoloLoss":
        """Read anchors, masks and thresholds from ``model.yolo_layers`` (an unwrapped DarknetModel)."""
        heads = []
        for layer in model.yolo_layers:
            if getattr(layer, "kind", "yolo") != "yolo":
                raise TrainError(f"training a [{layer.kind}] head (cfg line {layer.spec.line}) is not supported by "
                                 "detkit: YOLOv2 [region] loss is not implemented; use a [yolo] cfg "
                                 "(e.g. yolov3-tiny, yolov4-tiny, yolov7-tiny)")
            spec = getattr(layer, "spec", None)
            heads.append(HeadParams(
                mask=torch.as_tensor(layer.mask, dtype=torch.long).reshape(-1),
                anchors=torch.as_tensor(layer.anchors, dtype=torch.float32).detach().cpu().reshape(-1, 2),
                ignore_thresh=float(layer.ignore_thresh),
                truth_thresh=float(layer.truth_thresh),
                scale_x_y=float(layer.scale_x_y),
                new_coords=bool(getattr(layer, "new_coords", False)),
                iou_loss=str(getattr(spec, "iou_loss", "mse")),
                iou_normalizer=float(getattr(spec, "iou_normalizer", 0.75)),
                obj_normalizer=float(getattr(spec, "obj_normalizer", 1.0)),
                objectness_smooth=bool(getattr(spec, "objectness_smooth", False)),
                max_delta=float(getattr(spec, "max_delta", float("inf"))),
            ))
        all_anchors = torch.as_tensor(model.yolo_layers[0].all_anchors, dtype=torch.float32).detach().cpu()
        thresholds = {float(getattr(getattr(layer, "spec", None), "iou_thresh", 1.0)) for layer in model.yolo_layers}
        if config.anchor_iou_thresh is None and len(thresholds) == 1 and min(thresholds) < 1.0:
            # the cfg's [yolo] iou_thresh= (yolov7: 0.2): darknet makes every anchor above it responsible
            config = replace(config, anchor_iou_thresh=min(thresholds))
        return cls(heads, all_anchors, int(model.num_classes), config)

    def geometry(self, outputs: Sequence[torch.Tensor], input_wh: tuple[int, int]) -> list[HeadGeometry]:
        """Head geometry with strides measured from the outputs' feature sizes."""
        geo = []
        for head, raw in zip(self.heads, outputs):
            grid_h, grid_w = int(raw.shape[2]), int(raw.shape[3])
            geo.append(HeadGeometry(mask=head.mask, anchors=head.anchors, grid_hw=(grid_h, grid_w),
                                    stride_xy=(input_wh[0] / grid_w, input_wh[1] / grid_h)))
        return geo

    def __call__(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor,
                 input_wh: tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute the loss.

        Args:
            outputs: per head, raw (N, A, H, W, 5 + C) (any float dtype; cast to float32 here).
            targets: (K, 6) ``[batch_idx, class, cx, cy, w, h]`` normalised to the network input.
            input_wh: network input (width, height) in pixels.
        Returns:
            ``(total, {"box", "obj", "cls"})``: total is a float32 scalar with gradient; the
            components are detached float32 scalars (already multiplied by their weights).
        """
        if len(outputs) != len(self.heads):
            raise ValueError(f"loss built for {len(self.heads)} heads, got {len(outputs)} outputs")
        device = outputs[0].device
        with torch.autocast(device_type=device.type, enabled=False):
            raws = [o.float() for o in outputs]
            return self._compute(raws, targets.to(device=device, dtype=torch.float32), input_wh)

    def _compute(self, raws: list[torch.Tensor], targets: torch.Tensor,
                 input_wh: tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        device = raws[0].device
        n = raws[0].shape[0]
        in_w, in_h = float(input_wh[0]), float(input_wh[1])
        assigned = assign_targets(targets, self.geometry(raws, input_wh), self.all_anchors, input_wh,
                                  cfg.anchor_iou_thresh)
        gt_xyxy = _pad_per_image(targets, n, input_wh)  # (N, G, 4)
        cw = None
        if cfg.class_weights is not None:
            cw = torch.tensor(cfg.class_weights, dtype=torch.float32, device=device)
        zero = raws[0].sum() * 0.0  # keeps the graph connected when there is nothing to learn
        box_loss, obj_loss, cls_loss = zero, zero, zero
        for head, raw, tgt in zip(self.heads, raws, assigned):
            if head.new_coords:
                b, o, c = self._new_coords_head(raw, head, tgt, gt_xyxy, input_wh, cw)
                box_loss, obj_loss, cls_loss = box_loss + b, obj_loss + o, cls_loss + c
                continue
            _, a, h, w, _ = raw.shape
            stride = (in_w / w, in_h / h)
            decoded = decode_head(raw, head.anchors.to(device), stride, head.scale_x_y)
            pbox = decoded[..., :4].reshape(n, a, h, w, 4)  # cx, cy, w, h pixels, with gradient
            obj_logit = raw[..., 4]  # (N, A, H, W)
            obj_t = torch.zeros_like(obj_logit)
            obj_w = torch.ones_like(obj_logit)
            if gt_xyxy.shape[1] > 0:
                with torch.no_grad():
                    ious = batched_iou(cxcywh_to_xyxy(pbox.detach().reshape(n, -1, 4)), gt_xyxy)
                    best = ious.max(dim=2).values.reshape(n, a, h, w)
                obj_w[best > head.ignore_thresh] = 0.0
                if head.truth_thresh < 1.0:
                    above = best > head.truth_thresh
                    obj_t[above], obj_w[above] = 1.0, 1.0
            if tgt.count:
                pos_w = cw[tgt.cls] if cw is not None else torch.ones(tgt.count, device=device)
                idx = (tgt.b, tgt.a, tgt.gy, tgt.gx)
                obj_t[idx] = 1.0
                obj_w[idx] = pos_w
                if cfg.box_loss == "auto" and head.iou_loss in IOU_FAMILY:
                    box_loss = box_loss + self._darknet_iou_box(raw, pbox, tgt, head, input_wh, pos_w).sum()
                else:
                    box_loss = box_loss + (self._box_term(raw, pbox, tgt, stride, head, input_wh) * pos_w).sum()
                cls_t = F.one_hot(tgt.cls, self.num_classes).to(torch.float32)  # (M, C)
                cls_bce = F.binary_cross_entropy_with_logits(raw[idx][:, 5:], cls_t, reduction="none")
                cls_loss = cls_loss + (cls_bce.sum(dim=1) * pos_w).sum()
            obj_bce = F.binary_cross_entropy_with_logits(obj_logit, obj_t, reduction="none")
            obj_loss = obj_loss + (obj_bce * obj_w).sum()
        box_loss = box_loss * (cfg.box_weight / n)
        obj_loss = obj_loss * (cfg.obj_weight / n)
        cls_loss = cls_loss * (cfg.cls_weight / n)
        total = box_loss + obj_loss + cls_loss
        return total, {"box": box_loss.detach(), "obj": obj_loss.detach(), "cls": cls_loss.detach()}

    def _new_coords_head(self, raw: torch.Tensor, head: HeadParams, tgt: HeadTargets, gt_xyxy: torch.Tensor,
                         input_wh: tuple[int, int], cw: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(box, obj, cls) sums of one ``new_coords`` head (module docstring); ``raw`` holds probabilities."""
        n, a, h, w, _ = raw.shape
        device = raw.device
        stride = (input_wh[0] / w, input_wh[1] / h)
        decoded = decode_head(raw, head.anchors.to(device), stride, head.scale_x_y, new_coords=True)
        pbox = decoded[..., :4].reshape(n, a, h, w, 4)
        p_obj = raw[..., 4]  # (N, A, H, W) probability
        obj_t = torch.zeros_like(p_obj)
        obj_w = torch.full_like(p_obj, head.obj_normalizer)
        if gt_xyxy.shape[1] > 0:
            with torch.no_grad():
                ious = batched_iou(cxcywh_to_xyxy(pbox.detach().reshape(n, -1, 4)), gt_xyxy)
                best = ious.max(dim=2).values.reshape(n, a, h, w)
                # darknet's best_match_iou only counts where compare_yolo_class finds a class prob > 0.25
                if self.num_classes:
                    best = torch.where(raw[..., 5:].detach().amax(dim=-1) > 0.25, best, torch.zeros_like(best))
            above = best > head.ignore_thresh
            if head.objectness_smooth:  # darknet: delta = obj_normalizer * (best_iou - p)
                obj_t[above] = best[above]
            else:
                obj_w[above] = 0.0
        box = cls = raw.sum() * 0.0
        if tgt.count:
            pos_w = cw[tgt.cls] if cw is not None else torch.ones(tgt.count, device=device)
            idx = (tgt.b, tgt.a, tgt.gy, tgt.gx)
            obj_t[idx] = 1.0
            obj_w[idx] = head.obj_normalizer * pos_w
            box = self._new_coords_box(raw, pbox, tgt, head, input_wh, pos_w).sum()
            cls_t = F.one_hot(tgt.cls, self.num_classes).to(torch.float32)
            cls = ((0.5 * (cls_t - raw[idx][:, 5:]).square()).sum(dim=1) * pos_w).sum()
        obj = (0.5 * obj_w * (obj_t - p_obj).square()).sum()
        return box, obj, cls

    @staticmethod
    def _new_coords_box(raw: torch.Tensor, pbox: torch.Tensor, tgt: HeadTargets, head: HeadParams,
                        input_wh: tuple[int, int], pos_w: torch.Tensor) -> torch.Tensor:
        """(M,) box term of each positive of a ``new_coords`` head: its value is the cfg's ``iou_loss``
        (times ``iou_normalizer`` and the class weight), its gradient on the raw probabilities ``p`` is
        minus darknet's ``delta_yolo_box`` (module docstring)."""
        idx = (tgt.b, tgt.a, tgt.gy, tgt.gx)
        p = raw[idx][:, 0:4]  # (M, 4) the conv's logistic outputs, with gradient
        weight = head.iou_normalizer * pos_w  # darknet: iou_normalizer * class_multiplier
        with torch.no_grad():
            if head.iou_loss == "mse":
                scale = 2.0 - (tgt.box[:, 2] / input_wh[0]) * (tgt.box[:, 3] / input_wh[1])
                s = head.scale_x_y
                xy = p[:, 0:2] * s - (s - 1.0) / 2.0  # darknet's output after scal_add
                t_wh = torch.sqrt(tgt.box[:, 2:4] / (4.0 * tgt.anchor_wh))
                diff = torch.cat([tgt.cell_xy - xy, t_wh - p[:, 2:4]], dim=1)  # darknet's new_coords mse targets
                delta = (weight * scale)[:, None] * diff
                value = 0.5 * weight * scale * diff.square().sum(dim=1)
            else:  # new_coords: no size factor on dw, dh
                value, delta = _darknet_iou_delta(pbox[idx].detach(), tgt.box, head, input_wh, weight, None)
        surrogate = -(delta * p).sum(dim=1)  # d/dp = -delta
        return value + (surrogate - surrogate.detach())

    @staticmethod
    def _darknet_iou_box(raw: torch.Tensor, pbox: torch.Tensor, tgt: HeadTargets, head: HeadParams,
                         input_wh: tuple[int, int], pos_w: torch.Tensor) -> torch.Tensor:
        """(M,) box term of each positive of a classic head whose cfg says ``iou_loss=`` iou / giou / diou /
        ciou (yolov4, yolov4-tiny): value ``iou_normalizer * (1 - IoU-family)``; gradient on the raw outputs
        ``(tx, ty, tw, th)`` = minus darknet's ``delta_yolo_box``: ``dx_box_iou`` times ``iou_normalizer``,
        ``exp(tw)``, ``exp(th)`` on the size parts, fed to tx, ty without the logistic's derivative (darknet's
        ``backward_yolo_layer`` copies the delta to the layer's input), clipped to ``max_delta``."""
        idx = (tgt.b, tgt.a, tgt.gy, tgt.gx)
        t = raw[idx][:, 0:4]  # (M, 4) raw conv outputs, with gradient
        weight = head.iou_normalizer * pos_w
        with torch.no_grad():  # darknet: dw *= exp(tw), dh *= exp(th)
            value, delta = _darknet_iou_delta(pbox[idx].detach(), tgt.box, head, input_wh, weight,
                                              torch.exp(t[:, 2:4].detach()))
        surrogate = -(delta * t).sum(dim=1)
        value = torch.where(torch.isfinite(value), value, weight)  # an overflowed exp(tw): IoU 0
        return value + (surrogate - surrogate.detach())

    def _box_term(self, raw: torch.Tensor, pbox: torch.Tensor, tgt: HeadTargets,
                  stride: tuple[float, float], head: HeadParams, input_wh: tuple[int, int]) -> torch.Tensor:
        """(M,) box loss of each positive."""
        idx = (tgt.b, tgt.a, tgt.gy, tgt.gx)
        # darknet: scale = 2 - truth.w * truth.h with w, h relative to the network input
        scale = 2.0 - (tgt.box[:, 2] / input_wh[0]) * (tgt.box[:, 3] / input_wh[1])  # (M,)
        if self.config.box_loss in ("auto", "darknet"):  # auto reaches here only for iou_loss=mse heads
            p = pbox[idx]  # (M, 4) pixels
            stride_t = torch.tensor(stride, device=p.device)
            cells = torch.stack([tgt.gx, tgt.gy], dim=1).to(torch.float32)
            pred_xy = p[:, :2] / stride_t - cells  # offset within the cell (sigmoid * scale_x_y - ...)
            pred_twh = raw[idx][:, 2:4]
            target_twh = torch.log(tgt.box[:, 2:4] / tgt.anchor_wh)
            sq = (pred_xy - tgt.cell_xy).pow(2).sum(dim=1) + (pred_twh - target_twh).pow(2).sum(dim=1)
            return 0.5 * scale * sq
        p_xyxy = cxcywh_to_xyxy(pbox[idx])
        t_xyxy = cxcywh_to_xyxy(tgt.box)
        if self.config.box_loss == "giou":
            return scale * generalized_box_iou_loss(p_xyxy, t_xyxy, reduction="none")
        return scale * complete_box_iou_loss(p_xyxy, t_xyxy, reduction="none")
