"""YOLOv3 loss on hand-made cases; gradients checked against darknet's deltas (yolo_layer.c)."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision

from detkit.yolo.decode import decode_head
from detkit.yolo.loss import HeadParams, LossConfig, YoloLoss
from detkit.yolo.targets import assign_targets

ANCHORS = torch.tensor([[4, 4], [8, 8], [12, 12], [20, 20], [30, 30], [50, 50]], dtype=torch.float32)
C = 2
IN = (64, 64)


def _loss(ignore=0.7, truth=1.0, sxy=1.0, **cfg) -> YoloLoss:
    heads = [HeadParams(torch.tensor([3, 4, 5]), ANCHORS[[3, 4, 5]], ignore, truth, sxy),
             HeadParams(torch.tensor([0, 1, 2]), ANCHORS[[0, 1, 2]], ignore, truth, sxy)]
    return YoloLoss(heads, ANCHORS, C, LossConfig(**cfg))


def _raw(n=2, fill_obj=-30.0, seed=None):
    """Zero raw outputs for a 64x64 input: coarse 2x2, fine 4x4, 3 anchors, 5 + 2 channels."""
    shapes = [(n, 3, 2, 2, 5 + C), (n, 3, 4, 4, 5 + C)]
    if seed is None:
        outs = [torch.zeros(s) for s in shapes]
    else:
        g = torch.Generator().manual_seed(seed)
        outs = [torch.randn(s, generator=g) * 0.5 for s in shapes]
    for o in outs:
        o[..., 4] = fill_obj
        o[..., 5:] = -30.0 if seed is None else o[..., 5:]
    return outs


# one object: 10x10 px at (40, 20) in image 0, class 1 -> fine head, anchor 2 (12x12), cell y=1 x=2
TARGET = torch.tensor([[0, 1, 40 / 64, 20 / 64, 10 / 64, 10 / 64]])
POS = (0, 2, 1, 2)  # b, a, gy, gx on the fine head (index 1)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _perfect(sxy=1.0):
    outs = _raw()
    fine = outs[1]
    cell_x, cell_y = 40 / 16 - 2, 20 / 16 - 1
    shift = (sxy - 1) / 2
    fine[POS][0] = _logit((cell_x + shift) / sxy)
    fine[POS][1] = _logit((cell_y + shift) / sxy)
    fine[POS][2] = math.log(10 / 12)
    fine[POS][3] = math.log(10 / 12)
    fine[POS][4] = 30.0
    fine[POS][6] = 30.0  # class 1
    return outs


@pytest.mark.parametrize("box_loss", ["darknet", "giou", "ciou"])
@pytest.mark.parametrize("sxy", [1.0, 1.05])
def test_perfect_prediction_gives_zero_loss(box_loss, sxy):
    total, parts = _loss(sxy=sxy, box_loss=box_loss)(_perfect(sxy), TARGET, IN)
    assert total.dtype == torch.float32
    assert total.item() < 1e-4, parts
    assert parts["box"].item() < 1e-5


def test_wrong_class_and_missing_object_cost():
    outs = _perfect()
    outs[1][POS][4] = -30.0  # objectness says "nothing here"
    outs[1][POS][5] = 30.0   # and class 0 instead of 1 (class 1 still +30)
    _, parts = _loss()(outs, TARGET, IN)
    n = 2
    # BCE(-30, 1) = 30 (+ tiny); class: BCE(30, 0) = 30, BCE(30, 1) ~ 0 ; divided by 2 images
    assert parts["obj"].item() == pytest.approx(30 / n, rel=1e-4)
    assert parts["cls"].item() == pytest.approx(30 / n, rel=1e-4)


def test_giou_box_term_by_hand():
    outs = _perfect()
    outs[1][POS][0] = _logit(40 / 16 - 2 + 5 / 16)  # centre moved 5 px right: (45, 20)
    _, parts = _loss(box_loss="giou")(outs, TARGET, IN)
    # two 10x10 boxes 5 px apart: IoU = 50/150, enclosing box 15x10 = union -> GIoU = 1/3
    scale = 2 - (10 / 64) ** 2
    assert parts["box"].item() == pytest.approx(scale * (2 / 3) / 2, rel=1e-4)


def _decode_loop(raw, anchors, stride, sxy):
    """Plain darknet decode, one prediction at a time -> list of ((b, a, y, x), (x1, y1, x2, y2))."""
    out = []
    n, a, h, w, _ = raw.shape
    for b in range(n):
        for ai in range(a):
            for y in range(h):
                for x in range(w):
                    r = raw[b, ai, y, x].tolist()
                    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
                    cx = (sig(r[0]) * sxy - (sxy - 1) / 2 + x) * stride
                    cy = (sig(r[1]) * sxy - (sxy - 1) / 2 + y) * stride
                    bw = math.exp(r[2]) * float(anchors[ai, 0])
                    bh = math.exp(r[3]) * float(anchors[ai, 1])
                    out.append(((b, ai, y, x), (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)))
    return out


def _iou(p, q):
    iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
    ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = iw * ih
    union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
    return inter / union


def test_ignore_mask_matches_a_plain_loop():
    targets = torch.tensor([[0, 1, 40 / 64, 20 / 64, 10 / 64, 10 / 64],
                            [0, 0, 20 / 64, 40 / 64, 30 / 64, 24 / 64],
                            [1, 0, 32 / 64, 32 / 64, 50 / 64, 40 / 64]])
    outs = _raw(seed=3, fill_obj=0.0)
    thresh = 0.3
    loss = _loss(ignore=thresh)
    _, parts = loss(outs, targets, IN)
    gts = {0: [], 1: []}
    for t in targets.tolist():
        cx, cy, w, h = t[2] * 64, t[3] * 64, t[4] * 64, t[5] * 64
        gts[int(t[0])].append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    positives = set()
    for hi, tgt in enumerate(assign_targets(targets, loss.geometry(outs, IN), ANCHORS, IN)):
        for j in range(tgt.count):
            positives.add((hi, int(tgt.b[j]), int(tgt.a[j]), int(tgt.gy[j]), int(tgt.gx[j])))
    counted, ignored = 0, 0
    for hi, (raw, head, stride) in enumerate(zip(outs, loss.heads, (32, 16))):
        for key, box in _decode_loop(raw, head.anchors, stride, 1.0):
            if (hi, *key) in positives:
                counted += 1
            elif max(_iou(box, g) for g in gts[key[0]]) > thresh:
                ignored += 1
            else:
                counted += 1
    assert ignored > 0
    # all objectness logits are 0: BCE = ln 2 per counted prediction, whatever the target
    assert parts["obj"].item() == pytest.approx(counted * math.log(2) / 2, rel=1e-5)


def test_gradients_equal_darknet_deltas():
    """darknet: delta_x = scale*(tx - sigmoid(x)) (through the logistic), delta_w = scale*(tw - w),
    delta_obj = target - sigmoid, delta_class = onehot - sigmoid; the loss gradient is -delta / N."""
    outs = [o.requires_grad_(True) for o in _raw(seed=1, fill_obj=0.3)]
    loss = _loss(ignore=1.0)  # no ignored predictions
    total, _ = loss(outs, TARGET, IN)
    total.backward()
    n = 2
    g = outs[1].grad[POS]
    r = outs[1].detach()[POS]
    scale = 2 - (10 / 64) ** 2
    sig = torch.sigmoid(r)
    cell = torch.tensor([40 / 16 - 2, 20 / 16 - 1])
    want_xy = scale * (sig[:2] - cell) * sig[:2] * (1 - sig[:2]) / n
    want_wh = scale * (r[2:4] - math.log(10 / 12)) / n
    want_obj = (sig[4] - 1) / n
    want_cls = (sig[5:] - torch.tensor([0.0, 1.0])) / n
    assert torch.allclose(g[:2], want_xy, atol=1e-6)
    assert torch.allclose(g[2:4], want_wh, atol=1e-6)
    assert torch.allclose(g[4], want_obj, atol=1e-6)
    assert torch.allclose(g[5:], want_cls, atol=1e-6)
    # a negative: only objectness, gradient sigmoid / N
    neg = outs[0].grad[1, 0, 0, 0]
    assert torch.allclose(neg[4], torch.sigmoid(outs[0].detach()[1, 0, 0, 0, 4]) / n, atol=1e-7)
    assert torch.count_nonzero(neg[[0, 1, 2, 3, 5, 6]]) == 0


def test_batch_without_objects():
    outs = [o.requires_grad_(True) for o in _raw(seed=2, fill_obj=0.0)]
    total, parts = _loss()(outs, torch.zeros((0, 6)), IN)
    assert parts["box"].item() == 0 and parts["cls"].item() == 0
    n_preds = 2 * 3 * (4 + 16)
    assert total.item() == pytest.approx(n_preds * math.log(2) / 2, rel=1e-5)
    total.backward()
    assert all(o.grad is not None and torch.isfinite(o.grad).all() for o in outs)


def test_class_weights_scale_positives():
    outs = _raw(seed=4, fill_obj=0.0)
    _, plain = _loss()(outs, TARGET, IN)
    _, weighted = _loss(class_weights=(1.0, 3.0))(outs, TARGET, IN)
    assert weighted["box"].item() == pytest.approx(3 * plain["box"].item(), rel=1e-5)
    assert weighted["cls"].item() == pytest.approx(3 * plain["cls"].item(), rel=1e-5)
    with pytest.raises(ValueError, match="class_weights"):
        _loss(class_weights=(1.0,))


def test_bfloat16_outputs_are_lossed_in_float32():
    outs = _raw(seed=5, fill_obj=0.0)
    ref, _ = _loss(box_loss="ciou")(outs, TARGET, IN)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = _loss(box_loss="ciou")([o.to(torch.bfloat16) for o in outs], TARGET, IN)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=2e-2)


def test_truth_thresh_makes_close_predictions_objects():
    outs = _raw(seed=6, fill_obj=0.0)
    _, off = _loss(ignore=0.3, truth=1.0)(outs, TARGET, IN)
    _, on = _loss(ignore=0.3, truth=0.3)(outs, TARGET, IN)
    # predictions above the threshold now count as objects: BCE(0, 1) = ln 2 instead of ignored
    assert on["obj"].item() > off["obj"].item()


def test_bad_box_loss_name():
    with pytest.raises(ValueError, match="box_loss"):
        LossConfig(box_loss="l2")


def _new_coords_model(objectness_smooth: int = 0, iou_loss: str = "ciou"):
    import detkit

    cfg = ("[net]\nwidth=64\nheight=64\nchannels=3\n[convolutional]\nfilters=21\nsize=1\nactivation=logistic\n"
           f"[yolo]\nmask=0,1,2\nanchors=8,8, 16,16, 32,32\nclasses=2\nnum=3\nnew_coords=1\nscale_x_y=2.0\n"
           f"iou_normalizer=0.05\nobj_normalizer=0.7\ncls_normalizer=0.5\niou_loss={iou_loss}\n"
           f"objectness_smooth={objectness_smooth}\nignore_thresh=0.7\niou_thresh=0.2\n")
    return detkit.build_model(cfg)


def test_new_coords_gradients_are_darknets_deltas():
    """d loss / d p = -(darknet delta) / batch on the probabilities (yolo_layer.c forward_yolo_layer:
    obj delta obj_normalizer * (t - p), class delta (t - p) without cls_normalizer)."""
    model = _new_coords_model()
    loss_fn = YoloLoss.from_model(model)
    head = loss_fn.heads[0]
    assert (head.new_coords, head.iou_loss, head.iou_normalizer, head.obj_normalizer) == (True, "ciou", 0.05, 0.7)
    assert loss_fn.config.anchor_iou_thresh == 0.2  # the cfg's iou_thresh
    g = torch.Generator().manual_seed(0)
    p = (torch.rand(2, 3, 8, 8, 7, generator=g) * 0.8 + 0.1).requires_grad_(True)
    targets = torch.tensor([[0, 1, 0.30, 0.40, 0.20, 0.25], [1, 0, 0.70, 0.60, 0.40, 0.30]])
    total, parts = loss_fn([p], targets, (64, 64))
    total.backward()
    pd = p.detach()
    assigned = assign_targets(targets, loss_fn.geometry([p], (64, 64)), loss_fn.all_anchors, (64, 64), 0.2)[0]
    pos = set(zip(assigned.b.tolist(), assigned.a.tolist(), assigned.gy.tolist(), assigned.gx.tolist()))
    decoded = decode_head(p.detach(), head.anchors, (8.0, 8.0), 2.0, new_coords=True).reshape(2, 3, 8, 8, 7)
    from detkit.boxes import cxcywh_to_xyxy
    gt = cxcywh_to_xyxy(targets[:, 2:] * 64)
    for b in range(2):
        for a in range(3):
            for y in range(8):
                for x in range(8):
                    prob = float(pd[b, a, y, x, 4])
                    grad = float(p.grad[b, a, y, x, 4])
                    if (b, a, y, x) in pos:
                        want = -0.7 * (1 - prob) / 2
                        t_cls = [0.0, 0.0]
                        t_cls[int(targets[[i for i in range(2) if targets[i, 0] == b][0], 1])] = 1.0
                        for c in range(2):
                            assert float(p.grad[b, a, y, x, 5 + c]) == pytest.approx(
                                -(t_cls[c] - float(pd[b, a, y, x, 5 + c])) / 2, abs=1e-6)
                    else:
                        box = cxcywh_to_xyxy(decoded[b, a, y, x, :4].unsqueeze(0))
                        iou = float(torchvision.ops.box_iou(box, gt[targets[:, 0] == b]).max())
                        want = 0.0 if iou > 0.7 else -0.7 * (0 - prob) / 2
                        assert float(p.grad[b, a, y, x, 5:].abs().max()) == 0.0
                    assert grad == pytest.approx(want, abs=1e-6)
    assert parts["box"] > 0 and parts["cls"] > 0


def test_new_coords_box_term_is_iou_normalizer_times_ciou():
    model = _new_coords_model()
    loss_fn = YoloLoss.from_model(model)
    p = torch.full((1, 3, 8, 8, 7), 0.5, requires_grad=True)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.25, 0.25]])
    _, parts = loss_fn([p], targets, (64, 64))
    assigned = assign_targets(targets, loss_fn.geometry([p], (64, 64)), loss_fn.all_anchors, (64, 64), 0.2)[0]
    decoded = decode_head(p.detach(), loss_fn.heads[0].anchors, (8.0, 8.0), 2.0, new_coords=True).reshape(1, 3, 8, 8, 7)
    from detkit.boxes import cxcywh_to_xyxy
    want = 0.0
    for a, y, x in zip(assigned.a.tolist(), assigned.gy.tolist(), assigned.gx.tolist()):
        pred = cxcywh_to_xyxy(decoded[0, a, y, x, :4].unsqueeze(0))
        want += 0.05 * float(torchvision.ops.complete_box_iou_loss(pred, cxcywh_to_xyxy(targets[:, 2:] * 64)))
    assert float(parts["box"]) == pytest.approx(want, rel=1e-5)


def test_objectness_smooth_targets_the_iou():
    model = _new_coords_model(objectness_smooth=1)
    loss_fn = YoloLoss.from_model(model)
    assert loss_fn.heads[0].objectness_smooth


def test_region_heads_refuse_training():
    import detkit
    from detkit.errors import TrainError

    model = detkit.build_model("yolov2-tiny")
    with pytest.raises(TrainError, match=r"\[region\] head .* not supported"):
        YoloLoss.from_model(model)
