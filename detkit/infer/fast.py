"""An inference-only copy of a :class:`~detkit.darknet.model.DarknetModel`, built for speed.

:func:`optimize_for_inference` returns a :class:`FastDarknet` with

* batch norm folded into the convolutions (``w' = w * g / sqrt(var + eps)``,
  ``b' = (b - mean) * g / sqrt(var + eps) + beta``, computed in float64, stored in float32 before
  any lower-precision cast): one conv + activation per ``[convolutional]``;
* channels_last (NHWC) tensors, oneDNN's fast layout on CPU and the tensor-core layout on CUDA;
* a lower-precision compute dtype: bfloat16 on CPUs with native bf16 instructions (AVX512-BF16 or
  AMX), float16 on CUDA, float32 otherwise (``dtype="auto"``). The weights are cast once (no
  per-call autocast casts); the first three convolutions (full and half resolution, few channels:
  quantising the pixels and early activations costs the most accuracy for little speed; measured
  with yolov3-tiny: mean objectness error 0.0020 -> 0.0014 for +7% CPU time, and a raccoon
  fine-tune's VOC mAP@0.5 gap to fp32 -0.0063 -> -0.0005) and the yolo-head convolutions (whose
  logits become scores and box exponents) stay float32;
* the yolo decoding on the device, vectorised, in float32 (each head's own ``decode``: [yolo], new_coords, [region]);
* optionally ``torch.compile`` (off by default: measure with ``detkit benchmark`` first).

The output contract is the eval-mode contract of DarknetModel: ``(N, 3, H, W)`` in [0, 1] ->
``(N, R, 5 + C)`` float32 (cx, cy, w, h in input pixels, objectness, class probabilities).
The source model is never modified (the fast model owns copies of every tensor).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from detkit.darknet.layers import ConvLayer, RouteLayer, ShortcutLayer, YoloLayer
from detkit.darknet.model import network_input

log = logging.getLogger(__name__)

DtypeName = Literal["auto", "fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX) and oneDNN uses it.

    Without such instructions bfloat16 convolutions are emulated and slower than float32.
    """
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    native = any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    if not native or not torch.backends.mkldnn.is_available():
        return False
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(probe()) if probe is not None else True


def resolve_dtype(dtype: DtypeName | str, device: torch.device) -> torch.dtype:
    """``"auto"`` -> float16 on CUDA, bfloat16 on CPUs with native bf16, else float32.

    Raises:
        ValueError: an unknown name, or float16 asked for on CPU (oneDNN has no fast fp16 path on
            most CPUs; use bf16 or fp32 there).
    """
    if dtype == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"precision must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    if dtype == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is for CUDA; on CPU use bf16 (native on AVX512-BF16/AMX CPUs) or fp32")
    return DTYPES[dtype]


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> nn.Conv2d:
    """A new float32 ``Conv2d`` (with bias) equal to ``bn(conv(x))`` in eval mode.

    Folding is exact math (float64 intermediates); the inputs are only read.
    """
    w = conv.weight.detach().to(torch.float64)
    b = (conv.bias.detach().to(torch.float64) if conv.bias is not None
         else torch.zeros(conv.out_channels, dtype=torch.float64, device=w.device))
    if bn is not None:
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("batch norm without running statistics cannot be folded")
        gamma = bn.weight.detach().to(torch.float64) if bn.weight is not None else torch.ones_like(b)
        beta = bn.bias.detach().to(torch.float64) if bn.bias is not None else torch.zeros_like(b)
        scale = gamma / torch.sqrt(bn.running_var.detach().to(torch.float64) + bn.eps)
        w = w * scale.view(-1, 1, 1, 1)
        b = (b - bn.running_mean.detach().to(torch.float64)) * scale + beta
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      padding_mode=conv.padding_mode, device=w.device, dtype=torch.float32)
    with torch.no_grad():
        fused.weight.copy_(w.to(torch.float32))
        fused.bias.copy_(b.to(torch.float32))
    return fused


