"""The part of the model contract that models run by another engine (onnxruntime, OpenVINO) share.

Such a model is not a ``torch.nn.Module``: it holds no parameters, runs on the CPU only, and its
numpy entry point ``forward_numpy`` is what the :class:`~detkit.infer.predict.Predictor` calls, so
running one never imports torch (seconds of start-up, and an OpenMP pool beside the engine's own
threads). ``model(x)`` on a torch tensor still works (eval, benchmarks): torch is imported then.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch


class EngineModel:
    """Eval-only model run by a non-PyTorch engine. Subclasses set :attr:`engine` and implement
    ``forward_numpy(arr (N, C, H, W) float32) -> (N, R, 5 + C) float32``."""

    engine = "engine"  # "ONNX", "OpenVINO": used in messages
    training = False

    def forward_numpy(self, arr: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        """``(N, C, H, W)`` float in [0, 1] (any memory format) -> ``(N, R, 5 + C)`` float32 (CPU)."""
        import torch

        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.forward_numpy(arr))

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.forward(x)

    def eval(self) -> "EngineModel":
        return self

    def train(self, mode: bool = True) -> "EngineModel":
        if mode:
            raise RuntimeError(f"an {self.engine} model is inference-only")
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "EngineModel":
        return self

    def to(self, *args: Any, **kwargs: Any) -> "EngineModel":
        """Accepts the CPU (and memory formats, which do not apply); refuses any other device."""
        for value in (*args, *kwargs.values()):
            text = str(value)
            if text.startswith(("cuda", "mps", "xpu")):
                raise RuntimeError(f"an {self.engine} model runs on the CPU, not on {text}")
        return self
