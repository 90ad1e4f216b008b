"""The training loop: settings, optimizer, AMP step, validation mAP, checkpoints, logs, exact resume.

One optimizer step = ``batch`` images = ``subdivisions`` micro-batches of ``batch / subdivisions``
images (divided again over ranks under torchrun); gradients are accumulated over the micro-batches,
as darknet does. Mixed precision follows nanoGPT: ``ctx = nullcontext()`` or ``torch.autocast``,
and ``GradScaler(enabled=(dtype == float16))`` — the step code is the same with AMP on or off.

Exact resume: augmentation randomness is derived from ``(seed, epoch, index)`` by the dataset,
the order of each epoch from ``(seed, epoch)``, and the checkpoint holds model, EMA, optimizer,
scaler, scheduler, step, the position inside the epoch and the RNG states — so ``--resume`` runs
reproduce the loss curve of an uninterrupted run.

The pieces around the loop live in their own modules (names kept importable from here):

* :mod:`detkit.train.settings` — :class:`TrainSettings`, :func:`resolve_settings`, :func:`resume_settings`;
* :mod:`detkit.train.setup` — seeding, parameter groups, frozen layers, head priors, EMA defaults,
  class loss weights;
* :mod:`detkit.train.outputs` — run folder, ``results.csv``, ``results.png``, memory figure;
* :mod:`detkit.train.validate` — validation mAP@0.5;
* :mod:`detkit.train.hooks` — :class:`StepInfo`, :class:`TrainHooks`, :class:`TrainResult`.

This module holds the :class:`Trainer` loop and the :func:`train` entry point.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkit.data.datafiles import load_data_config, write_text_atomic
from detkit.errors import TrainError
from detkit import checkpoint as ckpt
from detkit.train.distributed import (DistInfo, all_finite, barrier, broadcast_object, cleanup_distributed,
                                       dist_info_from_env, init_distributed, resolve_device)
from detkit.train.ema import ModelEMA
from detkit.infer.loading import load_model
from detkit.train.schedule import LRScheduler, ScheduleConfig
from detkit.train.setup import (class_weight_tuple, ema_defaults, freeze_layers, init_head_priors,
                                         param_groups, seed_everything, set_train_mode)
from detkit.train.outputs import memory_text, next_run_dir, save_plots, write_results_csv
from detkit.train.settings import (AMP_DTYPES, TrainSettings, resume_settings)
from detkit.train.hooks import StepInfo, TrainHooks, TrainResult
from detkit.train.validate import validate
from detkit.yolo.loss import LossConfig, YoloLoss


log = logging.getLogger(__name__)

#: burn-in is capped to this fraction of the run (the cfg's 1000 steps exceed short fine-tunes)
BURN_IN_MAX_FRACTION = 0.1


# ------------------------------------------------------------------------------------------ trainer
class _NonFinite(Exception):
    pass


class Trainer:
    """One training run (use :func:`train`)."""

    def __init__(self, settings: TrainSettings, info: DistInfo, device: torch.device,
                 hooks: TrainHooks, resume_payload: dict[str, Any] | None, run_dir: Path):
        self.s = settings
        self.info = info
        self.device = device
        self.hooks = hooks
        self.run_dir = run_dir
        s = settings
        data = load_data_config(s.data)
        if len(data.names) != s.num_classes:
            raise TrainError(f"--classes {s.num_classes} disagrees with the {len(data.names)} class names "
                             f"of the dataset ({', '.join(data.names[:5])}{', ...' if len(data.names) > 5 else ''})",
                             path=data.source)
        if not data.train:
            raise TrainError("the training list is empty", path=data.source)
        self.names = list(data.names)

        from detkit.darknet.model import build_model
        from detkit.data.dataset import YoloDataset, make_loader
        from detkit.data.sampling import class_balance, class_weighted_sampler, format_class_balance
        from detkit.data.transforms import build_eval_transforms, build_train_transforms

        seed_everything(s.seed)
        if resume_payload is None and s.weights:  # darknet .weights or a checkpoint; what does not fit stays fresh
            model, start = load_model(s.cfg, s.weights, s.num_classes, strict=False, cutoff=s.cutoff)
            init_head_priors(model, set(start.fresh_layers))
        else:
            model = build_model(s.cfg, num_classes=s.num_classes)
            if resume_payload is None:
                init_head_priors(model)
        self.cfg_text = model.cfg_text
        if s.freeze:
            n = freeze_layers(model, s.freeze)
            log.info("froze the first %d layers (%d tensors)", s.freeze, n)
        model.to(device)
        if s.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        img_size = tuple(s.img_size)
        stride = model.max_stride
        if img_size[0] % stride or img_size[1] % stride:
            raise TrainError(f"image size {img_size[0]}x{img_size[1]} must be a multiple of the network stride {stride}")

        train_paths = list(data.train)[: s.max_train_images] if s.max_train_images is not None else list(data.train)
        val_paths = list(data.val)[: s.max_val_images] if s.max_val_images is not None else list(data.val)
        if not train_paths:
            raise TrainError("no training images selected", path=data.source)
        train_tf = build_train_transforms(img_size, hsv=(s.hue, s.saturation, s.exposure), flip=s.flip,
                                          jitter=s.jitter)
        self.train_ds = YoloDataset(train_paths, s.num_classes, img_size, train_tf, mosaic=s.mosaic, seed=s.seed)
        balance = class_balance(self.train_ds, s.num_classes)
        if info.is_main:
            table, warnings = format_class_balance(balance, self.names)
            log.info("training set class balance (%d images):\n%s", len(self.train_ds), table)
            for w in warnings:
                log.warning("%s%s", w, "" if (s.class_weights or s.balanced_sampler)
                            else " (opt-in remedies: --balanced-sampler, --class-weights)")
        world = info.world_size
        per_step = s.batch // s.subdivisions
        if per_step % world:
            raise TrainError(f"batch/subdivisions = {per_step} images per micro-batch cannot be split over "
                             f"{world} processes; use a batch that is a multiple of subdivisions x {world}")
        self.micro = per_step // world
        sampler = class_weighted_sampler(self.train_ds, s.num_classes, seed=s.seed) if s.balanced_sampler else None
        self.loader = make_loader(self.train_ds, self.micro, shuffle=True, workers=s.workers, seed=s.seed,
                                  sampler=sampler, distributed=info.enabled)
        self.val_loader = None
        if val_paths and info.is_main:
            val_ds = YoloDataset(val_paths, s.num_classes, img_size, build_eval_transforms(img_size), seed=s.seed)
            self.val_loader = make_loader(val_ds, max(self.micro, 1), shuffle=False, workers=s.workers, seed=s.seed)
        elif not val_paths and info.is_main:
            log.warning("%s: no validation images; best.pt follows the last epoch", data.source)

        self.micro_per_epoch = len(self.loader)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / s.subdivisions)
        total_steps = s.epochs * self.steps_per_epoch
        burn_in = s.burn_in
        if burn_in < 0:  # the cfg's burn-in, capped for short runs
            burn_in = min(-burn_in, max(1, int(BURN_IN_MAX_FRACTION * total_steps)))
        sched_cfg = ScheduleConfig(base_lr=s.lr, burn_in=burn_in, policy=s.policy,  # type: ignore[arg-type]
                                   steps=tuple(int(round(f * total_steps)) for f in s.steps),
                                   scales=tuple(s.scales), total_steps=total_steps)
        self.optimizer = torch.optim.SGD(param_groups(model, s.decay), lr=s.lr, momentum=s.momentum,
                                         nesterov=s.nesterov)
        self.scheduler = LRScheduler(self.optimizer, sched_cfg)
        self.amp_dtype = AMP_DTYPES[s.amp_dtype]
        if s.amp and device.type == "cpu" and self.amp_dtype == torch.float16:
            log.warning("fp16 autocast on CPU is slow and unscaled-safe only with GradScaler; using bf16")
            self.amp_dtype = torch.bfloat16
        # nanoGPT pattern: the step code below is identical with AMP on or off
        self.ctx = torch.autocast(device.type, dtype=self.amp_dtype) if s.amp else nullcontext()
        self.scaler = torch.amp.GradScaler(device.type, enabled=(s.amp and self.amp_dtype == torch.float16))
        class_w = class_weight_tuple(balance.objects) if s.class_weights else None
        if class_w is not None and info.is_main:
            log.info("class loss weights: %s", ", ".join(f"{n}={w:.2f}" for n, w in zip(self.names, class_w)))
        self.loss_fn = YoloLoss.from_model(model, LossConfig(box_loss=s.box_loss, class_weights=class_w))  # type: ignore[arg-type]
        decay, tau = ema_defaults(total_steps)
        decay = s.ema_decay if s.ema_decay is not None else decay
        tau = s.ema_tau if s.ema_tau is not None else tau
        self.ema = ModelEMA(model, decay=decay, tau=tau) if s.ema else None
        self.ddp: nn.Module = model
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

        self.epoch = 0
        self.step = 0
        self.batches_done = 0
        self.best_map = -1.0
        self.best_epoch = -1
        self.history: list[dict[str, Any]] = []
        self.epoch_sums = {"box": 0.0, "obj": 0.0, "cls": 0.0, "loss": 0.0, "images": 0, "data": 0.0, "time": 0.0}
        if resume_payload is not None:
            self._restore(resume_payload)
        self.loss_trace: list[float] = []
        self.tb = None
        if s.tensorboard and info.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("--tensorboard: the tensorboard package is not installed (pip install tensorboard); skipping")
            else:
                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    # -- state
    def payload(self) -> dict[str, Any]:
        return {
            "format": ckpt.CHECKPOINT_FORMAT, "version": ckpt.CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch, "step": self.step, "batches_done": self.batches_done,
            "epoch_sums": dict(self.epoch_sums),
            "rng": ckpt.capture_rng_state(),
            "cfg_text": self.cfg_text, "class_names": list(self.names),
            "settings": self.s.to_json_dict(),
            "best_map": self.best_map, "best_epoch": self.best_epoch, "history": list(self.history),
        }

    def _restore(self, p: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(p["model"])
            if self.ema is not None and p.get("ema"):
                self.ema.load_state_dict(p["ema"])
            self.optimizer.load_state_dict(p["optimizer"])
            self.scaler.load_state_dict(p["scaler"])
            self.scheduler.load_state_dict(p["scheduler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise TrainError(f"checkpoint does not fit this model/settings: {str(exc).splitlines()[0][:200]}") from None
        self.epoch, self.step, self.batches_done = int(p["epoch"]), int(p["step"]), int(p["batches_done"])
        self.epoch_sums = dict(p.get("epoch_sums") or self.epoch_sums)
        self.best_map, self.best_epoch = float(p["best_map"]), int(p["best_epoch"])
        self.history = [dict(r) for r in p.get("history", [])]
        ckpt.restore_rng_state(p["rng"])

    def _save(self, name: str) -> Path:
        return ckpt.save_checkpoint(self.payload(), self.run_dir / name)

    # -- loop
    def run(self) -> TrainResult:
        s = self.s
        interrupted = False
        last = self.run_dir / "last.pt"
        try:
            while self.epoch < s.epochs:
                self._train_epoch()
                self._end_epoch()
        except KeyboardInterrupt:
            interrupted = True
            if self.info.is_main:
                self._save("last.pt")
                log.warning("interrupted at epoch %d, step %d: saved %s; continue with --resume %s",
                            self.epoch + 1, self.step, last, self.run_dir)
        except _NonFinite as exc:
            good = last if last.is_file() else None
            raise TrainError(f"{exc}; training stopped. Last good checkpoint: "
                             f"{good if good else 'none (no epoch completed)'}; try a lower --lr, --no-amp "
                             f"or --amp-dtype bf16") from None
        finally:
            if self.tb is not None:
                self.tb.close()
        if self.info.is_main and s.plots and not interrupted:
            try:
                save_plots(self.run_dir, self.history)
            except (OSError, ValueError) as exc:  # plotting must never lose a finished run
                log.warning("could not write plots: %s", exc)
        best = self.run_dir / "best.pt"
        weights = self.run_dir / "best.weights"
        return TrainResult(run_dir=self.run_dir, epochs_completed=self.epoch, steps=self.step,
                           best_map=self.best_map, best_epoch=self.best_epoch, interrupted=interrupted,
                           last_checkpoint=last, best_checkpoint=best if best.is_file() else None,
                           best_weights=weights if weights.is_file() else None,
                           history=tuple(self.history), loss_trace=tuple(self.loss_trace))

    def _train_epoch(self) -> None:
        from detkit.data.dataset import set_loader_epoch
        from tqdm import tqdm

        s, model, ddp = self.s, self.model, self.ddp
        set_train_mode(model, s.freeze)
        set_loader_epoch(self.loader, self.epoch, skip_batches=self.batches_done)
        if self.batches_done == 0:
            self.epoch_sums = {k: 0 * v for k, v in self.epoch_sums.items()}
        n_micro = self.micro_per_epoch
        show = self.info.is_main and s.progress and sys.stderr.isatty()
        bar = tqdm(total=n_micro, initial=self.batches_done, desc=f"epoch {self.epoch + 1}/{s.epochs}",
                   disable=not show, dynamic_ncols=True, leave=True)
        in_wh = (int(s.img_size[0]), int(s.img_size[1]))
        group_start = self.batches_done
        t_prev = time.perf_counter()
        try:
            for i, (images, targets, _) in enumerate(self.loader, start=self.batches_done):
                t_data = time.perf_counter()
                group_size = min(s.subdivisions, n_micro - group_start)
                sync = (i + 1 - group_start) == group_size
                images = images.to(self.device, non_blocking=True)
                if s.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                targets = targets.to(self.device, non_blocking=True)
                no_sync = ddp.no_sync() if (self.info.enabled and not sync) else nullcontext()
                with no_sync:
                    with self.ctx:
                        outputs = ddp(images)
                        loss, parts = self.loss_fn(outputs, targets, in_wh)
                    if not all_finite(loss, self.info):
                        raise _NonFinite(f"non-finite loss ({loss.item()}) at epoch {self.epoch + 1}, "
                                         f"step {self.step + 1} (box {parts['box'].item():.4g}, "
                                         f"obj {parts['obj'].item():.4g}, cls {parts['cls'].item():.4g})")
                    self.scaler.scale(loss / group_size).backward()
                lr = self.scheduler.lr
                if sync:
                    self.scheduler.apply()
                    if s.grad_clip:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scheduler.advance()
                    self.step += 1
                    if self.ema is not None:
                        self.ema.update(model)
                    self.batches_done = i + 1
                    group_start = i + 1
                t_end = time.perf_counter()
                n_img = images.shape[0]
                value = float(loss.item())
                self.loss_trace.append(value)
                es = self.epoch_sums
                for k in ("box", "obj", "cls"):
                    es[k] += float(parts[k].item()) * n_img
                es["loss"] += value * n_img
                es["images"] += n_img
                es["data"] += t_data - t_prev
                es["time"] += t_end - t_prev
                t_prev = t_end
                if show:
                    ips = es["images"] / max(es["time"], 1e-9) * self.info.world_size
                    bar.set_postfix_str(f"box {parts['box'].item():.3f} obj {parts['obj'].item():.3f} "
                                        f"cls {parts['cls'].item():.3f} lr {lr:.2e} {ips:.1f} img/s "
                                        f"mem {memory_text(self.device)}", refresh=False)
                    bar.update(1)
                if sync and self.hooks.on_step is not None:
                    self.hooks.on_step(StepInfo(self.epoch, self.step, value, lr, model))
        finally:
            bar.close()

    def _end_epoch(self) -> None:
        s, es = self.s, self.epoch_sums
        n = max(es["images"], 1)
        val_model = self.ema.module if self.ema is not None else self.model
        m = float("nan")
        if self.info.is_main and self.val_loader is not None:
            m = validate(val_model, self.val_loader, self.names, self.device, self.ctx, s.val_conf_thres,
                         s.val_nms_thres, s.channels_last)
        row = {"epoch": self.epoch + 1, "step": self.step, "box": es["box"] / n, "obj": es["obj"] / n,
               "cls": es["cls"] / n, "loss": es["loss"] / n, "lr": self.scheduler.lr, "mAP50": m,
               "images": int(es["images"]) * self.info.world_size,
               "img_per_s": es["images"] * self.info.world_size / max(es["time"], 1e-9),
               "data_wait": es["data"] / max(es["time"], 1e-9), "time_s": es["time"]}
        self.history.append(row)
        self.epoch += 1
        self.batches_done = 0
        if self.info.is_main:
            improved = math.isnan(m) or m > self.best_map
            if improved:
                self.best_map = m if not math.isnan(m) else self.best_map
                self.best_epoch = self.epoch
            self._save("last.pt")
            if improved:
                self._save("best.pt")
                from detkit.darknet.weights import save_darknet_weights

                save_darknet_weights(val_model, self.run_dir / "best.weights")
            write_results_csv(self.run_dir / "results.csv", self.history)
            if self.tb is not None:
                for k in ("loss", "box", "obj", "cls", "lr", "mAP50", "img_per_s"):
                    self.tb.add_scalar(f"train/{k}" if k != "mAP50" else "val/mAP50", row[k], self.epoch)
            log.info("epoch %d/%d: loss %.4g (box %.4g obj %.4g cls %.4g) lr %.3g mAP@0.5 %.4f "
                     "%.1f img/s, data wait %.0f%%%s", self.epoch, s.epochs, row["loss"], row["box"], row["obj"],
                     row["cls"], row["lr"], m, row["img_per_s"], 100 * row["data_wait"],
                     " (best)" if improved else "")
        if self.hooks.on_epoch_end is not None:
            self.hooks.on_epoch_end(row)
        barrier(self.info)



def train(settings: TrainSettings | None = None, *, resume: str | os.PathLike | None = None,
          resume_epochs: int | None = None, hooks: TrainHooks | None = None) -> TrainResult:
    """Train (or, with ``resume=RUN_DIR``, continue) a run. Under torchrun, every process calls this.

    Raises:
        TrainError: bad settings, data/class mismatch, non-finite loss, unusable checkpoint.
    """
    payload = None
    if resume is not None:
        settings, payload = resume_settings(resume, resume_epochs)
        run_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    elif settings is None:
        raise TrainError("train() needs settings or resume=RUN_DIR")
    info = dist_info_from_env()
    device = resolve_device(settings.device, info)
    init_distributed(info, device)
    try:
        if payload is None:
            run_dir = Path(broadcast_object(str(next_run_dir(settings.out)) if info.is_main else None, info))
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run_dir / "settings.json", json.dumps(settings.to_json_dict(), indent=2) + "\n")
            log.info("run folder: %s", run_dir)
        barrier(info)
        trainer = Trainer(settings, info, device, hooks or TrainHooks(), payload, run_dir)
        if payload is not None and info.is_main:
            log.info("resuming %s at epoch %d, step %d", run_dir, trainer.epoch + 1, trainer.step)
        return trainer.run()
    finally:
        cleanup_distributed()
