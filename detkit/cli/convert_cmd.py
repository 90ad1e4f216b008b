"""``detkit convert-voc SRC OUT``: Pascal VOC XML dataset -> YOLO/darknet dataset folder."""
from __future__ import annotations

import argparse
import sys

from detkit.convert.options import ConvertOptions
from detkit.convert.summary import imbalance_warning, summary_table
from detkit.convert.voc_to_yolo import convert_voc
from detkit.data.datafiles import read_names


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-voc",
        help="convert a Pascal VOC / labelImg dataset into a YOLO dataset folder",
        description="Convert Pascal VOC XML annotations (VOC year folder, VOCdevkit, or labelImg folders) "
                    "into a YOLO dataset: images/ (ASCII-safe names), labels/, train.txt, val.txt, "
                    "obj.names, obj.data, data.yaml, rename_map.csv, convert_report.json.",
    )
    p.add_argument("src", metavar="SRC", help="dataset folder (read only)")
    p.add_argument("out", metavar="OUT", help="output folder (created; must not be inside SRC)")
    p.add_argument("--names", metavar="FILE", help="names file fixing the class order; other classes are skipped")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of images drawn for val.txt when SRC has no ImageSets split (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val draw (default 0)")
    p.add_argument("--difficult", choices=("skip", "keep"), default="skip",
                   help="leave difficult objects out of the labels (skip, default) or write them (keep)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--link", dest="link", action="store_const", const="link", default="link",
                   help="hard-link images into OUT where possible, else copy (default)")
    g.add_argument("--copy", dest="link", action="store_const", const="copy", help="always copy images")
    p.add_argument("--legacy-offset", action="store_true",
                   help="reproduce darknet's voc_label.py (centre shifted by -1 px, width without +1)")
    p.add_argument("--strict", action="store_true", help="treat any warning or skipped file as an error")
    p.add_argument("--force", action="store_true", help="replace OUT even if it is not an earlier convert-voc output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = tuple(read_names(args.names)) if args.names else None
    opts = ConvertOptions(names=names, val_fraction=args.val_fraction, seed=args.seed,
                          difficult=args.difficult, link=args.link, legacy_offset=args.legacy_offset,
                          strict=args.strict, force=args.force,
                          progress=sys.stderr.isatty() and not getattr(args, "quiet", False))
    res = convert_voc(args.src, args.out, opts)
    quiet = getattr(args, "quiet", False)
    if not quiet:
        splits = ", ".join(f"{k} {v}" for k, v in res.splits.items())
        print(f"converted {res.images} images ({splits}) into {res.out}")
        print(f"class order (obj.names): {', '.join(res.class_names)}")
        print(summary_table(res))
    adv = imbalance_warning(res.per_class)
    if adv:
        print(f"warning: {adv}", file=sys.stderr)
    if res.warnings or res.skipped:
        print(f"{len(res.warnings)} warnings, {len(res.skipped)} skipped files: see {res.report_path}",
              file=sys.stderr)
    elif not quiet:
        print(f"no warnings; report: {res.report_path}")
    return 0
