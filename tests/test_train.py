"""Training engine: gradients, AMP step, exact resume, Ctrl-C, non-finite loss, settings, overfit (slow).

Everything runs on a miniature 2-head cfg (64x64 input, <= 32 channels) and a synthetic dataset of
coloured squares/discs written in ``tmp_path``, so the fast tier stays within seconds on 2 cores.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import detkit
from detkit import checkpoint as ckpt
from detkit.train.hooks import TrainHooks
from detkit.train.settings import TrainSettings, resolve_settings
from detkit.train.setup import init_head_priors, param_groups
from detkit.train.trainer import train
from detkit.errors import TrainError
from detkit.yolo.loss import LossConfig, YoloLoss
from helpers import MINI_CFG, make_dataset, mini_settings


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = detkit.build_model(MINI_CFG, num_classes=2).train()
    init_head_priors(model)
    loss_fn = YoloLoss.from_model(model, LossConfig(box_loss="ciou"))
    x = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 0, 0.3, 0.4, 0.3, 0.3], [0, 1, 0.7, 0.6, 0.15, 0.2], [1, 1, 0.5, 0.5, 0.6, 0.5]])
    loss, parts = loss_fn(model(x), targets, (64, 64))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []
    assert all(v.item() > 0 for v in parts.values())


def test_no_weight_decay_on_batchnorm_and_biases():
    model = detkit.build_model(MINI_CFG, num_classes=2)
    groups = param_groups(model, 5e-4)
    decayed = {id(p) for p in groups[0]["params"]}
    for name, p in model.named_parameters():
        is_conv_weight = name.endswith("conv.weight")
        assert (id(p) in decayed) == is_conv_weight, name
    assert groups[1]["weight_decay"] == 0.0


def test_settings_from_cfg_and_overrides(tmp_path):
    data = make_dataset(tmp_path / "d", 2, 1)
    s = mini_settings(tmp_path, data, epochs=3, lr=None, batch=None)
    assert (s.batch, s.subdivisions, s.lr, s.momentum, s.decay) == (4, 2, 0.01, 0.9, 0.0005)
    assert s.steps == (0.8, 0.9) and s.scales == (0.1, 0.1) and s.burn_in == -2
    assert s.img_size == (64, 64) and s.epochs == 3
    s2 = mini_settings(tmp_path, data, lr=0.002, batch=8, subdivisions=4, img_size=(96, 64))
    assert (s2.lr, s2.batch, s2.subdivisions, s2.img_size) == (0.002, 8, 4, (96, 64))
    assert TrainSettings.from_json_dict(json.loads(json.dumps(s2.to_json_dict()))) == s2
    with pytest.raises(TrainError, match="multiple of subdivisions"):
        mini_settings(tmp_path, data, batch=6, subdivisions=4)
    # the shipped yolov3-tiny.cfg has the testing [net] batch=1: training uses 16
    s3 = resolve_settings("yolov3-tiny", str(data), 2, str(tmp_path / "r"))
    assert (s3.batch, s3.subdivisions, s3.img_size) == (16, 1, (416, 416))
    assert s3.steps == pytest.approx((400000 / 500200, 450000 / 500200))


def test_classes_must_match_names(tmp_path):
    data = make_dataset(tmp_path / "d", 2, 1)
    s = mini_settings(tmp_path, data)
    s = TrainSettings.from_json_dict({**s.to_json_dict(), "num_classes": 3})
    with pytest.raises(TrainError, match=r"obj.data: --classes 3 disagrees with the 2 class names"):
        train(s)


def test_train_writes_the_run_folder(tmp_path):
    data = make_dataset(tmp_path / "d", 8, 4, empty_every=4)  # images without objects included
    s = mini_settings(tmp_path, data, epochs=2, plots=True, batch=4, subdivisions=2)
    res = train(s)
    run = res.run_dir
    assert res.epochs_completed == 2 and res.steps == 4 and not res.interrupted
    for name in ("settings.json", "last.pt", "best.pt", "best.weights", "results.csv", "results.png"):
        assert (run / name).is_file(), name
    rows = (run / "results.csv").read_text().splitlines()
    assert rows[0].split(",")[:6] == ["epoch", "step", "box", "obj", "cls", "loss"] and len(rows) == 3
    payload = ckpt.load_checkpoint(run / "last.pt")
    assert payload["epoch"] == 2 and payload["step"] == 4 and payload["class_names"] == ["square", "disc"]
    assert "classes=2" in payload["cfg_text"].replace(" ", "")
    # best.weights is a darknet file that loads back into the same cfg
    model = detkit.build_model(payload["cfg_text"])
    detkit.load_darknet_weights(model, run / "best.weights")
    # a second run with the same --out goes to a new folder
    res2 = train(mini_settings(tmp_path, data, epochs=1))
    assert res2.run_dir == run.with_name("exp2")
    assert all(math.isfinite(v) for v in res.loss_trace)


def test_amp_bf16_on_cpu_uses_the_same_step(tmp_path):
    data = make_dataset(tmp_path / "d", 4, 2)
    ref = train(mini_settings(tmp_path, data, epochs=1, out=str(tmp_path / "fp32")))
    low = train(mini_settings(tmp_path, data, epochs=1, amp=True, amp_dtype="bf16", out=str(tmp_path / "bf16")))
    assert len(low.loss_trace) == len(ref.loss_trace)
    # same data, same init: bf16 autocast losses track fp32 closely, and they are not bit-identical
    assert np.allclose(low.loss_trace, ref.loss_trace, rtol=0.05)
    assert low.loss_trace != ref.loss_trace
    payload = ckpt.load_checkpoint(low.last_checkpoint)
    assert all(v.dtype == torch.float32 for v in payload["model"].values() if v.is_floating_point())


def _params(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(path)["model"]


class _StopAt:
    """Hook: raise KeyboardInterrupt (what Ctrl-C does) after a given optimizer step / epoch."""

    def __init__(self, step: int | None = None, epoch: int | None = None):
        self.step, self.epoch = step, epoch

    def on_step(self, info):
        if self.step is not None and info.step == self.step:
            raise KeyboardInterrupt

    def on_epoch_end(self, row):
        if self.epoch is not None and row["epoch"] == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("stop", [dict(epoch=1), dict(step=3)], ids=["after-epoch", "mid-epoch"])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, stop):
    data = make_dataset(tmp_path / "d", 8, 2)
    kw = dict(epochs=2, batch=4, subdivisions=2)
    straight = train(mini_settings(tmp_path, data, out=str(tmp_path / "a"), **kw))
    hook = _StopAt(**stop)
    first = train(mini_settings(tmp_path, data, out=str(tmp_path / "b"), **kw),
                  hooks=TrainHooks(on_step=hook.on_step, on_epoch_end=hook.on_epoch_end))
    assert first.interrupted and first.last_checkpoint.is_file()
    rest = train(resume=first.run_dir)
    assert not rest.interrupted and rest.epochs_completed == 2 and rest.steps == straight.steps
    # the loss curve continues exactly where it stopped (micro-batches after the last optimizer
    # step of the interrupted run are redone, so drop them from the first trace)
    done = 2 * (3 if "step" in stop else 2 * 2)
    trace = list(first.loss_trace[:done]) + list(rest.loss_trace)
    assert np.allclose(trace, straight.loss_trace, rtol=1e-6, atol=1e-7)
    a, b = _params(straight.last_checkpoint), _params(rest.last_checkpoint)
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)
    ea = ckpt.load_checkpoint(straight.last_checkpoint)["ema"]["module"]
    eb = ckpt.load_checkpoint(rest.last_checkpoint)["ema"]["module"]
    assert all(torch.allclose(ea[k].float(), eb[k].float(), rtol=1e-5, atol=1e-7) for k in ea)
    assert [r["epoch"] for r in rest.history] == [1, 2]


def test_ctrl_c_saves_last_checkpoint_and_stops(tmp_path):
    data = make_dataset(tmp_path / "d", 8, 2)
    res = train(mini_settings(tmp_path, data, epochs=3, batch=4, subdivisions=1),
                hooks=TrainHooks(on_step=_StopAt(step=3).on_step))
    assert res.interrupted and res.steps == 3 and res.epochs_completed == 1
    payload = ckpt.load_checkpoint(res.last_checkpoint)
    assert (payload["epoch"], payload["step"], payload["batches_done"]) == (1, 3, 1)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    data = make_dataset(tmp_path / "d", 8, 2)

    def poison(info):
        if info.step == 3:  # second epoch: break the model
            with torch.no_grad():
                next(info.model.parameters()).fill_(float("nan"))

    s = mini_settings(tmp_path, data, epochs=3, batch=4, subdivisions=1)
    with pytest.raises(TrainError, match=r"non-finite loss \(nan\) at epoch 2, step 4.*Last good checkpoint: .*last\.pt"):
        train(s, hooks=TrainHooks(on_step=poison))
    run = Path(s.out)
    payload = ckpt.load_checkpoint(run / "last.pt")
    assert payload["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point())


def test_weights_from_checkpoint_and_freeze(tmp_path):
    data = make_dataset(tmp_path / "d", 4, 2)
    first = train(mini_settings(tmp_path, data, epochs=1, out=str(tmp_path / "a")))
    start = _params(first.best_checkpoint)
    ema = ckpt.load_checkpoint(first.best_checkpoint)["ema"]["module"]
    res = train(mini_settings(tmp_path, data, epochs=2, batch=2, subdivisions=1, out=str(tmp_path / "b"),
                              weights=str(first.best_checkpoint), freeze=4))
    after = _params(res.last_checkpoint)
    # layers 0..3 frozen: exactly the EMA weights they started from, including BN statistics
    for k in after:
        if k.startswith(("layers.0.", "layers.2.")):
            assert torch.equal(after[k], ema[k]), k
    assert not torch.equal(after["layers.6.conv.weight"], start["layers.6.conv.weight"])


def test_rare_class_remedies(tmp_path, caplog):
    data = make_dataset(tmp_path / "d", 6, 2, seed=5)
    with caplog.at_level("INFO", logger="detkit.train.trainer"):
        res = train(mini_settings(tmp_path, data, epochs=1, batch=2, subdivisions=1, class_weights=True,
                                  balanced_sampler=True))
    text = caplog.text
    assert "class balance" in text and "is rare" in text and "class loss weights: square=" in text
    assert res.history[0]["images"] == 6  # the weighted sampler draws as many images as the set holds


@pytest.mark.slow
def test_overfit_eight_images(tmp_path):
    """Learning check: 8 images, train on them, VOC mAP@0.5 on the same images >= 0.95."""
    data = make_dataset(tmp_path / "d", 8, 0, seed=3)
    s = mini_settings(tmp_path, data, epochs=100, batch=8, subdivisions=1, lr=0.02, burn_in=10, jitter=0.0,
                      flip=False, policy="cosine", ema_tau=None, seed=0)
    torch.set_num_threads(2)
    res = train(s)
    assert res.best_map >= 0.95, res.history[-5:]


def test_cli_train_and_resume(tmp_path, capsys):
    from detkit.cli import main

    data = make_dataset(tmp_path / "d", 4, 2)
    cfg = tmp_path / "mini.cfg"
    cfg.write_text(MINI_CFG)
    out = tmp_path / "runs" / "cli"
    common = ["--cfg", str(cfg), "--data", str(data), "--device", "cpu", "--workers", "0", "--no-amp"]
    rc = main(["-q", "train", *common, "--classes", "2", "--epochs", "1", "--batch", "2", "--subdivisions", "1",
               "--out", str(out), "--img-size", "64", "--box-loss", "giou"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "done: 1 epochs, 2 steps" in printed and str(out) in printed
    saved = json.loads((out / "settings.json").read_text())
    assert (saved["batch"], saved["box_loss"], saved["amp"], saved["img_size"]) == (2, "giou", False, [64, 64])
    assert main(["-q", "train", "--resume", str(out), "--epochs", "2"]) == 0
    assert ckpt.load_checkpoint(out / "last.pt")["epoch"] == 2
    rc = main(["-q", "train", *common, "--classes", "3", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 1 and "detkit: error:" in err and "--classes 3 disagrees with the 2 class names" in err
    assert main(["-q", "train", "--cfg", str(cfg)]) == 1
    assert "missing --classes, --data" in capsys.readouterr().err
