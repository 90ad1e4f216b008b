"""``detkit anchors``: k-means anchors (1 - IoU) over a dataset's training boxes, letterbox-aware."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from detkit.errors import DataError

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "anchors", help="compute anchors for a dataset by k-means (1 - IoU)",
        description="k-means with the 1 - IoU distance (shapes centred at the origin, k-means++ seeding) over "
                    "the training boxes, measured as they appear in the letterboxed network input. Prints "
                    "the anchors in darknet's cfg format and their mean best IoU; with --cfg also the cfg's "
                    "current anchors' mean best IoU, with --write-cfg a copy of the cfg using the new anchors.")
    p.add_argument("--data", required=True, help="obj.data or data.yaml (its training split is used)")
    p.add_argument("--num", type=int, default=None,
                   help="number of anchors (default: the cfg's num= with --cfg, else 9)")
    p.add_argument("--img-size", default=None,
                   help="network input N or WxH (default: the cfg's width x height, else 416)")
    p.add_argument("--seed", type=int, default=0, help="k-means++ seed (default 0)")
    p.add_argument("--cfg", default=None, help="compare with this cfg's anchors (file or builtin name)")
    p.add_argument("--write-cfg", default=None, metavar="OUT.cfg",
                   help="write --cfg with the new anchors to this file (every other byte kept)")
    p.set_defaults(func=run)


def parse_size_arg(value: str) -> tuple[int, int]:
    """``"416"`` / ``"608x352"`` -> (W, H), positive multiples of 32 (the rule of
    :func:`detkit.infer.predict.parse_img_size`, without importing torch for a data command)."""
    parts = value.lower().replace(",", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"image size must be N or WxH, got {value!r}") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or any(n <= 0 or n % 32 for n in nums):
        raise ValueError(f"image size must be N or WxH with positive multiples of 32, got {value!r}")
    return nums[0], nums[1]


def run(args: argparse.Namespace) -> int:
    from detkit.darknet.cfg import resolve_cfg
    from detkit.darknet.specs import parse_network
    from detkit.darknet.cfg_edit import patch_anchors
    from detkit.data.anchors import dataset_anchors, format_anchors, mean_best_iou
    from detkit.data.datafiles import load_data_config, write_text_atomic

    if args.write_cfg and not args.cfg:
        raise DataError("--write-cfg needs --cfg (the cfg to copy with the new anchors)")
    spec = cfg_text = cfg_source = None
    if args.cfg:
        cfg_text, cfg_source = resolve_cfg(args.cfg)
        spec = parse_network(cfg_text, cfg_source)
        if not spec.yolo_layers:
            raise DataError("the cfg has no [yolo] layer", path=cfg_source)
    try:
        if args.img_size is not None:
            img_size = parse_size_arg(args.img_size)
        else:
            img_size = (spec.net.width, spec.net.height) if spec is not None else (416, 416)
    except ValueError as exc:
        raise DataError(f"--img-size: {exc}") from None
    num = args.num if args.num is not None else (spec.yolo_layers[0].num if spec is not None else 9)
    if num < 1:
        raise DataError(f"--num must be >= 1, got {num}")
    if spec is not None and args.write_cfg and num != spec.yolo_layers[0].num:
        raise DataError(f"--num {num} differs from the cfg's num={spec.yolo_layers[0].num}; "
                        "--write-cfg keeps the cfg's masks, so it needs that many anchors", path=cfg_source)

    config = load_data_config(args.data)
    result, sizes = dataset_anchors(config, num, img_size, seed=args.seed)
    notes = []
    if sizes.missing_labels:
        notes.append(f"{sizes.missing_labels} without a label file")
    if sizes.unreadable:
        notes.append(f"{sizes.unreadable} unreadable (skipped)")
    if sizes.skipped_boxes:
        notes.append(f"{sizes.skipped_boxes} zero-size boxes skipped")
    print(f"{len(sizes.wh)} boxes in {sizes.images} training images"
          + (f" ({'; '.join(notes)})" if notes else "")
          + f", network input {img_size[0]}x{img_size[1]} (letterboxed), k={num}, seed={args.seed}, "
          f"{result.iterations} iterations")
    print(f"anchors = {format_anchors(result.rounded)}")
    print(f"avg IoU (new anchors): {result.avg_iou:.4f}")
    if spec is not None:
        current = spec.yolo_layers[0].anchors
        cur_iou = mean_best_iou(sizes.wh, current)
        print(f"avg IoU (cfg anchors {format_anchors(current)}): {cur_iou:.4f}")
    if args.write_cfg:
        out = Path(args.write_cfg)
        if not out.parent.is_dir():
            raise DataError("output folder does not exist", path=out.parent)
        # patch_anchors keeps every other byte (CRLF, comments); write_text_atomic translates nothing
        write_text_atomic(out, patch_anchors(cfg_text, result.rounded.tolist(), cfg_source))
        print(f"wrote {out}")
    return 0

