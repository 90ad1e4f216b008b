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

Heads with ``new_coords=1`` (scaled-YOLOv4, YOLOv7) follow darknet's definition for them: the conv
before the head already applied the logistic, so the raw outputs ``p`` are probabilities and darknet's
deltas ``t - p`` act on them, i.e. the terms are squared errors on probabilities (the logistic's
derivative comes from the conv's backward pass):

* objectness: ``obj_normalizer * 0.5 * (t - p)^2``; negatives ``t = 0``; a prediction whose best IoU
  with a ground truth exceeds ``ignore_thresh`` gets no loss, or with ``objectness_smooth=1`` the
  target ``t = IoU``; positives ``t = 1`` (with ``objectness_smooth=1`` darknet only sets a positive's
  delta when the ignore pass left it at exactly 0, so in practice it keeps the IoU target there;
  detkit always uses 1 for positives);
* classes (positives): ``0.5 * sum (t_c - p_c)^2`` (darknet applies ``cls_normalizer`` only together
  with ``counters_per_class``, so plain cfgs use 1);
* box (positives): ``iou_normalizer * (1 - IoU-family)`` with the cfg's ``iou_loss`` (iou, giou, diou,
  ciou) on the decoded box ``x = (p_x * s - (s - 1)/2 + col) * stride``, ``w = 4 p_w^2 anchor_w``; with
  ``iou_loss=mse``: ``iou_normalizer * 0.5 * (2 - w*h) * (t - p)^2`` against darknet's targets
  ``t_xy = cell offset``, ``t_wh = sqrt(w / (4 anchor_w))``. (darknet feeds the IoU gradient of the box
  corners to ``p`` without the chain-rule factors of ``w = 4 p^2 a``; the loss here is differentiated
  exactly.)

``[region]`` (YOLOv2) heads have no training loss in detkit: :meth:`YoloLoss.from_model` refuses them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from detkit.boxes import cxcywh_to_xyxy
from detkit.errors import TrainError
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
    new_coords: bool = False
    iou_loss: str = "mse"
    iou_normalizer: float = 0.75
    obj_normalizer: float = 1.0
    objectness_smooth: bool = False


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
            box = (self._new_coords_box(raw, pbox, tgt, head, input_wh) * pos_w).sum()
            cls_t = F.one_hot(tgt.cls, self.num_classes).to(torch.float32)
            cls = ((0.5 * (cls_t - raw[idx][:, 5:]).square()).sum(dim=1) * pos_w).sum()
        obj = (0.5 * obj_w * (obj_t - p_obj).square()).sum()
        return box, obj, cls

    @staticmethod
    def _new_coords_box(raw: torch.Tensor, pbox: torch.Tensor, tgt: HeadTargets, head: HeadParams,
                        input_wh: tuple[int, int]) -> torch.Tensor:
        """(M,) box term of each positive of a ``new_coords`` head."""
        idx = (tgt.b, tgt.a, tgt.gy, tgt.gx)
        if head.iou_loss == "mse":
            scale = 2.0 - (tgt.box[:, 2] / input_wh[0]) * (tgt.box[:, 3] / input_wh[1])
            t_wh = torch.sqrt(tgt.box[:, 2:4] / (4.0 * tgt.anchor_wh))
            t = torch.cat([tgt.cell_xy, t_wh], dim=1)  # darknet's new_coords mse targets
            return head.iou_normalizer * 0.5 * scale * (t - raw[idx][:, 0:4]).square().sum(dim=1)
        p_xyxy = cxcywh_to_xyxy(pbox[idx])
        t_xyxy = cxcywh_to_xyxy(tgt.box)
        if head.iou_loss == "giou":
            term = generalized_box_iou_loss(p_xyxy, t_xyxy, reduction="none")
        elif head.iou_loss == "diou":
            term = distance_box_iou_loss(p_xyxy, t_xyxy, reduction="none")
        elif head.iou_loss == "ciou":
            term = complete_box_iou_loss(p_xyxy, t_xyxy, reduction="none")
        else:  # iou
            lt = torch.max(p_xyxy[:, :2], t_xyxy[:, :2])
            rb = torch.min(p_xyxy[:, 2:], t_xyxy[:, 2:])
            inter = (rb - lt).clamp_min(0).prod(dim=1)
            union = (p_xyxy[:, 2:] - p_xyxy[:, :2]).prod(dim=1) + (t_xyxy[:, 2:] - t_xyxy[:, :2]).prod(dim=1) - inter
            term = 1.0 - inter / union.clamp_min(1e-9)
        return head.iou_normalizer * term

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
