#!/usr/bin/env python
"""Training benchmarks on real data (maintainers' tool; never imported by detkit).

Subcommands (see docs/training.md for the exact commands and reference numbers)::

    prepare     convert raccoon / BCCD (Pascal VOC in ../shared/data) with convert-voc and write
                bench.data with the upstream split (raccoon: train_labels.csv / test_labels.csv;
                BCCD: ImageSets/Main train / test)
    finetune    fine-tune yolov3-tiny from the COCO weights on one of them; prints the best VOC
                mAP@0.5 and the wall time, writes a JSON summary
    scratch     train any cfg (builtin name or file; e.g. yolov4-tiny, yolov7-tiny, yolov3-tiny) from
                random weights on one of them, with the loss its heads declare; same summary
    throughput  training images/s (and the share of step time spent waiting for data) of yolov3-tiny
                at 416x416, batch 16, fp32 vs autocast (bf16 on CPU; fp16 and bf16 on CUDA)

Everything goes through ``detkit.train.trainer.train`` — the same code path as ``detkit train``.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detkit.convert.options import ConvertOptions
from detkit.convert.voc_to_yolo import convert_voc
from detkit.data.datafiles import read_list_file, write_list_file, write_text_atomic  # noqa: E402
from detkit.train.hooks import TrainHooks
from detkit.train.settings import resolve_settings
from detkit.train.trainer import train

log = logging.getLogger("bench_train")

DATASETS = {"raccoon": 1, "bccd": 3}


def prepare(dataset: str, shared: Path, out: Path) -> Path:
    """Convert ``shared/data/<dataset>`` into ``out`` and write ``out/bench.data``; returns its path."""
    src = shared / "data" / dataset
    if not (out / "obj.data").is_file():
        convert_voc(src, out, ConvertOptions(force=False))
    names = out / "obj.names"
    listed = []
    for name in ("train.txt", "val.txt", "test.txt"):
        if (out / name).is_file():
            listed += read_list_file(out / name, extra_bases=[out])
    by_stem = {Path(p).stem.lower(): Path(p) for p in listed}  # convert-voc lower-cases names
    if dataset == "raccoon":
        def stems(csv_name: str) -> list[str]:
            with open(src / csv_name, newline="", encoding="utf-8") as fh:
                return sorted({Path(row["filename"]).stem for row in csv.DictReader(fh)})
        train_stems, val_stems = stems("train_labels.csv"), stems("test_labels.csv")
    else:
        main = src / "ImageSets" / "Main"
        def ids(name: str) -> list[str]:
            return [ln.split()[0] for ln in (main / name).read_text().splitlines() if ln.strip()]
        train_stems, val_stems = ids("train.txt"), ids("test.txt")
    train_stems = [s.lower() for s in train_stems]
    val_stems = [s.lower() for s in val_stems]
    missing = [s for s in train_stems + val_stems if s not in by_stem]
    if missing:
        log.warning("%d split entries have no converted image (skipped by convert-voc?): %s",
                    len(missing), ", ".join(missing[:5]))
    write_list_file(out / "bench_train.txt", [str(by_stem[s]) for s in train_stems if s in by_stem])
    write_list_file(out / "bench_val.txt", [str(by_stem[s]) for s in val_stems if s in by_stem])
    data = out / "bench.data"
    write_text_atomic(data, f"classes = {len(names.read_text().split())}\ntrain = bench_train.txt\n"
                            f"valid = bench_val.txt\nnames = obj.names\n")
    n_train = len(read_list_file(out / "bench_train.txt", extra_bases=[out]))
    n_val = len(read_list_file(out / "bench_val.txt", extra_bases=[out]))
    print(f"{dataset}: {n_train} training / {n_val} validation images -> {data}")
    return data


def cmd_prepare(a: argparse.Namespace) -> int:
    prepare(a.dataset, Path(a.shared), Path(a.work) / a.dataset)
    return 0


def _run(a: argparse.Namespace, cfg: str, weights: str | None, tag: str, run_name: str) -> int:
    data = prepare(a.dataset, Path(a.shared), Path(a.work) / a.dataset)
    settings = resolve_settings(
        cfg, str(data), DATASETS[a.dataset], str(Path(a.work) / "runs" / run_name),
        weights=weights, epochs=a.epochs, batch=a.batch,
        subdivisions=1, img_size=(a.img_size, a.img_size), device=a.device, amp=a.amp, amp_dtype=a.amp_dtype,
        workers=a.workers, lr=a.lr, burn_in=a.burn_in, policy=a.policy, freeze=a.freeze, seed=a.seed,
        progress=sys.stderr.isatty())
    t0 = time.perf_counter()
    res = train(settings)
    wall = time.perf_counter() - t0
    summary = {"dataset": a.dataset, "cfg": cfg, "weights": weights, "best_map50": res.best_map,
               "best_epoch": res.best_epoch, "epochs": res.epochs_completed, "wall_s": round(wall, 1),
               "run_dir": str(res.run_dir), "settings": settings.to_json_dict(),
               "history": [{k: v for k, v in r.items()} for r in res.history]}
    path = Path(a.work) / f"{tag}.json"
    write_text_atomic(path, json.dumps(summary, indent=2) + "\n")
    maps = ", ".join(f"{r['mAP50']:.3f}" for r in res.history)
    print(f"{a.dataset} {cfg} ({'from ' + Path(weights).name if weights else 'from scratch'}): best VOC mAP@0.5 "
          f"{res.best_map:.4f} (epoch {res.best_epoch}/{res.epochs_completed}), wall {wall / 60:.1f} min -> {path}\n"
          f"per epoch: {maps}")
    return 0 if res.best_map >= a.target else 1


def cmd_finetune(a: argparse.Namespace) -> int:
    return _run(a, "yolov3-tiny", str(Path(a.shared) / "weights" / "yolov3-tiny.weights"), f"finetune_{a.dataset}",
                a.dataset)


def cmd_scratch(a: argparse.Namespace) -> int:
    tag = f"scratch_{a.dataset}_{Path(a.cfg).stem}"
    return _run(a, a.cfg, None, tag, tag)


class _StepClock:
    """on_step hook: time stamps of optimizer steps (to leave warm-up steps out of the rate)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, info) -> None:
        self.times.append(time.perf_counter())


