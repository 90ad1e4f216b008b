"""Export a :class:`~detkit.darknet.model.DarknetModel` to ONNX, TorchScript or darknet ``.weights``.

ONNX: the eval-mode model (decoded output ``(N, R, 5 + C)``: cx, cy, w, h in input pixels,
objectness, class probabilities; rows head-major, then anchor, y, x) is traced through
:class:`DecodedExport`, a thin wrapper that runs the same layers and decodes every head with
constant grids and ``-1`` batch reshapes. That keeps the graph to operators OpenCV DNN's ONNX
importer supports (``Conv``, ``LeakyRelu``, ``Pad``/``MaxPool``, ``Resize`` nearest, ``Concat``,
``Reshape``, ``Transpose``, ``Slice``, ``Sigmoid``, ``Exp``, ``Mul``, ``Add``; ``Softmax`` for
``[region]`` heads) and lets the batch
dimension be dynamic: the model's own decode computes reshape sizes from the input shape, which
onnxruntime follows but OpenCV 4.x mis-reads for batches > 1. darknet's size=2/stride=1 maxpool
pads right/bottom with ``-inf``; that exports as ``Pad(value=-inf)`` + ``MaxPool``, which both
runtimes evaluate exactly (checked in tests/test_export.py).

The input size is fixed at export time (the grids are constants); with ``dynamic_batch`` only the
batch dimension is symbolic. Every file is written atomically (temp file + ``os.replace``).
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from detkit.darknet.layers import MaxPoolLayer, RegionLayer, RouteLayer, ShortcutLayer, YoloLayer
from detkit.darknet.model import DarknetModel
from detkit.darknet.shapes import infer_shapes
from detkit.darknet.weights import save_darknet_weights
from detkit.fileio import write_atomic, write_bytes_atomic

log = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "torchscript", "darknet"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript", "darknet")
#: ONNX opset written by default. OpenCV 4.14's readNetFromONNX and onnxruntime load 11..20 for
#: this graph (checked); 13 is the oldest that most runtimes still list as fully supported.
DEFAULT_OPSET = 13
INPUT_NAME = "images"
OUTPUT_NAME = "output"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote."""

    path: Path
    format: str
    img_size: tuple[int, int]  # (W, H) of the exported input
    dynamic_batch: bool
    output_shape: tuple[int, ...]  # decoded output for batch 1: (1, R, 5 + C); () for darknet
    nbytes: int


class _HeadDecoder(nn.Module):
    """One head's decode with constant grids for a fixed feature size (export only).

    The same formulas as the head's own ``decode`` (:func:`detkit.yolo.decode.decode_head` for
    ``[yolo]``, with or without ``new_coords``, and :func:`detkit.yolo.decode.decode_region` for
    ``[region]``); the result is compared with the model's own eval forward in the tests.
    """

    def __init__(self, head: YoloLayer, feat_hw: tuple[int, int], input_hw: tuple[int, int]):
        super().__init__()
        h, w = feat_hw
        a = head.num_anchors
        self.a, self.d, self.hw = a, 5 + head.num_classes, h * w
        self.kind = "region" if isinstance(head, RegionLayer) else "yolo"
        self.new_coords = bool(head.new_coords)
        self.softmax = bool(head.spec.softmax) if self.kind == "region" else False
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        grid = torch.stack([xs, ys], dim=-1).reshape(1, 1, h * w, 2).expand(1, a, h * w, 2)
        stride = torch.tensor([input_hw[1] / w, input_hw[0] / h], dtype=torch.float32)  # (sx, sy)
        s = float(head.scale_x_y)
        # x = (sigmoid(tx) * s - (s - 1) / 2 + col) * stride  ->  sigmoid(tx) * (s * stride) + offset
        self.register_buffer("xy_mul", (s * stride).reshape(1, 1, 2))
        self.register_buffer("xy_add", ((grid - (s - 1.0) / 2.0) * stride).reshape(1, a * h * w, 2))
        if self.kind == "region":  # anchors in grid cells, scaled by this feature map's stride
            anchors = head.grid_anchors.detach().to("cpu", torch.float32) * stride
        else:
            anchors = head.anchors.detach().to("cpu", torch.float32)  # (A, 2) input pixels
        if self.new_coords:
            anchors = anchors * 4.0  # w = 4 * t_w^2 * anchor_w
        self.register_buffer("wh_mul", anchors.reshape(1, a, 1, 2).expand(1, a, h * w, 2).reshape(1, a * h * w, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, A*(5+C), H, W) -> (N, A, 5+C, H*W) -> (N, A, H*W, 5+C) -> (N, A*H*W, 5+C)
        p = x.reshape(-1, self.a, self.d, self.hw).permute(0, 1, 3, 2).reshape(-1, self.a * self.hw, self.d)
        if self.new_coords:  # the conv before the head applied the logistic already
            xy = p[..., 0:2] * self.xy_mul + self.xy_add
            wh = p[..., 2:4] * p[..., 2:4] * self.wh_mul
            return torch.cat([xy, wh, p[..., 4:]], dim=-1)
        xy = torch.sigmoid(p[..., 0:2]) * self.xy_mul + self.xy_add
        wh = torch.exp(p[..., 2:4]) * self.wh_mul
        if self.kind == "region":
            obj = torch.sigmoid(p[..., 4:5])
            cls = torch.softmax(p[..., 5:], dim=-1) if self.softmax else torch.sigmoid(p[..., 5:])
            return torch.cat([xy, wh, obj, cls], dim=-1)
        probs = torch.sigmoid(p[..., 4:])
        return torch.cat([xy, wh, probs], dim=-1)


class _EdgeMaxPool(nn.Module):
    """A darknet maxpool padded by repeating the border (see :class:`DecodedExport`)."""

    def __init__(self, layer: MaxPoolLayer):
        super().__init__()
        self.pad, self.spec, self._pad_unused = layer.pad, layer.spec, layer._pad_unused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad) and not self._pad_unused(x.shape[-2], x.shape[-1]):
            x = torch.nn.functional.pad(x, self.pad, mode="replicate")
        return torch.nn.functional.max_pool2d(x, self.spec.size, self.spec.stride)


