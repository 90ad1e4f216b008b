"""The data types of the :func:`detkit.train.trainer.train` API: :class:`StepInfo` (passed to the
per-step hook), :class:`TrainHooks` (optional callbacks) and :class:`TrainResult` (a run's outcome).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn


@dataclass(frozen=True)
class StepInfo:
    """Passed to ``TrainHooks.on_step`` after every optimizer step."""

    epoch: int
    step: int
    loss: float
    lr: float
    model: nn.Module


@dataclass(frozen=True)
class TrainHooks:
    """Optional callbacks (tests inject interrupts and faults through them)."""

    on_step: Callable[[StepInfo], None] | None = None
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`. ``history`` holds one dict per completed epoch (results.csv rows)."""

    run_dir: Path
    epochs_completed: int
    steps: int
    best_map: float
    best_epoch: int
    interrupted: bool
    last_checkpoint: Path
    best_checkpoint: Path | None
    best_weights: Path | None
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    loss_trace: tuple[float, ...] = field(default_factory=tuple)
