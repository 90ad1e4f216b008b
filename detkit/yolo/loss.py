"""The YOLOv3 loss: box, objectness and class terms over all heads, always computed in float32.

Behaviour follows darknet's ``forward_yolo_layer`` (its deltas are the gradients of these terms):

* objectness and class: binary cross-entropy on logits (darknet's ``delta = target - sigmoid``);
  positives get objectness target 1, every other prediction target 0 unless its best IoU with any
  ground truth of its image exceeds the head's ``ignore_thresh`` (then it gets no objectness loss);
  with ``truth_thresh < 1`` such a prediction above ``truth_thresh`` is treated as an object.
* box, ``box_loss='darknet'``: ``0.5 * (2 - w*h) * squared error`` on the cell offsets (after the
  sigmoid and ``scale_x_y``) and on ``tw, th`` against ``log(w / anchor_w)``, with w, h normalised
  to the input (small boxes weigh more); ``'giou'`` / ``'ciou'``: ``(2 - w*h) * (1 - IoU-family)``.
* every term is summed over predictions and divided by the number of images (darknet divides the
  learning rate by the batch instead — the same thing).

Anchors, masks, thresholds and ``scale_x_y`` come from each head of the model; strides are measured
from the feature maps. Class weights (an opt-in remedy for rare classes) multiply every term of a
positive (box, objectness, class) by the weight of its class.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import complete_box_iou_loss, generalized_box_iou_loss

from detkit.boxes import cxcywh_to_xyxy
from detkit.yolo.decode import decode_head
from detkit.yolo.targets import HeadGeometry, HeadTargets, assign_targets

BoxLoss = Literal["darknet", "giou", "ciou"]
BOX_LOSSES: tuple[str, ...] = ("darknet", "giou", "ciou")


@dataclass(frozen=True)
class LossConfig:
    """Loss options (all but ``box_loss`` are rarely changed).

    Attributes:
        box_loss: ``darknet`` (MSE on offsets and log sizes), ``giou`` or ``ciou``.
        box_weight, obj_weight, cls_weight: multipliers of the three terms in the total.
        anchor_iou_thresh: extra responsible anchors above this shape IoU (AlexeyAB ``iou_thresh``);
            None: only the best anchor.
        class_weights: per-class weights of positives (length = number of classes) or None.
    """

    box_loss: BoxLoss = "darknet"
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
            heads.append(HeadParams(
                mask=torch.as_tensor(layer.mask, dtype=torch.long).reshape(-1),
                anchors=torch.as_tensor(layer.anchors, dtype=torch.float32).detach().cpu().reshape(-1, 2),
                ignore_thresh=float(layer.ignore_thresh),
                truth_thresh=float(layer.truth_thresh),
                scale_x_y=float(layer.scale_x_y),
            ))
        all_anchors = torch.as_tensor(model.yolo_layers[0].all_anchors, dtype=torch.float32).detach().cpu()
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

    def _box_term(self, raw: torch.Tensor, pbox: torch.Tensor, tgt: HeadTargets,
                  stride: tuple[float, float], head: HeadParams, input_wh: tuple[int, int]) -> torch.Tensor:
        """(M,) box loss of each positive."""
        idx = (tgt.b, tgt.a, tgt.gy, tgt.gx)
        # darknet: scale = 2 - truth.w * truth.h with w, h relative to the network input
        scale = 2.0 - (tgt.box[:, 2] / input_wh[0]) * (tgt.box[:, 3] / input_wh[1])  # (M,)
        if self.config.box_loss == "darknet":
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
