"""Learning-rate schedule: darknet burn-in, then ``steps``/``scales`` or cosine decay.

Counted in optimizer steps (one step = ``batch`` images, as darknet's "iterations"), from step 0:

* burn-in (darknet ``get_current_rate``): ``lr = base * (step / burn_in) ** power`` while
  ``step < burn_in`` (power 4 by default) — the very first step therefore runs at lr 0;
* ``policy='steps'``: after burn-in, ``lr = base * prod(scales[i] for steps[i] <= step)``;
* ``policy='cosine'``: after burn-in, ``lr`` follows half a cosine from ``base`` down to
  ``base * final_ratio`` at ``total_steps``;
* ``policy='constant'``: ``base`` after burn-in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

Policy = Literal["steps", "cosine", "constant"]
POLICIES: tuple[str, ...] = ("steps", "cosine", "constant")


@dataclass(frozen=True)
class ScheduleConfig:
    """Schedule parameters, all step counts in optimizer steps.

    Attributes:
        base_lr: learning rate after burn-in (before decay).
        burn_in: warm-up length; 0 disables it.
        power: burn-in exponent (darknet's ``power``, default 4).
        policy: ``steps``, ``cosine`` or ``constant``.
        steps, scales: step boundaries and multipliers (``policy='steps'``).
        total_steps: run length (``policy='cosine'``).
        final_ratio: cosine end value relative to ``base_lr``.
    """

    base_lr: float
    burn_in: int = 0
    power: float = 4.0
    policy: Policy = "steps"
    steps: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    total_steps: int = 1
    final_ratio: float = 0.01

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy={self.policy!r}: expected one of {', '.join(POLICIES)}")
        if len(self.steps) != len(self.scales):
            raise ValueError(f"steps has {len(self.steps)} values but scales has {len(self.scales)}")


def learning_rate(cfg: ScheduleConfig, step: int) -> float:
    """Learning rate at optimizer step ``step`` (0-based)."""
    if cfg.burn_in > 0 and step < cfg.burn_in:
        return cfg.base_lr * (step / cfg.burn_in) ** cfg.power
    if cfg.policy == "steps":
        lr = cfg.base_lr
        for boundary, scale in zip(cfg.steps, cfg.scales):
            if step >= boundary:
                lr *= scale
        return lr
    if cfg.policy == "cosine":
        span = max(1, cfg.total_steps - cfg.burn_in)
        t = min(1.0, max(0.0, (step - cfg.burn_in) / span))
        low = cfg.base_lr * cfg.final_ratio
        return low + (cfg.base_lr - low) * 0.5 * (1.0 + math.cos(math.pi * t))
    return cfg.base_lr


class LRScheduler:
    """Stateful schedule driving an optimizer. Call :meth:`apply` before each optimizer step and
    :meth:`advance` after it; :meth:`state_dict` / :meth:`load_state_dict` hold the step count."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: ScheduleConfig):
        self.optimizer = optimizer
        self.config = config
        self.step_count = 0

    @property
    def lr(self) -> float:
        return learning_rate(self.config, self.step_count)

    def apply(self) -> float:
        """Set every param group's lr for the current step; returns it."""
        lr = self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def advance(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
