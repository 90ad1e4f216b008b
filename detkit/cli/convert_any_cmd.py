"""``detkit convert SRC OUT --to yolo|coco|voc``: any annotation format (VOC XML, COCO JSON, YOLO) to any other."""
from __future__ import annotations

import argparse
import sys

from detkit.convert.any_format import convert_dataset
from detkit.convert.options import DatasetOptions
from detkit.convert.summary import imbalance_warning, summary_table
from detkit.data.datafiles import read_names


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a dataset between Pascal VOC XML, COCO JSON and YOLO (any direction)",
        description="Convert annotations between Pascal VOC XML (VOC year folders, labelImg), COCO JSON "
                    "(instances_*.json, CVAT / Label Studio / Roboflow exports) and YOLO (data.yaml, obj.data, "
                    "plain folders), with ASCII-safe names, rename_map.csv and convert_report.json. "
                    "convert-voc is the VOC -> YOLO shorthand.",
    )
    p.add_argument("src", metavar="SRC", help="dataset folder, or a COCO .json file (read only)")
    p.add_argument("out", metavar="OUT", help="output folder (created; must not be inside SRC)")
    p.add_argument("--to", required=True, choices=("yolo", "coco", "voc"), help="format to write")
    p.add_argument("--from", dest="source", default="auto", choices=("auto", "voc", "yolo", "coco"),
                   help="format of SRC (default: detected)")
    p.add_argument("--images", metavar="DIR", help="folder holding the images of a COCO file (default: beside it, "
                                                    "its images/ folder, SRC, SRC/images)")
    p.add_argument("--names", metavar="FILE", help="names file fixing the class order; other classes are skipped")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of images drawn for val when SRC gives no split (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val draw (default 0)")
    p.add_argument("--difficult", choices=("skip", "keep"), default="skip",
                   help="YOLO output: leave difficult objects out (skip, default) or write them (keep)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--link", dest="link", action="store_const", const="link", default="link",
                   help="hard-link images into OUT where possible, else copy (default)")
    g.add_argument("--copy", dest="link", action="store_const", const="copy", help="always copy images")
    p.add_argument("--strict", action="store_true", help="treat any warning or skipped file as an error")
    p.add_argument("--force", action="store_true", help="replace OUT even if it is not an earlier detkit output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet = getattr(args, "quiet", False)
    opts = DatasetOptions(to=args.to, source=args.source, images=args.images,
                          names=tuple(read_names(args.names)) if args.names else None,
                          val_fraction=args.val_fraction, seed=args.seed, difficult=args.difficult, link=args.link,
                          strict=args.strict, force=args.force, progress=sys.stderr.isatty() and not quiet)
    res = convert_dataset(args.src, args.out, opts)
    if not quiet:
        splits = ", ".join(f"{k} {v}" for k, v in res.splits.items())
        print(f"converted {res.images} images ({res.report['from']} -> {res.report['to']}; {splits}) into {res.out}")
        print(f"class order: {', '.join(res.class_names)}")
        print(summary_table(res))
    adv = imbalance_warning(res.per_class)
    if adv:
        print(f"warning: {adv}", file=sys.stderr)
    if res.warnings or res.skipped:
        print(f"{len(res.warnings)} warnings, {len(res.skipped)} skipped entries: see {res.report_path}",
              file=sys.stderr)
    elif not quiet:
        print(f"no warnings; report: {res.report_path}")
    return 0
