"""Training settings: :class:`TrainSettings` (everything a run depends on), resolved from the cfg's
``[net]`` and CLI overrides by :func:`resolve_settings`, or read back from a run's ``last.pt`` by
:func:`resume_settings`. Checkpoints and ``settings.json`` store the settings as a plain JSON dict
(``TrainSettings.to_json_dict``), never by class path.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from detkit.errors import TrainError
from detkit import checkpoint as ckpt
from detkit.train.schedule import POLICIES
from detkit.yolo.loss import BOX_LOSSES

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: cfgs ship with the testing [net] (batch=1); training then uses this batch instead
DEFAULT_TRAIN_BATCH = 16


@dataclass(frozen=True)
class TrainSettings:
    """Everything a run depends on, resolved from the cfg's ``[net]`` and CLI overrides.

    Saved as ``settings.json`` in the run folder and inside every checkpoint. Step counts
    (``burn_in``) are optimizer steps; ``steps`` are fractions of the run's total steps.
    """

    cfg: str
    data: str
    num_classes: int
    out: str
    weights: str | None = None
    cutoff: int | None = None
    freeze: int = 0
    epochs: int = 30
    batch: int = DEFAULT_TRAIN_BATCH
    subdivisions: int = 1
    img_size: tuple[int, int] = (416, 416)
    device: str = "auto"
    amp: bool = True
    amp_dtype: str = "bf16"
    workers: int = 2
    seed: int = 0
    lr: float = 0.001
    momentum: float = 0.9
    decay: float = 0.0005
    nesterov: bool = False
    burn_in: int = 0
    policy: str = "steps"
    steps: tuple[float, ...] = (0.8, 0.9)
    scales: tuple[float, ...] = (0.1, 0.1)
    hue: float = 0.1
    saturation: float = 1.5
    exposure: float = 1.5
    flip: bool = True
    jitter: float = 0.3
    mosaic: bool = False
    box_loss: str = "auto"
    class_weights: bool = False
    balanced_sampler: bool = False
    ema: bool = True
    ema_decay: float | None = None
    ema_tau: float | None = None
    grad_clip: float | None = None
    channels_last: bool = True
    tensorboard: bool = False
    val_conf_thres: float = 0.005
    val_nms_thres: float = 0.45
    max_train_images: int | None = None
    max_val_images: int | None = None
    progress: bool = True
    plots: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch >= 1, f"batch must be >= 1, got {self.batch}"),
            (self.subdivisions >= 1, f"subdivisions must be >= 1, got {self.subdivisions}"),
            (self.batch % self.subdivisions == 0,
             f"batch ({self.batch}) must be a multiple of subdivisions ({self.subdivisions})"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (self.freeze >= 0, f"freeze must be >= 0, got {self.freeze}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.amp_dtype in AMP_DTYPES, f"amp dtype must be one of {', '.join(AMP_DTYPES)}, got {self.amp_dtype!r}"),
            (self.policy in POLICIES, f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}"),
            (self.box_loss in BOX_LOSSES, f"box loss must be one of {', '.join(BOX_LOSSES)}, got {self.box_loss!r}"),
            (len(self.steps) == len(self.scales), f"{len(self.steps)} steps but {len(self.scales)} scales"),
            (self.num_classes >= 1, f"classes must be >= 1, got {self.num_classes}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainError(message)

    def to_json_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> "TrainSettings":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise TrainError(f"unknown settings in checkpoint/settings.json: {', '.join(unknown)}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw)


def resolve_settings(cfg: str, data: str, num_classes: int, out: str, **overrides: Any) -> TrainSettings:
    """Defaults from the cfg's ``[net]`` (and ``[yolo] jitter``), then ``overrides`` (None = keep).

    * ``batch``/``subdivisions``: the cfg's, except the shipped testing values (batch=1), which
      become ``batch=16, subdivisions=1``;
    * ``steps`` are converted to fractions of the cfg's ``max_batches`` (darknet's 400000,450000
      of 500200 -> 0.8, 0.9) and applied to this run's length;
    * ``burn_in`` is the cfg's, capped to 10% of the run (computed at start, when its length is known)
      unless given explicitly.
    """
    from detkit.darknet.cfg import resolve_cfg
    from detkit.darknet.specs import parse_network

    text, source = resolve_cfg(cfg)
    spec = parse_network(text, source)
    net = spec.net
    jitters = [layer.jitter for layer in spec.layers if getattr(layer, "type", "") == "yolo"]
    base: dict[str, Any] = {
        "batch": net.batch if net.batch > 1 else DEFAULT_TRAIN_BATCH,
        "subdivisions": net.subdivisions if net.batch > 1 else 1,
        "img_size": (net.width, net.height),
        "lr": net.learning_rate, "momentum": net.momentum, "decay": net.decay,
        "burn_in": -net.burn_in,  # negative: the cfg burn-in, capped to the run length at start
        "policy": net.policy if net.policy in POLICIES else "steps",
        "hue": net.hue, "saturation": net.saturation, "exposure": net.exposure, "flip": bool(net.flip),
        "jitter": min(max(jitters), 0.49) if jitters else 0.0,
        "mosaic": bool(net.mosaic),
    }
    if net.policy == "steps" and net.steps and net.max_batches > 0:
        base["steps"] = tuple(min(1.0, s / net.max_batches) for s in net.steps)
        base["scales"] = tuple(net.scales[: len(net.steps)])
    elif net.policy not in POLICIES:
        log.warning("%s: [net] policy=%s is not supported; using steps at 80%%/90%% of the run", source, net.policy)
    for k, v in overrides.items():
        if v is not None:
            base[k] = v
    if base["batch"] % base["subdivisions"]:
        raise TrainError(f"batch ({base['batch']}) must be a multiple of subdivisions ({base['subdivisions']})")
    return TrainSettings(cfg=str(cfg), data=str(data), num_classes=int(num_classes), out=str(out), **base)


def resume_settings(run_dir: str | os.PathLike, epochs: int | None = None) -> tuple[TrainSettings, dict[str, Any]]:
    """Settings and payload of ``RUN_DIR/last.pt`` (``epochs`` may extend the run)."""
    run = Path(run_dir)
    path = run / "last.pt" if run.is_dir() else run
    payload = ckpt.load_checkpoint(path, map_location="cpu")
    settings = TrainSettings.from_json_dict(payload["settings"])
    if epochs is not None:
        settings = dataclasses.replace(settings, epochs=int(epochs))
    return settings, payload
