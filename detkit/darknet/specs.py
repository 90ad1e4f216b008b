"""Sections -> typed, validated, frozen layer specs; class-count propagation; the cfg patch writer.

darknet vocabulary on purpose (``filters``, ``size``, ``pad``, ``mask``) so a spec can be diffed
against its ``.cfg`` lines. Defaults follow darknet's ``src/parser.c`` (behaviour, not code):
conv ``stride=1``, ``pad=0``, ``activation=logistic``; maxpool ``stride=1``, ``size=stride``,
``padding=size-1``; upsample ``stride=2``; yolo ``classes=20``, ``num=1``, ``scale_x_y=1``.
"""
from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Union

from detkit.darknet.cfg import Section, parse_cfg
from detkit.errors import CfgError

log = logging.getLogger(__name__)

ACTIVATIONS = ("leaky", "linear", "logistic", "relu", "mish", "swish")
# darknet activations that detkit does not implement (a clear error beats a silent wrong forward)
OTHER_DARKNET_ACTIVATIONS = (
    "elu", "selu", "gelu", "relie", "ramp", "tanh", "plse", "lhtan", "stair", "hardtan", "loggy",
    "hard_mish", "relu6", "normalize_channels", "normalize_channels_softmax",
    "normalize_channels_softmax_maxval", "revleaky",
)
# sections darknet knows that detkit does not build
OTHER_DARKNET_SECTIONS = (
    "region", "detection", "gaussian_yolo", "local", "conv", "deconvolutional", "deconv",
    "connected", "conn", "crop", "cost", "normalization", "lrn", "batchnorm", "softmax", "soft",
    "dropout", "avgpool", "avg", "reorg", "reorg3d", "rnn", "gru", "lstm", "conv_lstm", "crnn",
    "sam", "scale_channels", "implicit_add", "implicit_mul", "empty", "silence", "contrastive",
    "activation", "l2norm", "logistic", "local_avgpool",
)

# -- keys ---------------------------------------------------------------------------------
NET_USED = {
    "width", "height", "channels", "batch", "subdivisions", "learning_rate", "momentum", "decay",
    "burn_in", "power", "max_batches", "policy", "steps", "scales", "angle", "saturation",
    "exposure", "hue", "flip", "mosaic", "letter_box", "gamma", "step",
}
NET_KNOWN = {
    "inputs", "max_crop", "min_crop", "aspect", "center", "time_steps", "notruth", "random",
    "track", "augment_speed", "sequential_subdivisions", "init_sequential_subdivisions",
    "try_fix_nan", "loss_scale", "dynamic_minibatch", "optimized_memory", "workspace_size_limit_mb",
    "workspace_size_limit_MB", "adam", "B1", "B2", "eps", "scale", "exp", "max_chart_loss",
    "mixup", "cutmix", "blur", "gaussian_noise", "label_smooth_eps", "resize_step", "attention",
    "adversarial_lr", "contrastive", "contrastive_jit_flip", "contrastive_color", "unsupervised",
    "ema_alpha", "equidistant_point", "num_sigmas_reject_badlabels",
    "badlabels_rejection_percentage", "weights_reject_freq", "show_receptive_field",
    "mosaic_bound", "cudnn_half", "use_cuda_graph", "seq_scales", "rgb", "hierarchy",
    "max_batches_per_epoch", "min_iter", "stopbackward", "flip_scale", "pyramid", "blur_step",
}
CONV_USED = {"filters", "size", "stride", "pad", "padding", "groups", "batch_normalize", "activation", "dilation"}
CONV_KNOWN = {
    "binary", "xnor", "bin_output", "flipped", "dot", "antialiasing", "assisted_excitation",
    "share_index", "stretch", "stretch_sway", "sway", "rotate", "deform", "stride_x", "stride_y",
    "learning_rate", "stopbackward", "dontload", "dontloadscales", "train_only_bn", "coordconv",
    "cbn", "train", "shortcut", "out_channels", "angle",
}
# keys that change the network's maths; accepted by the parser only at their neutral value
CONV_NEUTRAL = {"binary": 0, "xnor": 0, "antialiasing": 0, "deform": 0, "coordconv": 0, "sway": 0,
                "rotate": 0, "stretch": 0, "stretch_sway": 0, "assisted_excitation": 0}
