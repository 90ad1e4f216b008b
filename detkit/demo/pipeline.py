"""The demo workflow behind ``detkit demo``: the whole job on a generated dataset, in one call
(:func:`run_demo`).

Stages (each one the same public function its own subcommand uses; no private training loop):

1. generate  a 2-class Pascal VOC dataset (:func:`detkit.data.synth.generate_voc_dataset`) under
   ``OUT/voc/数据集/`` — Chinese folder and file names included, ``ImageSets/Main`` split;
2. convert   ``detkit convert-voc`` (:func:`detkit.convert.voc_to_yolo.convert_voc`) into ``OUT/yolo/``
   (ASCII-safe names, ``obj.data``; the VOC split is kept, ``val`` is the held-out split);
3. anchors   ``detkit anchors`` (:func:`detkit.data.anchors.dataset_anchors`): k-means anchors of the
   training boxes at the network size, written into ``OUT/yolov3-tiny-demo.cfg``;
4. train     ``detkit train`` (:func:`detkit.train.trainer.train`) yolov3-tiny with 2 classes from
   scratch into ``OUT/train/``;
5. evaluate  ``detkit eval --metric voc`` (:func:`detkit.evaluate.run.evaluate_model`) of the final
   (EMA) weights on the held-out split: table, ``OUT/eval/metrics.json``, PR plots.

The defaults are tuned so that on a 2-core CPU the demo ends within 10 minutes at VOC mAP@0.5 of
0.8 or more on the held-out split (see docs/demo.md for the measured figures).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from detkit.errors import DataError

log = logging.getLogger(__name__)

#: the built-in cfg the demo trains (resolved by detkit.darknet.cfg like any --cfg value)
DEMO_CFG = "yolov3-tiny.cfg"


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo run depends on (saved as ``OUT/demo_settings.json``).

    Attributes:
        out: the demo folder; an existing non-empty folder is never reused (``out2``, ``out3``, ...).
        images: generated images (train + held-out val). val_fraction: share held out.
        epochs: training epochs. batch: images per optimizer step. lr: SGD learning rate after
            burn-in (cosine decay to 1% at the end). burn_in: warm-up steps.
        img_size: network input side, pixels (square, multiple of 32).
        image_size: generated image (width, height), pixels.
        seed: seeds generation, the split, augmentation and initialisation.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``.
        amp: autocast (bfloat16 on CPU). workers: data-loading worker processes.
        threads: torch intra-op threads during the demo; 0 = automatic: the CPU cores this process
            may use minus the data workers (at least 1), unless ``OMP_NUM_THREADS`` is set. Compute
            threads that share a core with the data worker (or with other jobs) stall each other at
            every OpenMP barrier: on the 2-core development machine under load, 2 threads + 1
            worker trained 4x slower than 1 thread + 1 worker.
        val_images: images of the held-out split used for the per-epoch validation during training
            (0 = all); the final evaluation always uses the whole held-out split.
    """

    out: str = "runs/demo"
    images: int = 400
    epochs: int = 30
    seed: int = 0
    device: str = "auto"
    img_size: int = 160
    image_size: tuple[int, int] = (192, 192)
    batch: int = 8
    lr: float = 0.01
    burn_in: int = 40
    val_fraction: float = 0.25
    amp: bool = True
    workers: int = 1
    threads: int = 0
    val_images: int = 48
    hsv: tuple[float, float, float] = (0.02, 1.2, 1.2)
    jitter: float = 0.15

    def __post_init__(self) -> None:
        if self.images < 8:
            raise DataError(f"--images must be at least 8, got {self.images}")
        if self.epochs < 1:
            raise DataError(f"--epochs must be at least 1, got {self.epochs}")
        if self.img_size < 32 or self.img_size % 32:
            raise DataError(f"--img-size must be a positive multiple of 32, got {self.img_size}")
        if self.threads < 0:
            raise DataError(f"--threads must be >= 0 (0 = automatic), got {self.threads}")
        if not 0 < self.val_fraction < 1:
            raise DataError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class DemoResult:
    """What a demo run produced.

    Attributes:
        out: the demo folder. map50: VOC all-point mAP@0.5 on the held-out split.
        table: the per-class table as printed. timings: seconds per stage (and ``total``).
        paths: the files worth opening (dataset, converted set, cfg, run folder, metrics, plots).
    """

    out: Path
    map50: float
    table: str
    timings: dict[str, float] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)


