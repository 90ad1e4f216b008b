"""``detkit benchmark``: detkit's inference paths vs OpenCV DNN (and pytorchyolo) on one machine.

Prints markdown tables: batch-1 model latency with ratios to OpenCV DNN, end-to-end images/s over a
folder of JPEGs (decode -> resize -> model -> NMS -> JSON) against a plain OpenCV DNN loop, and,
with ``--data``, VOC mAP@0.5 of the float32 and fast paths. See docs/benchmarks_inference.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from detkit.errors import DataError, WeightsError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark", help="time detkit inference against OpenCV DNN on this machine",
        description="Batch-1 latency and end-to-end images/s of detkit (plain fp32 and the fast path) "
                    "against OpenCV DNN's darknet importer on the same cfg + weights, in one run. Run it on "
                    "a quiet machine.")
    p.add_argument("--cfg", default=None, help="darknet cfg (default: the repo's cfg/yolov3-tiny.cfg)")
    p.add_argument("--weights", default=None,
                   help="darknet .weights (default ../shared/weights/yolov3-tiny.weights) or, for --data, "
                        "a detkit checkpoint")
    p.add_argument("--names", default=None, help="class names of the weights (default ../shared/weights/coco.names)")
    p.add_argument("--images", default=None,
                   help="folder of images for the end-to-end run (default ../shared/data/raccoon/JPEGImages)")
    p.add_argument("--limit", type=int, default=200, help="images in the end-to-end run (default 200)")
    p.add_argument("--size", type=int, default=416, help="network input size (default 416)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for torch and OpenCV (default 2)")
    p.add_argument("--warmup", type=int, default=5, help="latency warm-up calls per contender (default 5)")
    p.add_argument("--iters", type=int, default=30, help="timed latency calls per contender (default 30)")
    p.add_argument("--e2e-batch", type=int, default=8, help="detkit detect --batch in the end-to-end run (default 8)")
    p.add_argument("--e2e-rounds", type=int, default=3,
                   help="interleaved end-to-end rounds; the table shows each pipeline's median run (default 3)")
    p.add_argument("--compile", action="store_true", help="also time the fast paths under torch.compile (slow start)")
    p.add_argument("--pytorchyolo-path", default=None,
                   help="folder holding the pytorchyolo package (pip install --no-deps --target DIR pytorchyolo)")
    p.add_argument("--data", default=None,
                   help="obj.data / data.yaml: also measure VOC mAP@0.5 on its validation split for the fp32 "
                        "and fast paths (use a model fine-tuned on that data as --weights, with its --cfg)")
    p.add_argument("--skip", default="",
                   help="comma-separated parts to skip: latency, e2e, int8 (the ONNX/onnxruntime contenders)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 warm-up + 3 timed calls, 20 images (not a measurement)")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    p.set_defaults(func=run)


def _say(msg: str) -> None:
    print(f"[benchmark] {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import cv2
    import torch

    from detkit.bench import benchmark as bm
    from detkit.infer.loading import load_model

    repo = Path(__file__).resolve().parents[2]
    shared = bm.default_shared()
    cfg = args.cfg or str(repo / "cfg" / "yolov3-tiny.cfg")
    weights = args.weights or str(shared / "weights" / "yolov3-tiny.weights")
    names = args.names or str(shared / "weights" / "coco.names")
    if not Path(cfg).is_file() and (repo / "cfg" / f"{cfg}.cfg").is_file():
        cfg = str(repo / "cfg" / f"{cfg}.cfg")  # a builtin name; OpenCV needs the file's path
    if not Path(cfg).is_file():
        raise DataError("cfg file not found", path=cfg)
    if not Path(weights).is_file():
        raise WeightsError("weights file not found (pass --weights)", path=weights)
    if args.quick:
        args.warmup, args.iters, args.limit, args.e2e_rounds = 1, 3, min(args.limit, 20), 1
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    results: dict = {"machine": bm.machine_line(args.threads), "cfg": cfg, "weights": weights,
                     "size": args.size, "quick": args.quick}
    print(f"# detkit benchmark{' (--quick: NOT a measurement)' if args.quick else ''}\n")
    print(f"{results['machine']}; cfg `{Path(cfg).name}`, weights `{Path(weights).name}`, "
          f"input {args.size}x{args.size}\n")

    folder = Path(args.images) if args.images else shared / "data" / "raccoon" / "JPEGImages"
    images = (sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:args.limit]
              if folder.is_dir() else [])
    int8 = "int8" not in skip and bm.onnxruntime_available()
    if "int8" not in skip and not int8:
        _say("int8 contenders skipped: onnx/onnxruntime are not installed")
    if "latency" not in skip and not args.data:
        _say("latency: round-robin over the contenders")
        timings = bm.latency(cfg, weights, args.size, 1, args.warmup, args.iters, compile=args.compile,
                             pytorchyolo_path=args.pytorchyolo_path, progress=_say,
                             int8_calibration=images if int8 and images else None)
        ref = next(t for t in timings if t.name.startswith("OpenCV")).median
        print(f"## Batch-1 model latency (forward + yolo decode; {args.iters} timed calls each after "
              f"{args.warmup} warm-up, round-robin)\n")
        print("| contender | median ms | best ms | x OpenCV DNN latency | note |")
        print("|---|---:|---:|---:|---|")
        for t in timings:
            if not t.times_ms:
                print(f"| {t.name} | - | - | - | {t.note} |")
                continue
            print(f"| {t.name} | {t.median:.1f} | {t.best:.1f} | {t.median / ref:.2f}x | {t.note} |")
        print("\nTargets: fast path <= 0.40x, plain fp32 <= 0.70x OpenCV DNN's latency. The int8 file "
              "(detkit export --format onnx-int8) is calibrated on the end-to-end images.\n")
        floor = bm.compute_floor(cfg, args.size)
        print(f"Compute floor: {floor['conv_gflop']:.3f} GFLOP of convolutions per image; this machine's "
              f"{args.threads}-thread matmul peak is {floor['fp32_gemm_gflops']:.0f} GFLOPS in fp32 and "
              f"{floor['bf16_gemm_gflops']:.0f} in bf16, so computing every convolution directly takes at least "
              f"{floor['fp32_floor_ms']:.1f} ms in fp32 ({floor['fp32_floor_ms'] / ref:.2f}x OpenCV DNN's median) "
              f"and {floor['bf16_floor_ms']:.1f} ms in bf16 ({floor['bf16_floor_ms'] / ref:.2f}x).\n")
        results["compute_floor"] = floor
        results["latency"] = [{"name": t.name, "median_ms": t.median if t.times_ms else None,
                               "best_ms": t.best if t.times_ms else None, "note": t.note,
                               "ratio_to_opencv": t.median / ref if t.times_ms else None} for t in timings]

    if "e2e" not in skip and not args.data:
        if not folder.is_dir():
            raise DataError("image folder for the end-to-end run not found (pass --images)", path=folder)
        if not images:
            raise DataError("no images in the folder", path=folder)
        if not Path(names).is_file():
            raise DataError("names file not found (pass --names)", path=names)
        rounds = max(1, args.e2e_rounds)
        by_name: dict[str, list] = {}
        with bm.temp_dir() as tmp:
            contenders = [
                ("OpenCV DNN loop", lambda k: bm.end_to_end_opencv(cfg, weights, images, Path(tmp) / f"cv{k}.json",
                                                                   args.size)),
                ("detkit detect (fast path, default)", lambda k: bm.end_to_end_detkit(
                    cfg, weights, names, images, Path(tmp) / f"fast{k}", args.size, args.e2e_batch,
                    label="detkit detect (fast path, default)")),
                ("detkit detect --no-fast", lambda k: bm.end_to_end_detkit(
                    cfg, weights, names, images, Path(tmp) / f"plain{k}", args.size, args.e2e_batch,
                    fast=False, label="detkit detect --no-fast (plain fp32)")),
            ]
            if int8:
                _say("end-to-end: quantising the int8 ONNX file (a one-time export, not timed)")
                model, _ = load_model(cfg, weights, checkpoints=False, purpose="the benchmark")
                int8_path, note = bm.build_int8(model, images, Path(tmp), args.size)
                contenders.append(("detkit detect --weights int8.onnx", lambda k: bm.end_to_end_detkit(
                    cfg, str(int8_path), names, images, Path(tmp) / f"int8{k}", args.size, args.e2e_batch,
                    label=f"detkit detect --weights int8.onnx (onnxruntime; {note})")))
            for k in range(rounds):  # interleaved rounds: a change of load hits every pipeline alike
                for name, fn in contenders:
                    _say(f"end-to-end round {k + 1}/{rounds}: {name} over {len(images)} images")
                    by_name.setdefault(name, []).append(fn(k))
        runs = [sorted(rs, key=lambda r: r.seconds)[len(rs) // 2] for rs in by_name.values()]  # median run
        ref = runs[0].images_per_s
        print(f"## End to end: {len(images)} images from `{folder}` -> JSON (model loading included; "
              f"median of {rounds} interleaved round(s))\n")
        print("| pipeline | seconds | images/s | x OpenCV DNN images/s | detections | note |")
        print("|---|---:|---:|---:|---:|---|")
        for r in runs:
            print(f"| {r.name} | {r.seconds:.2f} | {r.images_per_s:.1f} | {r.images_per_s / ref:.2f}x | "
                  f"{r.detections} | {r.note} |")
        print(f"\nTarget: detkit detect >= 2x OpenCV DNN's images/s. detkit letterboxes (aspect kept) "
              f"with --batch {args.e2e_batch}; the OpenCV loop stretches (blobFromImage) one image at a time.\n")
        results["end_to_end"] = [{"name": r.name, "seconds": r.seconds, "images_per_s": r.images_per_s,
                                  "detections": r.detections, "note": r.note,
                                  "ratio_to_opencv": r.images_per_s / ref} for r in runs]

    if args.data:
        _say(f"accuracy: VOC mAP@0.5 on the validation split of {args.data}")
        acc = bm.accuracy(cfg, weights, args.data, size=args.size, int8=int8)
        ref = acc[0].map50
        print(f"## Accuracy: VOC mAP@0.5 (all-point) on the validation split of `{args.data}`\n")
        print("| path | mAP@0.5 | difference to plain fp32 | images | detections (score > 0.005) |")
        print("|---|---:|---:|---:|---:|")
        for a in acc:
            print(f"| {a.name} | {a.map50:.4f} | {a.map50 - ref:+.4f} | {a.images} | {a.detections} |")
        print("\nTarget: the fast path within 0.005 of plain fp32.\n")
        results["accuracy"] = [{"name": a.name, "map50": a.map50, "diff": a.map50 - ref} for a in acc]

    if args.json:
        from detkit.data.datafiles import write_text_atomic

        write_text_atomic(args.json, json.dumps(results, indent=1) + "\n")
    return 0
