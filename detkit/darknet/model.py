"""Specs -> :class:`DarknetModel` (``torch.nn.Module``) and the public ``build_model``.

Model contract (docs/ARCHITECTURE.md):

* ``train()``: ``forward(x)`` -> list (one per yolo head, cfg order) of raw ``(N, A, H, W, 5 + C)``
  tensors: tx, ty, tw, th, objectness logit, class logits.
* ``eval()``: ``forward(x)`` -> ``(N, R, 5 + C)``: cx, cy, w, h in input pixels, objectness
  probability, class probabilities; rows head-major (cfg order), then anchor, y, x.
"""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from detkit.darknet.cfg import resolve_cfg
from detkit.darknet.cfg_edit import CfgEdit
from detkit.darknet.layers import ConvLayer, RegionLayer, RouteLayer, ShortcutLayer, YoloLayer, build_layer
from detkit.darknet.shapes import infer_shapes
from detkit.darknet.spec_types import ConvSpec, NetSpec, NetworkSpec, RegionSpec, ShortcutSpec
from detkit.darknet.specs import load_network_spec
from detkit.errors import CfgError

log = logging.getLogger(__name__)

#: Largest model built (parameters; 4 GB of float32). A cfg claiming more is refused before allocating.
MAX_PARAMETERS = 1_000_000_000