def cmd_throughput(a: argparse.Namespace) -> int:
    import torch

    data = prepare("raccoon", Path(a.shared), Path(a.work) / "raccoon")
    modes = [("fp32", False, "bf16")]
    if a.device.startswith("cuda"):
        modes += [("fp16 autocast", True, "fp16"), ("bf16 autocast", True, "bf16")]
    else:
        modes += [("bf16 autocast", True, "bf16")]
    rows = []
    for label, amp, dtype in modes:
        n_images = a.batch * (a.steps + a.warmup)
        settings = resolve_settings(
            "yolov3-tiny", str(data), 1, str(Path(a.work) / "runs" / f"throughput_{label.split()[0]}"),
            weights=str(Path(a.shared) / "weights" / "yolov3-tiny.weights"), epochs=1, batch=a.batch,
            subdivisions=1, img_size=(a.img_size, a.img_size), device=a.device, amp=amp, amp_dtype=dtype,
            workers=a.workers, max_train_images=n_images, max_val_images=0, progress=False, plots=False,
            channels_last=not a.no_channels_last)
        clock = _StepClock()
        res = train(settings, hooks=TrainHooks(on_step=clock))
        timed = clock.times[a.warmup - 1:] if a.warmup > 0 else clock.times
        steps = len(timed) - 1
        rate = steps * a.batch / (timed[-1] - timed[0]) if steps > 0 else float("nan")
        row = res.history[0]
        rows.append({"mode": label, "images_per_s": round(rate, 2), "data_wait_share": round(row["data_wait"], 4),
                     "steps_timed": steps, "device": a.device, "threads": torch.get_num_threads()})
        print(f"{label:>14}: {rate:7.2f} images/s (steps {a.warmup + 1}..{a.warmup + steps}), "
              f"data wait {100 * row['data_wait']:.1f}% of step time")
    path = Path(a.work) / f"throughput_{a.device.replace(':', '')}.json"
    write_text_atomic(path, json.dumps(rows, indent=2) + "\n")
    print(f"-> {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(REPO.parent / "shared"), help="the shared folder (default ../shared)")
    p.add_argument("--work", default="/tmp/detkit_bench", help="work folder (converted data, runs, JSON)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--img-size", type=int, default=416)
    p.add_argument("--batch", type=int, default=16)
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("prepare")
    sp.add_argument("dataset", choices=sorted(DATASETS))
    sp.set_defaults(func=cmd_prepare)
    sf = sub.add_parser("finetune")
    ss = sub.add_parser("scratch")
    ss.add_argument("--cfg", required=True, help="builtin cfg name or file (e.g. yolov4-tiny, yolov7-tiny)")
    for sp_, lr, target in ((sf, 0.002, 0.6), (ss, 0.01, 0.3)):
        sp_.add_argument("dataset", choices=sorted(DATASETS))
        sp_.add_argument("--epochs", type=int, default=12)
        sp_.add_argument("--lr", type=float, default=lr)
        sp_.add_argument("--burn-in", type=int, default=None, help="default: cfg burn-in capped to 10%% of the run")
        sp_.add_argument("--policy", default="cosine", choices=["steps", "cosine", "constant"])
        sp_.add_argument("--freeze", type=int, default=0)
        sp_.add_argument("--seed", type=int, default=0)
        sp_.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
        sp_.add_argument("--amp-dtype", default="bf16", choices=["bf16", "fp16"])
        sp_.add_argument("--target", type=float, default=target, help="exit 1 when the best mAP stays below this")
    sf.set_defaults(func=cmd_finetune)
    ss.set_defaults(func=cmd_scratch)
    st = sub.add_parser("throughput")
    st.add_argument("--steps", type=int, default=8, help="timed optimizer steps per mode")
    st.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    st.add_argument("--no-channels-last", action="store_true")
    st.set_defaults(func=cmd_throughput)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
