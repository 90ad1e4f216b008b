"""Post-training int8 quantisation of a DarknetModel into an ONNX file for onnxruntime.

:func:`quantize_int8` exports the decoded eval-mode model (:mod:`detkit.infer.export`, with
darknet's maxpool padding written as edge padding so every tensor is finite), runs it on
calibration images prepared exactly as ``detkit detect`` prepares its inputs (letterbox by
default), and quantises it with onnxruntime's static quantiser:

* weights int8, symmetric, per output channel; activations uint8 with per-tensor ranges from
  the calibration images (``method``, :data:`METHODS`: the global ``minmax`` by default — over four
  fine-tuned models (raccoon and BCCD, two sessions, AMD EPYC and AMX Xeon) its worst VOC mAP@0.5 loss
  was 0.0062, where ``average`` (the mean of each image's min and max) lost 0.049 on one raccoon model:
  averaging per-image maxima clips the rare large responses, as ``percentile`` does (-0.029..-0.034));
* QOperator format (``QLinearConv``, ``QLinearLeakyRelu``, ``QLinearConcat``, uint8 maxpool and
  resize), which onnxruntime runs with VNNI int8 kernels on x86 CPUs;
* only the backbone is quantised: the yolo decode (sigmoid, exp, anchors: box coordinates in
  pixels and probabilities need float) stays float32, and so do the head convolutions
  (``fp32_heads``, default: their outputs become scores and box exponents; quantising them cost
  ~0.09 VOC mAP@0.5 on a raccoon fine-tune) and the first ``fp32_first`` convolutions (default 0:
  keeping the first one float32 measured no better and slower, since onnxruntime then pools in
  NCHW float). Measured accuracy and speed: docs/benchmarks_inference.md.

The result is an ordinary ONNX file (input ``images`` (N, C, H, W) float32 in [0, 1], output
``output`` (N, R, 5 + C), batch dynamic by default) with detkit metadata (precision, calibration
summary, float32 layers) that :class:`detkit.infer.onnxrt.OnnxModel` reads. Written atomically.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detkit.darknet.layers import ConvLayer
from detkit.darknet.model import DarknetModel
from detkit.infer.export import DEFAULT_OPSET, INPUT_NAME, onnx_bytes
from detkit.infer.fast import head_conv_indices
from detkit.infer.onnxrt import META_CALIBRATION, META_FP32_LAYERS, META_PRECISION, META_RESIZE
from detkit.errors import ImageError
from detkit.fileio import write_bytes_atomic

log = logging.getLogger(__name__)

#: activation range estimators: ``average`` = the mean over the calibration images of each image's
#: min and max (onnxruntime's MinMax with moving average: one collection pass, so the mean is
#: order-independent); ``minmax`` = the global min and max; ``percentile`` (99.999 %) and
#: ``entropy`` = onnxruntime's histogram calibrators
METHODS = ("average", "minmax", "percentile", "entropy")
DEFAULT_CALIBRATION_IMAGES = 200
_LAYER_RE = re.compile(r"(?:^|/)layers\.(\d+)/")


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_int8` wrote."""

    path: Path
    img_size: tuple[int, int]  # (W, H)
    dynamic_batch: bool
    calibration_images: int  # images that calibrated the ranges
    skipped_images: tuple[str, ...]  # unreadable calibration files ("path: why")
    fp32_layers: tuple[int, ...]  # layer indices kept float32
    quantized_convs: int
    nbytes: int
    seconds: float


def fp32_layer_indices(model: DarknetModel, fp32_first: int = 0, fp32_heads: bool = True) -> tuple[int, ...]:
    """Layer indices that stay float32: the first ``fp32_first`` convs with the layers between
    them and the next conv (e.g. a maxpool) and, with ``fp32_heads``, the convs feeding a yolo
    layer."""
    if fp32_first < 0:
        raise ValueError(f"fp32_first must be >= 0, got {fp32_first}")
    layers = list(model.layers)
    convs = [i for i, m in enumerate(layers) if isinstance(m, ConvLayer)]
    # the first fp32_first convs and everything up to the next conv (their pooling): a float
    # layer between two int8 ones would cost a dequantise + quantise and a layout change
    end = convs[fp32_first] if fp32_first < len(convs) else len(layers)
    keep = set(range(end)) if fp32_first > 0 else set()
    if fp32_heads:
        keep |= head_conv_indices(layers)
    return tuple(sorted(keep))


def nodes_to_keep_float(node_names: Sequence[str], fp32_layers: Sequence[int]) -> list[str]:
    """Graph nodes onnxruntime must not quantise: every node outside a ``layers.N`` scope (the
    yolo decode and the final concat) and every node of a float32 layer."""
    keep = set(int(i) for i in fp32_layers)
    out = []
    for name in node_names:
        m = _LAYER_RE.search(name)
        if m is None or int(m.group(1)) in keep:
            out.append(name)
    return out


def calibration_tensor(path: str | os.PathLike, img_size: tuple[int, int], letterbox: bool = True) -> np.ndarray:
    """One calibration image prepared exactly as ``detkit detect`` prepares its input: (1, 3, H, W)
    float32 in [0, 1] (letterbox, or darknet's stretch for ``--resize``). Raises ImageError."""
    from detkit.data.images import letterbox as letterbox_image
    from detkit.data.images import read_image, resize_darknet

    img = read_image(path)
    if letterbox:
        net = letterbox_image(img, img_size)[0].astype(np.float32) / 255.0
    else:
        net = resize_darknet(img, img_size)
    return np.ascontiguousarray(net.transpose(2, 0, 1)[None], dtype=np.float32)