MAXPOOL_USED = {"size", "stride", "padding"}
MAXPOOL_KNOWN = {"stride_x", "stride_y", "maxpool_depth", "out_channels", "antialiasing",
                 "stopbackward", "train_only_bn"}
MAXPOOL_NEUTRAL = {"maxpool_depth": 0, "antialiasing": 0}
UPSAMPLE_USED = {"stride", "scale"}
UPSAMPLE_KNOWN = {"stopbackward"}
ROUTE_USED = {"layers", "groups", "group_id"}
ROUTE_KNOWN = {"stopbackward", "train_only_bn"}
SHORTCUT_USED = {"from", "activation"}
SHORTCUT_KNOWN = {"weights_type", "weights_normalization", "stopbackward", "train_only_bn"}
YOLO_USED = {"mask", "anchors", "classes", "num", "jitter", "ignore_thresh", "truth_thresh", "scale_x_y",
             "random", "iou_loss", "iou_normalizer", "cls_normalizer", "obj_normalizer", "label_smooth_eps",
             "max", "new_coords"}
YOLO_KNOWN = {
    "iou_thresh", "beta_nms", "nms_kind", "counters_per_class", "resize", "focal_loss",
    "objectness_smooth", "map", "embedding_layer", "track_history_size", "uc_normalizer",
    "max_delta", "delta_normalizer", "stopbackward", "show_details", "track_ciou_norm", "sim_thresh",
    "dets_for_track", "dets_for_show", "bilinear", "rescore", "absolute", "thresh", "coords",
    "softmax", "background", "train_only_bn",
}


# -- specs --------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class CfgEdit:
    """One value the class-count writer changes: ``key`` at ``line`` from ``old`` to ``new``.

    ``old is None`` means the key was absent and a ``key=new`` line is inserted after ``line``.
    """

    line: int
    key: str
    old: str | None
    new: str
    section: str


