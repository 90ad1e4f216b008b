"""Multi-process training: 2 CPU processes with gloo, as torchrun would start them."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from detkit import checkpoint as ckpt
from detkit.train.distributed import DistInfo, dist_info_from_env, resolve_device
from detkit.train.hooks import TrainHooks
from detkit.train.trainer import train
from detkit.errors import TrainError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _SaveParams:
    """on_step hook: every rank writes its parameters after each step (to compare ranks)."""

    def __init__(self, folder: str, rank: int):
        self.folder, self.rank = folder, rank

    def __call__(self, info) -> None:
        state = {k: v.detach().clone() for k, v in info.model.state_dict().items()}
        torch.save(state, Path(self.folder) / f"rank{self.rank}_step{info.step}.pt")


def _worker(rank: int, world: int, port: int, settings, folder: str) -> None:
    import os

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    train(settings, hooks=TrainHooks(on_step=_SaveParams(folder, rank)))


def test_two_processes_with_gloo(tmp_path):
    from helpers import make_dataset, mini_settings

    data = make_dataset(tmp_path / "d", 8, 2)
    # global batch 4 = 2 micro-batches (subdivisions) x 2 processes x 1 image
    s = mini_settings(tmp_path, data, epochs=1, batch=4, subdivisions=2)
    folder = tmp_path / "states"
    folder.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), s, str(folder)), nprocs=2, join=True)
    run = Path(s.out)
    # only rank 0 writes the run folder
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "best.weights", "last.pt", "results.csv",
                                                      "settings.json"]
    payload = ckpt.load_checkpoint(run / "last.pt")
    # 8 images / (4 per step) = 2 optimizer steps; both ranks saw 4 images each
    assert payload["step"] == 2 and payload["history"][0]["images"] == 8
    for step in (1, 2):
        a = torch.load(folder / f"rank0_step{step}.pt", weights_only=True)
        b = torch.load(folder / f"rank1_step{step}.pt", weights_only=True)
        # gradients were all-reduced: the parameters stay identical on both ranks
        params = [k for k in a if "running" not in k and "num_batches" not in k]
        assert all(torch.equal(a[k], b[k]) for k in params)
    assert torch.equal(payload["model"]["layers.0.conv.weight"],
                       torch.load(folder / "rank0_step2.pt", weights_only=True)["layers.0.conv.weight"])


def test_env_parsing_and_device():
    assert dist_info_from_env({}) == DistInfo(0, 1, 0)
    info = dist_info_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (info.rank, info.world_size, info.local_rank, info.enabled, info.is_main) == (3, 4, 1, True, False)
    with pytest.raises(TrainError, match="RANK=4 WORLD_SIZE=4"):
        dist_info_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    assert resolve_device("cpu", info) == torch.device("cpu")
    with pytest.raises(TrainError, match="--device tpu"):
        resolve_device("tpu", info)
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="CUDA is not available"):
            resolve_device("cuda:0", info)
