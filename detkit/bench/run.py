"""``detkit benchmark`` as a library call: :class:`BenchOptions` -> :func:`run_benchmark` measures and
prints the markdown tables (latency with the compute floor, end to end in one process and as whole
processes, accuracy with ``data``) and returns the numbers (the ``--json`` content)."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from detkit.bench import end_to_end as e2e
from detkit.bench.accuracy import accuracy
from detkit.bench.latency import build_int8, build_openvino_int8, latency
from detkit.bench.machine import (compute_floor, default_shared, load_average, machine_line, nncf_available,
                                  onnxruntime_available, openvino_available, temp_dir)
from detkit.errors import DataError, WeightsError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
PARTS = ("latency", "e2e", "process", "int8", "openvino")


@dataclass
class BenchOptions:
    """One ``detkit benchmark`` run (see ``detkit benchmark --help``)."""

    cfg: str | None = None
    weights: str | None = None
    names: str | None = None
    images: str | None = None
    limit: int = 200
    size: int = 416
    threads: int = 2
    warmup: int = 5
    iters: int = 30
    e2e_batch: int = 8
    e2e_rounds: int = 3
    compile: bool = False
    pytorchyolo_path: str | None = None
    data: str | None = None
    skip: set[str] = field(default_factory=set)
    quick: bool = False
    json: str | None = None


def _say(msg: str) -> None:
    print(f"[benchmark] {msg}", file=sys.stderr, flush=True)


def _median_runs(by_name: dict[str, list]) -> list:
    return [sorted(rs, key=lambda r: r.seconds)[len(rs) // 2] for rs in by_name.values()]


def _spread(rs: list) -> str:
    s = sorted(r.seconds for r in rs)
    return f"{s[0]:.2f}-{s[-1]:.2f} s" if len(s) > 1 else ""


def resolve_inputs(opts: BenchOptions) -> tuple[str, str, str, Path, list[Path]]:
    """cfg, weights, names, image folder and images (defaults from the repository and ../shared)."""
    repo = Path(__file__).resolve().parents[2]
    shared = default_shared()
    cfg = opts.cfg or str(repo / "cfg" / "yolov3-tiny.cfg")
    weights = opts.weights or str(shared / "weights" / "yolov3-tiny.weights")
    names = opts.names or str(shared / "weights" / "coco.names")
    if not Path(cfg).is_file() and (repo / "cfg" / f"{cfg}.cfg").is_file():
        cfg = str(repo / "cfg" / f"{cfg}.cfg")  # a builtin name; OpenCV needs the file's path
    if not Path(cfg).is_file():
        raise DataError("cfg file not found", path=cfg)
    if not Path(weights).is_file():
        raise WeightsError("weights file not found (pass --weights)", path=weights)
    unknown = set(opts.skip) - set(PARTS)
    if unknown:
        raise DataError(f"--skip takes {', '.join(PARTS)}; got {', '.join(sorted(unknown))}")
    folder = Path(opts.images) if opts.images else shared / "data" / "raccoon" / "JPEGImages"
    images = (sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:opts.limit]
              if folder.is_dir() else [])
    return cfg, weights, names, folder, images


def run_benchmark(opts: BenchOptions, echo: Callable[[str], None] = print,
                  say: Callable[[str], None] = _say) -> dict:
    """Measure and print (``echo``: tables, ``say``: progress); returns the results dict."""
    import cv2
    import torch

    cfg, weights, names, folder, images = resolve_inputs(opts)
    if opts.quick:
        opts.warmup, opts.iters, opts.limit, opts.e2e_rounds = 1, 3, min(opts.limit, 20), 1
        images = images[:opts.limit]
    skip = set(opts.skip)
    torch.set_num_threads(opts.threads)
    cv2.setNumThreads(opts.threads)
    results: dict = {"machine": machine_line(opts.threads), "cfg": cfg, "weights": weights,
                     "size": opts.size, "quick": opts.quick}
    echo(f"# detkit benchmark{' (--quick: NOT a measurement)' if opts.quick else ''}\n")
    echo(f"{results['machine']}; cfg `{Path(cfg).name}`, weights `{Path(weights).name}`, "
         f"input {opts.size}x{opts.size}; no GPU used\n")
    int8 = "int8" not in skip and onnxruntime_available()
    ov = "openvino" not in skip and openvino_available()
    if "int8" not in skip and not int8:
        say("int8 contenders skipped: onnx/onnxruntime are not installed")
    if "openvino" not in skip and not ov:
        say("OpenVINO contenders skipped: openvino is not installed")
    if "latency" not in skip and not opts.data:
        results.update(_latency_table(opts, cfg, weights, images if images and (int8 or ov) else None, ov, echo, say))
    if "e2e" not in skip and not opts.data:
        if not folder.is_dir():
            raise DataError("image folder for the end-to-end run not found (pass --images)", path=folder)
        if not images:
            raise DataError("no images in the folder", path=folder)
        if not Path(names).is_file():
            raise DataError("names file not found (pass --names)", path=names)
        results.update(_end_to_end_tables(opts, cfg, weights, names, folder, images, int8, ov, skip, echo, say))
    if opts.data:
        say(f"accuracy: VOC mAP@0.5 on the validation split of {opts.data}")
        acc = accuracy(cfg, weights, opts.data, size=opts.size, int8=int8, openvino=ov)
        ref = acc[0].map50
        echo(f"## Accuracy: VOC mAP@0.5 (all-point) on the validation split of `{opts.data}`\n")
        echo("| path | mAP@0.5 | difference to plain fp32 | images | detections (score > 0.005) |")
        echo("|---|---:|---:|---:|---:|")
        for a in acc:
            echo(f"| {a.name} | {a.map50:.4f} | {a.map50 - ref:+.4f} | {a.images} | {a.detections} |")
        echo("\nTarget: every fast path within 0.005 of plain fp32.\n")
        results["accuracy"] = [{"name": a.name, "map50": a.map50, "diff": a.map50 - ref} for a in acc]
    echo(f"Machine state at the end: {load_average()}.\n")
    if opts.json:
        from detkit.data.datafiles import write_text_atomic

        write_text_atomic(opts.json, json.dumps(results, indent=1) + "\n")
    return results


def _latency_table(opts: BenchOptions, cfg: str, weights: str, calibration, ov: bool, echo, say) -> dict:
    say("latency: round-robin over the contenders")
    timings = latency(cfg, weights, opts.size, 1, opts.warmup, opts.iters, compile=opts.compile,
                      pytorchyolo_path=opts.pytorchyolo_path, progress=say,
                      int8_calibration=calibration, openvino=ov)
    ref = next(t for t in timings if t.name.startswith("OpenCV")).median
    echo(f"## Batch-1 model latency (forward + yolo decode; {opts.iters} timed calls each after "
         f"{opts.warmup} warm-up, round-robin)\n")
    echo("| contender | median ms | p10-p90 ms | x OpenCV DNN latency | note |")
    echo("|---|---:|---:|---:|---|")
    for t in timings:
        if not t.times_ms:
            echo(f"| {t.name} | - | - | - | {t.note} |")
            continue
        s = sorted(t.times_ms)
        p10, p90 = s[int(0.1 * (len(s) - 1))], s[int(round(0.9 * (len(s) - 1)))]
        echo(f"| {t.name} | {t.median:.1f} | {p10:.1f}-{p90:.1f} | {t.median / ref:.2f}x | {t.note} |")
    engines = [t for t in timings if t.times_ms and ("OpenVINO" in t.name or "onnxruntime" in t.name)
               and "default" not in t.name]
    default = next((t for t in timings if t.times_ms and "detect's default model" in t.name), None)
    if engines and default is not None:
        for kind, group in (("float", [t for t in engines if "int8" not in t.name]),
                            ("int8 (needs a calibrated file)", [t for t in engines if "int8" in t.name])):
            if group:
                best = min(group, key=lambda t: t.median)
                echo(f"\ndetect's default model: {default.median:.1f} ms = {default.median / best.median:.2f}x the best "
                     f"{kind} engine run directly ({best.name}, {best.median:.1f} ms); target <= 1.15x of the best.")
    floor = compute_floor(cfg, opts.size)
    echo(f"\nCompute floor: {floor['conv_gflop']:.3f} GFLOP of convolutions per image; this machine's "
         f"{opts.threads}-thread matmul peak is {floor['fp32_gemm_gflops']:.0f} GFLOPS in fp32 and "
         f"{floor['bf16_gemm_gflops']:.0f} in bf16, so computing every convolution directly takes at least "
         f"{floor['fp32_floor_ms']:.1f} ms in fp32 ({floor['fp32_floor_ms'] / ref:.2f}x OpenCV DNN's median) "
         f"and {floor['bf16_floor_ms']:.1f} ms in bf16 ({floor['bf16_floor_ms'] / ref:.2f}x).\n")
    return {"compute_floor": floor,
            "latency": [{"name": t.name, "median_ms": t.median if t.times_ms else None,
                         "best_ms": t.best if t.times_ms else None, "note": t.note,
                         "ratio_to_opencv": t.median / ref if t.times_ms else None} for t in timings]}


def _end_to_end_tables(opts: BenchOptions, cfg: str, weights: str, names: str, folder: Path, images: list[Path],
                       int8: bool, ov: bool, skip: set[str], echo, say) -> dict:
    from detkit.infer.loading import load_model

    rounds = max(1, opts.e2e_rounds)
    out: dict = {}
    with temp_dir() as tmp_name:
        tmp = Path(tmp_name)
        def run(label: str, weights_: str = weights, **kw):
            key = f"d{len(label)}{abs(hash(label)) % 10000}"
            return lambda k: e2e.end_to_end_detkit(cfg, weights_, names, images, tmp / f"{key}_{k}", opts.size,
                                                   opts.e2e_batch, label=label, **kw)

        contenders = [
            ("OpenCV DNN loop", lambda k: e2e.end_to_end_opencv(cfg, weights, images, tmp / f"cv{k}.json", opts.size)),
            ("detkit detect (default)", run("detkit detect (default: --backend auto)")),
            ("detkit detect --backend torch", run("detkit detect --backend torch (PyTorch fast path)", backend="torch")),
            ("detkit detect --no-fast", run("detkit detect --backend torch --no-fast (plain fp32)", backend="torch",
                                            fast=False)),
        ]
        model = None
        int8_files: dict[str, Path] = {}
        if int8 or (ov and nncf_available()):
            say("end-to-end: quantising the int8 files (a one-time export, not timed)")
            model, _ = load_model(cfg, weights, checkpoints=False, purpose="the benchmark")
        if int8:
            path, note = build_int8(model, images, tmp, opts.size)
            int8_files["onnx"] = path
            contenders.append(("detkit detect --weights int8.onnx", run(
                f"detkit detect --weights int8.onnx (onnxruntime; {note})", weights_=str(path))))
        if ov and nncf_available():
            path, note = build_openvino_int8(model, images, tmp, opts.size)
            int8_files["openvino"] = path
            contenders.append(("detkit detect --weights int8.xml", run(
                f"detkit detect --weights int8.xml (OpenVINO; {note})", weights_=str(path))))
        by_name: dict[str, list] = {}
        for k in range(rounds):  # interleaved rounds: a change of load hits every pipeline alike
            for name, fn in contenders:
                say(f"end-to-end round {k + 1}/{rounds}: {name} over {len(images)} images")
                by_name.setdefault(name, []).append(fn(k))
        runs = _median_runs(by_name)
        ref = runs[0].images_per_s
        echo(f"## End to end in one process: {len(images)} images from `{folder}` -> JSON (imports before the "
             f"clock, model loading included; median of {rounds} interleaved round(s))\n")
        echo("| pipeline | seconds | spread | images/s | x OpenCV DNN images/s | detections | note |")
        echo("|---|---:|---|---:|---:|---:|---|")
        for r, rs in zip(runs, by_name.values()):
            echo(f"| {r.name} | {r.seconds:.2f} | {_spread(rs)} | {r.images_per_s:.1f} | {r.images_per_s / ref:.2f}x | "
                 f"{r.detections} | {r.note} |")
        echo(f"\ndetkit letterboxes (aspect kept) with --batch {opts.e2e_batch}; the OpenCV loop stretches "
             "(blobFromImage) one image at a time.\n")
        out["end_to_end"] = [{"name": r.name, "seconds": r.seconds, "images_per_s": r.images_per_s,
                              "detections": r.detections, "note": r.note, "ratio_to_opencv": r.images_per_s / ref}
                             for r in runs]
        if "process" not in skip:
            out["end_to_end_process"] = _process_table(opts, cfg, weights, names, folder, images, int8_files, tmp,
                                                       rounds, echo, say)
    return out


def _process_table(opts: BenchOptions, cfg: str, weights: str, names: str, folder: Path, images: list[Path],
                   int8_files: dict[str, Path], tmp: Path, rounds: int, echo, say) -> list[dict]:
    listing = e2e.write_listing(images, tmp / "process" / "images.txt")
    env = {"OMP_NUM_THREADS": str(opts.threads)}
    n = len(images)

    def det(label: str, key: str, w: str, with_cfg: bool = True, no_images: bool = True, extra: tuple = ()):
        def fn(k: int):
            out = tmp / "process" / f"{key}{k}"
            argv = e2e.detect_process_argv(w, names, listing, out, opts.size, opts.e2e_batch,
                                           cfg if with_cfg else None, no_images, extra)
            return e2e.end_to_end_process(label, argv, n, out / "detections.json", env)
        return label, fn

    contenders = [
        ("python -m detkit.bench.opencv_loop (cv2 + numpy only)", lambda k: e2e.end_to_end_process(
            "OpenCV DNN loop process (imread, blobFromImage, forward, NMSBoxes)",
            e2e.opencv_process_argv(cfg, weights, listing, tmp / "process" / f"cv{k}.json", opts.size, opts.threads),
            n, tmp / "process" / f"cv{k}.json", env)),
        det("detkit detect --no-images (default backend)", "auto", weights),
        det("detkit detect (default backend, annotated images written)", "img", weights, no_images=False),
        det("detkit detect --no-images --backend torch", "torch", weights, extra=("--backend", "torch")),
    ]
    if "openvino" in int8_files:
        contenders.append(det("detkit detect --no-images --weights int8.xml (OpenVINO int8)", "ov8",
                              str(int8_files["openvino"]), with_cfg=False))
    if "onnx" in int8_files:
        contenders.append(det("detkit detect --no-images --weights int8.onnx (onnxruntime int8)", "ort8",
                              str(int8_files["onnx"]), with_cfg=False))
    say("whole-process runs: a first untimed detect run fills the converted-model cache")
    first = e2e.detect_process_argv(weights, names, listing, tmp / "process" / "warm", opts.size, opts.e2e_batch, cfg)
    warm = e2e.end_to_end_process("warm-up", first, n, tmp / "process" / "warm" / "detections.json", env)
    by_name: dict[str, list] = {}
    for k in range(rounds):
        for name, fn in contenders:
            say(f"whole-process round {k + 1}/{rounds}: {name}")
            by_name.setdefault(name, []).append(fn(k))
    runs = _median_runs(by_name)
    ref = runs[0].images_per_s
    echo(f"## End to end as whole processes: {n} images -> JSON (interpreter start, imports, model load / "
         f"compile and the run; median of {rounds} interleaved round(s); OMP_NUM_THREADS={opts.threads})\n")
    echo("| process | seconds | spread | images/s | x OpenCV DNN loop | detections | note |")
    echo("|---|---:|---|---:|---:|---:|---|")
    for r, rs in zip(runs, by_name.values()):
        echo(f"| {r.name} | {r.seconds:.2f} | {_spread(rs)} | {r.images_per_s:.1f} | {r.images_per_s / ref:.2f}x | "
             f"{r.detections} | {r.note} |")
    echo(f"\nThe first `detkit detect` process of the session (before the table) took {warm.seconds:.2f} s "
         "(it converts cfg + weights to the cached IR unless an earlier run did; later runs reuse it).")
    echo(f"\nTarget: `detkit detect --no-images` >= 2x the OpenCV loop's images/s on a CPU without AMX (4x with AMX). "
         f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')} in this process.\n")
    return [{"name": r.name, "seconds": r.seconds, "images_per_s": r.images_per_s, "detections": r.detections,
             "note": r.note, "ratio_to_opencv": r.images_per_s / ref} for r in runs]