def count_parameters(spec: NetworkSpec, shapes: list[tuple[int, int, int]]) -> int:
    """Trainable parameters of the model ``spec`` builds (``shapes`` from :func:`infer_shapes`)."""
    total, in_c = 0, spec.net.channels
    for layer, shape in zip(spec.layers, shapes):
        if isinstance(layer, ConvSpec) and layer.share_index < 0:
            total += layer.filters * (in_c // layer.groups) * layer.size * layer.size
            total += layer.filters * (2 if layer.batch_normalize else 1)
        elif isinstance(layer, ShortcutSpec) and layer.weights_type != "none":
            total += (len(layer.from_) + 1) * (shape[0] if layer.weights_type == "per_channel" else 1)
        in_c = shape[0]
    return total


class DarknetModel(nn.Module):
    """A darknet network as a PyTorch module.

    Attributes:
        spec: the validated :class:`NetworkSpec` (one spec per cfg layer).
        net: the ``[net]`` options as a :class:`NetSpec` (width, height, channels, batch, ...).
        cfg_text: the cfg text the model was built from, class count already patched.
        num_classes: classes predicted by every yolo head.
        layers: ``nn.ModuleList``, one module per cfg layer (``layers[i]`` is cfg layer ``i``).
        yolo_layers: the :class:`YoloLayer` heads in cfg order.
        weights_header: ``(major, minor, revision, seen)`` of the last loaded ``.weights`` file,
            or ``None``; written back by ``save_darknet_weights`` so files round-trip exactly.
        max_stride: the largest downsampling factor; inputs must be multiples of it (32 for YOLOv3).
    """

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        self.spec = spec
        self.net: NetSpec = spec.net
        self.cfg_text: str = spec.text
        self.num_classes: int = spec.num_classes
        self.weights_header: tuple[int, int, int, int] | None = None
        shapes = infer_shapes(spec)
        n_params = count_parameters(spec, shapes)
        if n_params > MAX_PARAMETERS:
            biggest = max((x for x in spec.layers if isinstance(x, ConvSpec)), key=lambda x: x.filters * x.size ** 2)
            raise CfgError(f"the network would have {n_params:,} parameters, above the {MAX_PARAMETERS:,} limit "
                           f"(largest: layer {biggest.index} filters={biggest.filters} size={biggest.size})",
                           path=spec.source, line=biggest.line)
        self.layers = nn.ModuleList()
        in_c = spec.net.channels
        for layer_spec, shape in zip(spec.layers, shapes):
            module = build_layer(layer_spec, in_c)
            if isinstance(layer_spec, RegionSpec):  # anchors in pixels at the cfg's own input size
                module = RegionLayer(layer_spec, (spec.net.width / shape[2], spec.net.height / shape[1]))
            if isinstance(layer_spec, ConvSpec) and layer_spec.share_index >= 0:
                # darknet shares weights, biases and BN tensors; stride, dilation and activation stay own
                owner = self.layers[layer_spec.share_index]
                module.conv.weight = owner.conv.weight
                if owner.conv.bias is not None:
                    module.conv.bias = owner.conv.bias
                module.bn = owner.bn
            self.layers.append(module)
            in_c = shape[0]
        self.yolo_layers: list[YoloLayer] = [m for m in self.layers if isinstance(m, YoloLayer)]
        keep: set[int] = set()
        for m in self.layers:
            if isinstance(m, (RouteLayer, ShortcutLayer)):
                keep.update(m.sources)
        self._keep = frozenset(keep)
        self.in_channels = spec.net.channels
        min_w = min(s[2] for s in shapes)
        min_h = min(s[1] for s in shapes)
        self.max_stride = max(1, max(spec.net.width // min_w, spec.net.height // min_h))
        # channels_last (NHWC) convolutions are markedly faster on CPU (oneDNN) and with AMP on GPU:
        # parameters are stored NHWC by default and forward() feeds its input in the parameters'
        # layout. Values, shapes and state_dict keys are the same either way;
        # ``model.to(memory_format=torch.contiguous_format)`` switches the whole model to NCHW.
        self.to(memory_format=torch.channels_last)

    @property
    def channels_last(self) -> bool:
        """Whether the parameters are stored channels_last (then forward() runs NHWC)."""
        w = self._probe_weight()
        return w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()

    def _probe_weight(self) -> torch.Tensor | None:
        # a conv weight whose NCHW and NHWC layouts differ (in_channels * k > 1); looked up each time
        # because .to() may replace parameter tensors
        for _, m in self.conv_layers:
            w = m.conv.weight
            if w.shape[1] * w.shape[2] > 1:
                return w
        return None

    @property
    def conv_layers(self) -> list[tuple[int, ConvLayer]]:
        """``(layer index, module)`` of every ``[convolutional]`` with its own weights, in file order
        (convs with ``share_index`` use another layer's tensors and are left out)."""
        return [(i, m) for i, m in enumerate(self.layers) if isinstance(m, ConvLayer) and m.spec.share_index < 0]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        """Run the network.

        Args:
            x: ``(N, channels, H, W)`` float in [0, 1]; H and W multiples of ``max_stride``.

        Returns:
            train mode: list of raw ``(N, A, H_i, W_i, 5 + C)`` per head; eval mode: ``(N, R, 5 + C)``.
        """
        x, h, w = network_input(x, self.in_channels, self.max_stride, self.channels_last)
        saved: dict[int, torch.Tensor] = {}
        heads: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, RouteLayer):
                x = layer([saved[j] for j in layer.sources])
            elif isinstance(layer, ShortcutLayer):
                x = layer(x, [saved[j] for j in layer.sources])
            elif isinstance(layer, YoloLayer):
                heads.append(layer(x, (h, w)))  # x passes through unchanged to the next layer
            else:
                x = layer(x)
            if i in self._keep:
                saved[i] = x
        if self.training:
            return heads
        return torch.cat(heads, dim=1)


def network_input(x: torch.Tensor, in_channels: int, max_stride: int,
                  channels_last: bool) -> tuple[torch.Tensor, int, int]:
    """Check a network input and put it in the parameters' memory format (shared by
    :meth:`DarknetModel.forward` and the fast path's).

    Args:
        x: ``(N, in_channels, H, W)``; H and W positive multiples of ``max_stride``.

    Returns:
        ``(x, H, W)``: ``x`` contiguous in channels_last (NHWC) or NCHW order.

    Raises:
        ValueError: wrong rank, channel count or size.
    """
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f"expected input (N, {in_channels}, H, W), got {tuple(x.shape)}")
    h, w = int(x.shape[2]), int(x.shape[3])
    if h % max_stride or w % max_stride or h == 0 or w == 0:
        raise ValueError(f"input size {w}x{h} (WxH) must be a positive multiple of {max_stride}")
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format), h, w


def build_model(cfg_path_or_text: str | os.PathLike, num_classes: int | None = None) -> DarknetModel:
    """Build a :class:`DarknetModel` from a darknet cfg.

    Args:
        cfg_path_or_text: a path to a ``.cfg`` file, the cfg text itself, or a builtin name such as
            ``"yolov3-tiny"`` (the repo's ``cfg/`` folder).
        num_classes: if given, every ``[yolo] classes=`` and the ``filters=`` of the conv before it
            are rewritten (``(num_classes + 5) * len(mask)``) before building.

    Raises:
        CfgError: the cfg cannot be read, parsed or built (message names file:line).
    """
    text, source = resolve_cfg(cfg_path_or_text)
    spec, edits = load_network_spec(text, source, num_classes)
    _log_edits(source, edits)
    return DarknetModel(spec)


def _log_edits(source: str, edits: list[CfgEdit]) -> None:
    for e in edits:
        if e.old is None:
            log.info("%s: added %s=%s to the [%s] at line %d", source, e.key, e.new, e.section, e.line)
        else:
            log.debug("%s:%d: %s=%s -> %s", source, e.line, e.key, e.old, e.new)
    if edits:
        log.info("%s: class count patched in %d place(s)", source, len(edits))
