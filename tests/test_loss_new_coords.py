"""The ``[yolo] new_coords=1`` loss against a plain-Python transcription of darknet's C code.

The reference below is written loop by loop from AlexeyAB darknet (``../shared/reference/``):
``src/box.c`` (``box_iou``, ``box_giou``, ``box_diou``, ``box_ciou``, ``dx_box_iou``) and
``src/yolo_layer.c`` (``get_yolo_box``, ``delta_yolo_box``, ``delta_yolo_class``, ``compare_yolo_class``,
``averages_yolo_deltas`` and the per-image pass of ``forward_yolo_layer``), with ``objectness_smooth=0``
(detkit departs from darknet only there, see :mod:`detkit.yolo.loss`). darknet's ``delta`` is minus the
gradient of the loss on the layer's input per image, so detkit's ``d loss / d p`` must equal
``-delta / batch`` on every entry, and on the conv's pre-activation ``-delta * p * (1 - p) / batch``
(``gradient_array`` for LOGISTIC in darknet's conv backward).
"""
from __future__ import annotations

import math

import pytest
import torch

from detkit.yolo.loss import YoloLoss, darknet_dx_box_iou, iou_family

IN = 64  # network input (square)
ANCHORS = [(8.0, 8.0), (16.0, 16.0), (32.0, 32.0), (64.0, 48.0)]  # anchor 3 is in no head's mask
MASK = [0, 1, 2]
CLASSES = 2


# ----------------------------------------------------------------------------- darknet, transcribed
def overlap(x1, w1, x2, w2):
    left = max(x1 - w1 / 2, x2 - w2 / 2)
    right = min(x1 + w1 / 2, x2 + w2 / 2)
    return right - left


def box_iou(a, b):
    w, h = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
    inter = 0.0 if (w < 0 or h < 0) else w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    if inter == 0 or union == 0:
        return 0.0
    return inter / union


def box_c(a, b):  # top, bot, left, right
    return (min(a[1] - a[3] / 2, b[1] - b[3] / 2), max(a[1] + a[3] / 2, b[1] + b[3] / 2),
            min(a[0] - a[2] / 2, b[0] - b[2] / 2), max(a[0] + a[2] / 2, b[0] + b[2] / 2))


