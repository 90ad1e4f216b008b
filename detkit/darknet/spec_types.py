"""Typed, frozen layer specs: ``NetSpec`` (the ``[net]`` section), one dataclass per supported layer
section (``ConvSpec``, ``MaxPoolSpec``, ``UpsampleSpec``, ``RouteSpec``, ``ShortcutSpec``, ``YoloSpec``),
the ``LayerSpec`` union and ``NetworkSpec`` (a whole validated cfg).

Plain data: built by the parser in :mod:`detkit.darknet.specs`; this module imports no parser code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True)
class NetSpec:
    """The ``[net]`` section as typed values (darknet defaults where absent).

    ``options`` keeps every raw ``key -> value`` string (first occurrence) for keys not typed here.
    """

    width: int = 416
    height: int = 416
    channels: int = 3
    batch: int = 1
    subdivisions: int = 1
    learning_rate: float = 0.001
    momentum: float = 0.9
    decay: float = 0.0001
    burn_in: int = 0
    power: float = 4.0
    max_batches: int = 0
    policy: str = "constant"
    steps: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    gamma: float = 1.0
    step: int = 1
    angle: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    hue: float = 0.0
    flip: bool = True
    mosaic: bool = False
    letter_box: bool = False
    line: int = 0
    options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LayerBase:
    """Fields every layer spec has: 0-based layer index, header line, source file."""

    index: int
    line: int
    source: str


@dataclass(frozen=True)
class ConvSpec(LayerBase):
    filters: int = 1
    size: int = 1
    stride: int = 1
    padding: int = 0  # effective zero padding per side (pad=1 -> size//2)
    groups: int = 1
    dilation: int = 1
    batch_normalize: bool = False
    activation: str = "logistic"
    type: str = field(default="convolutional", init=False)


@dataclass(frozen=True)
class MaxPoolSpec(LayerBase):
    size: int = 1
    stride: int = 1
    padding: int = 0  # total padding; left/top gets padding//2, right/bottom the rest (-inf)
    type: str = field(default="maxpool", init=False)


@dataclass(frozen=True)
class UpsampleSpec(LayerBase):
    stride: int = 2
    scale: float = 1.0
    type: str = field(default="upsample", init=False)


@dataclass(frozen=True)
class RouteSpec(LayerBase):
    layers: tuple[int, ...] = ()  # absolute layer indices
    groups: int = 1
    group_id: int = 0
    type: str = field(default="route", init=False)


@dataclass(frozen=True)
class ShortcutSpec(LayerBase):
    from_: tuple[int, ...] = ()  # absolute layer indices added to the previous output
    activation: str = "linear"
    type: str = field(default="shortcut", init=False)


@dataclass(frozen=True)
class YoloSpec(LayerBase):
    mask: tuple[int, ...] = ()
    anchors: tuple[tuple[float, float], ...] = ()  # all pairs of the cfg, network-input pixels
    classes: int = 20
    num: int = 1
    jitter: float = 0.2
    ignore_thresh: float = 0.5
    truth_thresh: float = 1.0
    scale_x_y: float = 1.0
    random: float = 0.0
    iou_loss: str = "mse"
    iou_normalizer: float = 0.75
    cls_normalizer: float = 1.0
    obj_normalizer: float = 1.0
    label_smooth_eps: float = 0.0
    max_boxes: int = 200
    type: str = field(default="yolo", init=False)

    @property
    def mask_anchors(self) -> tuple[tuple[float, float], ...]:
        """The anchor pairs this head predicts with (``anchors[m]`` for ``m`` in ``mask``)."""
        return tuple(self.anchors[m] for m in self.mask)


LayerSpec = Union[ConvSpec, MaxPoolSpec, UpsampleSpec, RouteSpec, ShortcutSpec, YoloSpec]


@dataclass(frozen=True)
class NetworkSpec:
    """A whole validated cfg: ``net`` options, one spec per layer, and the text it came from."""

    net: NetSpec
    layers: tuple[LayerSpec, ...]
    source: str
    text: str

    @property
    def yolo_layers(self) -> tuple[YoloSpec, ...]:
        return tuple(layer for layer in self.layers if isinstance(layer, YoloSpec))

    @property
    def num_classes(self) -> int:
        heads = self.yolo_layers
        return heads[0].classes if heads else 0

