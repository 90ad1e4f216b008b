"""Shape and FLOP inference over a :class:`~detkit.darknet.spec_types.NetworkSpec`: the output
``(C, H, W)`` of every layer (with impossible-shape errors) and darknet's convolution FLOP count.
"""
from __future__ import annotations

from detkit.darknet.spec_types import (
    AvgPoolSpec, ConvSpec, DropoutSpec, MaxPoolSpec, NetworkSpec, RegionSpec, ReorgSpec, RouteSpec, SamSpec,
    ScaleChannelsSpec, ShortcutSpec, UpsampleSpec, YoloSpec,
)
from detkit.errors import CfgError


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
            if layer.share_index >= 0:
                other = spec.layers[layer.share_index]
                if not isinstance(other, ConvSpec) or other.share_index >= 0:
                    raise fail(f"share_index points to layer {layer.share_index} [{other.type}], not a conv with weights")
                in_other = shapes[other.index - 1][0] if other.index else c
                if (other.filters, other.size, other.groups, other.batch_normalize, in_other) != \
                        (layer.filters, layer.size, layer.groups, layer.batch_normalize, pc):
                    raise fail(f"share_index={layer.share_index}: that conv's weights have another shape")
            span = layer.dilation * (layer.size - 1) + 1
            sy, sx = layer.strides
            pad = layer.padding * layer.dilation  # darknet: im2col pads pad * dilation
            oh = (ph + 2 * pad - span) // sy + 1
            ow = (pw + 2 * pad - span) // sx + 1
            # darknet sizes the output as if undilated; both agree when pad = (size - 1) / 2
            if layer.dilation > 1 and (oh, ow) != ((ph + 2 * layer.padding - layer.size) // sy + 1,
                                                   (pw + 2 * layer.padding - layer.size) // sx + 1):
                raise fail(f"dilation={layer.dilation} with padding={layer.padding} and size={layer.size}: "
                           "darknet's output size ignores the dilation there; not supported by detkit "
                           "(use pad=1 with an odd size)")
            out = (layer.filters, oh, ow)
        elif isinstance(layer, MaxPoolSpec):
            sy, sx = layer.strides
            out = (pc, (ph + layer.padding - layer.size) // sy + 1, (pw + layer.padding - layer.size) // sx + 1)
        elif isinstance(layer, AvgPoolSpec):
            out = (pc, 1, 1)
        elif isinstance(layer, DropoutSpec):
            out = prev
        elif isinstance(layer, ReorgSpec):
            st = layer.stride
            if layer.reverse:
                if pc % (st * st):
                    raise fail(f"reverse reorg stride={st} needs channels ({pc}) divisible by {st * st}")
                out = (pc // (st * st), ph * st, pw * st)
            else:
                if ph % st or pw % st or (layer.old and pc % (st * st)):
                    need = f"and channels ({pc}) divisible by {st * st}" if layer.old else ""
                    raise fail(f"reorg stride={st} needs height and width ({ph}x{pw}) divisible by {st} {need}".rstrip())
                out = (pc * st * st, ph // st, pw // st)
        elif isinstance(layer, SamSpec):
            src = shapes[layer.from_[0]]
            if src != prev:
                raise fail(f"[sam] from layer {layer.from_[0]} {src[0]}x{src[1]}x{src[2]} does not match the previous "
                           f"output {pc}x{ph}x{pw}")
            out = prev
        elif isinstance(layer, ScaleChannelsSpec):
            src = shapes[layer.from_[0]]
            want = (1, src[1], src[2]) if layer.scale_wh else (src[0], 1, 1)
            if prev != want:
                raise fail(f"[scale_channels] needs the previous output to be {want[0]}x{want[1]}x{want[2]} for "
                           f"layer {layer.from_[0]} ({src[0]}x{src[1]}x{src[2]}), got {pc}x{ph}x{pw}")
            out = src
        elif isinstance(layer, RegionSpec):
            want = layer.num * (layer.classes + layer.coords + 1)
            if pc != want:
                raise fail(f"input has {pc} channels but num * (classes + coords + 1) = {want}")
            out = prev
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
            for i in layer.from_:  # darknet: other channel counts add into the first channels
                if shapes[i][1:] != prev[1:]:
                    raise fail(f"shortcut from layer {i} {shapes[i][0]}x{shapes[i][1]}x{shapes[i][2]} does not "
                               f"match the previous output {pc}x{ph}x{pw} in height and width")
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