class FusedConv(nn.Module):
    """Folded conv + activation. ``dtype``: the compute dtype of this conv; its input is cast to
    it (a no-op when it already is) and its output keeps it."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module, leaky_slope: float | None, dtype: torch.dtype):
        super().__init__()
        self.conv = conv.to(dtype)
        self.act = act
        self.leaky_slope = leaky_slope  # fast in-place path for darknet's leaky activation
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.to(self.dtype))
        if self.leaky_slope is not None:
            return F.leaky_relu_(x, self.leaky_slope)
        return self.act(x)


def head_conv_indices(layers: list[nn.Module]) -> set[int]:
    """Indices of the convs feeding a yolo layer directly (through non-parametric layers)."""
    out: set[int] = set()
    for i, m in enumerate(layers):
        if isinstance(m, YoloLayer):
            j = i - 1
            while j >= 0 and not isinstance(layers[j], (ConvLayer, RouteLayer, ShortcutLayer)):
                j -= 1
            if j >= 0 and isinstance(layers[j], ConvLayer):
                out.add(j)
    return out


@dataclass(frozen=True)
class FastInfo:
    """How a :class:`FastDarknet` runs: device, compute dtype name, layout, compiled, and the
    number of batch norms folded."""

    device: str
    dtype: str
    channels_last: bool
    compiled: bool
    folded_bn: int

    def describe(self) -> str:
        return (f"{self.dtype}, {'channels_last' if self.channels_last else 'NCHW'}, "
                f"{self.folded_bn} BN folded{', compiled' if self.compiled else ''}, {self.device}")


class FastDarknet(nn.Module):
    """Eval-only DarknetModel equivalent (see the module docstring). Build with
    :func:`optimize_for_inference`.

    Attributes mirrored from the source model: ``net``, ``num_classes``, ``max_stride``,
    ``in_channels``, ``yolo_layers`` (copies: anchors etc. as in the model contract).
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32, channels_last: bool = True,
                 fp32_first: int = 3, fp32_heads: bool = True, fp32_layers: frozenset[int] = frozenset()):
        super().__init__()
        self.net = model.net
        self.num_classes = int(model.num_classes)
        self.max_stride = int(model.max_stride)
        self.in_channels = int(model.in_channels)
        self.compute_dtype = dtype
        self.channels_last = channels_last
        layers = list(model.layers)
        head_inputs = head_conv_indices(layers)
        first_convs = set([i for i, m in enumerate(layers) if isinstance(m, ConvLayer)][:max(0, fp32_first)])
        mods: list[nn.Module] = []
        kinds: list[str] = []
        folded = 0
        for i, layer in enumerate(layers):
            if isinstance(layer, ConvLayer):
                folded += layer.bn is not None
                conv = fold_batchnorm(layer.conv, layer.bn)
                act = copy.deepcopy(layer.act)
                slope = float(act.negative_slope) if isinstance(act, nn.LeakyReLU) else None
                keep_fp32 = i in first_convs or (fp32_heads and i in head_inputs) or i in fp32_layers
                mods.append(FusedConv(conv, act, slope, torch.float32 if keep_fp32 else dtype))
                kinds.append("conv")
            else:
                mods.append(copy.deepcopy(layer))
                kinds.append("route" if isinstance(layer, RouteLayer) else
                             "shortcut" if isinstance(layer, ShortcutLayer) else
                             "yolo" if isinstance(layer, YoloLayer) else "other")
        self.layers = nn.ModuleList(mods)
        self._kinds = tuple(kinds)
        self._keep = frozenset(getattr(model, "_keep", range(len(layers))))
        self.yolo_layers: list[YoloLayer] = [m for m in self.layers if isinstance(m, YoloLayer)]
        self.folded_bn = folded
        for yl in self.yolo_layers:  # anchors stay float32 (bf16 would round 319 to 320)
            yl.anchors = yl.anchors.float()
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> "FastDarknet":
        if mode:
            raise RuntimeError("FastDarknet is inference-only (batch norm is folded); train the source model")
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` float in [0, 1], any memory format -> ``(N, R, 5 + C)`` float32.

        H and W must be positive multiples of ``max_stride``.
        """
        x, h, w = network_input(x, self.in_channels, self.max_stride, self.channels_last)
        saved: dict[int, torch.Tensor] = {}
        heads: list[torch.Tensor] = []
        for i, (kind, layer) in enumerate(zip(self._kinds, self.layers)):
            if kind == "route":
                srcs = [saved[j] for j in layer.sources]
                if len({t.dtype for t in srcs}) > 1:
                    srcs = [t.to(self.compute_dtype) for t in srcs]
                x = layer(srcs)
            elif kind == "shortcut":
                x = layer(x, [saved[j].to(x.dtype) for j in layer.sources])
            elif kind == "yolo":
                raw = layer.raw(x)  # (N, A, H_i, W_i, 5 + C)
                heads.append(layer.decode(raw, (h, w)))  # the head's own formula ([yolo], new_coords, [region]), float32
            else:
                x = layer(x)
            if i in self._keep:
                saved[i] = x
        return torch.cat(heads, dim=1)


def optimize_for_inference(model: nn.Module, device: str | torch.device = "cpu",
                           dtype: DtypeName | str = "auto", channels_last: bool = True,
                           compile: bool = False, fp32_first: int = 3, fp32_heads: bool = True) -> nn.Module:
    """Build the fast inference model (a :class:`FastDarknet`, or its ``torch.compile`` wrapper).

    Args:
        model: a :class:`~detkit.darknet.model.DarknetModel` (read only; left unchanged).
        device: where the fast model runs.
        dtype: ``"auto"`` (float16 on CUDA, bfloat16 on CPUs with native bf16, else float32),
            ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA only).
        channels_last: NHWC tensors (faster with oneDNN and cuDNN).
        compile: wrap in ``torch.compile`` (slow first call; pays off only on some machines).
        fp32_first: under bf16/fp16, keep this many leading convs in float32 (high resolution, few
            channels: little speed to gain, most of the rounding error to lose).
        fp32_heads: under bf16/fp16, keep the convs feeding the yolo layers in float32.

    Returns:
        An eval-only module: ``(N, 3, H, W)`` in [0, 1] -> ``(N, R, 5 + C)`` float32. Its
        ``fast_info`` attribute (:class:`FastInfo`) says how it runs.
    """
    dev = torch.device(device)
    cdtype = resolve_dtype(dtype, dev)
    if not all(hasattr(model, a) for a in ("layers", "net", "num_classes", "max_stride", "in_channels")):
        raise TypeError(f"optimize_for_inference needs a DarknetModel, got {type(model).__name__}")
    with torch.no_grad():
        fast = FastDarknet(model, dtype=cdtype, channels_last=channels_last, fp32_first=fp32_first,
                           fp32_heads=fp32_heads).to(dev)
    name = {v: k for k, v in DTYPES.items()}[cdtype]
    info = FastInfo(str(dev), name, channels_last, compile, fast.folded_bn)
    fast.fast_info = info
    log.info("fast inference model: %s", info.describe())
    if compile:
        # inductor "freezing" folds the weights into the graph and fuses conv + activation
        # (oneDNN post-ops): measured 20-30% faster than plain compile on this CPU
        compiled = torch.compile(fast, dynamic=False, options={"freezing": True})
        compiled.fast_info = info
        return compiled
    return fast
