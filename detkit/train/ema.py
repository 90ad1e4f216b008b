"""Exponential moving average of model weights, used for validation and saved in checkpoints.

``ema = d * ema + (1 - d) * model`` after every optimizer step, with a ramp
``d = decay * (1 - exp(-updates / tau))`` so that early on (when the model changes fast) the average
follows the model closely. Floating-point buffers (batch-norm statistics) are averaged too; integer
buffers (``num_batches_tracked``) are copied.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """EMA copy of a model (kept in eval mode, no gradients).

    Args:
        model: the (unwrapped) model to track.
        decay: asymptotic decay.
        tau: ramp length in updates.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.tau = float(tau)
        self.updates = 0

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the model's current weights into the average (call after each optimizer step)."""
        self.updates += 1
        d = self.current_decay()
        model_state = model.state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = model_state[name].detach()
            if ema_value.dtype.is_floating_point:
                ema_value.mul_(d).add_(value.to(ema_value.dtype), alpha=1.0 - d)
            else:
                ema_value.copy_(value)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay, "tau": self.tau}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state.get("decay", self.decay))
        self.tau = float(state.get("tau", self.tau))
