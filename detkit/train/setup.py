"""Model and optimiser helpers of the training loop: seeding, weight-decay parameter groups, frozen
layers, head bias priors, EMA defaults for a run's length and class loss weights.
"""
from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)



def param_groups(model: nn.Module, decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only; none on batch-norm parameters and biases."""
    with_decay, without = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "weight" and not isinstance(module, nn.modules.batchnorm._BatchNorm) and p.ndim > 1:
                with_decay.append(p)
            else:
                without.append(p)
    return [{"params": with_decay, "weight_decay": decay}, {"params": without, "weight_decay": 0.0}]


def freeze_layers(model: nn.Module, n: int) -> int:
    """``requires_grad=False`` for the parameters of the first ``n`` cfg layers; returns how many tensors."""
    count = 0
    for layer in list(model.layers)[:n]:
        for p in layer.parameters():
            p.requires_grad_(False)
            count += 1
    return count


def set_train_mode(model: nn.Module, frozen: int) -> None:
    """Train mode, but frozen layers keep eval mode (their batch-norm statistics stay fixed)."""
    model.train()
    for layer in list(model.layers)[:frozen]:
        layer.eval()


@torch.no_grad()
def init_head_priors(model: nn.Module, layer_indices: set[int] | None = None, prior: float = 0.01) -> None:
    """Objectness bias of freshly initialised heads: ``log(p / (1 - p))`` (focal-loss prior) so that
    the first steps are not dominated by thousands of confident background predictions; class biases
    ``log(1 / C)``-ish. ``layer_indices``: conv layer indices to touch (None = every head conv)."""
    layers = list(model.layers)
    for i, layer in enumerate(layers):
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if nxt is None or nxt not in model.yolo_layers:
            continue
        if layer_indices is not None and i not in layer_indices:
            continue
        conv = getattr(layer, "conv", None)
        if conv is None or conv.bias is None:
            continue
        a = nxt.num_anchors
        bias = conv.bias.view(a, -1)  # (A, 5 + C)
        bias[:, 4] = math.log(prior / (1 - prior))
        bias[:, 5:] = math.log(0.6 / max(nxt.num_classes - 0.99, 1.0))



def ema_defaults(total_steps: int) -> tuple[float, float]:
    """EMA decay and ramp for a run of ``total_steps``: the average spans ~5% of the run
    (``decay = 1 - 1 / (0.05 * total)``, clamped to [0.9, 0.9999]; ramp ``tau`` = that span, at most
    2000). The usual 0.9999 would average a short fine-tune's whole history, initial weights included."""
    span = max(10.0, 0.05 * total_steps)
    return min(0.9999, max(0.9, 1.0 - 1.0 / span)), min(2000.0, span)


def class_weight_tuple(balance_objects: tuple[int, ...]) -> tuple[float, ...]:
    """Loss weights per class: sqrt of inverse object frequency, normalised to mean 1 over present classes."""
    counts = np.asarray(balance_objects, dtype=np.float64)
    present = counts > 0
    w = np.ones_like(counts)
    if present.any():
        w[present] = np.sqrt(counts[present].sum() / (present.sum() * counts[present]))
        w[present] /= w[present].mean()
    return tuple(float(v) for v in w)
