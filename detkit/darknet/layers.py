"""PyTorch modules for darknet layers, built from specs through one dispatch dict.

Submodule names are stable (they become checkpoint keys): a conv layer ``i`` owns
``layers.i.conv`` (+ ``layers.i.bn`` with ``batch_normalize=1``); the other layer types own
no parameters.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from detkit.darknet.specs import (
    ConvSpec, LayerSpec, MaxPoolSpec, RouteSpec, ShortcutSpec, UpsampleSpec, YoloSpec,
)
from detkit.yolo.decode import decode_head

LEAKY_SLOPE = 0.1  # darknet's leaky activation
# darknet's batch norm uses eps = 1e-5 in AlexeyAB's build (inside the sqrt), 1e-6 (outside) in
# pjreddie's; OpenCV's importer uses 1e-6. The difference is below 1e-6 for real variances.
BN_EPS = 1e-6
BN_MOMENTUM = 0.01  # darknet: rolling = .99 * rolling + .01 * batch


def make_activation(name: str) -> nn.Module:
    """darknet activation name -> module (names validated by the spec parser)."""
    table: dict[str, Callable[[], nn.Module]] = {
        "leaky": lambda: nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        "linear": nn.Identity,
        "logistic": nn.Sigmoid,
        "relu": lambda: nn.ReLU(inplace=True),
        "mish": lambda: nn.Mish(inplace=True),
        "swish": nn.SiLU,
    }
    return table[name]()


class ConvLayer(nn.Module):
    """``[convolutional]``: conv (no bias when batch-normalized) -> optional BN -> activation."""

    def __init__(self, spec: ConvSpec, in_channels: int):
        super().__init__()
        self.spec = spec
        self.conv = nn.Conv2d(in_channels, spec.filters, spec.size, stride=spec.stride, padding=spec.padding,
                              dilation=spec.dilation, groups=spec.groups, bias=not spec.batch_normalize)
        self.bn = nn.BatchNorm2d(spec.filters, eps=BN_EPS, momentum=BN_MOMENTUM) if spec.batch_normalize else None
        self.act = make_activation(spec.activation)
        self._fused: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn is not None and not self.training and not torch.is_grad_enabled():
            # inference: BN folded into the conv (as OpenCV and darknet's own fuse do); one pass less
            weight, bias = self._fused_params()
            c = self.conv
            return self.act(F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups))
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    def _fused_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv weight and bias with the eval-mode BN folded in, cached until any input tensor changes.

        The cache key holds each tensor's identity and in-place version counter, so loading weights,
        an optimizer step or ``.to()`` all invalidate it.
        """
        tensors = (self.conv.weight, self.bn.weight, self.bn.bias, self.bn.running_mean, self.bn.running_var)
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors) + (self.bn.eps,)
        if self._fused is None or self._fused[0] != key:
            w, gamma, beta, mean, var = (t.detach() for t in tensors)
            scale = gamma / torch.sqrt(var + self.bn.eps)  # (filters,)
            weight = w * scale.view(-1, 1, 1, 1)  # keeps the weight's memory format
            bias = beta - mean * scale
            self._fused = (key, weight, bias)
        return self._fused[1], self._fused[2]


class MaxPoolLayer(nn.Module):
    """``[maxpool]`` with darknet padding: ``padding`` cells in total, ``padding // 2`` left/top,
    the rest right/bottom, padded cells are ``-inf`` (never zero)."""

    def __init__(self, spec: MaxPoolSpec):
        super().__init__()
        self.spec = spec
        before = spec.padding // 2
        self.pad = (before, spec.padding - before, before, spec.padding - before)  # left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size, stride = self.spec.size, self.spec.stride
        if any(self.pad) and not self._pad_unused(x.shape[-2], x.shape[-1]):
            x = F.pad(x, self.pad, mode="constant", value=float("-inf"))
        return F.max_pool2d(x, size, stride)

    def _pad_unused(self, h: int, w: int) -> bool:
        """True when no pooling window would reach a padded cell (then padding is a no-op)."""
        left, _, top, _ = self.pad
        size, stride, p = self.spec.size, self.spec.stride, self.spec.padding
        return (left == 0 and top == 0 and (h + p - size) // stride == (h - size) // stride
                and (w + p - size) // stride == (w - size) // stride and h >= size and w >= size)


class UpsampleLayer(nn.Module):
    """``[upsample]``: nearest-neighbour by an integer ``stride`` (times ``scale``)."""

    def __init__(self, spec: UpsampleSpec):
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.spec.stride, mode="nearest")
        return x * self.spec.scale if self.spec.scale != 1.0 else x


