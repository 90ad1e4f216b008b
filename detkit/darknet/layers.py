"""PyTorch modules for darknet layers, built from specs through one dispatch dict.

Submodule names are stable (they become checkpoint keys): a conv layer ``i`` owns
``layers.i.conv`` (+ ``layers.i.bn`` with ``batch_normalize=1``); a weighted ``[shortcut]`` owns
``layers.i.weight``; the other layer types own no parameters. A conv with ``share_index=j`` holds
layer ``j``'s ``conv`` / ``bn`` modules (the same tensors, as darknet shares them).

Layers that combine the previous output with earlier ones (``[shortcut]``, ``[sam]``,
``[scale_channels]``) are :class:`ShortcutLayer` subclasses: ``forward(x, others)`` with
``sources`` the earlier layer indices. Detection heads (``[yolo]``, ``[region]``) are
:class:`YoloLayer` subclasses with ``raw(x)`` and ``decode(raw, input_hw)``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from detkit.darknet.spec_types import (
    AvgPoolSpec, ConvSpec, DropoutSpec, LayerSpec, MaxPoolSpec, RegionSpec, ReorgSpec, RouteSpec, SamSpec,
    ScaleChannelsSpec, ShortcutSpec, UpsampleSpec, YoloSpec,
)
from detkit.yolo.decode import decode_head, decode_region

LEAKY_SLOPE = 0.1  # darknet's leaky activation
# darknet's batch norm uses eps = 1e-5 in AlexeyAB's build (inside the sqrt), 1e-6 (outside) in
# pjreddie's; OpenCV's importer uses 1e-6. The difference is below 1e-6 for real variances.
BN_EPS = 1e-6
BN_MOMENTUM = 0.01  # darknet: rolling = .99 * rolling + .01 * batch


def _stair(x: torch.Tensor) -> torch.Tensor:
    n = torch.floor(x)
    half = torch.floor(x / 2)
    return torch.where(torch.remainder(n, 2) == 0, half, x - n + half)


def _plse(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < -4, 0.01 * (x + 4), torch.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5))


def _lhtan(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, 0.001 * x, torch.where(x > 1, 0.001 * (x - 1) + 1, x))


def _hard_mish(x: torch.Tensor) -> torch.Tensor:
    # darknet's hard_mish_yashas: x for x > 0, x^2/2 + x on (-2, 0], 0 below
    return torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x)))


def _gelu(x: torch.Tensor) -> torch.Tensor:
    # darknet's tanh approximation with its own constants (0.797885, 0.035677)
    return 0.5 * x * (1 + torch.tanh(0.797885 * x + 0.035677 * x.pow(3)))


#: elementwise darknet activations (src/activations.h) that PyTorch has no module for
ELEMENTWISE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "elu": lambda x: torch.where(x >= 0, x, torch.expm1(x)),
    "selu": lambda x: torch.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * torch.expm1(x)),
    "relie": lambda x: torch.where(x > 0, x, 0.01 * x),
    "ramp": lambda x: x * (x > 0) + 0.1 * x,
    "tanh": torch.tanh,
    "plse": _plse,
    "lhtan": _lhtan,
    "stair": _stair,
    "hardtan": lambda x: x.clamp(-1.0, 1.0),
    "loggy": lambda x: 2 * torch.sigmoid(x) - 1,
    "relu6": lambda x: x.clamp(0.0, 6.0),
    "hard_mish": _hard_mish,
    "gelu": _gelu,
}


class DarknetActivation(nn.Module):
    """One of darknet's elementwise activations without a PyTorch module (see ``ELEMENTWISE``)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.fn = ELEMENTWISE[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


def make_activation(name: str) -> nn.Module:
    """darknet activation name -> module (names validated by the spec parser)."""
    table: dict[str, Callable[[], nn.Module]] = {
        "leaky": lambda: nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        "revleaky": lambda: nn.LeakyReLU(LEAKY_SLOPE, inplace=True),  # darknet: same forward as leaky
        "linear": nn.Identity,
        "logistic": nn.Sigmoid,
        "relu": lambda: nn.ReLU(inplace=True),
        "mish": lambda: nn.Mish(inplace=True),
        "swish": nn.SiLU,
    }
    if name in table:
        return table[name]()
    return DarknetActivation(name)


