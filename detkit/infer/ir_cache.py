"""The float32 OpenVINO IR of a cfg + darknet weights, converted once and cached.

``detect --backend openvino`` (and ``auto`` where OpenVINO is installed) on a cfg + ``.weights``
runs :func:`cached_ir`: the IR is kept under ``~/.cache/detkit/ir`` (``DETKIT_CACHE_DIR``), keyed by
the cfg text, the weights' bytes, the class count, the input size and the OpenVINO version, so a
later run reads it without building the PyTorch model or importing torch. Only a cache miss
imports the converter (:func:`detkit.infer.openvino_export.export_openvino`).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from detkit.infer.openvino_model import cache_root

if TYPE_CHECKING:  # pragma: no cover
    from detkit.darknet.model import DarknetModel

#: bumped when the conversion changes, so that older cached IRs are not reused
IR_VERSION = "2"


def ir_cache_key(cfg_text: str, weights: str | os.PathLike, num_classes: int, img_size: tuple[int, int]) -> str:
    """Hex key of a cfg + weights conversion: cfg text, weights bytes, class count, input size."""
    import openvino as ov

    h = hashlib.sha256()
    for part in (IR_VERSION, ov.__version__, cfg_text, str(num_classes), f"{img_size[0]}x{img_size[1]}"):
        h.update(part.encode("utf-8") + b"\0")
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


def cached_ir(key: str, build: Callable[[], DarknetModel], img_size: tuple[int, int],
              folder: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """The float32 IR for ``key`` under ``folder`` (default ``cache_root() / "ir"``), converting
    ``build()``'s model when it is not there yet. Returns (path, True when it was cached)."""
    base = Path(folder) if folder is not None else cache_root() / "ir"
    path = base / f"{key}.xml"
    if path.is_file() and path.with_suffix(".bin").is_file():
        return path, True
    from detkit.infer.openvino_export import export_openvino  # torch: only on a cache miss

    export_openvino(build(), path, img_size, dynamic_batch=True)
    return path, False
