"""Learning-rate schedule (darknet burn-in, steps/scales, cosine) and the weight EMA."""
from __future__ import annotations

import math

import pytest
import torch

from detkit.train.ema import ModelEMA
from detkit.train.setup import ema_defaults
from detkit.train.schedule import LRScheduler, ScheduleConfig, learning_rate


def _darknet_rate(step, base, burn_in, power, steps, scales):
    """darknet get_current_rate() for policy=steps, written from network.c's description."""
    if step < burn_in:
        return base * pow(step / burn_in, power)
    rate = base
    for s, sc in zip(steps, scales):
        if s > step:
            break
        rate *= sc
    return rate


def test_burn_in_then_steps_match_darknet():
    cfg = ScheduleConfig(base_lr=0.001, burn_in=1000, power=4, policy="steps", steps=(4000, 4500), scales=(0.1, 0.1))
    for step in [0, 1, 10, 500, 999, 1000, 1001, 3999, 4000, 4499, 4500, 6000]:
        assert learning_rate(cfg, step) == pytest.approx(_darknet_rate(step, 0.001, 1000, 4, (4000, 4500), (0.1, 0.1)),
                                                         rel=1e-12, abs=1e-18)
    assert learning_rate(cfg, 0) == 0.0  # burn-in counts from step 0
    assert learning_rate(cfg, 500) == pytest.approx(0.001 / 16)


def test_cosine_after_burn_in():
    cfg = ScheduleConfig(base_lr=0.01, burn_in=10, policy="cosine", total_steps=110, final_ratio=0.01)
    assert learning_rate(cfg, 10) == pytest.approx(0.01)
    assert learning_rate(cfg, 60) == pytest.approx(0.0001 + 0.0099 * 0.5)
    assert learning_rate(cfg, 110) == pytest.approx(0.0001)
    assert learning_rate(cfg, 500) == pytest.approx(0.0001)
    values = [learning_rate(cfg, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_scheduler_drives_optimizer_and_round_trips():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p]}, {"params": [], "weight_decay": 0.0}], lr=1.0)
    sch = LRScheduler(opt, ScheduleConfig(base_lr=0.1, burn_in=4, power=2))
    seen = []
    for _ in range(6):
        seen.append(sch.apply())
        sch.advance()
    assert seen == pytest.approx([0.0, 0.1 / 16, 0.1 / 4, 0.1 * 9 / 16, 0.1, 0.1])
    assert all(g["lr"] == 0.1 for g in opt.param_groups)
    other = LRScheduler(opt, sch.config)
    other.load_state_dict(sch.state_dict())
    assert other.step_count == 6 and other.lr == sch.lr


def test_bad_schedule_config():
    with pytest.raises(ValueError, match="policy"):
        ScheduleConfig(base_lr=0.1, policy="poly")
    with pytest.raises(ValueError, match="scales"):
        ScheduleConfig(base_lr=0.1, steps=(1, 2), scales=(0.1,))


def test_ema_ramp_and_average():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9, tau=1.0)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1.0))
    want = d * start["0.weight"] + (1 - d) * model[0].weight
    assert torch.allclose(ema.module[0].weight, want)
    assert not ema.module[0].weight.requires_grad
    # integer buffers are copied, not averaged
    model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    assert ema.module[1].num_batches_tracked.item() == 7
    other = ModelEMA(model, decay=0.5, tau=3.0)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 2 and other.decay == 0.9
    assert torch.equal(other.module[0].weight, ema.module[0].weight)


def test_ema_defaults_follow_the_run_length():
    assert ema_defaults(100) == (0.9, 10.0)  # short fine-tune: about the last epoch or so
    d, tau = ema_defaults(4000)
    assert d == pytest.approx(1 - 1 / 200) and tau == 200.0
    assert ema_defaults(10_000_000) == (0.9999, 2000.0)  # long runs: the usual values
