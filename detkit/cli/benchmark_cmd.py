"""``detkit benchmark``: detkit's inference paths vs OpenCV DNN (and pytorchyolo) on one machine
(:func:`detkit.bench.run.run_benchmark`). See docs/benchmarks_inference.md."""
from __future__ import annotations

import argparse
import os


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark", help="time detkit inference against OpenCV DNN on this machine",
        description="Batch-1 latency (PyTorch, onnxruntime, OpenVINO fp32/bf16/int8) and end-to-end images/s "
                    "(in one process and as whole processes) of detkit against OpenCV DNN's darknet importer on "
                    "the same cfg + weights, in one run, with the compute floor. Run it on a quiet machine.")
    p.add_argument("--cfg", default=None, help="darknet cfg (default: the repo's cfg/yolov3-tiny.cfg)")
    p.add_argument("--weights", default=None,
                   help="darknet .weights (default ../shared/weights/yolov3-tiny.weights) or, for --data, "
                        "a detkit checkpoint")
    p.add_argument("--names", default=None, help="class names of the weights (default ../shared/weights/coco.names)")
    p.add_argument("--images", default=None,
                   help="folder of images for the end-to-end run (default ../shared/data/raccoon/JPEGImages)")
    p.add_argument("--limit", type=int, default=200, help="images in the end-to-end run (default 200)")
    p.add_argument("--size", type=int, default=416, help="network input size (default 416)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every engine (default 2)")
    p.add_argument("--warmup", type=int, default=5, help="latency warm-up calls per contender (default 5)")
    p.add_argument("--iters", type=int, default=30, help="timed latency calls per contender (default 30)")
    p.add_argument("--e2e-batch", type=int, default=8, help="detkit detect --batch in the end-to-end run (default 8)")
    p.add_argument("--e2e-rounds", type=int, default=3,
                   help="interleaved end-to-end rounds; the table shows each pipeline's median run (default 3)")
    p.add_argument("--compile", action="store_true", help="also time the fast paths under torch.compile (slow start)")
    p.add_argument("--pytorchyolo-path", default=None,
                   help="folder holding the pytorchyolo package (pip install --no-deps --target DIR pytorchyolo)")
    p.add_argument("--data", default=None,
                   help="obj.data / data.yaml: instead, measure VOC mAP@0.5 on its validation split for every path "
                        "(use a model fine-tuned on that data as --weights, with its --cfg)")
    p.add_argument("--skip", default="",
                   help="comma-separated parts to skip: latency, e2e, process (the whole-process runs), int8 (the "
                        "onnxruntime int8 contenders), openvino")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 warm-up + 3 timed calls, 20 images, 1 round (not a measurement)")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from detkit.bench.run import BenchOptions, run_benchmark

    opts = BenchOptions(cfg=args.cfg, weights=args.weights, names=args.names, images=args.images, limit=args.limit,
                        size=args.size, threads=args.threads, warmup=args.warmup, iters=args.iters,
                        e2e_batch=args.e2e_batch, e2e_rounds=args.e2e_rounds, compile=args.compile,
                        pytorchyolo_path=args.pytorchyolo_path, data=args.data,
                        skip={s.strip() for s in args.skip.split(",") if s.strip()}, quick=args.quick, json=args.json)
    run_benchmark(opts)
    return 0
