"""``detkit stats``: dataset statistics (counts per class, unlabelled images, box sizes) as tables, PNG and JSON."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from detkit.errors import DataError

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "stats", help="dataset statistics: images, objects per class, box sizes",
        description="Exact counts for a dataset split: images, objects and images per class (with an "
                    "imbalance warning), images without a label file or with an empty one, and box "
                    "width/height/area/aspect distributions (area in pixels at the network size, "
                    "letterboxed).")
    p.add_argument("--data", required=True, help="obj.data or data.yaml")
    p.add_argument("--split", choices=["train", "val", "all"], default="train", help="which split (default train)")
    p.add_argument("--img-size", default="416", help="network input N or WxH for box areas (default 416)")
    p.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots into this folder")
    p.add_argument("--json", default=None, metavar="FILE", help="write the statistics as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detkit.data.datafiles import load_data_config
    from detkit.data.stats import compute_stats, format_stats, write_stats_json, write_stats_plots
    from detkit.cli.anchors_cmd import parse_size_arg

    try:
        img_size = parse_size_arg(args.img_size)
    except ValueError as exc:
        raise DataError(f"--img-size: {exc}") from None
    if args.json and not Path(args.json).parent.is_dir():
        raise DataError("output folder does not exist", path=Path(args.json).parent)
    config = load_data_config(args.data)
    stats = compute_stats(config, args.split, img_size)
    print(format_stats(stats))
    for w in stats.warnings:
        print(f"warning: {w}")
    if args.plots:
        written = write_stats_plots(stats, args.plots)
        print(f"plots: {', '.join(str(p) for p in written)}")
    if args.json:
        write_stats_json(stats, args.json)
        print(f"json: {args.json}")
    return 0