def _write_json(path: Path, obj: Any) -> None:
    from detkit.data.datafiles import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def demo_threads(threads: int, workers: int, env: dict[str, str] | None = None) -> int | None:
    """Torch intra-op threads for the demo (see :class:`DemoSettings`); None = leave torch's setting."""
    if threads > 0:
        return threads
    if "OMP_NUM_THREADS" in (os.environ if env is None else env):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - workers)


def run_demo(settings: DemoSettings, echo=print) -> DemoResult:
    """Run every stage of the demo (see module docstring); ``echo`` receives the progress lines.

    Sets torch's CPU thread count for the run (see :class:`DemoSettings`) and restores it afterwards.

    Raises:
        DetkitError: from any stage (bad settings, a failed conversion, training errors).
    """
    import torch

    threads = demo_threads(settings.threads, settings.workers)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_stages(settings, echo)
    finally:
        torch.set_num_threads(previous)


def _run_stages(settings: DemoSettings, echo) -> DemoResult:
    from detkit.darknet.cfg import resolve_cfg
    from detkit.darknet.specs import parse_network
    from detkit.darknet.cfg_edit import patch_anchors
    from detkit.data.anchors import dataset_anchors, format_anchors
    from detkit.convert.options import ConvertOptions
    from detkit.convert.summary import summary_table
    from detkit.convert.voc_to_yolo import convert_voc
    from detkit.data.datafiles import load_data_config, write_text_atomic
    from detkit.data.synth import generate_voc_dataset
    from detkit.evaluate.run import evaluate_model
    from detkit.train.outputs import next_run_dir
    from detkit.train.settings import resolve_settings
    from detkit.train.trainer import train
    from detkit.evaluate.outputs import write_report_plots

    s = settings
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = next_run_dir(s.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "demo_settings.json", asdict(s))
    import torch

    echo(f"detkit demo: folder {out} ({torch.get_num_threads()} CPU threads, {s.workers} data workers)")

    # 1. generate --------------------------------------------------------------------------------
    t = time.perf_counter()
    syn = generate_voc_dataset(out / "voc", s.images, seed=s.seed, img_size=s.image_size, layout="voc",
                               val_fraction=s.val_fraction)
    timings["generate"] = time.perf_counter() - t
    counts = ", ".join(f"{n} {c}" for n, c in syn.objects_per_class.items())
    echo(f"[1/5] generated {syn.num_images} images ({counts}; {syn.empty_images} without objects), "
         f"{len(syn.train)} train / {len(syn.val)} held-out, in {syn.root} ({timings['generate']:.1f} s)")

    # 2. convert-voc -----------------------------------------------------------------------------
    t = time.perf_counter()
    conv = convert_voc(out / "voc", out / "yolo", ConvertOptions(names=syn.class_names, seed=s.seed))
    timings["convert"] = time.perf_counter() - t
    with (conv.out / "rename_map.csv").open(encoding="utf-8") as f:
        renamed = sum(1 for _ in f) - 1  # minus the header row
    echo(f"[2/5] convert-voc: {conv.images} images ({conv.splits.get('train', 0)} train, "
         f"{conv.splits.get('val', 0)} val), {renamed} paths renamed to ASCII (rename_map.csv), "
         f"{len(conv.warnings)} warnings, into {conv.out} ({timings['convert']:.1f} s)")
    for line in summary_table(conv).splitlines():
        echo("      " + line)
    data_path = conv.out / "obj.data"

    # 3. anchors for this data at the network size -----------------------------------------------
    t = time.perf_counter()
    cfg_text, cfg_source = resolve_cfg(DEMO_CFG)
    num_anchors = parse_network(cfg_text, cfg_source).yolo_layers[0].num
    anchors, sizes = dataset_anchors(load_data_config(data_path), num_anchors, (s.img_size, s.img_size),
                                     seed=s.seed)
    cfg_path = out / "yolov3-tiny-demo.cfg"
    write_text_atomic(cfg_path, patch_anchors(cfg_text, anchors.rounded.tolist(), cfg_source))
    timings["anchors"] = time.perf_counter() - t
    echo(f"[3/5] anchors from {len(sizes.wh)} training boxes at {s.img_size}x{s.img_size}: "
         f"{format_anchors(anchors.rounded)} (avg IoU {anchors.avg_iou:.3f}) -> {cfg_path}")

    # 4. train from scratch ------------------------------------------------------------------------
    t = time.perf_counter()
    n_val = conv.splits.get("val", 0)
    train_settings = resolve_settings(
        str(cfg_path), str(data_path), len(syn.class_names), str(out / "train"),
        weights=None, epochs=s.epochs, batch=s.batch, subdivisions=1, img_size=(s.img_size, s.img_size),
        device=s.device, amp=s.amp, amp_dtype="bf16", workers=s.workers, seed=s.seed, lr=s.lr,
        burn_in=min(s.burn_in, max(1, s.epochs * math.ceil(conv.splits.get("train", 1) / s.batch) // 5)),
        policy="cosine", hue=s.hsv[0], saturation=s.hsv[1], exposure=s.hsv[2], flip=True, jitter=s.jitter,
        mosaic=False, grad_clip=10.0, max_val_images=(s.val_images if 0 < s.val_images < n_val else None),
    )
    echo(f"[4/5] training yolov3-tiny (2 classes) from scratch: {s.epochs} epochs, batch {s.batch}, "
         f"input {s.img_size}, lr {s.lr} cosine, {'bf16 autocast' if s.amp else 'fp32'}, device {s.device}")
    result = train(train_settings)
    timings["train"] = time.perf_counter() - t
    if result.interrupted:  # Ctrl-C: the engine saved last.pt; the CLI exits with 130
        echo(f"training interrupted; continue it with: detkit train --resume {result.run_dir}")
        raise KeyboardInterrupt
    last = result.history[-1] if result.history else {}
    echo(f"      {result.epochs_completed} epochs, {result.steps} steps in {timings['train']:.0f} s "
         f"({last.get('img_per_s', float('nan')):.1f} img/s in the last epoch); run folder {result.run_dir}")

    # 5. evaluate the final weights on the whole held-out split ------------------------------------
    t = time.perf_counter()
    eval_dir = out / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    run_ = evaluate_model(str(cfg_path), str(result.last_checkpoint), str(data_path), metric="voc",
                          iou_threshold=0.5, conf_threshold=0.25, img_size=s.img_size, nms=0.45,
                          pred_conf=0.005, batch_size=16, save_pred=str(eval_dir / "predictions.json"),
                          device=s.device)
    report = run_.report
    metrics = report.to_dict()
    metrics["sources"] = {"cfg": str(cfg_path), "weights": str(result.last_checkpoint), "data": str(data_path)}
    _write_json(eval_dir / "metrics.json", metrics)
    plot_files = write_report_plots(run_, eval_dir, iou_threshold=0.5, conf_threshold=0.25)
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    table = report.format_table()
    echo(f"[5/5] VOC evaluation of the final weights on the {report.n_images} held-out images "
         f"({timings['evaluate']:.1f} s):")
    echo(table)
    paths = {"dataset": str(syn.root), "converted": str(conv.out), "cfg": str(cfg_path),
             "run": str(result.run_dir), "weights": str(result.last_checkpoint),
             "training_plot": str(result.run_dir / "results.png"), "metrics": str(eval_dir / "metrics.json"),
             "plots": str(eval_dir)}
    m = float(report.map)
    _write_json(out / "demo_summary.json", {"map50": None if math.isnan(m) else m,
                                            "timings_s": {k: round(v, 2) for k, v in timings.items()},
                                            "paths": paths, "plot_files": [str(f) for f in plot_files]})
    echo("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    echo(f"training curves: {paths['training_plot']}; PR curves and confusion matrix: {eval_dir}/; "
         f"metrics: {paths['metrics']}; weights: {paths['weights']}")
    return DemoResult(out=out, map50=m, table=table, timings=timings, paths=paths)