class DecodedExport(nn.Module):
    """``DarknetModel`` (eval) for a fixed input size with an export-friendly decode.

    ``forward(x (N, C, H, W) float in [0, 1]) -> (N, R, 5 + C)``, equal to ``model.eval()(x)``.

    ``maxpool_pad="edge"`` pads darknet's maxpools by repeating the border instead of ``-inf``:
    the same result (every pooling window that reaches a padded cell also holds the border cell
    that was repeated into it; checked per layer, else ValueError), and a finite tensor, which
    int8 calibration needs (a ``-inf`` in a tensor makes its quantisation scale infinite).
    """

    def __init__(self, model: DarknetModel, img_size: tuple[int, int], maxpool_pad: str = "-inf"):
        super().__init__()
        if maxpool_pad not in ("-inf", "edge"):
            raise ValueError(f"maxpool_pad must be '-inf' or 'edge', got {maxpool_pad!r}")
        # the layers are registered here under their own indices (``layers.N`` in ONNX node names,
        # which the int8 quantiser uses to tell backbone layers from the decode)
        self.layers = nn.ModuleList(_EdgeMaxPool(m) if maxpool_pad == "edge" and isinstance(m, MaxPoolLayer) else m
                                    for m in model.layers)
        self._keep = frozenset(model._keep)
        w, h = img_size
        self.input_hw = (int(h), int(w))
        self.maxpool_pad = maxpool_pad
        if maxpool_pad == "edge":
            self._check_edge_padding(model, self.input_hw)
        feats = self._feature_sizes(model, self.input_hw)
        self.decoders = nn.ModuleList(
            _HeadDecoder(head, hw, self.input_hw) for head, hw in zip(model.yolo_layers, feats))

    @staticmethod
    def _feature_sizes(model: DarknetModel, input_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """(H, W) of every yolo head's input at ``input_hw`` (shape inference; runs nothing)."""
        shapes = infer_shapes(model.spec, (model.in_channels, *input_hw))
        return [shapes[i][1:] for i, m in enumerate(model.layers) if isinstance(m, YoloLayer)]

    @staticmethod
    def _check_edge_padding(model: DarknetModel, input_hw: tuple[int, int]) -> None:
        """ValueError when some maxpool window would lie wholly in the padding (there ``-inf``
        and edge padding differ)."""
        shapes = infer_shapes(model.spec, (model.in_channels, *input_hw))
        for i, layer in enumerate(model.layers):
            if not isinstance(layer, MaxPoolLayer) or not any(layer.pad):
                continue
            h, w = (shapes[i - 1][1:] if i > 0 else input_hw)
            size, stride = layer.spec.size, layer.spec.stride
            left, _, top, _ = layer.pad
            for n, before in ((h, top), (w, left)):
                out = (n + layer.spec.padding - size) // stride + 1
                if before >= size or (out - 1) * stride - before >= n:
                    raise ValueError(f"layer {i} [maxpool]: a pooling window lies wholly in the padding "
                                     f"(size={size}, stride={stride}, padding={layer.spec.padding}); "
                                     "it cannot be exported with edge padding")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved: dict[int, torch.Tensor] = {}
        outs: list[torch.Tensor] = []
        head = 0
        for i, layer in enumerate(self.layers):  # same walk as DarknetModel.forward
            if isinstance(layer, RouteLayer):
                x = layer([saved[j] for j in layer.sources])
            elif isinstance(layer, ShortcutLayer):
                x = layer(x, [saved[j] for j in layer.sources])
            elif isinstance(layer, YoloLayer):
                outs.append(self.decoders[head](x))
                head += 1
            else:
                x = layer(x)
            if i in self._keep:
                saved[i] = x
        return torch.cat(outs, dim=1)


def _check_size(model: DarknetModel, img_size: tuple[int, int]) -> tuple[int, int]:
    w, h = int(img_size[0]), int(img_size[1])
    s = model.max_stride
    if w <= 0 or h <= 0 or w % s or h % s:
        raise ValueError(f"export size {w}x{h} (WxH) must be positive multiples of {s}")
    return w, h


def onnx_bytes(model: DarknetModel, img_size: tuple[int, int], dynamic_batch: bool = False,
               opset: int = DEFAULT_OPSET, maxpool_pad: str = "-inf") -> tuple[bytes, tuple[int, ...]]:
    """The decoded eval-mode model as an ONNX file's bytes, and its output shape for batch 1."""
    w, h = _check_size(model, img_size)
    wrapper = DecodedExport(model.eval(), (w, h), maxpool_pad=maxpool_pad).eval()
    x = torch.zeros(1, model.in_channels, h, w)
    dyn = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript-based exporter is deprecated upstream but is the one that needs no extra
        # package (onnxscript) and produces graphs OpenCV DNN reads; its tracer warnings are noise
        warnings.simplefilter("ignore")
        out_shape = tuple(wrapper(x).shape)
        torch.onnx.export(wrapper, (x,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=dyn, do_constant_folding=True)
    return buf.getvalue(), out_shape


def export_onnx(model: DarknetModel, path: str | os.PathLike, img_size: tuple[int, int],
                dynamic_batch: bool = False, opset: int = DEFAULT_OPSET) -> ExportResult:
    """Write the decoded eval-mode model as ONNX (input ``images`` (N, C, H, W) float32 in [0, 1],
    output ``output`` (N, R, 5 + C)); batch fixed at 1 unless ``dynamic_batch``."""
    w, h = _check_size(model, img_size)
    data, out_shape = onnx_bytes(model, (w, h), dynamic_batch, opset)
    p = Path(path)
    write_bytes_atomic(p, data)
    return ExportResult(p, "onnx", (w, h), dynamic_batch, out_shape, len(data))


def export_torchscript(model: DarknetModel, path: str | os.PathLike, img_size: tuple[int, int]
                       ) -> ExportResult:
    """Write ``torch.jit.trace`` of the eval-mode model (decoded output); any batch size works,
    the input size is the traced one."""
    w, h = _check_size(model, img_size)
    model = model.eval()
    x = torch.zeros(1, model.in_channels, h, w)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints taken from shapes
        traced = torch.jit.trace(model, (x,), check_trace=False)
        out_shape = tuple(traced(x).shape)
    p = Path(path)

    def save(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.save is deprecated"
            torch.jit.save(traced, tmp)

    n = write_atomic(p, save).stat().st_size
    return ExportResult(p, "torchscript", (w, h), True, out_shape, n)


def export_darknet(model: DarknetModel, path: str | os.PathLike) -> ExportResult:
    """Write darknet ``.weights`` (exactly :func:`~detkit.darknet.weights.save_darknet_weights`)."""
    p = Path(path)
    save_darknet_weights(model, p)
    return ExportResult(p, "darknet", (model.net.width, model.net.height), False, (), p.stat().st_size)


def export_model(model: DarknetModel, path: str | os.PathLike, fmt: ExportFormat,
                 img_size: tuple[int, int] | None = None, dynamic_batch: bool = False,
                 opset: int = DEFAULT_OPSET) -> ExportResult:
    """Export ``model`` in ``fmt`` (one of :data:`FORMATS`) to ``path``.

    Args:
        img_size: input ``(W, H)`` for onnx/torchscript (default: the cfg's ``[net]`` size).
        dynamic_batch: onnx only: symbolic batch dimension (torchscript traces are batch-agnostic).
    Raises:
        ValueError: unknown format or an input size the network cannot take.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
    if fmt == "darknet":
        return export_darknet(model, path)
    size = img_size or (model.net.width, model.net.height)
    if fmt == "onnx":
        return export_onnx(model, path, size, dynamic_batch=dynamic_batch, opset=opset)
    return export_torchscript(model, path, size)
