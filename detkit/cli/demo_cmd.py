"""``detkit demo``: the whole job on a generated dataset, in one command
(:func:`detkit.demo.pipeline.run_demo`)."""
from __future__ import annotations

import argparse

from detkit.demo.pipeline import DemoSettings, run_demo


def add_parser(subparsers) -> None:
    d = DemoSettings()
    p = subparsers.add_parser(
        "demo",
        help="generate a 2-class VOC dataset, convert it, train yolov3-tiny from scratch, evaluate",
        description="The main job on an embedded default: generate a small 2-class Pascal VOC dataset "
                    "(circles and squares; some Chinese file and folder names), convert it with "
                    "convert-voc, train yolov3-tiny (2 classes) from scratch, evaluate the held-out split "
                    "with VOC mAP@0.5 and print the table. About 10 minutes on a 2-core CPU.",
    )
    p.add_argument("--out", default=d.out, help=f"demo folder (default {d.out}; never overwritten: "
                                                "an existing one gets a numbered sibling)")
    p.add_argument("--images", type=int, default=d.images, help=f"images to generate (default {d.images})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"training epochs (default {d.epochs})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of everything (default {d.seed})")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--img-size", type=int, default=d.img_size,
                   help=f"network input side, multiple of 32 (default {d.img_size})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"images per step (default {d.batch})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    p.add_argument("--workers", type=int, default=d.workers, help=f"data-loading workers (default {d.workers})")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="torch CPU threads (default 0 = CPU cores minus data workers, unless OMP_NUM_THREADS is set)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="train in float32 (default: bf16 autocast)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = DemoSettings(out=args.out, images=args.images, epochs=args.epochs, seed=args.seed,
                            device=args.device, img_size=args.img_size, batch=args.batch, lr=args.lr,
                            workers=args.workers, threads=args.threads, amp=args.amp)
    run_demo(settings)
    return 0
