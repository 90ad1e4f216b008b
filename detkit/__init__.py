"""detkit: YOLO object detection toolkit (darknet cfg/weights in PyTorch, VOC conversion, training, evaluation).

Public API (stable)::

    import detkit
    model = detkit.build_model("cfg/yolov3-tiny.cfg", num_classes=2)   # or a builtin name "yolov3-tiny"
    detkit.load_darknet_weights(model, "yolov3-tiny.weights")
    detkit.save_darknet_weights(model, "out.weights")

Importing ``detkit`` is cheap and changes no global state: torch is imported on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["build_model", "load_darknet_weights", "save_darknet_weights", "DarknetModel", "__version__"]

_LAZY = {
    "build_model": "detkit.darknet.model",
    "DarknetModel": "detkit.darknet.model",
    "load_darknet_weights": "detkit.darknet.weights",
    "save_darknet_weights": "detkit.darknet.weights",
}

if TYPE_CHECKING:  # pragma: no cover
    from detkit.darknet.model import DarknetModel, build_model
    from detkit.darknet.weights import load_darknet_weights, save_darknet_weights


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'detkit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
