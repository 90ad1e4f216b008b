"""``detkit train``: train or fine-tune a darknet cfg on a YOLO dataset (also under torchrun)."""
from __future__ import annotations

import argparse
import logging
import sys

from detkit.errors import TrainError

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train or fine-tune a YOLO model (darknet cfg) on a YOLO-format dataset",
        description="Train a darknet cfg on obj.data / data.yaml. Defaults come from the cfg's [net] "
                    "(batch, subdivisions, learning_rate, momentum, decay, burn_in, steps/scales, size, "
                    "colour jitter, flip) and the flags below override them. Each epoch validates "
                    "(VOC mAP@0.5 with the EMA weights) and writes last.pt, best.pt, best.weights and "
                    "results.csv to the run folder. Multi-GPU: torchrun --nproc_per_node K -m detkit train ...")
    p.add_argument("--cfg", help="darknet .cfg file or builtin name (yolov3-tiny, yolov3, yolov4-tiny)")
    p.add_argument("--classes", type=int, help="number of classes; must equal the names file's line count")
    p.add_argument("--data", help="obj.data (darknet) or data.yaml, as written by convert-voc")
    p.add_argument("--weights", help="start from a darknet .weights (full or partial .conv.N) or a detkit .pt")
    p.add_argument("--cutoff", type=int, help="load only the first N layers of --weights (darknet partial)")
    p.add_argument("--freeze", type=int, help="keep the first N layers fixed (transfer learning)")
    p.add_argument("--epochs", type=int, help="epochs (default 30; with --resume: extend the run to E)")
    p.add_argument("--batch", type=int, help="images per optimizer step (default: cfg, 16 for testing cfgs)")
    p.add_argument("--subdivisions", type=int, help="micro-batches per step (gradient accumulation)")
    p.add_argument("--img-size", help="network input N or WxH, multiples of 32 (default: cfg width x height)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto; torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision autocast (default on): bf16 on CPU, --amp-dtype on CUDA")
    p.add_argument("--amp-dtype", choices=["bf16", "fp16"], help="autocast dtype (default bf16; fp16 uses GradScaler)")
    p.add_argument("--workers", type=int, help="data loader processes (default 2)")
    p.add_argument("--seed", type=int, help="seed of initialisation, order and augmentation (default 0)")
    p.add_argument("--out", default="runs/train", help="run folder; a new numbered folder if it exists (default runs/train)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly (from its last.pt)")
    p.add_argument("--lr", type=float, help="base learning rate (default: cfg learning_rate)")
    p.add_argument("--burn-in", type=int, help="warm-up optimizer steps (default: cfg burn_in, capped to 10%% of the run)")
    p.add_argument("--policy", choices=["steps", "cosine", "constant"], help="lr decay after burn-in (default: cfg policy)")
    p.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum")
    p.add_argument("--box-loss", choices=["auto", "darknet", "giou", "ciou"],
                   help="box loss term (default auto: each [yolo] head's iou_loss= as darknet trains it; mse -> darknet)")
    p.add_argument("--mosaic", action="store_true", default=None, help="4-image mosaic augmentation")
    p.add_argument("--no-flip", dest="flip", action="store_false", default=None, help="no horizontal flips")
    p.add_argument("--jitter", type=float, help="crop/pad jitter fraction (default: cfg [yolo] jitter)")
    p.add_argument("--class-weights", action="store_true", default=None,
                   help="weight the loss of rare classes up (sqrt inverse frequency)")
    p.add_argument("--balanced-sampler", action="store_true", default=None,
                   help="sample images with rare classes more often")
    p.add_argument("--no-ema", dest="ema", action="store_false", default=None, help="validate the raw weights, no EMA")
    p.add_argument("--tensorboard", action="store_true", default=None, help="also log to TensorBoard (if installed)")
    p.add_argument("--max-train-images", type=int, help="use only the first N training images (smoke tests)")
    p.add_argument("--max-val-images", type=int, help="validate on only the first N images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detkit.infer.predict import parse_img_size
    from detkit.train.settings import resolve_settings
    from detkit.train.trainer import train

    quiet = bool(getattr(args, "quiet", False))
    if args.resume:
        result = train(resume=args.resume, resume_epochs=args.epochs)
    else:
        missing = [f"--{k}" for k in ("cfg", "classes", "data") if getattr(args, k) is None]
        if missing:
            raise TrainError(f"missing {', '.join(missing)} (or use --resume RUN_DIR)")
        overrides = {
            "weights": args.weights, "cutoff": args.cutoff, "freeze": args.freeze, "epochs": args.epochs,
            "batch": args.batch, "subdivisions": args.subdivisions,
            "img_size": parse_img_size(args.img_size) if args.img_size else None,
            "device": args.device, "amp": args.amp, "amp_dtype": args.amp_dtype, "workers": args.workers,
            "seed": args.seed, "lr": args.lr, "burn_in": args.burn_in, "policy": args.policy,
            "nesterov": args.nesterov, "box_loss": args.box_loss, "mosaic": args.mosaic, "flip": args.flip,
            "jitter": args.jitter, "class_weights": args.class_weights, "balanced_sampler": args.balanced_sampler,
            "ema": args.ema, "tensorboard": args.tensorboard, "max_train_images": args.max_train_images,
            "max_val_images": args.max_val_images, "progress": False if quiet else None,
        }
        settings = resolve_settings(args.cfg, args.data, args.classes, args.out, **overrides)
        result = train(settings)
    from detkit.train.distributed import dist_info_from_env

    if not dist_info_from_env().is_main:
        return 0
    if result.interrupted:
        print(f"interrupted after {result.steps} steps; saved {result.last_checkpoint}\n"
              f"continue with: detkit train --resume {result.run_dir}", file=sys.stderr)
        return 130
    best = "n/a (no validation set)" if result.best_map < 0 else f"{result.best_map:.4f} (epoch {result.best_epoch})"
    print(f"done: {result.epochs_completed} epochs, {result.steps} steps; best VOC mAP@0.5 {best}")
    print(f"run folder: {result.run_dir}  (best.pt, best.weights, last.pt, results.csv"
          f"{', results.png' if (result.run_dir / 'results.png').is_file() else ''})")
    return 0
