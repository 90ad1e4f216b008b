"""Sections -> typed, validated, frozen layer specs (the cfg parser); overview of the spec modules.

darknet vocabulary on purpose (``filters``, ``size``, ``pad``, ``mask``) so a spec can be diffed
against its ``.cfg`` lines. Defaults follow darknet's ``src/parser.c`` (behaviour, not code):
conv ``stride=1``, ``pad=0``, ``activation=logistic``; maxpool ``stride=1``, ``size=stride``,
``padding=size-1``; upsample ``stride=2``; yolo ``classes=20``, ``num=1``, ``scale_x_y=1``.

This module holds the per-section parsers (one dispatch dict), the network-level checks and the entry
points :func:`build_specs`, :func:`parse_network`, :func:`load_network_spec`. The rest lives in:

* :mod:`detkit.darknet.spec_types` - the frozen spec dataclasses (``NetSpec``, ``ConvSpec``, ...,
  ``NetworkSpec``);
* :mod:`detkit.darknet.section_reader` - the key vocabulary per section and typed option access;
* :mod:`detkit.darknet.shapes` - shape inference and darknet's FLOP count;
* :mod:`detkit.darknet.cfg_edit` - class-count propagation, anchor patching and the in-place writer.

Import each name from its home module (the layering test checks it); this module exports only its
parser entry points.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
from typing import Callable

from detkit.darknet.cfg import Section, parse_cfg
from detkit.darknet.cfg_edit import CfgEdit, head_conv, set_num_classes
from detkit.darknet.section_reader import (
    AVGPOOL_KNOWN, AVGPOOL_USED, CONV_KNOWN, CONV_NEUTRAL, CONV_USED, DROPOUT_KNOWN, DROPOUT_USED, FROM_KNOWN,
    LOCAL_AVGPOOL_USED, MAXPOOL_KNOWN, MAXPOOL_NEUTRAL, MAXPOOL_USED, NET_KNOWN, NET_USED, REGION_KNOWN,
    REGION_USED, REORG_KNOWN, REORG_USED, ROUTE_KNOWN, ROUTE_USED, SAM_USED, SCALE_CHANNELS_USED,
    SHORTCUT_KNOWN, SHORTCUT_USED, UPSAMPLE_KNOWN, UPSAMPLE_USED, YOLO_KNOWN, YOLO_USED, SectionReader,
)
from detkit.darknet.shapes import infer_shapes
from detkit.darknet.spec_types import (
    AvgPoolSpec, ConvSpec, DropoutSpec, LayerSpec, MaxPoolSpec, NetSpec, NetworkSpec, RegionSpec,
    ReorgOldSpec, ReorgSpec, RouteSpec, SamSpec, ScaleChannelsSpec, ShortcutSpec, UpsampleSpec, YoloSpec,
)
from detkit.errors import CfgError

log = logging.getLogger(__name__)

__all__ = ["SECTION_PARSERS", "build_specs", "parse_network", "load_network_spec", "unsupported_features"]

# sections darknet knows that detkit does not build
OTHER_DARKNET_SECTIONS = (
    "detection", "gaussian_yolo", "local", "deconvolutional", "deconv",
    "connected", "conn", "crop", "cost", "normalization", "lrn", "batchnorm", "softmax", "soft",
    "rnn", "gru", "lstm", "conv_lstm", "crnn", "implicit_add", "implicit_mul", "empty", "silence",
    "contrastive", "activation", "l2norm", "logistic",
)
# why the detection-relevant ones are refused (docs/zoo.md)
REFUSED_SECTIONS = {
    "gaussian_yolo": "[Gaussian_yolo] (Gaussian YOLOv3 box uncertainty head) is not supported by detkit: "
                     "one BDD100K cfg uses it, OpenCV cannot load it; use [yolo]",
    "crnn": "[crnn] (convolutional RNN for video tracking) is not supported by detkit: its output depends "
            "on the previous frames' hidden state",
    "contrastive": "[contrastive] (darknet's self-supervised embedding loss layer) is not supported by detkit",
}
# section name aliases darknet accepts (parser.c string_to_layer_type)
LAYER_ALIASES = {"conv": "convolutional", "max": "maxpool", "avg": "avgpool", "shortcut": "shortcut",
                 "scale_channels": "scale_channels"}


# -- per-section parsers (one dispatch dict) ----------------------------------------------
def _parse_net(section: Section) -> NetSpec:
    r = SectionReader(section, NET_USED, NET_KNOWN)
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
    r = SectionReader(section, CONV_USED, CONV_KNOWN)
    for key, what in (("xnor", "XNOR-net binary convolution"), ("binary", "binary weights")):
        if r.int(key, 0) != 0:
            raise r.error(key, f"{key}=1 ({what}) is not supported by detkit: darknet binarises weights and "
                               "inputs bit-wise there; use the float version of the cfg")
    r.neutral(CONV_NEUTRAL)
    size = r.int("size", 1, minimum=1)
    stride = r.int("stride", 1, minimum=1)
    stride_x = r.int("stride_x", stride, minimum=1)  # darknet: stride_x/stride_y default to stride
    stride_y = r.int("stride_y", stride, minimum=1)
    pad = r.flag("pad", False)
    padding = size // 2 if pad else r.int("padding", 0, minimum=0)  # darknet: pad=1 overrides padding=
    dilation = 1 if size == 1 else r.int("dilation", 1, minimum=1)  # darknet ignores dilation for 1x1
    share = r.int("share_index", -1_000_000)
    share_index = -1
    if share != -1_000_000:
        share_index = index + share if share < 0 else share
        if not 0 <= share_index < index:
            raise r.error("share_index", f"share_index={share} in layer {index} does not point to an earlier layer")
    return ConvSpec(
        index=index, line=section.line, source=section.source,
        filters=r.int("filters", 1, minimum=1), size=size, stride=stride_y, padding=padding,
        groups=r.int("groups", 1, minimum=1), dilation=dilation,
        batch_normalize=r.flag("batch_normalize", False), activation=r.activation(),
        stride_x=stride_x if stride_x != stride_y else 0, share_index=share_index,
    )


def _parse_maxpool(section: Section, index: int) -> MaxPoolSpec:
    r = SectionReader(section, MAXPOOL_USED, MAXPOOL_KNOWN)
    r.neutral(MAXPOOL_NEUTRAL)
    return _pool_spec(r, section, index, average=False)


def _pool_spec(r: SectionReader, section: Section, index: int, average: bool) -> MaxPoolSpec:
    stride = r.int("stride", 1, minimum=1)
    stride_x = r.int("stride_x", stride, minimum=1)
    stride_y = r.int("stride_y", stride, minimum=1)
    size = r.int("size", stride, minimum=1)
    # darknet maxpool: padding = size - 1 by default, extra pixel right/bottom, -inf
    padding = r.int("padding", size - 1, minimum=0)
    return MaxPoolSpec(index=index, line=section.line, source=section.source, size=size, stride=stride_y,
                       padding=padding, stride_x=stride_x if stride_x != stride_y else 0, average=average)


def _parse_local_avgpool(section: Section, index: int) -> MaxPoolSpec:
    return _pool_spec(SectionReader(section, LOCAL_AVGPOOL_USED, MAXPOOL_KNOWN), section, index, average=True)


def _parse_avgpool(section: Section, index: int) -> AvgPoolSpec:
    SectionReader(section, AVGPOOL_USED, AVGPOOL_KNOWN)
    return AvgPoolSpec(index=index, line=section.line, source=section.source)


def _parse_dropout(section: Section, index: int) -> DropoutSpec:
    r = SectionReader(section, DROPOUT_USED, DROPOUT_KNOWN)
    if r.int("dropblock", 0) != 0:
        raise r.error("dropblock", "dropblock=1 in [dropout] is not supported by detkit")
    p = r.float("probability", 0.5)
    if not 0.0 <= p < 1.0:
        raise r.error("probability", f"probability={p} must be in [0, 1)")
    return DropoutSpec(index=index, line=section.line, source=section.source, probability=p)


def _parse_reorg(section: Section, index: int) -> ReorgSpec:
    r = SectionReader(section, REORG_USED, REORG_KNOWN)
    cls = ReorgOldSpec if section.type == "reorg" else ReorgSpec
    if r.flag("reverse", False):
        raise r.error("reverse", f"reverse=1 in [{section.type}] is not supported by detkit")
    return cls(index=index, line=section.line, source=section.source, stride=r.int("stride", 1, minimum=1),
               reverse=r.flag("reverse", False))


def _parse_sam(section: Section, index: int) -> SamSpec:
    r = SectionReader(section, SAM_USED, FROM_KNOWN)
    return SamSpec(index=index, line=section.line, source=section.source, from_=_from(r, index),
                   activation=r.activation(default="linear"))


def _parse_scale_channels(section: Section, index: int) -> ScaleChannelsSpec:
    r = SectionReader(section, SCALE_CHANNELS_USED, FROM_KNOWN)
    return ScaleChannelsSpec(index=index, line=section.line, source=section.source, from_=_from(r, index),
                             scale_wh=r.flag("scale_wh", False), activation=r.activation(default="linear"))


def _from(r: SectionReader, index: int) -> tuple[int, ...]:
    """darknet [sam] / [scale_channels]: ``from=`` is one layer (only the first value is read)."""
    refs = r.ints("from")
    if not refs:
        raise r.error("from", f"[{r.s.type}] needs from= (a layer index)")
    return _absolute(r, "from", refs[:1], index)


def _parse_upsample(section: Section, index: int) -> UpsampleSpec:
    r = SectionReader(section, UPSAMPLE_USED, UPSAMPLE_KNOWN)
    stride = r.int("stride", 2)
    if stride < 1:
        raise r.error("stride", f"upsample stride={stride} (downsampling upsample) is not supported by detkit")
    return UpsampleSpec(index=index, line=section.line, source=section.source, stride=stride,
                        scale=r.float("scale", 1.0))


def _absolute(r: SectionReader, key: str, refs: tuple[int, ...], index: int) -> tuple[int, ...]:
    out = []
    for ref in refs:
        absolute = index + ref if ref < 0 else ref
        if not 0 <= absolute < index:
            raise r.error(key, f"{key}={ref} in layer {index} points to layer {absolute}, "
                               f"which does not exist before it (valid: 0..{index - 1} or -1..-{index})")
        out.append(absolute)
    return tuple(out)


def _parse_route(section: Section, index: int) -> RouteSpec:
    r = SectionReader(section, ROUTE_USED, ROUTE_KNOWN)
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
    r = SectionReader(section, SHORTCUT_USED, SHORTCUT_KNOWN)
    refs = r.ints("from")
    if not refs:
        raise r.error("from", "[shortcut] needs from= (a layer index)")
    wtype = {"per_layer": "per_feature"}.get(r.str("weights_type", "none"), r.str("weights_type", "none"))
    if wtype not in ("none", "per_feature", "per_channel"):
        raise r.error("weights_type", f"weights_type={wtype} (expected none, per_feature, per_layer, per_channel)")
    wnorm = {"avg_relu": "relu"}.get(r.str("weights_normalization", "none"), r.str("weights_normalization", "none"))
    if wnorm not in ("none", "relu", "softmax"):
        raise r.error("weights_normalization", f"weights_normalization={wnorm} (expected none, relu, avg_relu, softmax)")
    return ShortcutSpec(index=index, line=section.line, source=section.source,
                        from_=_absolute(r, "from", refs, index), activation=r.activation(default="linear"),
                        weights_type=wtype, weights_normalization=wnorm if wtype != "none" else "none")


MAX_ANCHORS = 4096  # far above any real cfg (the zoo's largest is 20); bounds what a hostile num= allocates
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _darknet_anchor_values(r: SectionReader, num: int) -> tuple[float, ...]:
    """``anchors=`` read as darknet's ``parse_yolo`` does: comma-separated, each value ``atof``'d
    (its leading number), the first ``2 * num`` used, missing ones 0.5 (``make_yolo_layer``).
    Every departure from a clean list of ``2 * num`` numbers is warned about with the line."""
    opt = r.s.get("anchors")
    if opt is None or not opt.value.strip():
        return ()
    where = f"{r.s.source}:{opt.line}"
    values: list[float] = []
    for tok in opt.value.split(","):
        tok = tok.strip()
        if not tok and not values:
            continue
        m = _NUMBER.match(tok)
        if m is None:
            raise r.error("anchors", f"bad value in anchors=: {tok!r} (expected a number)")
        if m.end() != len(tok):
            log.warning("%s: anchors= value %r is read as %s by darknet (a missing comma?); detkit does the same",
                        where, tok, m.group(0))
        values.append(float(m.group(0)))
    want = 2 * num
    if num > MAX_ANCHORS:
        raise r.error("num", f"num={num} is more anchors than detkit builds (at most {MAX_ANCHORS})")
    if len(values) > want:
        log.warning("%s: anchors= lists %d values, num=%d uses the first %d (darknet ignores the rest)",
                    where, len(values), num, want)
        values = values[:want]
    elif len(values) < want:
        log.warning("%s: anchors= lists %d values but num=%d needs %d; darknet fills the rest with 0.5",
                    where, len(values), num, want)
        values += [0.5] * (want - len(values))
    return tuple(values)


def _parse_yolo(section: Section, index: int) -> YoloSpec:
    r = SectionReader(section, YOLO_USED, YOLO_KNOWN)
    classes = r.int("classes", 20, minimum=1)
    num = r.int("num", 1, minimum=1)
    values = _darknet_anchor_values(r, num)
    if not values:
        raise r.error("anchors", "[yolo] needs anchors= (pairs of width,height in input pixels)")
    anchors = tuple((values[i], values[i + 1]) for i in range(0, len(values), 2))
    if any(w <= 0 or h <= 0 for w, h in anchors):
        raise r.error("anchors", "anchors= must be positive")
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
        max_boxes=r.int("max", 200, minimum=1), new_coords=r.flag("new_coords", False),
        beta_nms=r.float("beta_nms", 0.6), nms_kind=r.str("nms_kind", "default"),
        objectness_smooth=r.flag("objectness_smooth", False), iou_thresh=r.float("iou_thresh", 1.0),
        max_delta=r.float("max_delta", float("inf")),
    )


def _parse_region(section: Section, index: int) -> RegionSpec:
    r = SectionReader(section, REGION_USED, REGION_KNOWN)
    if r.str("tree", "") or r.str("map", ""):
        key = "tree" if r.str("tree", "") else "map"
        raise r.error(key, f"{key}= (YOLO9000 hierarchical softmax over a WordTree file) is not supported by detkit")
    classes = r.int("classes", 20, minimum=1)
    num = r.int("num", 1, minimum=1)
    if num > MAX_ANCHORS:
        raise r.error("num", f"num={num} is more anchors than detkit builds (at most {MAX_ANCHORS})")
    coords = r.int("coords", 4, minimum=4)
    if coords != 4:
        raise r.error("coords", f"coords={coords} in [region] is not supported by detkit (only 4)")
    values = r.floats("anchors") or ()
    if len(values) % 2:
        raise r.error("anchors", f"anchors= has an odd number of values ({len(values)}); expected w,h pairs")
    anchors = tuple((values[i], values[i + 1]) for i in range(0, len(values), 2))
    if not anchors:
        anchors = ((0.5, 0.5),) * num  # darknet: biases default to .5
    if len(anchors) != num:
        raise r.error("num", f"num={num} but anchors= lists {len(anchors)} pairs")
    if any(w <= 0 or h <= 0 for w, h in anchors):
        raise r.error("anchors", "anchors= must be positive")
    return RegionSpec(
        index=index, line=section.line, source=section.source, anchors=anchors, classes=classes, num=num,
        coords=coords, softmax=r.flag("softmax", False), bias_match=r.flag("bias_match", False),
        jitter=r.float("jitter", 0.2), thresh=r.float("thresh", 0.5),
        object_scale=r.float("object_scale", 1.0), noobject_scale=r.float("noobject_scale", 1.0),
        class_scale=r.float("class_scale", 1.0), coord_scale=r.float("coord_scale", 1.0),
        rescore=r.flag("rescore", False), absolute=r.flag("absolute", False), random=r.float("random", 0.0),
    )


SECTION_PARSERS: dict[str, Callable[[Section, int], LayerSpec]] = {
    "convolutional": _parse_conv,
    "maxpool": _parse_maxpool,
    "upsample": _parse_upsample,
    "route": _parse_route,
    "shortcut": _parse_shortcut,
    "yolo": _parse_yolo,
    "region": _parse_region,
    "reorg": _parse_reorg,
    "reorg3d": _parse_reorg,
    "avgpool": _parse_avgpool,
    "local_avgpool": _parse_local_avgpool,
    "dropout": _parse_dropout,
    "sam": _parse_sam,
    "scale_channels": _parse_scale_channels,
}


def _unknown_section(section: Section) -> CfgError:
    valid = ", ".join(["net"] + list(SECTION_PARSERS))
    if section.type in REFUSED_SECTIONS:
        return CfgError(REFUSED_SECTIONS[section.type], path=section.source, line=section.line)
    if section.type in OTHER_DARKNET_SECTIONS:
        return CfgError(f"[{section.type}] is a darknet section detkit does not support (supported: {valid})",
                        path=section.source, line=section.line)
    hint = difflib.get_close_matches(section.type, ["net", "network", *SECTION_PARSERS], n=1, cutoff=0.6)
    extra = f"; did you mean [{hint[0]}]?" if hint else ""
    return CfgError(f"unknown section [{section.type}]{extra} (supported: {valid})",
                    path=section.source, line=section.line)


# -- network-level checks -----------------------------------------------------------------
def _check_head_filters(sections: list[Section], layer_specs: list[LayerSpec]) -> None:
    layer_sections = sections[1:]
    for pos, spec in enumerate(layer_specs):
        if not isinstance(spec, (YoloSpec, RegionSpec)):
            continue
        prev = layer_specs[pos - 1] if pos >= 1 else None
        if not isinstance(prev, ConvSpec):
            head_conv(layer_sections, pos)  # raises with the right message
            continue
        if isinstance(spec, RegionSpec):
            want = spec.num * (spec.classes + spec.coords + 1)
            rule = (f"num * (classes + coords + 1) = {spec.num} * ({spec.classes} + {spec.coords} + 1)")
        else:
            want = (spec.classes + 5) * len(spec.mask)
            rule = f"(classes + 5) * len(mask) = ({spec.classes} + 5) * {len(spec.mask)}"
        if prev.filters != want:
            opt = layer_sections[pos - 1].get("filters")
            line = opt.line if opt else prev.line
            raise CfgError(
                f"filters={prev.filters} of the [convolutional] at line {prev.line} feeding the [{spec.type}] at "
                f"line {spec.line} must be {rule} "
                f"= {want}; set filters={want} (or use --classes / num_classes to patch every head)",
                path=spec.source, line=line)


def _check_yolo_outputs_unused(layers: list[LayerSpec]) -> None:
    """A [yolo] layer is an output: nothing may consume it (darknet would feed its activated
    copy forward, which detkit does not model)."""
    yolo_idx = {layer.index for layer in layers if isinstance(layer, (YoloSpec, RegionSpec))}
    for layer in layers:
        refs = layer.layers if isinstance(layer, RouteSpec) else getattr(layer, "from_", ())
        used = sorted(yolo_idx.intersection(refs))
        direct = layer.index - 1 in yolo_idx and not isinstance(layer, RouteSpec)
        if used or direct:
            which = used[0] if used else layer.index - 1
            raise CfgError(f"layer {layer.index} [{layer.type}] takes the output of the [yolo] layer {which}; "
                           "detkit supports [yolo] only as an output (follow it with a [route])",
                           path=layer.source, line=layer.line)


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
        parser = SECTION_PARSERS.get(LAYER_ALIASES.get(section.type, section.type))
        if parser is None:
            raise _unknown_section(section)
        layers.append(parser(section, pos))
    if not layers:
        raise CfgError("the cfg defines no layers after [net]", path=sections[0].source, line=sections[0].line)
    _check_head_filters(sections, layers)
    _check_yolo_outputs_unused(layers)
    heads = [layer for layer in layers if isinstance(layer, (YoloSpec, RegionSpec))]
    if len({h.classes for h in heads}) > 1:
        detail = ", ".join(f"line {h.line}: classes={h.classes}" for h in heads)
        raise CfgError(f"[yolo] heads disagree on classes ({detail}); use --classes N to set them all",
                       path=heads[0].source, line=heads[0].line)
    spec = NetworkSpec(net=net, layers=tuple(layers), source=sections[0].source, text=text)
    infer_shapes(spec)
    return spec


def unsupported_features(text: str, source: str | os.PathLike = "<cfg>") -> list[CfgError]:
    """Every section or key of the cfg that detkit does not support, each as a :class:`CfgError`
    naming its line (``detkit cfg --check``). Other errors (bad values, shapes) are not collected
    here; :func:`parse_network` reports the first of those."""
    found: list[CfgError] = []
    for pos, section in enumerate(parse_cfg(text, source)[1:]):
        parser = SECTION_PARSERS.get(LAYER_ALIASES.get(section.type, section.type))
        if parser is None:
            found.append(_unknown_section(section))
            continue
        try:
            parser(section, pos)
        except CfgError as exc:
            if "not supported by detkit" in str(exc):
                found.append(exc)
    return found


def parse_network(text: str, source: str | os.PathLike = "<cfg>") -> NetworkSpec:
    """cfg text -> validated :class:`NetworkSpec` (no class-count change)."""
    return build_specs(parse_cfg(text, source), text)


def load_network_spec(text: str, source: str | os.PathLike = "<cfg>",
                      num_classes: int | None = None) -> tuple[NetworkSpec, list[CfgEdit]]:
    """Parse, optionally patch the class count, validate. Returns the spec (its ``text`` is patched)."""
    edits: list[CfgEdit] = []
    if num_classes is not None:
        text, edits = set_num_classes(text, num_classes, source)
    return parse_network(text, source), edits
