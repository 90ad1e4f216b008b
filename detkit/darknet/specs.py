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

Every name below in ``__all__`` stays importable from here.
"""
from __future__ import annotations

import difflib
import os
from typing import Callable

from detkit.darknet.cfg import Section, parse_cfg
from detkit.darknet.cfg_edit import (
    CfgEdit, apply_edits, class_count_edits, head_conv, patch_anchors, set_num_classes,
)
from detkit.darknet.section_reader import (
    CONV_KNOWN, CONV_NEUTRAL, CONV_USED, MAXPOOL_KNOWN, MAXPOOL_NEUTRAL, MAXPOOL_USED, NET_KNOWN, NET_USED,
    ROUTE_KNOWN, ROUTE_USED, SHORTCUT_KNOWN, SHORTCUT_USED, UPSAMPLE_KNOWN, UPSAMPLE_USED, YOLO_KNOWN,
    YOLO_USED, _Reader,
)
from detkit.darknet.shapes import conv_flops, conv_gflop, infer_shapes
from detkit.darknet.spec_types import (
    ConvSpec, LayerBase, LayerSpec, MaxPoolSpec, NetSpec, NetworkSpec, RouteSpec, ShortcutSpec,
    UpsampleSpec, YoloSpec,
)
from detkit.errors import CfgError

__all__ = [
    # parser (this module)
    "SECTION_PARSERS", "build_specs", "parse_network", "load_network_spec",
    # spec types
    "NetSpec", "LayerBase", "ConvSpec", "MaxPoolSpec", "UpsampleSpec", "RouteSpec", "ShortcutSpec",
    "YoloSpec", "LayerSpec", "NetworkSpec",
    # shapes
    "conv_flops", "conv_gflop", "infer_shapes",
    # cfg editor
    "CfgEdit", "head_conv", "class_count_edits", "apply_edits", "set_num_classes", "patch_anchors",
]

# sections darknet knows that detkit does not build
OTHER_DARKNET_SECTIONS = (
    "region", "detection", "gaussian_yolo", "local", "conv", "deconvolutional", "deconv",
    "connected", "conn", "crop", "cost", "normalization", "lrn", "batchnorm", "softmax", "soft",
    "dropout", "avgpool", "avg", "reorg", "reorg3d", "rnn", "gru", "lstm", "conv_lstm", "crnn",
    "sam", "scale_channels", "implicit_add", "implicit_mul", "empty", "silence", "contrastive",
    "activation", "l2norm", "logistic", "local_avgpool",
)


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


def load_network_spec(text: str, source: str | os.PathLike = "<cfg>",
                      num_classes: int | None = None) -> tuple[NetworkSpec, list[CfgEdit]]:
    """Parse, optionally patch the class count, validate. Returns the spec (its ``text`` is patched)."""
    edits: list[CfgEdit] = []
    if num_classes is not None:
        text, edits = set_num_classes(text, num_classes, source)
    return parse_network(text, source), edits
