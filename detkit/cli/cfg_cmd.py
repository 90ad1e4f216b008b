"""``detkit cfg``: set a cfg's class count (every [yolo] classes= and its conv's filters=) and/or
check a cfg and print its layer table."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from detkit.errors import CfgError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "cfg", help="patch a darknet cfg's class count, or check it and print its layers",
        description="With --classes N (or --names FILE): rewrite every [yolo] classes= and the filters= of "
                    "the [convolutional] before it to (N + 5) * len(mask), changing nothing else in the file "
                    "(line endings, comments and spacing are kept, so darknet can use the result). "
                    "With --check: validate the cfg and print a layer table with output shapes, parameters "
                    "and BFLOPs, then 'supported', or every unsupported feature with its line (exit 1).")
    p.add_argument("--cfg", required=True, help="a darknet .cfg file or a builtin name (yolov3-tiny, yolov4-tiny, yolov7-tiny, ...)")
    count = p.add_mutually_exclusive_group()
    count.add_argument("--classes", type=int, default=None, metavar="N", help="number of classes to set")
    count.add_argument("--names", default=None, metavar="FILE",
                       help="a names file (one class per line); its line count is the number of classes")
    p.add_argument("-o", "--output", default=None, metavar="OUT.cfg",
                   help="write the patched cfg here (atomically; never over the input). Without it the "
                        "changes are only listed")
    p.add_argument("--check", action="store_true", help="validate and print the layer table and totals")
    p.add_argument("--anchors", default=None, metavar="'W,H,  W,H, ...'",
                   help="set every [yolo] anchors= to these pairs (e.g. the line `detkit anchors` prints)")
    p.add_argument("--img-size", default=None, metavar="N|WxH",
                   help="input size for the --check table (default: the cfg's width x height)")
    p.set_defaults(func=run)


def _parse_size(text: str) -> tuple[int, int]:
    """``"416"`` or ``"608x320"`` (width x height) -> (width, height)."""
    parts = text.lower().split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise CfgError(f"--img-size: expected N or WxH, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise CfgError(f"--img-size: expected N or WxH with positive values, got {text!r}")
    return values[0], values[1]


def run(args: argparse.Namespace) -> int:
    from detkit.darknet.cfg import resolve_cfg
    from detkit.darknet.specs import parse_network, unsupported_features
    from detkit.darknet.cfg_edit import set_num_classes

    text, source = resolve_cfg(args.cfg)
    if args.check:
        problems = unsupported_features(text, source)
        if problems:
            print(f"{source}: unsupported by detkit ({len(problems)} feature(s)):")
            for exc in problems:
                print(f"  {exc}")
            return 1
    num_classes = args.classes
    if args.names is not None:
        from detkit.data.datafiles import read_names

        num_classes = len(read_names(args.names))
    if num_classes is None and args.anchors is None and args.output is not None:
        raise CfgError("-o needs --classes N or --names FILE (nothing to change)")
    if num_classes is None and args.anchors is None and not args.check:
        raise CfgError("nothing to do: give --classes N / --names FILE, and/or --check")

    if args.output is not None:
        _check_output(Path(args.output), source)
    if args.anchors is not None:
        text = _apply_anchors(text, args.anchors, source)
    if num_classes is not None:
        text, edits = set_num_classes(text, num_classes, source)
        spec = parse_network(text, source)  # the result must build
        if edits:
            print(f"{source}: {len(edits)} change(s) for {num_classes} classes")
            for e in edits:
                what = f"added {e.key}={e.new} after line {e.line}" if e.old is None \
                    else f"{e.key}={e.old} -> {e.new}"
                print(f"  line {e.line:>4} [{e.section}] {what}")
        else:
            print(f"{source}: already set for {num_classes} classes, no change")
        if args.output is not None:
            _write_cfg(Path(args.output), text, source)
            print(f"wrote {args.output}")
        elif edits:
            print("(dry run: use -o OUT.cfg to write the patched cfg)")
    else:
        spec = parse_network(text, source)
        if args.anchors is not None and args.output is not None:
            _write_cfg(Path(args.output), text, source)
            print(f"wrote {args.output}")
        elif args.anchors is not None:
            print("(dry run: use -o OUT.cfg to write the patched cfg)")

    if args.check:
        size = _parse_size(args.img_size) if args.img_size else (spec.net.width, spec.net.height)
        print(format_layer_table(spec, size))
        print("supported")
    return 0


def _apply_anchors(text: str, value: str, source: str) -> str:
    """``--anchors "10,14,  23,27"`` -> cfg text with every [yolo] anchors= set (see specs.patch_anchors)."""
    from detkit.darknet.cfg_edit import patch_anchors

    try:
        nums = [float(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise CfgError(f"--anchors: expected comma-separated numbers 'w,h, w,h, ...', got {value!r}") from None
    if not nums or len(nums) % 2:
        raise CfgError(f"--anchors: expected an even number of values (w,h pairs), got {len(nums)}")
    pairs = [(nums[i], nums[i + 1]) for i in range(0, len(nums), 2)]
    patched = patch_anchors(text, pairs, source)
    print(f"{source}: anchors= set to {len(pairs)} pairs in every [yolo]"
          + ("" if patched != text else " (no change)"))
    return patched


def _check_output(out: Path, source: str) -> None:
    src = Path(source)
    if src.is_file() and out.exists() and os.path.samefile(out, src):
        raise CfgError("refusing to overwrite the input cfg; choose another -o", path=out)
    if not out.parent.is_dir():
        raise CfgError("output folder does not exist", path=out.parent)


def _write_cfg(out: Path, text: str, source: str) -> None:
    from detkit.fileio import write_bytes_atomic

    _check_output(out, source)
    write_bytes_atomic(out, text.encode("utf-8"))  # bytes: CRLF and every other byte kept


def format_layer_table(spec, size: tuple[int, int]) -> str:
    """The ``--check`` table: one row per layer and the totals (darknet-style BFLOPs)."""
    from detkit.darknet.shapes import conv_flops, infer_shapes
    from detkit.darknet.spec_types import (
        ConvSpec, MaxPoolSpec, RegionSpec, ReorgSpec, RouteSpec, SamSpec, ScaleChannelsSpec, ShortcutSpec,
        UpsampleSpec, YoloSpec,
    )

    width, height = size
    shapes = infer_shapes(spec, (spec.net.channels, height, width))
    rows = [("#", "type", "filters", "size/strd", "input", "output", "params", "BFLOPs")]
    total_params = 0
    total_flops = 0.0
    prev = (spec.net.channels, height, width)
    for layer, out in zip(spec.layers, shapes):
        filters = size_stride = ""
        params = 0
        flops = 0.0
        kind = layer.type
        if isinstance(layer, ConvSpec):
            filters = str(layer.filters)
            sy, sx = layer.strides
            size_stride = f"{layer.size}x{layer.size}/{sy if sx == sy else f'{sx}x{sy}'}"
            if layer.dilation > 1:
                size_stride += f" d{layer.dilation}"
            n_weights = layer.filters * (prev[0] // layer.groups) * layer.size * layer.size
            if layer.share_index < 0:
                params = n_weights + (2 if layer.batch_normalize else 1) * layer.filters
            flops = conv_flops(layer, prev[0], out[1], out[2]) / 1e9
            kind = f"conv {layer.activation}" + (" bn" if layer.batch_normalize else "")
            if layer.groups > 1:
                kind += f" g{layer.groups}"
            if layer.share_index >= 0:
                kind += f" shares {layer.share_index}"
        elif isinstance(layer, MaxPoolSpec):
            sy, sx = layer.strides
            size_stride = f"{layer.size}x{layer.size}/{sy if sx == sy else f'{sx}x{sy}'}"
            kind = "local_avgpool" if layer.average else "maxpool"
            flops = layer.size * layer.size * out[0] * out[1] * out[2] / 1e9  # as AlexeyAB's darknet counts it
        elif isinstance(layer, ReorgSpec):
            size_stride = f"/{layer.stride}"
        elif isinstance(layer, (SamSpec, ScaleChannelsSpec)):
            kind = f"{layer.type} {layer.from_[0]}"
        elif isinstance(layer, RegionSpec):
            kind = f"region {layer.num} anchors" + (" softmax" if layer.softmax else "")
            filters = f"{layer.classes} cls"
        elif isinstance(layer, UpsampleSpec):
            size_stride = f"x{layer.stride}"
        elif isinstance(layer, RouteSpec):
            kind = "route " + ",".join(str(i) for i in layer.layers)
            if layer.groups > 1:
                kind += f" g{layer.group_id}/{layer.groups}"
        elif isinstance(layer, ShortcutSpec):
            kind = "shortcut " + ",".join(str(i) for i in layer.from_)
            if layer.weights_type != "none":
                kind += f" {layer.weights_type}/{layer.weights_normalization}"
                params = (len(layer.from_) + 1) * (out[0] if layer.weights_type == "per_channel" else 1)
        elif isinstance(layer, YoloSpec):
            kind = f"yolo mask {','.join(str(m) for m in layer.mask)}" + (" new_coords" if layer.new_coords else "")
            filters = f"{layer.classes} cls"
        total_params += params
        total_flops += flops
        rows.append((str(layer.index), kind, filters, size_stride,
                     "" if isinstance(layer, RouteSpec) else f"{prev[2]}x{prev[1]}x{prev[0]}", f"{out[2]}x{out[1]}x{out[0]}",
                     f"{params:,}" if params else "", f"{flops:.3f}" if flops else ""))
        prev = out
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i in (0, 2, 6, 7) else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    heads = spec.yolo_layers
    lines.append(f"{len(spec.layers)} layers, {len(heads)} detection heads, {spec.num_classes} classes, "
                 f"input {width}x{height}x{spec.net.channels}, {total_params:,} parameters, "
                 f"{total_flops:.3f} BFLOPs")
    return "\n".join(lines)