class _Calibration:
    """onnxruntime CalibrationDataReader over image files, prepared like ``detkit detect``."""

    def __init__(self, paths: Sequence[Path], img_size: tuple[int, int], letterbox: bool, input_name: str,
                 progress: Callable[[int, int], None] | None):
        self.paths, self.img_size, self.letterbox, self.input_name = list(paths), img_size, letterbox, input_name
        self.progress = progress
        self.index = 0
        self.used = 0
        self.skipped: list[str] = []

    def get_next(self) -> dict[str, np.ndarray] | None:
        while self.index < len(self.paths):
            path = self.paths[self.index]
            self.index += 1
            try:
                x = calibration_tensor(path, self.img_size, self.letterbox)
            except ImageError as exc:
                self.skipped.append(str(exc))
                log.warning("calibration: skipped %s", exc)
                continue
            self.used += 1
            if self.progress is not None:
                self.progress(self.index, len(self.paths))
            return {self.input_name: x}
        return None


def quantize_int8(model: DarknetModel, path: str | os.PathLike, calibration: Sequence[str | os.PathLike],
                  img_size: tuple[int, int] | None = None, letterbox: bool = True, fp32_first: int = 0,
                  fp32_heads: bool = True, method: str = "minmax", dynamic_batch: bool = True,
                  opset: int = DEFAULT_OPSET, max_images: int = DEFAULT_CALIBRATION_IMAGES,
                  progress: Callable[[int, int], None] | None = None) -> QuantizeResult:
    """Write ``model`` as an int8 ONNX file calibrated on ``calibration`` images (module docstring).

    Args:
        model: the DarknetModel (read only).
        path: output ``.onnx`` file.
        calibration: image files representative of what the model will see (e.g. the training
            images); the first ``max_images`` are used, unreadable ones skipped and reported.
        img_size: input ``(W, H)`` (default the cfg's ``[net]`` size); fixed in the file.
        letterbox: prepare calibration images with detect's letterbox (False: darknet's stretch,
            for ``detkit detect --resize``).
        fp32_first, fp32_heads: which convs stay float32 (:func:`fp32_layer_indices`).
        method: activation range estimator, one of :data:`METHODS`.
        dynamic_batch: symbolic batch dimension (else batch 1).
        progress: called with (images read, images listed).

    Raises:
        ValueError: no calibration images, none readable, a bad method or input size.
        ImportError: onnxruntime / onnx are not installed.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx

    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(METHODS)}; got {method!r}")
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    paths = [Path(p) for p in calibration][:max_images]
    if not paths:
        raise ValueError("int8 calibration needs at least one image")
    size = img_size or (model.net.width, model.net.height)
    t0 = time.perf_counter()
    fp32_layers = fp32_layer_indices(model, fp32_first, fp32_heads)
    data, _ = onnx_bytes(model, size, dynamic_batch=dynamic_batch, opset=opset, maxpool_pad="edge")
    reader = _Calibration(paths, (int(size[0]), int(size[1])), letterbox, INPUT_NAME, progress)
    calib = {"average": CalibrationMethod.MinMax, "minmax": CalibrationMethod.MinMax,
             "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}[method]
    extra = {"CalibTensorRangeSymmetric": False, "CalibMovingAverage": method == "average"}
    with tempfile.TemporaryDirectory(prefix="detkit-int8-") as tmp:
        raw, src, dst = Path(tmp) / "export.onnx", Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        raw.write_bytes(data)
        # shape inference + onnxruntime's graph optimisation (folds batch norm into the convs)
        quant_pre_process(str(raw), str(src), skip_symbolic_shape=True)
        nodes = onnx.load(str(src)).graph.node  # names as the quantiser will see them
        exclude = nodes_to_keep_float([n.name for n in nodes], fp32_layers)
        n_quant = sum(1 for n in nodes if n.op_type == "Conv" and n.name not in set(exclude))
        try:
            quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QOperator, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=calib,
                            nodes_to_exclude=exclude, extra_options=extra)
        except Exception:
            if reader.used == 0:  # onnxruntime fails on an empty calibration set: say why
                first = f"; first: {reader.skipped[0]}" if reader.skipped else ""
                raise ValueError(f"none of the {len(paths)} calibration images could be read{first}") from None
            raise
        if reader.used == 0:
            raise ValueError(f"none of the {len(paths)} calibration images could be read")
        out = onnx.load(str(dst))
    names = ", ".join(p.name for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
    meta = {META_PRECISION: "int8",
            META_CALIBRATION: f"{reader.used} images ({method}; {names})",
            META_FP32_LAYERS: ",".join(str(i) for i in fp32_layers),
            META_RESIZE: "letterbox" if letterbox else "resize"}
    del out.metadata_props[:]
    for k, v in meta.items():
        out.metadata_props.add(key=k, value=v)
    blob = out.SerializeToString()
    p = Path(path)
    write_bytes_atomic(p, blob)
    return QuantizeResult(p, (int(size[0]), int(size[1])), dynamic_batch, reader.used, tuple(reader.skipped),
                          fp32_layers, n_quant, len(blob), time.perf_counter() - t0)