class RouteLayer(nn.Module):
    """``[route]``: concatenate earlier outputs on channels; with ``groups`` keep slice ``group_id``."""

    def __init__(self, spec: RouteSpec):
        super().__init__()
        self.spec = spec
        self.sources = spec.layers

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        g, gid = self.spec.groups, self.spec.group_id
        if g > 1:
            parts = []
            for t in inputs:
                step = t.shape[1] // g
                parts.append(t[:, gid * step:(gid + 1) * step])
            inputs = parts
        return inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)


class ShortcutLayer(nn.Module):
    """``[shortcut]``: previous output + the outputs of ``from`` layers, then activation."""

    def __init__(self, spec: ShortcutSpec):
        super().__init__()
        self.spec = spec
        self.sources = spec.from_
        self.act = make_activation(spec.activation)

    def forward(self, x: torch.Tensor, others: list[torch.Tensor]) -> torch.Tensor:
        for t in others:
            x = x + t
        return self.act(x)


class YoloLayer(nn.Module):
    """``[yolo]`` head: reshapes the conv output and (in eval mode) decodes it.

    Attributes (model contract): ``anchors`` float (A, 2) input pixels for this head's mask,
    ``all_anchors`` (num, 2), ``mask``, ``num_classes``, ``ignore_thresh``, ``truth_thresh``,
    ``scale_x_y``, plus ``spec`` (the full :class:`YoloSpec`).
    """

    def __init__(self, spec: YoloSpec):
        super().__init__()
        self.spec = spec
        self.mask = tuple(spec.mask)
        self.num_classes = spec.classes
        self.ignore_thresh = spec.ignore_thresh
        self.truth_thresh = spec.truth_thresh
        self.scale_x_y = spec.scale_x_y
        # buffers (not persistent): they follow .to(device) but stay out of checkpoints
        self.register_buffer("anchors", torch.tensor(spec.mask_anchors, dtype=torch.float32), persistent=False)
        self.register_buffer("all_anchors", torch.tensor(spec.anchors, dtype=torch.float32), persistent=False)

    @property
    def num_anchors(self) -> int:
        return len(self.mask)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, A*(5+C), H, W)`` conv output -> ``(N, A, H, W, 5+C)`` (no activation)."""
        n, _, h, w = x.shape
        return x.view(n, self.num_anchors, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2).contiguous()

    def forward(self, x: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
        raw = self.raw(x)
        if self.training:
            return raw
        h, w = raw.shape[2:4]
        stride_xy = (input_hw[1] / w, input_hw[0] / h)  # measured, never assumed
        return decode_head(raw, self.anchors, stride_xy, self.scale_x_y)


def _build_conv(spec: LayerSpec, in_channels: int) -> nn.Module:
    assert isinstance(spec, ConvSpec)
    return ConvLayer(spec, in_channels)


LAYER_BUILDERS: dict[str, Callable[[LayerSpec, int], nn.Module]] = {
    "convolutional": _build_conv,
    "maxpool": lambda spec, c: MaxPoolLayer(spec),  # type: ignore[arg-type]
    "upsample": lambda spec, c: UpsampleLayer(spec),  # type: ignore[arg-type]
    "route": lambda spec, c: RouteLayer(spec),  # type: ignore[arg-type]
    "shortcut": lambda spec, c: ShortcutLayer(spec),  # type: ignore[arg-type]
    "yolo": lambda spec, c: YoloLayer(spec),  # type: ignore[arg-type]
}


def build_layer(spec: LayerSpec, in_channels: int) -> nn.Module:
    """One module for one spec; ``in_channels`` is the channel count of the previous output."""
    try:
        builder = LAYER_BUILDERS[spec.type]
    except KeyError:  # internal: the spec parser only produces these types
        raise AssertionError(f"no builder for {spec.type!r}; known: {sorted(LAYER_BUILDERS)}") from None
    return builder(spec, in_channels)