class ConvLayer(nn.Module):
    """``[convolutional]``: conv (no bias when batch-normalized) -> optional BN -> activation."""

    def __init__(self, spec: ConvSpec, in_channels: int):
        super().__init__()
        self.spec = spec
        self.conv = nn.Conv2d(in_channels, spec.filters, spec.size, stride=spec.strides,
                              padding=spec.padding * spec.dilation,  # darknet: im2col pads pad * dilation
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
        size, stride = self.spec.size, self.spec.strides
        if any(self.pad) and not self._pad_unused(x.shape[-2], x.shape[-1]):
            x = F.pad(x, self.pad, mode="constant", value=float("-inf"))
        return F.max_pool2d(x, size, stride)

    def _pad_unused(self, h: int, w: int) -> bool:
        """True when no pooling window would reach a padded cell (then padding is a no-op)."""
        left, _, top, _ = self.pad
        size, p = self.spec.size, self.spec.padding
        sy, sx = self.spec.strides
        return (left == 0 and top == 0 and (h + p - size) // sy == (h - size) // sy
                and (w + p - size) // sx == (w - size) // sx and h >= size and w >= size)


class LocalAvgPoolLayer(nn.Module):
    """``[local_avgpool]``: darknet's maxpool geometry (``padding // 2`` left/top, the rest
    right/bottom) with the mean of the window's cells that lie inside the input."""

    def __init__(self, spec: MaxPoolSpec):
        super().__init__()
        self.spec = spec
        before = spec.padding // 2
        self.pad = (before, spec.padding - before, before, spec.padding - before)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size, stride = self.spec.size, self.spec.strides
        ones = torch.ones_like(x[:, :1])
        total = F.avg_pool2d(F.pad(x, self.pad), size, stride, divisor_override=1)
        count = F.avg_pool2d(F.pad(ones, self.pad), size, stride, divisor_override=1)
        return total / count


class AvgPoolLayer(nn.Module):
    """``[avgpool]``: global average -> (N, C, 1, 1)."""

    def __init__(self, spec: AvgPoolSpec):
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class DropoutLayer(nn.Module):
    """``[dropout]``: identity in eval mode; in training darknet zeroes with ``probability`` and scales
    the rest by ``1 / (1 - probability)`` (inverted dropout, as ``nn.Dropout``)."""

    def __init__(self, spec: DropoutSpec):
        super().__init__()
        self.spec = spec
        self.drop = nn.Dropout(spec.probability)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(x)


def reorg3d(x: torch.Tensor, stride: int, reverse: bool = False) -> torch.Tensor:
    """darknet's ``reorg_cpu(..., forward=0)`` as ``[reorg3d]`` calls it: space to depth with output
    channel ``k = (dy * s + dx) * C + c`` taking input ``(c, y * s + dy, x * s + dx)``;
    ``reverse=True`` is the inverse (depth to space)."""
    n, c, h, w = x.shape
    s = stride
    if reverse:
        cc = c // (s * s)
        return x.reshape(n, s, s, cc, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, cc, h * s, w * s)
    return x.reshape(n, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4).reshape(n, c * s * s, h // s, w // s)


def reorg_old(x: torch.Tensor, stride: int, reverse: bool = False) -> torch.Tensor:
    """darknet's ``[reorg]`` (``reorg_old_layer.c``): ``reorg_cpu`` is called with the *input*
    dimensions, so it reads the input buffer as a (C/s², H*s, W*s) tensor, applies :func:`reorg3d`'s
    loop to that, and the (C, H, W)-sized result is the (C*s², H/s, W/s) output buffer. (This is the
    peculiar ordering darknet and OpenCV use for YOLOv2's passthrough layer; it is not space-to-depth.)"""
    n, c, h, w = x.shape
    s = stride
    if reverse:  # forward=1: the scatter direction, on the same reinterpretation
        as_big = x.reshape(n, c, h, w)
        out = reorg3d(as_big, s, reverse=True)  # (c/s², h*s, w*s) view of the same buffer
        return out.reshape(n, c // (s * s), h * s, w * s)
    big = x.reshape(n, c // (s * s), h * s, w * s)
    return reorg3d(big, s).reshape(n, c * s * s, h // s, w // s)


class ReorgLayer(nn.Module):
    """``[reorg3d]`` (space to depth, :func:`reorg3d`) or ``[reorg]`` (:func:`reorg_old`)."""

    def __init__(self, spec: ReorgSpec):
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = reorg_old if self.spec.old else reorg3d
        return fn(x, self.spec.stride, self.spec.reverse)


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
    """``[shortcut]``: previous output + the outputs of ``from`` layers, then activation.

    darknet (``shortcut_multilayer_cpu``): an input with fewer channels adds into the first channels,
    one with more channels contributes its first channels only. With ``weights_type`` each input
    ``i`` (0 = the previous output, then ``from`` in order) is multiplied by a learnt weight
    (``per_feature``: one per input; ``per_channel``: one per input and channel), normalised by
    ``relu`` (``relu(w_i) / (eps + sum relu(w))``) or ``softmax`` (``exp(w_i - max) / (eps + sum exp)``,
    eps = 1e-4). ``weight`` has shape ``(n + 1,)`` or ``(n + 1, C)``: darknet's ``.weights`` order.
    """

    def __init__(self, spec: ShortcutSpec, channels: int = 0):
        super().__init__()
        self.spec = spec
        self.sources = spec.from_
        self.act = make_activation(spec.activation)
        n = len(spec.from_) + 1
        if spec.weights_type == "per_feature":
            self.weight = nn.Parameter(torch.ones(n))
        elif spec.weights_type == "per_channel":
            self.weight = nn.Parameter(torch.ones(n, channels))
        else:
            self.weight = None

    def _weights(self) -> torch.Tensor | None:
        """(n + 1, C or 1) normalised weights, or None."""
        if self.weight is None:
            return None
        w = self.weight.reshape(self.weight.shape[0], -1)
        eps = 1e-4
        if self.spec.weights_normalization == "relu":
            r = torch.relu(w)
            return r / (eps + r.sum(dim=0, keepdim=True))
        if self.spec.weights_normalization == "softmax":
            e = torch.exp(w - w.max(dim=0, keepdim=True).values)
            return e / (eps + e.sum(dim=0, keepdim=True))
        return w

    def forward(self, x: torch.Tensor, others: list[torch.Tensor]) -> torch.Tensor:
        w = self._weights()
        c = x.shape[1]
        if w is not None:
            x = x * w[0].view(1, -1, 1, 1)
        for i, t in enumerate(others, start=1):
            if w is not None:
                t = t[:, :c] * w[i].view(1, -1, 1, 1)[:, : min(c, t.shape[1])]
            if t.shape[1] == c:
                x = x + t
            elif t.shape[1] > c:
                x = x + t[:, :c]
            else:
                x = torch.cat([x[:, : t.shape[1]] + t, x[:, t.shape[1]:]], dim=1)
        return self.act(x)


class SamLayer(ShortcutLayer):
    """``[sam]`` (spatial attention, YOLOv4-sam): previous output times the output of ``from``
    elementwise, then activation."""

    def __init__(self, spec: SamSpec):
        nn.Module.__init__(self)
        self.spec = spec
        self.sources = spec.from_
        self.act = make_activation(spec.activation)
        self.weight = None

    def forward(self, x: torch.Tensor, others: list[torch.Tensor]) -> torch.Tensor:
        return self.act(x * others[0])


class ScaleChannelsLayer(ShortcutLayer):
    """``[scale_channels]`` (squeeze-and-excitation): the output of ``from`` times the previous
    output, per channel ``(N, C, 1, 1)`` or, with ``scale_wh=1``, per position ``(N, 1, H, W)``."""

    def __init__(self, spec: ScaleChannelsSpec):
        nn.Module.__init__(self)
        self.spec = spec
        self.sources = spec.from_
        self.act = make_activation(spec.activation)
        self.weight = None

    def forward(self, x: torch.Tensor, others: list[torch.Tensor]) -> torch.Tensor:
        return self.act(others[0] * x)


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
        self.new_coords = bool(spec.new_coords)
        self.kind = "yolo"
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

    def decode(self, raw: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
        """``(N, A, H, W, 5+C)`` raw -> ``(N, A*H*W, 5+C)`` boxes in input pixels (eval contract)."""
        h, w = raw.shape[2:4]
        stride_xy = (input_hw[1] / w, input_hw[0] / h)  # measured, never assumed
        return decode_head(raw, self.anchors, stride_xy, self.scale_x_y, self.new_coords)

    def forward(self, x: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
        raw = self.raw(x)
        if self.training:
            return raw
        return self.decode(raw, input_hw)


class RegionLayer(YoloLayer):
    """``[region]`` (YOLOv2) head: every anchor predicts (``mask`` = all), anchors in grid cells.

    ``grid_anchors`` (num, 2) are the cfg's values; ``anchors`` / ``all_anchors`` (model contract)
    are the same in input pixels at the cfg's own input size (``stride`` from the built network).
    ``raw`` is the yolo layout ``(N, A, H, W, 5 + C)``; ``decode`` applies darknet's region formula
    (:func:`detkit.yolo.decode.decode_region`). Training with a [region] loss is not supported.
    """

    def __init__(self, spec: RegionSpec, stride_xy: tuple[float, float] = (32.0, 32.0)):
        nn.Module.__init__(self)
        self.spec = spec
        self.mask = tuple(spec.mask)
        self.num_classes = spec.classes
        self.ignore_thresh = spec.thresh
        self.truth_thresh = 1.0
        self.scale_x_y = 1.0
        self.new_coords = False
        self.kind = "region"
        grid = torch.tensor(spec.anchors, dtype=torch.float32)
        px = grid * torch.tensor(stride_xy, dtype=torch.float32)
        self.register_buffer("grid_anchors", grid, persistent=False)
        self.register_buffer("anchors", px, persistent=False)
        self.register_buffer("all_anchors", px.clone(), persistent=False)

    def decode(self, raw: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
        h, w = raw.shape[2:4]
        stride_xy = (input_hw[1] / w, input_hw[0] / h)
        return decode_region(raw, self.grid_anchors, stride_xy, self.spec.softmax)


def _build_conv(spec: LayerSpec, in_channels: int) -> nn.Module:
    assert isinstance(spec, ConvSpec)
    return ConvLayer(spec, in_channels)


def _build_maxpool(spec: LayerSpec, in_channels: int) -> nn.Module:
    assert isinstance(spec, MaxPoolSpec)
    return LocalAvgPoolLayer(spec) if spec.average else MaxPoolLayer(spec)


LAYER_BUILDERS: dict[str, Callable[[LayerSpec, int], nn.Module]] = {
    "convolutional": _build_conv,
    "maxpool": _build_maxpool,
    "upsample": lambda spec, c: UpsampleLayer(spec),  # type: ignore[arg-type]
    "route": lambda spec, c: RouteLayer(spec),  # type: ignore[arg-type]
    "shortcut": lambda spec, c: ShortcutLayer(spec, c),  # type: ignore[arg-type]
    "yolo": lambda spec, c: YoloLayer(spec),  # type: ignore[arg-type]
    "region": lambda spec, c: RegionLayer(spec),  # type: ignore[arg-type]  # model sets the stride
    "reorg": lambda spec, c: ReorgLayer(spec),  # type: ignore[arg-type]
    "reorg3d": lambda spec, c: ReorgLayer(spec),  # type: ignore[arg-type]
    "avgpool": lambda spec, c: AvgPoolLayer(spec),  # type: ignore[arg-type]
    "dropout": lambda spec, c: DropoutLayer(spec),  # type: ignore[arg-type]
    "sam": lambda spec, c: SamLayer(spec),  # type: ignore[arg-type]
    "scale_channels": lambda spec, c: ScaleChannelsLayer(spec),  # type: ignore[arg-type]
}


def build_layer(spec: LayerSpec, in_channels: int) -> nn.Module:
    """One module for one spec; ``in_channels`` is the channel count of the previous output."""
    try:
        builder = LAYER_BUILDERS[spec.type]
    except KeyError:  # internal: the spec parser only produces these types
        raise AssertionError(f"no builder for {spec.type!r}; known: {sorted(LAYER_BUILDERS)}") from None
    return builder(spec, in_channels)