# -- value readers ------------------------------------------------------------------------
class _Reader:
    """Typed access to one section's options, with file:line errors and unused-key warnings."""

    def __init__(self, section: Section, used: set[str], known: set[str], *, warn: bool = True):
        self.s = section
        self.used = used
        self.known = known
        if warn:
            self._warn_keys(section, used, known)

    @staticmethod
    def _warn_keys(section: Section, used: set[str], known: set[str]) -> None:
        seen: set[str] = set()
        for opt in section.options:
            if opt.key in seen:
                log.warning("%s:%d: duplicate key %r in [%s]; darknet uses the first one",
                            section.source, opt.line, opt.key, section.type)
            seen.add(opt.key)
            if opt.key not in used and opt.key not in known:
                hint = difflib.get_close_matches(opt.key, sorted(used | known), n=1, cutoff=0.6)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                log.warning("%s:%d: unknown key %r in [%s] ignored%s",
                            section.source, opt.line, opt.key, section.type, extra)

    def error(self, key: str, message: str) -> CfgError:
        opt = self.s.get(key)
        return CfgError(message, path=self.s.source, line=opt.line if opt else self.s.line)

    def _raw(self, key: str) -> str | None:
        opt = self.s.get(key)
        return None if opt is None else opt.value

    def int(self, key: str, default: int | None = None, *, minimum: int | None = None) -> int:
        raw = self._raw(key)
        if raw is None:
            if default is None:
                raise self.error(key, f"[{self.s.type}] needs {key}=")
            return default
        try:
            value = int(raw)
        except ValueError:
            raise self.error(key, f"bad value {key}={raw!r} (expected an integer)") from None
        if minimum is not None and value < minimum:
            raise self.error(key, f"bad value {key}={raw!r} (must be >= {minimum})")
        return value

    def float(self, key: str, default: float) -> float:
        raw = self._raw(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self.error(key, f"bad value {key}={raw!r} (expected a number)") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise self.error(key, f"bad value {key}={raw!r} (must be finite)")
        return value

    def flag(self, key: str, default: bool) -> bool:
        return self.int(key, int(default)) != 0

    def str(self, key: str, default: str) -> str:
        raw = self._raw(key)
        return default if raw is None or raw == "" else raw

    def ints(self, key: str) -> tuple[int, ...] | None:
        raw = self._raw(key)
        if raw is None:
            return None
        try:
            return tuple(int(tok) for tok in raw.split(",") if tok.strip())
        except ValueError:
            raise self.error(key, f"bad value {key}={raw!r} (expected comma-separated integers)") from None

    def floats(self, key: str) -> tuple[float, ...] | None:
        raw = self._raw(key)
        if raw is None:
            return None
        try:
            return tuple(float(tok) for tok in raw.split(",") if tok.strip())
        except ValueError:
            raise self.error(key, f"bad value {key}={raw!r} (expected comma-separated numbers)") from None

    def activation(self, key: str = "activation", default: str = "logistic") -> str:
        name = self.str(key, default)
        if name not in ACTIVATIONS:
            why = "not supported by detkit" if name in OTHER_DARKNET_ACTIVATIONS else "unknown"
            raise self.error(key, f"{why} activation {name!r} (supported: {', '.join(ACTIVATIONS)})")
        return name

    def neutral(self, rules: dict[str, int]) -> None:
        for key, neutral in rules.items():
            if self._raw(key) is not None and self.int(key) != neutral:
                raise self.error(key, f"{key}={self._raw(key)} in [{self.s.type}] is not supported by detkit")


# -- per-section parsers (one dispatch dict) ----------------------------------------------
def _parse_net(section: Section) -> NetSpec:
    r = _Reader(section, NET_USED, NET_KNOWN)
    steps = r.ints("steps") or ()
    scales = r.floats("scales") or ()
    policy = r.str("policy", "constant")
    if policy == "steps" and len(steps) != len(scales):
        raise r.error("scales", f"policy=steps needs as many scales= ({len(scales)}) as steps= ({len(steps)})")
    first: dict[str, str] = {}
    for opt in section.options:
        first.setdefault(opt.key, opt.value)
    return NetSpec(
        width=r.int("width", 0, minimum=0), height=r.int("height", 0, minimum=0),
        channels=r.int("channels", 0, minimum=0), batch=r.int("batch", 1, minimum=1),
        subdivisions=r.int("subdivisions", 1, minimum=1), learning_rate=r.float("learning_rate", 0.001),
        momentum=r.float("momentum", 0.9), decay=r.float("decay", 0.0001),
        burn_in=r.int("burn_in", 0, minimum=0), power=r.float("power", 4.0),
        max_batches=r.int("max_batches", 0, minimum=0), policy=policy, steps=steps, scales=scales,
        gamma=r.float("gamma", 1.0), step=r.int("step", 1),
        angle=r.float("angle", 0.0), saturation=r.float("saturation", 1.0),
        exposure=r.float("exposure", 1.0), hue=r.float("hue", 0.0), flip=r.flag("flip", True),
        mosaic=r.flag("mosaic", False), letter_box=r.flag("letter_box", False),
        line=section.line, options=tuple(first.items()),
    )


def _parse_conv(section: Section, index: int) -> ConvSpec:
    r = _Reader(section, CONV_USED, CONV_KNOWN)
    r.neutral(CONV_NEUTRAL)
    size = r.int("size", 1, minimum=1)
    stride = r.int("stride", 1, minimum=1)
    for key in ("stride_x", "stride_y"):
        if r.ints(key) is not None and r.int(key) != stride:
            raise r.error(key, f"{key}= different from stride= is not supported by detkit")
    pad = r.flag("pad", False)
    padding = size // 2 if pad else r.int("padding", 0, minimum=0)  # darknet: pad=1 overrides padding=
    return ConvSpec(
        index=index, line=section.line, source=section.source,
        filters=r.int("filters", 1, minimum=1), size=size, stride=stride, padding=padding,
        groups=r.int("groups", 1, minimum=1), dilation=r.int("dilation", 1, minimum=1),
        batch_normalize=r.flag("batch_normalize", False), activation=r.activation(),
    )


def _parse_maxpool(section: Section, index: int) -> MaxPoolSpec:
    r = _Reader(section, MAXPOOL_USED, MAXPOOL_KNOWN)
    r.neutral(MAXPOOL_NEUTRAL)
    stride = r.int("stride", 1, minimum=1)
    for key in ("stride_x", "stride_y"):
        if r.ints(key) is not None and r.int(key) != stride:
            raise r.error(key, f"{key}= different from stride= is not supported by detkit")
    size = r.int("size", stride, minimum=1)
    # darknet maxpool: padding = size - 1 by default, extra pixel right/bottom, -inf
    padding = r.int("padding", size - 1, minimum=0)
    return MaxPoolSpec(index=index, line=section.line, source=section.source, size=size, stride=stride, padding=padding)


def _parse_upsample(section: Section, index: int) -> UpsampleSpec:
    r = _Reader(section, UPSAMPLE_USED, UPSAMPLE_KNOWN)
    stride = r.int("stride", 2)
    if stride < 1:
        raise r.error("stride", f"upsample stride={stride} (downsampling upsample) is not supported by detkit")
    return UpsampleSpec(index=index, line=section.line, source=section.source, stride=stride,
                        scale=r.float("scale", 1.0))


def _absolute(r: _Reader, key: str, refs: tuple[int, ...], index: int) -> tuple[int, ...]:
    out = []
    for ref in refs:
        absolute = index + ref if ref < 0 else ref
        if not 0 <= absolute < index:
            raise r.error(key, f"{key}={ref} in layer {index} points to layer {absolute}, "
                               f"which does not exist before it (valid: 0..{index - 1} or -1..-{index})")
        out.append(absolute)
    return tuple(out)


def _parse_route(section: Section, index: int) -> RouteSpec:
    r = _Reader(section, ROUTE_USED, ROUTE_KNOWN)
    refs = r.ints("layers")
    if not refs:
        raise r.error("layers", "[route] needs layers= (one or more layer indices)")
    groups = r.int("groups", 1, minimum=1)
    group_id = r.int("group_id", 0, minimum=0)
    if group_id >= groups:
        raise r.error("group_id", f"group_id={group_id} must be < groups={groups}")
    return RouteSpec(index=index, line=section.line, source=section.source,
                     layers=_absolute(r, "layers", refs, index), groups=groups, group_id=group_id)


def _parse_shortcut(section: Section, index: int) -> ShortcutSpec:
    r = _Reader(section, SHORTCUT_USED, SHORTCUT_KNOWN)
    refs = r.ints("from")
    if not refs:
        raise r.error("from", "[shortcut] needs from= (a layer index)")
    if r.str("weights_type", "none") != "none":
        raise r.error("weights_type", "weighted [shortcut] (weights_type=) is not supported by detkit")
    return ShortcutSpec(index=index, line=section.line, source=section.source,
                        from_=_absolute(r, "from", refs, index), activation=r.activation(default="linear"))


def _parse_yolo(section: Section, index: int) -> YoloSpec:
    r = _Reader(section, YOLO_USED, YOLO_KNOWN)
    if r.int("new_coords", 0) != 0:
        raise r.error("new_coords", "new_coords=1 (scaled-YOLOv4 decoding) is not supported by detkit")
    classes = r.int("classes", 20, minimum=1)
    num = r.int("num", 1, minimum=1)
    values = r.floats("anchors")
    if not values:
        raise r.error("anchors", "[yolo] needs anchors= (pairs of width,height in input pixels)")
    if len(values) % 2:
        raise r.error("anchors", f"anchors= has an odd number of values ({len(values)}); expected w,h pairs")
    anchors = tuple((values[i], values[i + 1]) for i in range(0, len(values), 2))
    if any(w <= 0 or h <= 0 for w, h in anchors):
        raise r.error("anchors", "anchors= must be positive")
    if num != len(anchors):
        raise r.error("num", f"num={num} but anchors= lists {len(anchors)} pairs")
    mask = r.ints("mask")
    if mask is None:
        mask = tuple(range(num))  # darknet: no mask -> every anchor
    if not mask:
        raise r.error("mask", "mask= is empty")
    for m in mask:
        if not 0 <= m < num:
            raise r.error("mask", f"mask index {m} out of range for {num} anchors (valid 0..{num - 1})")
    return YoloSpec(
        index=index, line=section.line, source=section.source, mask=mask, anchors=anchors,
        classes=classes, num=num, jitter=r.float("jitter", 0.2), ignore_thresh=r.float("ignore_thresh", 0.5),
        truth_thresh=r.float("truth_thresh", 1.0), scale_x_y=r.float("scale_x_y", 1.0),
        random=r.float("random", 0.0), iou_loss=r.str("iou_loss", "mse"),
        iou_normalizer=r.float("iou_normalizer", 0.75), cls_normalizer=r.float("cls_normalizer", 1.0),
        obj_normalizer=r.float("obj_normalizer", 1.0), label_smooth_eps=r.float("label_smooth_eps", 0.0),
        max_boxes=r.int("max", 200, minimum=1),
    )


SECTION_PARSERS: dict[str, Callable[[Section, int], LayerSpec]] = {
    "convolutional": _parse_conv,
    "maxpool": _parse_maxpool,
    "upsample": _parse_upsample,
    "route": _parse_route,
    "shortcut": _parse_shortcut,
    "yolo": _parse_yolo,
}


def _unknown_section(section: Section) -> CfgError:
    valid = ", ".join(["net"] + list(SECTION_PARSERS))
    if section.type in OTHER_DARKNET_SECTIONS:
        return CfgError(f"[{section.type}] is a darknet section detkit does not support (supported: {valid})",
                        path=section.source, line=section.line)
    hint = difflib.get_close_matches(section.type, ["net", "network", *SECTION_PARSERS], n=1, cutoff=0.6)
    extra = f"; did you mean [{hint[0]}]?" if hint else ""
    return CfgError(f"unknown section [{section.type}]{extra} (supported: {valid})",
                    path=section.source, line=section.line)


# -- network-level checks -----------------------------------------------------------------
def head_conv(sections: list[Section], yolo_pos: int) -> Section:
    """The ``[convolutional]`` section right before the ``[yolo]`` at ``sections[yolo_pos]``."""
    prev = sections[yolo_pos - 1] if yolo_pos >= 1 else None
    if prev is None or prev.type != "convolutional":
        yolo = sections[yolo_pos]
        raise CfgError("[yolo] must directly follow the [convolutional] that feeds it "
                       f"(found [{prev.type if prev else 'nothing'}])", path=yolo.source, line=yolo.line)
    return prev


def _check_head_filters(sections: list[Section], layer_specs: list[LayerSpec]) -> None:
    layer_sections = sections[1:]
    for pos, spec in enumerate(layer_specs):
        if not isinstance(spec, YoloSpec):
            continue
        prev = layer_specs[pos - 1] if pos >= 1 else None
        if not isinstance(prev, ConvSpec):
            head_conv(layer_sections, pos)  # raises with the right message
            continue
        want = (spec.classes + 5) * len(spec.mask)
        if prev.filters != want:
            opt = layer_sections[pos - 1].get("filters")
            line = opt.line if opt else prev.line
            raise CfgError(
                f"filters={prev.filters} of the [convolutional] at line {prev.line} feeding the [yolo] at "
                f"line {spec.line} must be (classes + 5) * len(mask) = ({spec.classes} + 5) * {len(spec.mask)} "
                f"= {want}; set filters={want} (or use --classes / num_classes to patch every head)",
                path=spec.source, line=line)


def _check_yolo_outputs_unused(layers: list[LayerSpec]) -> None:
    """A [yolo] layer is an output: nothing may consume it (darknet would feed its activated
    copy forward, which detkit does not model)."""
    yolo_idx = {layer.index for layer in layers if isinstance(layer, YoloSpec)}
    for layer in layers:
        refs = layer.layers if isinstance(layer, RouteSpec) else layer.from_ if isinstance(layer, ShortcutSpec) else ()
        used = sorted(yolo_idx.intersection(refs))
        direct = layer.index - 1 in yolo_idx and not isinstance(layer, RouteSpec)
        if used or direct:
            which = used[0] if used else layer.index - 1
            raise CfgError(f"layer {layer.index} [{layer.type}] takes the output of the [yolo] layer {which}; "
                           "detkit supports [yolo] only as an output (follow it with a [route])",
                           path=layer.source, line=layer.line)


def conv_flops(layer: "ConvSpec", in_channels: int, out_h: int, out_w: int) -> float:
    """Floating-point operations of one ``[convolutional]`` as darknet counts them (a multiply and
    an add per weight and output pixel: ``2 * weights * out_h * out_w``)."""
    return 2.0 * layer.filters * (in_channels // layer.groups) * layer.size * layer.size * out_h * out_w


def conv_gflop(spec: "NetworkSpec", size: tuple[int, int]) -> float:
    """Total convolution GFLOP of the network at input ``(W, H)`` (darknet's count)."""
    w, h = size
    shapes = infer_shapes(spec, (spec.net.channels, h, w))
    total, prev = 0.0, (spec.net.channels, h, w)
    for layer, out in zip(spec.layers, shapes):
        if isinstance(layer, ConvSpec):
            total += conv_flops(layer, prev[0], out[1], out[2])
        prev = out
    return total / 1e9


def infer_shapes(spec: NetworkSpec, input_chw: tuple[int, int, int] | None = None) -> list[tuple[int, int, int]]:
    """Output shape ``(C, H, W)`` of every layer for an input of ``input_chw`` (default: the net's).

    Raises:
        CfgError: a layer gets an impossible shape (empty output, mismatched route/shortcut inputs,
            channel counts that do not divide into groups, a yolo input that is not
            ``(classes + 5) * len(mask)`` channels).
    """
    c, h, w = input_chw or (spec.net.channels, spec.net.height, spec.net.width)
    shapes: list[tuple[int, int, int]] = []
    for layer in spec.layers:
        def fail(msg: str) -> CfgError:
            return CfgError(f"layer {layer.index} [{layer.type}]: {msg}", path=layer.source, line=layer.line)

        prev = shapes[-1] if shapes else (c, h, w)
        pc, ph, pw = prev
        if isinstance(layer, ConvSpec):
            if pc % layer.groups or layer.filters % layer.groups:
                raise fail(f"groups={layer.groups} must divide the input channels ({pc}) and filters ({layer.filters})")
            span = layer.dilation * (layer.size - 1) + 1
            oh = (ph + 2 * layer.padding - span) // layer.stride + 1
            ow = (pw + 2 * layer.padding - span) // layer.stride + 1
            out = (layer.filters, oh, ow)
        elif isinstance(layer, MaxPoolSpec):
            out = (pc, (ph + layer.padding - layer.size) // layer.stride + 1,
                   (pw + layer.padding - layer.size) // layer.stride + 1)
        elif isinstance(layer, UpsampleSpec):
            out = (pc, ph * layer.stride, pw * layer.stride)
        elif isinstance(layer, RouteSpec):
            srcs = [shapes[i] for i in layer.layers]
            if any(s[1:] != srcs[0][1:] for s in srcs):
                detail = ", ".join(f"layer {i}: {s[1]}x{s[2]}" for i, s in zip(layer.layers, srcs))
                raise fail(f"route inputs have different spatial sizes ({detail})")
            for i, s in zip(layer.layers, srcs):
                if s[0] % layer.groups:
                    raise fail(f"groups={layer.groups} does not divide the {s[0]} channels of layer {i}")
            out = (sum(s[0] // layer.groups for s in srcs), srcs[0][1], srcs[0][2])
        elif isinstance(layer, ShortcutSpec):
            for i in layer.from_:
                if shapes[i] != prev:
                    raise fail(f"shortcut from layer {i} {shapes[i][0]}x{shapes[i][1]}x{shapes[i][2]} does not "
                               f"match the previous output {pc}x{ph}x{pw}")
            out = prev
        elif isinstance(layer, YoloSpec):
            want = (layer.classes + 5) * len(layer.mask)
            if pc != want:
                raise fail(f"input has {pc} channels but (classes + 5) * len(mask) = {want}")
            out = prev
        else:  # pragma: no cover - SECTION_PARSERS and this chain are kept in sync
            raise AssertionError(type(layer))
        if out[0] < 1 or out[1] < 1 or out[2] < 1:
            raise fail(f"output shape {out[0]}x{out[1]}x{out[2]} is empty for input {pc}x{ph}x{pw}")
        shapes.append(out)
    return shapes


def build_specs(sections: list[Section], text: str = "") -> NetworkSpec:
    """Validate parsed sections into a :class:`NetworkSpec` (also checks shapes at the net size).

    Raises:
        CfgError: the first section is not ``[net]``, an unknown/unsupported section, a bad value,
            a yolo head whose conv has the wrong ``filters=``, or an impossible shape.
    """
    if not sections or sections[0].type != "net":
        first = sections[0] if sections else None
        raise CfgError("the first section must be [net] (or [network])",
                       path=first.source if first else "<cfg>", line=first.line if first else None)
    net = _parse_net(sections[0])
    for key in ("width", "height", "channels"):
        if getattr(net, key) <= 0:
            raise CfgError(f"[net] needs a positive {key}=", path=sections[0].source, line=sections[0].line)
    layers: list[LayerSpec] = []
    for pos, section in enumerate(sections[1:]):
        if section.type == "net":
            raise CfgError("[net] may appear only once, as the first section", path=section.source, line=section.line)
        parser = SECTION_PARSERS.get(section.type)
        if parser is None:
            raise _unknown_section(section)
        layers.append(parser(section, pos))
    if not layers:
        raise CfgError("the cfg defines no layers after [net]", path=sections[0].source, line=sections[0].line)
    _check_head_filters(sections, layers)
    _check_yolo_outputs_unused(layers)
    heads = [layer for layer in layers if isinstance(layer, YoloSpec)]
    if len({h.classes for h in heads}) > 1:
        detail = ", ".join(f"line {h.line}: classes={h.classes}" for h in heads)
        raise CfgError(f"[yolo] heads disagree on classes ({detail}); use --classes N to set them all",
                       path=heads[0].source, line=heads[0].line)
    spec = NetworkSpec(net=net, layers=tuple(layers), source=sections[0].source, text=text)
    infer_shapes(spec)
    return spec


def parse_network(text: str, source: str | os.PathLike = "<cfg>") -> NetworkSpec:
    """cfg text -> validated :class:`NetworkSpec` (no class-count change)."""
    return build_specs(parse_cfg(text, source), text)


# -- class-count propagation and the in-place writer -------------------------------------
def class_count_edits(sections: list[Section], num_classes: int) -> list[CfgEdit]:
    """The edits that give every ``[yolo]`` ``classes=num_classes`` and its conv the matching filters.

    Only values that change are listed. For each ``[yolo]``: its ``classes=`` and the preceding
    ``[convolutional]``'s ``filters=(num_classes + 5) * len(mask)`` (4 edits for yolov3-tiny, 6 for
    yolov3 when the count changes).

    Raises:
        CfgError: ``num_classes < 1``, a ``[yolo]`` without a conv right before it, or a bad mask.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        src = sections[0].source if sections else "<cfg>"
        raise CfgError(f"number of classes must be a positive integer, got {num_classes!r}", path=src)
    edits: list[CfgEdit] = []
    for pos, section in enumerate(sections):
        if section.type != "yolo":
            continue
        conv = head_conv(sections, pos)
        r = _Reader(section, YOLO_USED, YOLO_KNOWN, warn=False)  # warnings come from build_specs
        num = r.int("num", 1, minimum=1)
        mask = r.ints("mask")
        n_mask = len(mask) if mask is not None else num
        want_filters = str((num_classes + 5) * n_mask)
        for sec, key, new in ((conv, "filters", want_filters), (section, "classes", str(num_classes))):
            opts = sec.all(key)
            if not opts:
                edits.append(CfgEdit(sec.line, key, None, new, sec.type))
            for opt in opts:
                if opt.value != new:
                    edits.append(CfgEdit(opt.line, key, opt.value, new, sec.type))
    edits.sort(key=lambda e: e.line)
    return edits


def _split_ending(line: str) -> tuple[str, str]:
    for ending in ("\r\n", "\n", "\r"):
        if line.endswith(ending):
            return line[: -len(ending)], ending
    return line, ""


def _replace_value(line: str, key: str, new: str) -> str:
    body, ending = _split_ending(line)
    eq = body.find("=")
    if eq < 0 or body[:eq].strip() != key:  # internal invariant: edits come from parse_cfg lines
        raise AssertionError(f"line {line!r} does not hold {key}=")
    rest = body[eq + 1:]
    cut = min([p for p in (rest.find("#"), rest.find(";")) if p >= 0], default=len(rest))
    region = rest[:cut]
    if region.strip():
        lead = len(region) - len(region.lstrip())
        tail = len(region.rstrip())
    else:
        lead = tail = len(region)
    return body[: eq + 1] + rest[:lead] + new + rest[tail:] + ending


def apply_edits(text: str, edits: list[CfgEdit]) -> str:
    """Patch ``text`` so that only the edited values change; every other byte stays as it was.

    Line endings (LF, CRLF, CR), spacing around ``=`` and inline comments are preserved.
    """
    lines = text.splitlines(keepends=True)
    inserts: dict[int, list[CfgEdit]] = {}
    for edit in edits:
        if edit.old is None:
            inserts.setdefault(edit.line, []).append(edit)
        else:
            lines[edit.line - 1] = _replace_value(lines[edit.line - 1], edit.key, edit.new)
    for line_no in sorted(inserts, reverse=True):
        header = lines[line_no - 1]
        body, ending = _split_ending(header)
        if not ending:
            ending = "\r\n" if "\r\n" in text else "\n"
            lines[line_no - 1] = body + ending
        lines[line_no:line_no] = [f"{e.key}={e.new}{ending}" for e in inserts[line_no]]
    return "".join(lines)


def set_num_classes(text: str, num_classes: int, source: str | os.PathLike = "<cfg>") -> tuple[str, list[CfgEdit]]:
    """Return ``(patched text, edits)`` with every head set to ``num_classes``."""
    edits = class_count_edits(parse_cfg(text, source), num_classes)
    return apply_edits(text, edits), edits


def _format_anchor_value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{float(v):g}"


def patch_anchors(cfg_text: str, anchors, source: str | os.PathLike = "<cfg>") -> str:
    """Return ``cfg_text`` with every ``[yolo] anchors=`` set to ``anchors`` (darknet layout
    ``10,14,  23,27, ...``); every other byte (line endings, comments, spacing) stays as it was.

    Args:
        anchors: ``(num, 2)`` widths, heights in network-input pixels (any sequence of pairs).
    Raises:
        CfgError: no ``[yolo]`` section, a non-positive anchor, or a head whose ``num=`` differs from
            the number of pairs (masks and head filters depend on it; regenerate with that many).
    """
    pairs = [(float(w), float(h)) for w, h in anchors]
    if any(not (w > 0 and h > 0) for w, h in pairs):  # also rejects NaN
        raise CfgError(f"anchors must be positive, got {pairs}", path=source)
    value = ",  ".join(f"{_format_anchor_value(w)},{_format_anchor_value(h)}" for w, h in pairs)
    sections = parse_cfg(cfg_text, source)
    edits: list[CfgEdit] = []
    for section in sections:
        if section.type != "yolo":
            continue
        r = _Reader(section, YOLO_USED, YOLO_KNOWN, warn=False)  # warnings come from build_specs
        num = r.int("num", 1, minimum=1)
        if num != len(pairs):
            raise r.error("num", f"[yolo] has num={num} anchors but {len(pairs)} were given")
        opts = section.all("anchors")
        if not opts:
            edits.append(CfgEdit(section.line, "anchors", None, value, section.type))
        for opt in opts:
            if opt.value != value:
                edits.append(CfgEdit(opt.line, "anchors", opt.value, value, section.type))
    if not any(s.type == "yolo" for s in sections):
        raise CfgError("the cfg has no [yolo] section to take anchors", path=source)
    edits.sort(key=lambda e: e.line)
    return apply_edits(cfg_text, edits)


def load_network_spec(text: str, source: str | os.PathLike = "<cfg>",
                      num_classes: int | None = None) -> tuple[NetworkSpec, list[CfgEdit]]:
    """Parse, optionally patch the class count, validate. Returns the spec (its ``text`` is patched)."""
    edits: list[CfgEdit] = []
    if num_classes is not None:
        text, edits = set_num_classes(text, num_classes, source)
    return parse_network(text, source), edits