def box_family(a, b, kind):
    iou = box_iou(a, b)
    if kind == "iou":
        return iou
    top, bot, left, right = box_c(a, b)
    w, h = right - left, bot - top
    if kind == "giou":
        c = w * h
        if c == 0:
            return iou
        w_i, h_i = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
        union = a[2] * a[3] + b[2] * b[3] - (0.0 if (w_i < 0 or h_i < 0) else w_i * h_i)
        return iou - (c - union) / c
    c = w * w + h * h
    if c == 0:
        return iou
    d = (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2
    if kind == "diou":
        return iou - (d / c) ** 0.6
    ar = math.atan(b[2] / b[3]) - math.atan(a[2] / a[3])
    ar_loss = 4 / (math.pi * math.pi) * ar * ar
    alpha = ar_loss / (1 - iou + ar_loss + 0.000001)
    return iou - (d / c + alpha * ar_loss)


def dx_box_iou(pred, truth, kind):
    """box.c dx_box_iou: returns (dt, db, dl, dr), which yolo_layer.c uses as (dx, dy, dw, dh)."""
    p_top, p_bot = pred[1] - pred[3] / 2, pred[1] + pred[3] / 2
    p_left, p_right = pred[0] - pred[2] / 2, pred[0] + pred[2] / 2
    pred_t, pred_b = min(p_top, p_bot), max(p_top, p_bot)
    pred_l, pred_r = min(p_left, p_right), max(p_left, p_right)
    t_top, t_bot = truth[1] - truth[3] / 2, truth[1] + truth[3] / 2
    t_left, t_right = truth[0] - truth[2] / 2, truth[0] + truth[2] / 2
    X = (pred_b - pred_t) * (pred_r - pred_l)
    Xhat = (t_bot - t_top) * (t_right - t_left)
    Ih = min(pred_b, t_bot) - max(pred_t, t_top)
    Iw = min(pred_r, t_right) - max(pred_l, t_left)
    I = Iw * Ih
    U = X + Xhat - I
    S = (pred[0] - truth[0]) ** 2 + (pred[1] - truth[1]) ** 2
    giou_Cw = max(pred_r, t_right) - min(pred_l, t_left)
    giou_Ch = max(pred_b, t_bot) - min(pred_t, t_top)
    giou_C = giou_Cw * giou_Ch
    dX_wrt_t, dX_wrt_b = -1 * (pred_r - pred_l), pred_r - pred_l
    dX_wrt_l, dX_wrt_r = -1 * (pred_b - pred_t), pred_b - pred_t
    dI_wrt_t = -1 * Iw if pred_t > t_top else 0
    dI_wrt_b = Iw if pred_b < t_bot else 0
    dI_wrt_l = -1 * Ih if pred_l > t_left else 0
    dI_wrt_r = Ih if pred_r < t_right else 0
    dU_wrt_t, dU_wrt_b = dX_wrt_t - dI_wrt_t, dX_wrt_b - dI_wrt_b
    dU_wrt_l, dU_wrt_r = dX_wrt_l - dI_wrt_l, dX_wrt_r - dI_wrt_r
    dC_wrt_t = -1 * giou_Cw if pred_t < t_top else 0
    dC_wrt_b = giou_Cw if pred_b > t_bot else 0
    dC_wrt_l = -1 * giou_Ch if pred_l < t_left else 0
    dC_wrt_r = giou_Ch if pred_r > t_right else 0
    p_dt = p_db = p_dl = p_dr = 0.0
    if U > 0:
        p_dt = ((U * dI_wrt_t) - (I * dU_wrt_t)) / (U * U)
        p_db = ((U * dI_wrt_b) - (I * dU_wrt_b)) / (U * U)
        p_dl = ((U * dI_wrt_l) - (I * dU_wrt_l)) / (U * U)
        p_dr = ((U * dI_wrt_r) - (I * dU_wrt_r)) / (U * U)
    p_dt = p_dt if p_top < p_bot else p_db
    p_db = p_db if p_top < p_bot else p_dt
    p_dl = p_dl if p_left < p_right else p_dr
    p_dr = p_dr if p_left < p_right else p_dl
    if kind == "giou":
        if giou_C > 0:
            p_dt += ((giou_C * dU_wrt_t) - (U * dC_wrt_t)) / (giou_C * giou_C)
            p_db += ((giou_C * dU_wrt_b) - (U * dC_wrt_b)) / (giou_C * giou_C)
            p_dl += ((giou_C * dU_wrt_l) - (U * dC_wrt_l)) / (giou_C * giou_C)
            p_dr += ((giou_C * dU_wrt_r) - (U * dC_wrt_r)) / (giou_C * giou_C)
        if Iw <= 0 or Ih <= 0:
            p_dt = ((giou_C * dU_wrt_t) - (U * dC_wrt_t)) / (giou_C * giou_C)
            p_db = ((giou_C * dU_wrt_b) - (U * dC_wrt_b)) / (giou_C * giou_C)
            p_dl = ((giou_C * dU_wrt_l) - (U * dC_wrt_l)) / (giou_C * giou_C)
            p_dr = ((giou_C * dU_wrt_r) - (U * dC_wrt_r)) / (giou_C * giou_C)
    Ct = min(pred[1] - pred[3] / 2, t_top)
    Cb = max(pred[1] + pred[3] / 2, t_bot)
    Cl = min(pred[0] - pred[2] / 2, t_left)
    Cr = max(pred[0] + pred[2] / 2, t_right)
    Cw, Ch = Cr - Cl, Cb - Ct
    C = Cw * Cw + Ch * Ch
    dCt_dx, dCt_dy, dCt_dw, dCt_dh = 0, (1 if pred_t < t_top else 0), 0, (-0.5 if pred_t < t_top else 0)
    dCb_dx, dCb_dy, dCb_dw, dCb_dh = 0, (1 if pred_b > t_bot else 0), 0, (0.5 if pred_b > t_bot else 0)
    dCl_dx, dCl_dy, dCl_dw, dCl_dh = (1 if pred_l < t_left else 0), 0, (-0.5 if pred_l < t_left else 0), 0
    dCr_dx, dCr_dy, dCr_dw, dCr_dh = (1 if pred_r > t_right else 0), 0, (0.5 if pred_r > t_right else 0), 0
    dCw_dx, dCw_dy, dCw_dw, dCw_dh = dCr_dx - dCl_dx, dCr_dy - dCl_dy, dCr_dw - dCl_dw, dCr_dh - dCl_dh
    dCh_dx, dCh_dy, dCh_dw, dCh_dh = dCb_dx - dCt_dx, dCb_dy - dCt_dy, dCb_dw - dCt_dw, dCb_dh - dCt_dh
    p_dx, p_dy = p_dl + p_dr, p_dt + p_db
    p_dw, p_dh = p_dr - p_dl, p_db - p_dt
    if kind == "diou":
        if C > 0:
            p_dx += (2 * (truth[0] - pred[0]) * C - (2 * Cw * dCw_dx + 2 * Ch * dCh_dx) * S) / (C * C)
            p_dy += (2 * (truth[1] - pred[1]) * C - (2 * Cw * dCw_dy + 2 * Ch * dCh_dy) * S) / (C * C)
            p_dw += (2 * Cw * dCw_dw + 2 * Ch * dCh_dw) * S / (C * C)
            p_dh += (2 * Cw * dCw_dh + 2 * Ch * dCh_dh) * S / (C * C)
        if Iw <= 0 or Ih <= 0:
            p_dx = (2 * (truth[0] - pred[0]) * C - (2 * Cw * dCw_dx + 2 * Ch * dCh_dx) * S) / (C * C)
            p_dy = (2 * (truth[1] - pred[1]) * C - (2 * Cw * dCw_dy + 2 * Ch * dCh_dy) * S) / (C * C)
            p_dw = (2 * Cw * dCw_dw + 2 * Ch * dCh_dw) * S / (C * C)
            p_dh = (2 * Cw * dCw_dh + 2 * Ch * dCh_dh) * S / (C * C)
    if kind == "ciou":
        ar_gt, ar_pred = truth[2] / truth[3], pred[2] / pred[3]
        ar_loss = 4 / (math.pi * math.pi) * (math.atan(ar_gt) - math.atan(ar_pred)) ** 2
        alpha = ar_loss / (1 - I / U + ar_loss + 0.000001)
        ar_dw = 8 / (math.pi * math.pi) * (math.atan(ar_gt) - math.atan(ar_pred)) * pred[3]
        ar_dh = -8 / (math.pi * math.pi) * (math.atan(ar_gt) - math.atan(ar_pred)) * pred[2]
        if C > 0:
            p_dx += (2 * (truth[0] - pred[0]) * C - (2 * Cw * dCw_dx + 2 * Ch * dCh_dx) * S) / (C * C)
            p_dy += (2 * (truth[1] - pred[1]) * C - (2 * Cw * dCw_dy + 2 * Ch * dCh_dy) * S) / (C * C)
            p_dw += (2 * Cw * dCw_dw + 2 * Ch * dCh_dw) * S / (C * C) + alpha * ar_dw
            p_dh += (2 * Cw * dCw_dh + 2 * Ch * dCh_dh) * S / (C * C) + alpha * ar_dh
        if Iw <= 0 or Ih <= 0:
            p_dx = (2 * (truth[0] - pred[0]) * C - (2 * Cw * dCw_dx + 2 * Ch * dCh_dx) * S) / (C * C)
            p_dy = (2 * (truth[1] - pred[1]) * C - (2 * Cw * dCw_dy + 2 * Ch * dCh_dy) * S) / (C * C)
            p_dw = (2 * Cw * dCw_dw + 2 * Ch * dCh_dw) * S / (C * C) + alpha * ar_dw
            p_dh = (2 * Cw * dCw_dh + 2 * Ch * dCh_dh) * S / (C * C) + alpha * ar_dh
    return p_dx, p_dy, p_dw, p_dh


def get_yolo_box(x, n, i, j, lw, lh):
    """new_coords branch; x = the 4 box outputs of the cell after forward_yolo_layer's scal_add."""
    aw, ah = ANCHORS[n]
    return ((i + x[0]) / lw, (j + x[1]) / lh, x[2] * x[2] * 4 * aw / IN, x[3] * x[3] * 4 * ah / IN)


def delta_yolo_box(truth, x, n, i, j, lw, lh, delta, scale, iou_normalizer, iou_loss):
    """Adds into delta[0:4] (accumulate=1, max_delta unset); returns the loss whose (negative) gradient
    darknet's delta is meant to be: iou_normalizer * (1 - IoU-family), or 0.5 * the weighted squared error."""
    pred = get_yolo_box(x, n, i, j, lw, lh)
    value = box_family(pred, truth, "iou" if iou_loss == "mse" else iou_loss)
    pred = (pred[0], pred[1], pred[2] or 1.0, pred[3] or 1.0)
    if iou_loss == "mse":
        tx, ty = truth[0] * lw - i, truth[1] * lh - j
        tw = math.sqrt(truth[2] * IN / (4 * ANCHORS[n][0]))
        th = math.sqrt(truth[3] * IN / (4 * ANCHORS[n][1]))
        for k, t in enumerate((tx, ty, tw, th)):
            delta[k] += scale * (t - x[k]) * iou_normalizer
        return 0.5 * scale * iou_normalizer * sum((t - x[k]) ** 2 for k, t in enumerate((tx, ty, tw, th)))
    d = dx_box_iou(pred, truth, iou_loss)  # new_coords: no exp() factor on dw, dh
    for k in range(4):
        delta[k] += d[k] * iou_normalizer
    return iou_normalizer * (1 - value)


def darknet_deltas(p, truths, scale_x_y, iou_normalizer, obj_normalizer, ignore_thresh, iou_thresh, iou_loss):
    """forward_yolo_layer's per-image pass for one new_coords head (objectness_smooth=0, truth_thresh=1).

    p: nested lists [b][a][j][i][5 + C] of the head's input (the conv's logistic outputs).
    truths: per image, list of (x, y, w, h, class) relative to the input.
    Returns (delta with the same nesting, the summed box loss of the positives).
    """
    nb, na, lh, lw = len(p), len(p[0]), len(p[0][0]), len(p[0][0][0])
    out = [[[[list(cell) for cell in row] for row in a] for a in b] for b in p]
    for b in range(nb):  # scal_add on x, y (new_coords: no logistic here)
        for a in range(na):
            for j in range(lh):
                for i in range(lw):
                    for k in (0, 1):
                        out[b][a][j][i][k] = out[b][a][j][i][k] * scale_x_y - 0.5 * (scale_x_y - 1)
    delta = [[[[[0.0] * (5 + CLASSES) for _ in range(lw)] for _ in range(lh)] for _ in range(na)] for _ in range(nb)]
    box_values = 0.0
    for b in range(nb):
        for j in range(lh):
            for i in range(lw):
                for n in range(na):
                    o = out[b][n][j][i]
                    pred = get_yolo_box(o, MASK[n], i, j, lw, lh)
                    best_match_iou = 0.0
                    for t in truths[b]:
                        class_id_match = any(o[5 + c] > 0.25 for c in range(CLASSES))  # compare_yolo_class
                        iou = box_iou(pred, t[:4])
                        if iou > best_match_iou and class_id_match:
                            best_match_iou = iou
                    delta[b][n][j][i][4] = obj_normalizer * (0 - o[4])
                    if best_match_iou > ignore_thresh:
                        delta[b][n][j][i][4] = 0.0

        def positive(t, n_anchor, mask_n, i, j):
            nonlocal box_values
            o = out[b][mask_n][j][i]
            d = delta[b][mask_n][j][i]
            box_values += delta_yolo_box(t[:4], o, n_anchor, i, j, lw, lh, d, 2 - t[2] * t[3], iou_normalizer,
                                         iou_loss)
            d[4] = obj_normalizer * (1 - o[4])
            class_id = t[4]
            if d[5 + class_id]:  # delta_yolo_class: a second truth of the same cell
                d[5 + class_id] = 1 - o[5 + class_id]
            else:
                for c in range(CLASSES):
                    d[5 + c] = (1.0 if c == class_id else 0.0) - o[5 + c]

        for t in truths[b]:
            i, j = int(t[0] * lw), int(t[1] * lh)
            shift = (0.0, 0.0, t[2], t[3])
            best_iou, best_n = 0.0, 0
            for n in range(len(ANCHORS)):
                iou = box_iou((0.0, 0.0, ANCHORS[n][0] / IN, ANCHORS[n][1] / IN), shift)
                if iou > best_iou:
                    best_iou, best_n = iou, n
            if best_n in MASK:
                positive(t, best_n, MASK.index(best_n), i, j)
            for n in range(len(ANCHORS)):
                if n in MASK and n != best_n and iou_thresh < 1.0:
                    iou = box_iou((0.0, 0.0, ANCHORS[n][0] / IN, ANCHORS[n][1] / IN), shift)
                    if iou > iou_thresh:
                        positive(t, n, MASK.index(n), i, j)
        if iou_thresh < 1.0:  # averages_yolo_deltas
            for j in range(lh):
                for i in range(lw):
                    for n in range(na):
                        d = delta[b][n][j][i]
                        if d[4] != 0:
                            k = sum(1 for c in range(CLASSES) if d[5 + c] > 0)
                            if k > 0:
                                for q in range(4):
                                    d[q] /= k
    return delta, box_values


# ------------------------------------------------------------------------------------------ tests
def _model(iou_loss: str, iou_thresh: float):
    import detkit

    anchors = ", ".join(f"{int(w)},{int(h)}" for w, h in ANCHORS)
    cfg = (f"[net]\nwidth={IN}\nheight={IN}\nchannels=3\n[maxpool]\nsize=8\nstride=8\n"  # an 8 x 8 grid
           f"[convolutional]\nfilters={len(MASK) * (5 + CLASSES)}\nsize=1\nactivation=logistic\n"
           f"[yolo]\nmask={','.join(map(str, MASK))}\nanchors={anchors}\nclasses={CLASSES}\nnum={len(ANCHORS)}\n"
           f"new_coords=1\nscale_x_y=2.0\niou_normalizer=0.07\nobj_normalizer=0.7\ncls_normalizer=0.5\n"
           f"iou_loss={iou_loss}\nignore_thresh=0.6\ntruth_thresh=1\niou_thresh={iou_thresh}\n")
    return detkit.build_model(cfg)


# (batch index, class, cx, cy, w, h) relative to the input; every (cell, anchor) is hit at most once
TARGETS = torch.tensor([[0, 1, 0.30, 0.40, 0.22, 0.25], [0, 0, 0.80, 0.20, 0.55, 0.45],
                        [1, 0, 0.70, 0.60, 0.40, 0.30], [1, 1, 0.15, 0.85, 0.10, 0.12],
                        [1, 1, 0.45, 0.30, 0.95, 0.70]])


def _truths():
    per = [[], []]
    for b, c, x, y, w, h in TARGETS.tolist():
        per[int(b)].append((x, y, w, h, int(c)))
    return per


@pytest.mark.parametrize("iou_loss, iou_thresh", [("ciou", 0.2), ("giou", 0.2), ("diou", 1.0), ("iou", 0.2),
                                                  ("mse", 0.2)])
def test_gradient_is_minus_darknets_delta(iou_loss, iou_thresh):
    """Every entry of d loss / d p equals -delta / batch of the transcription; the box term's value is
    iou_normalizer * (1 - darknet's IoU-family value), or the mse, summed over the positives, per image."""
    model = _model(iou_loss, iou_thresh)
    loss_fn = YoloLoss.from_model(model)
    g = torch.Generator().manual_seed(1)
    p = (torch.rand(2, len(MASK), 8, 8, 5 + CLASSES, generator=g) * 0.9 + 0.05)
    # the cell left of target 0's: its box is target 0 (x' = 1.4, y' = 0.2, w = 4 * 0.22 * 16 px), a class
    # prob > 0.25: darknet ignores its objectness (best_match_iou > ignore_thresh)
    p[0, 1, 3, 1, :6] = torch.tensor([0.95, 0.35, math.sqrt(0.22), 0.5, 0.3, 0.8])
    p = p.requires_grad_(True)
    total, parts = loss_fn([p], TARGETS, (IN, IN))
    total.backward()
    delta, box_values = darknet_deltas(p.detach().double().tolist(), _truths(), 2.0, 0.07, 0.7, 0.6, iou_thresh,
                                       iou_loss)
    want = -torch.tensor(delta, dtype=torch.float64) / 2
    nonzero_box = (want[..., :4] != 0).any(dim=-1).sum().item()
    assert nonzero_box >= 4  # the positives really are there (target 4 has its best anchor in no mask)
    assert (want[..., 4] == 0).any()  # and at least one prediction is ignored
    torch.testing.assert_close(p.grad.double(), want, rtol=2e-4, atol=2e-6)
    assert float(parts["box"]) == pytest.approx(box_values / 2, rel=1e-4)


def test_gradient_reaches_the_conv_through_its_logistic():
    """Through the model: the conv's pre-activation gets -delta * p * (1 - p) / batch (darknet's
    backward of a logistic conv), so the head is trained through the activation the cfg declares."""
    model = _model("ciou", 0.2).train()
    loss_fn = YoloLoss.from_model(model)
    conv_layer = model.layers[1]
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["z"] = output

    conv_layer.conv.register_forward_hook(keep)
    x = torch.rand(2, 3, IN, IN, generator=torch.Generator().manual_seed(2))
    (out,) = model(x)
    total, _ = loss_fn([out], TARGETS, (IN, IN))
    total.backward()
    z = captured["z"]  # (N, A * (5 + C), H, W) pre-activation
    prob = torch.sigmoid(z.detach())
    p_layout = prob.view(2, len(MASK), 5 + CLASSES, 8, 8).permute(0, 1, 3, 4, 2)
    torch.testing.assert_close(out.detach(), p_layout)  # the head's input is the logistic output
    delta, _ = darknet_deltas(p_layout.double().tolist(), _truths(), 2.0, 0.07, 0.7, 0.6, 0.2, "ciou")
    d = torch.tensor(delta, dtype=torch.float64).permute(0, 1, 4, 2, 3).reshape(2, -1, 8, 8)
    want = -d * prob.double() * (1 - prob.double()) / 2
    torch.testing.assert_close(z.grad.double(), want, rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_box_helpers_match_box_c(kind):
    """darknet_dx_box_iou and iou_family row by row against the scalar transcription, including boxes
    that do not overlap, that contain one another and that share an edge."""
    g = torch.Generator().manual_seed(3)
    pred = torch.rand(200, 4, generator=g, dtype=torch.float64)
    truth = torch.rand(200, 4, generator=g, dtype=torch.float64)
    pred[:, 2:] = pred[:, 2:] * 0.5 + 0.02
    truth[:, 2:] = truth[:, 2:] * 0.5 + 0.02
    pred[0] = torch.tensor([0.5, 0.5, 0.1, 0.1])  # inside truth 0
    truth[0] = torch.tensor([0.5, 0.5, 0.4, 0.3])
    pred[1] = torch.tensor([0.2, 0.2, 0.1, 0.1])  # far apart
    truth[1] = torch.tensor([0.8, 0.8, 0.1, 0.2])
    got_d = darknet_dx_box_iou(pred, truth, kind)
    got_v = iou_family(pred, truth, kind)
    apart = 0
    for r in range(200):
        pr, tr = pred[r].tolist(), truth[r].tolist()
        assert got_d[r].tolist() == pytest.approx(list(dx_box_iou(pr, tr, kind)), rel=1e-9, abs=1e-12)
        assert float(got_v[r]) == pytest.approx(box_family(pr, tr, kind), rel=1e-9, abs=1e-12)
        apart += box_iou(pr, tr) == 0
    assert 10 < apart < 190  # both regimes are covered


# --------------------------------------------------- classic [yolo] heads with iou_loss= (yolov4, yolov4-tiny)
def _classic_model(iou_loss: str, max_delta: float | None):
    import detkit

    anchors = ", ".join(f"{int(w)},{int(h)}" for w, h in ANCHORS)
    clip = f"max_delta={max_delta}\n" if max_delta is not None else ""
    cfg = (f"[net]\nwidth={IN}\nheight={IN}\nchannels=3\n[maxpool]\nsize=8\nstride=8\n"
           f"[convolutional]\nfilters={len(MASK) * (5 + CLASSES)}\nsize=1\nactivation=linear\n"
           f"[yolo]\nmask={','.join(map(str, MASK))}\nanchors={anchors}\nclasses={CLASSES}\nnum={len(ANCHORS)}\n"
           f"scale_x_y=1.05\niou_normalizer=0.07\niou_loss={iou_loss}\nignore_thresh=0.7\ntruth_thresh=1\n{clip}")
    return detkit.build_model(cfg)


def classic_box_deltas(raw, truths, scale_x_y, iou_normalizer, iou_loss, max_delta):
    """delta_yolo_box's iou branch for a classic head (new_coords=0), best anchor only: the box entries of
    darknet's delta on the raw outputs (tx, ty, tw, th), per [b][a][j][i]; and the summed box values."""
    nb, na, lh, lw = len(raw), len(raw[0]), len(raw[0][0]), len(raw[0][0][0])
    delta = [[[[[0.0] * 4 for _ in range(lw)] for _ in range(lh)] for _ in range(na)] for _ in range(nb)]
    values = 0.0
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    for b in range(nb):
        for tx, ty, tw, th, _cls in truths[b]:
            i, j = int(tx * lw), int(ty * lh)
            best_iou, best_n = 0.0, 0
            for n in range(len(ANCHORS)):
                iou = box_iou((0.0, 0.0, ANCHORS[n][0] / IN, ANCHORS[n][1] / IN), (0.0, 0.0, tw, th))
                if iou > best_iou:
                    best_iou, best_n = iou, n
            if best_n not in MASK:
                continue
            x = raw[b][MASK.index(best_n)][j][i]
            xs = [sig(x[k]) * scale_x_y - 0.5 * (scale_x_y - 1) for k in (0, 1)]  # forward: logistic + scal_add
            pred = ((i + xs[0]) / lw, (j + xs[1]) / lh, math.exp(x[2]) * ANCHORS[best_n][0] / IN,
                    math.exp(x[3]) * ANCHORS[best_n][1] / IN)
            values += iou_normalizer * (1 - box_family(pred, (tx, ty, tw, th), iou_loss))
            d = list(dx_box_iou(pred, (tx, ty, tw, th), iou_loss))
            d[2] *= math.exp(x[2])
            d[3] *= math.exp(x[3])
            out = delta[b][MASK.index(best_n)][j][i]
            for k in range(4):
                v = d[k] * iou_normalizer
                out[k] += max(-max_delta, min(max_delta, v))
    return delta, values


@pytest.mark.parametrize("iou_loss, max_delta", [("ciou", None), ("giou", None), ("diou", 0.004), ("iou", None)])
def test_classic_head_iou_loss_gradient_is_minus_darknets_delta(iou_loss, max_delta):
    """box_loss='auto' on a classic head with iou_loss=: d loss / d (tx, ty, tw, th) at the positives equals
    -delta / batch of darknet's iou branch (exp() on the sizes, no logistic derivative on x, y, max_delta clip);
    box_loss='darknet' still trains the same head with the squared error (a different gradient)."""
    model = _classic_model(iou_loss, max_delta)
    g = torch.Generator().manual_seed(4)
    raw = (torch.randn(2, len(MASK), 8, 8, 5 + CLASSES, generator=g) * 0.7).requires_grad_(True)
    targets = TARGETS[:4]  # target 4's best anchor is in no mask
    total, parts = YoloLoss.from_model(model)([raw], targets, (IN, IN))
    total.backward()
    truths = [[], []]
    for b, c, x, y, w, h in targets.tolist():
        truths[int(b)].append((x, y, w, h, int(c)))
    delta, values = classic_box_deltas(raw.detach().double().tolist(), truths, 1.05, 0.07, iou_loss,
                                       max_delta if max_delta is not None else math.inf)
    want = -torch.tensor(delta, dtype=torch.float64) / 2
    assert (want != 0).any(dim=-1).sum().item() == 4
    if max_delta is not None:
        assert (want.abs() == max_delta / 2).any()  # the clip is exercised
    torch.testing.assert_close(raw.grad[..., :4].double(), want, rtol=2e-4, atol=2e-6)
    assert float(parts["box"]) == pytest.approx(values / 2, rel=1e-4)
    from detkit.yolo.loss import LossConfig
    raw.grad = None
    YoloLoss.from_model(model, LossConfig(box_loss="darknet"))([raw], targets, (IN, IN))[0].backward()
    assert not torch.allclose(raw.grad[..., :4].double(), want, atol=1e-4)
