"""Benchmark the detkit forward pass against OpenCV DNN's darknet importer (same cfg + weights, same run).

    .venv/bin/python tools/bench_forward.py                       # full run (quiet machine!)
    .venv/bin/python tools/bench_forward.py --quick               # smoke run: few iterations

Modes (batch 1 and 8 at 416x416, ``--threads`` intra-op threads, torch.inference_mode, eval()):
fp32 NCHW, fp32 channels_last, bf16 autocast channels_last, and OpenCV DNN 4.x (DNN_BACKEND_OPENCV,
DNN_TARGET_CPU). The forward includes the yolo decode for detkit and the yolo layers for OpenCV.
Prints a markdown table: median and best latency per batch, per image, and the speed-up against OpenCV
(OpenCV median / detkit median; > 1 means detkit is faster). Not imported by detkit.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cfg", default=str(REPO / "cfg" / "yolov3-tiny.cfg"))
    p.add_argument("--weights", default=None,
                   help="darknet .weights (default ../shared/weights/yolov3-tiny.weights when the cfg is "
                        "yolov3-tiny and it exists, else random weights written to a temp file)")
    p.add_argument("--size", type=int, default=416, help="square input size (multiple of 32)")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for torch and OpenCV")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="1 warm-up and 3 timed iterations per cell")
    p.add_argument("--modes", default="fp32-nchw,fp32-cl,bf16-cl,opencv")
    return p.parse_args(argv)


def timed(fn, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.warmup, args.iters = 1, 3
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import cv2
    import torch

    import detkit

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    model = detkit.build_model(args.cfg)
    tmpdir = None
    weights = args.weights
    shared = REPO.parent / "shared" / "weights" / "yolov3-tiny.weights"
    if weights is None and Path(args.cfg).stem == "yolov3-tiny" and shared.is_file():
        weights = str(shared)
    if weights is None:
        tmpdir = tempfile.TemporaryDirectory()
        weights = os.path.join(tmpdir.name, "random.weights")
        with torch.no_grad():
            for _, layer in model.conv_layers:
                if layer.bn is not None:
                    layer.bn.running_var.uniform_(0.5, 2.0)
        detkit.save_darknet_weights(model, weights)
    detkit.load_darknet_weights(model, weights)
    model.eval()

    rng = np.random.default_rng(0)
    batches = [int(b) for b in args.batches.split(",")]
    modes = args.modes.split(",")
    results: dict[tuple[str, int], list[float]] = {}
    net = None
    if "opencv" in modes:
        net = cv2.dnn.readNetFromDarknet(args.cfg, weights)
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        out_names = net.getUnconnectedOutLayersNames()
    for batch in batches:
        blob = rng.random((batch, 3, args.size, args.size), dtype=np.float32)
        x = torch.from_numpy(blob)
        for mode in modes:
            if mode == "opencv":
                def run(blob=blob):
                    net.setInput(blob)
                    return net.forward(out_names)
            else:
                fmt = torch.channels_last if mode.endswith("-cl") else torch.contiguous_format
                model.to(memory_format=fmt)
                assert model.channels_last == (fmt is torch.channels_last)  # forward follows the params
                xin = x.contiguous(memory_format=fmt)
                bf16 = mode.startswith("bf16")

                def run(xin=xin, bf16=bf16):
                    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        return model(xin)
            results[(mode, batch)] = timed(run, args.warmup, args.iters)
            print(f"  {mode:10s} batch {batch}: median {statistics.median(results[(mode, batch)]):8.2f} ms",
                  file=sys.stderr)
    print(format_table(results, args, weights))
    if tmpdir is not None:
        tmpdir.cleanup()
    return 0


def format_table(results: dict[tuple[str, int], list[float]], args: argparse.Namespace, weights: str) -> str:
    import cv2
    import torch

    lines = [
        f"cfg `{Path(args.cfg).name}`, weights `{Path(weights).name}`, input {args.size}x{args.size}, "
        f"{args.threads} threads, {args.iters} timed iterations after {args.warmup} warm-up"
        f"{' (--quick: NOT a measurement)' if args.quick else ''}; torch {torch.__version__}, "
        f"OpenCV {cv2.__version__}, {platform.processor() or platform.machine()}",
        "",
        "| mode | batch | median ms | best ms | ms / image | speed-up vs OpenCV |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (mode, batch), times in results.items():
        med = statistics.median(times)
        ref = results.get(("opencv", batch))
        ratio = f"{statistics.median(ref) / med:.2f}x" if ref else "n/a"
        lines.append(f"| {mode} | {batch} | {med:.2f} | {min(times):.2f} | {med / batch:.2f} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
