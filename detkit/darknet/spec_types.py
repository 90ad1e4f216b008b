"""Typed, frozen layer specs: ``NetSpec`` (the ``[net]`` section), one dataclass per supported layer
section (``ConvSpec``, ``MaxPoolSpec``, ``UpsampleSpec``, ``RouteSpec``, ``ShortcutSpec``, ``YoloSpec``,
``RegionSpec``, ``ReorgSpec``, ``AvgPoolSpec``, ``DropoutSpec``, ``SamSpec``, ``ScaleChannelsSpec``),
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
    stride: int = 1  # = stride_y; stride_x may differ (darknet's stride_x= / stride_y= keys)
    padding: int = 0  # darknet's pad per side (pad=1 -> size//2); the conv pads padding * dilation
    groups: int = 1
    dilation: int = 1
    batch_normalize: bool = False
    activation: str = "logistic"
    stride_x: int = 0  # 0: same as stride
    share_index: int = -1  # >= 0: uses the weights of that (earlier) conv layer (darknet share_index=)
    type: str = field(default="convolutional", init=False)

    @property
    def strides(self) -> tuple[int, int]:
        """``(stride_y, stride_x)``."""
        return self.stride, self.stride_x or self.stride


@dataclass(frozen=True)
class MaxPoolSpec(LayerBase):
    size: int = 1
    stride: int = 1
    padding: int = 0  # total padding; left/top gets padding//2, right/bottom the rest (-inf)
    stride_x: int = 0  # 0: same as stride
    average: bool = False  # [local_avgpool]: mean over the window's cells inside the image
    type: str = field(default="maxpool", init=False)

    @property
    def strides(self) -> tuple[int, int]:
        """``(stride_y, stride_x)``."""
        return self.stride, self.stride_x or self.stride


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
    weights_type: str = "none"  # none | per_feature | per_channel (per_layer = per_feature)
    weights_normalization: str = "none"  # none | relu | softmax (avg_relu = relu)
    type: str = field(default="shortcut", init=False)


@dataclass(frozen=True)
class SamSpec(LayerBase):
    """``[sam]``: previous output times the output of ``from`` (same shape), then activation."""

    from_: tuple[int, ...] = ()
    activation: str = "linear"
    type: str = field(default="sam", init=False)


@dataclass(frozen=True)
class ScaleChannelsSpec(LayerBase):
    """``[scale_channels]``: the output of ``from`` (C, H, W) times the previous output, one value per
    channel (C, 1, 1), or per position (1, H, W) with ``scale_wh=1``; then activation."""

    from_: tuple[int, ...] = ()
    scale_wh: bool = False
    activation: str = "linear"
    type: str = field(default="scale_channels", init=False)


@dataclass(frozen=True)
class ReorgSpec(LayerBase):
    """``[reorg3d]`` (space-to-depth, ``old=False``) or ``[reorg]`` (darknet's ``reorg_old``:
    the same loop run on the input reinterpreted as (C/s², H*s, W*s), ``old=True``)."""

    stride: int = 2
    reverse: bool = False
    old: bool = False
    type: str = field(default="reorg3d", init=False)


@dataclass(frozen=True)
class ReorgOldSpec(ReorgSpec):
    """``[reorg]``: darknet's ``reorg_old`` layer (YOLOv2); see :class:`ReorgSpec`."""

    old: bool = True
    type: str = field(default="reorg", init=False)


@dataclass(frozen=True)
class AvgPoolSpec(LayerBase):
    """``[avgpool]``: global average over H, W -> (C, 1, 1)."""

    type: str = field(default="avgpool", init=False)


@dataclass(frozen=True)
class DropoutSpec(LayerBase):
    """``[dropout]``: identity at inference; darknet scales kept values by 1 / (1 - p) in training."""

    probability: float = 0.5
    type: str = field(default="dropout", init=False)


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
    new_coords: bool = False  # scaled-YOLOv4 / YOLOv7: the conv already applied logistic; w = 4 t^2 anchor
    beta_nms: float = 0.6
    nms_kind: str = "default"
    objectness_smooth: bool = False
    iou_thresh: float = 1.0  # AlexeyAB: extra responsible anchors above this shape IoU
    max_delta: float = float("inf")  # AlexeyAB: the box deltas of the iou-family losses clipped to +-max_delta
    type: str = field(default="yolo", init=False)

    @property
    def mask_anchors(self) -> tuple[tuple[float, float], ...]:
        """The anchor pairs this head predicts with (``anchors[m]`` for ``m`` in ``mask``)."""
        return tuple(self.anchors[m] for m in self.mask)


@dataclass(frozen=True)
class RegionSpec(LayerBase):
    """``[region]`` (YOLOv2 head): anchors in grid cells (``num`` pairs), every anchor predicts;
    ``coords`` box values, logistic objectness, softmax classes (``softmax=1``) or logistic."""

    anchors: tuple[tuple[float, float], ...] = ()  # grid-cell units
    classes: int = 20
    num: int = 1
    coords: int = 4
    softmax: bool = False
    bias_match: bool = False
    jitter: float = 0.2
    thresh: float = 0.5
    object_scale: float = 1.0
    noobject_scale: float = 1.0
    class_scale: float = 1.0
    coord_scale: float = 1.0
    rescore: bool = False
    absolute: bool = False
    random: float = 0.0
    type: str = field(default="region", init=False)

    @property
    def mask(self) -> tuple[int, ...]:
        return tuple(range(self.num))

    @property
    def mask_anchors(self) -> tuple[tuple[float, float], ...]:
        return self.anchors


LayerSpec = Union[ConvSpec, MaxPoolSpec, UpsampleSpec, RouteSpec, ShortcutSpec, YoloSpec, RegionSpec,
                  ReorgSpec, AvgPoolSpec, DropoutSpec, SamSpec, ScaleChannelsSpec]
HEAD_TYPES = ("yolo", "region")


@dataclass(frozen=True)
class NetworkSpec:
    """A whole validated cfg: ``net`` options, one spec per layer, and the text it came from."""

    net: NetSpec
    layers: tuple[LayerSpec, ...]
    source: str
    text: str

    @property
    def yolo_layers(self) -> tuple[YoloSpec | RegionSpec, ...]:
        """Every detection head (``[yolo]`` and ``[region]``) in cfg order."""
        return tuple(layer for layer in self.layers if isinstance(layer, (YoloSpec, RegionSpec)))

    @property
    def num_classes(self) -> int:
        heads = self.yolo_layers
        return heads[0].classes if heads else 0

