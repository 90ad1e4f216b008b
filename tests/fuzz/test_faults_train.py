"""Training under SIGKILL (long tier): a run killed at random moments, then ``--resume``d from its
``last.pt`` (or restarted when it died before the first checkpoint), ends with the same weights
as an uninterrupted run (CPU, to floating-point noise). Uses the miniature cfg and synthetic
dataset of tests/helpers.py (shared with tests/test_train.py) so each run takes seconds."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fuzzlib

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
EPOCHS = 3

SCRIPT = """
import sys, torch
sys.path[:0] = [{tests!r}, {repo!r}]
torch.set_num_threads(1)
from pathlib import Path
from helpers import mini_settings
from detkit.train.trainer import train
train(mini_settings(Path({tmp!r}), Path({data!r}), out={out!r}, epochs={epochs}, batch=4, subdivisions=2))
"""


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _params(path: Path) -> dict[str, torch.Tensor]:
    from detkit.checkpoint import load_checkpoint
    return load_checkpoint(path)["model"]


@pytest.mark.fuzz_long
@pytest.mark.timeout(3600)
def test_kill9_then_resume_equals_an_uninterrupted_run(tmp_path):
    sys.path[:0] = [str(TESTS)]
    try:
        from helpers import make_dataset, mini_settings
    finally:
        sys.path.remove(str(TESTS))
    from detkit.train.trainer import train

    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = make_dataset(tmp_path / "d", 8, 2)
        script = lambda out: SCRIPT.format(tests=str(TESTS), repo=str(REPO), tmp=str(tmp_path), data=str(data),  # noqa: E731
                                           out=str(out), epochs=EPOCHS)
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", script(tmp_path / "straight")], env=_env(), check=True,
                       capture_output=True, timeout=1800)
        span = time.monotonic() - t0
        want = _params(tmp_path / "straight" / "last.pt")
        rng = random.Random(int(os.environ.get("DETKIT_FUZZ_SEED", "0")))
        n = int(os.environ.get("DETKIT_FUZZ_TRAIN_KILLS", "5"))
        outcomes, stale = [], 0
        for k in range(n):
            out = tmp_path / f"killed{k}"
            proc = subprocess.Popen([sys.executable, "-c", script(out)], env=_env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.2, span))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.returncode == 0:
                outcome = "finished_before_kill"
                final = out / "last.pt"
            elif (out / "last.pt").is_file():
                outcome = "resumed"
                res = train(resume=out)
                assert not res.interrupted and res.epochs_completed == EPOCHS
                final = res.last_checkpoint
            else:
                outcome = "restarted"  # died before its first checkpoint: nothing to resume
                res = train(mini_settings(tmp_path, data, out=str(tmp_path / f"restart{k}"), epochs=EPOCHS, batch=4,
                                          subdivisions=2))
                final = res.last_checkpoint
            got = _params(final)
            assert got.keys() == want.keys()
            for key in want:
                assert torch.allclose(got[key].float(), want[key].float(), rtol=1e-5, atol=1e-7), (outcome, key)
            stale += sum(1 for p in out.glob(".*.tmp")) if out.is_dir() else 0
            outcomes.append(outcome)
            fuzzlib.record("faults.train_kill9", outcome)
        fuzzlib.figure("train_kill9_runs", n)
        fuzzlib.figure("train_uninterrupted_seconds", round(span, 2))
        fuzzlib.figure("train_kill9_stale_temp_files", stale)
    finally:
        torch.set_num_threads(old_threads)
