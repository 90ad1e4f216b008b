"""DarknetModel -> OpenVINO IR (``.xml`` + ``.bin``): float32, or int8 calibrated with NNCF.

* :func:`export_openvino` converts the decoded eval-mode ONNX graph (:func:`detkit.infer.export.onnx_bytes`,
  maxpools padded with the border value: identical output, finite tensors) with OpenVINO's ONNX
  reader and saves it uncompressed (float32 weights; the precision is chosen when the model is
  compiled, :class:`~detkit.infer.openvino_model.OpenVinoModel`), with detkit's metadata in its
  ``rt_info``.
* :func:`quantize_openvino_int8` is post-training quantisation with NNCF, calibrated exactly like
  ``onnx-int8`` (:mod:`detkit.infer.quantize`): the same images, prepared like detect's input
  (:func:`~detkit.infer.quantize.calibration_tensor`), the same float32 layers (the yolo decode,
  the head convolutions unless asked, the first ``fp32_first`` convolutions), per-channel int8
  weights and activation ranges from the mean of each image's min and max (NNCF's default
  estimator, like ``--calib-method average``).

The cache of converted cfg + weights files is :mod:`detkit.infer.ir_cache` (torch-free).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from detkit.darknet.model import DarknetModel
from detkit.errors import ImageError
from detkit.infer.export import DEFAULT_OPSET, onnx_bytes
from detkit.infer.onnxrt import META_CALIBRATION, META_FP32_LAYERS, META_PRECISION, META_RESIZE
from detkit.infer.openvino_model import openvino_core, write_metadata
from detkit.infer.quantize import (DEFAULT_CALIBRATION_IMAGES, QuantizeResult, calibration_tensor,
                                   fp32_layer_indices, nodes_to_keep_float)

log = logging.getLogger(__name__)

#: bump when the IR detkit writes changes, so cached conversions are redone


def _ov_model(model: DarknetModel, size: tuple[int, int], dynamic_batch: bool, opset: int):
    data, _ = onnx_bytes(model, size, dynamic_batch=dynamic_batch, opset=opset, maxpool_pad="edge")
    with tempfile.TemporaryDirectory(prefix="detkit-ov-") as tmp:
        src = Path(tmp) / "model.onnx"
        src.write_bytes(data)
        return openvino_core().read_model(str(src))


def _save(ov_model, path: Path) -> int:
    """Save the IR atomically (both files written to temporaries, then renamed: .bin first)."""
    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".detkit-ir-", dir=path.parent) as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        nbytes = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
        os.replace(xml.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(xml, path)
    return nbytes


def export_openvino(model: DarknetModel, path: str | os.PathLike, img_size: tuple[int, int] | None = None,
                    dynamic_batch: bool = True, opset: int = DEFAULT_OPSET) -> tuple[Path, int]:
    """Write the float32 IR ``path`` (``.xml``; ``.bin`` beside it). Returns (path, bytes of both files).

    Raises:
        ValueError: an input size the network cannot take or a path not ending in ``.xml``.
    """
    p = Path(path)
    if p.suffix.lower() != ".xml":
        raise ValueError(f"an OpenVINO IR is written as NAME.xml (+ NAME.bin), got {p.name}")
    size = img_size or (model.net.width, model.net.height)
    ov_model = _ov_model(model, (int(size[0]), int(size[1])), dynamic_batch, opset)
    write_metadata(ov_model, {META_PRECISION: "fp32"})
    return p, _save(ov_model, p)


def quantize_openvino_int8(model: DarknetModel, path: str | os.PathLike, calibration: Sequence[str | os.PathLike],
                           img_size: tuple[int, int] | None = None, letterbox: bool = True, fp32_first: int = 0,
                           fp32_heads: bool = True, dynamic_batch: bool = True, opset: int = DEFAULT_OPSET,
                           max_images: int = DEFAULT_CALIBRATION_IMAGES,
                           progress: Callable[[int, int], None] | None = None) -> QuantizeResult:
    """Write an int8 IR calibrated on ``calibration`` images (module docstring).

    Raises:
        ValueError: no calibration images or none readable, a bad size, a path not ending in ``.xml``.
        ImportError: openvino / nncf are not installed.
    """
    import nncf

    p = Path(path)
    if p.suffix.lower() != ".xml":
        raise ValueError(f"an OpenVINO IR is written as NAME.xml (+ NAME.bin), got {p.name}")
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    paths = [Path(x) for x in calibration][:max_images]
    if not paths:
        raise ValueError("int8 calibration needs at least one image")
    size = (int((img_size or (model.net.width, model.net.height))[0]),
            int((img_size or (model.net.width, model.net.height))[1]))
    t0 = time.perf_counter()
    tensors, skipped = [], []
    for k, img in enumerate(paths):
        try:
            tensors.append(calibration_tensor(img, size, letterbox))
        except ImageError as exc:
            skipped.append(str(exc))
            log.warning("calibration: skipped %s", exc)
        if progress is not None:
            progress(k + 1, len(paths))
    if not tensors:
        first = f"; first: {skipped[0]}" if skipped else ""
        raise ValueError(f"none of the {len(paths)} calibration images could be read{first}")
    fp32_layers = fp32_layer_indices(model, fp32_first, fp32_heads)
    ov_model = _ov_model(model, size, dynamic_batch, opset)
    names = [op.get_friendly_name() for op in ov_model.get_ops()
             if op.get_type_name() not in ("Constant", "Parameter", "Result")]
    keep = nodes_to_keep_float(names, fp32_layers)
    n_quant = sum(1 for op in ov_model.get_ops() if op.get_type_name() == "Convolution"
                  and op.get_friendly_name() not in set(keep))
    nncf_log = logging.getLogger("nncf")
    old = nncf_log.level
    nncf_log.setLevel(logging.WARNING)  # NNCF prints notes at INFO
    try:  # and its progress bar on stdout, where detkit's results go: move it to stderr
        with contextlib.redirect_stdout(sys.stderr):
            quantized = nncf.quantize(ov_model, nncf.Dataset(tensors), subset_size=len(tensors),
                                      preset=nncf.QuantizationPreset.PERFORMANCE,  # symmetric activations: BCCD -0.0006 vs MIXED -0.0067
                                      ignored_scope=nncf.IgnoredScope(names=keep, validate=False))
    finally:
        nncf_log.setLevel(old)
    shown = ", ".join(x.name for x in paths[:3]) + (", ..." if len(paths) > 3 else "")
    write_metadata(quantized, {META_PRECISION: "int8",
                               META_CALIBRATION: f"{len(tensors)} images (nncf, mean of per-image min/max; {shown})",
                               META_FP32_LAYERS: ",".join(str(i) for i in fp32_layers),
                               META_RESIZE: "letterbox" if letterbox else "resize"})
    nbytes = _save(quantized, p)
    return QuantizeResult(p, size, dynamic_batch, len(tensors), tuple(skipped), fp32_layers, n_quant, nbytes,
                          time.perf_counter() - t0)
