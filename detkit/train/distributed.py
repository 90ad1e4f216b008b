"""torch.distributed set-up for ``torchrun`` launches (multi-GPU, multi-node, or several CPU processes).

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; when
``WORLD_SIZE`` is absent or 1 training runs as a single process. Backend: nccl on CUDA, gloo on CPU.
Only rank 0 writes checkpoints, logs and plots.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist

from detkit.errors import TrainError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job. ``world_size == 1`` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info_from_env(env: Mapping[str, str] | None = None) -> DistInfo:
    """Read torchrun's variables (defaults: single process)."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise TrainError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}") from None
    if world < 1 or not 0 <= rank < world:
        raise TrainError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def resolve_device(spec: str, info: DistInfo) -> torch.device:
    """``auto|cpu|cuda|cuda:i`` -> device; under torchrun each process takes ``cuda:LOCAL_RANK``."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
        if spec == "cuda":
            index = info.local_rank if info.enabled else 0
        else:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise TrainError(f"--device {spec}: expected auto, cpu, cuda or cuda:<index>") from None
            if info.enabled:
                index += info.local_rank
        if index >= torch.cuda.device_count():
            raise TrainError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", index)
    raise TrainError(f"--device {spec}: expected auto, cpu, cuda or cuda:<index>")


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Create the default process group when running under torchrun (no-op for one process)."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    log.info("distributed: rank %d/%d (%s)", info.rank, info.world_size, backend)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_finite(value: torch.Tensor, info: DistInfo) -> bool:
    """True when ``value`` is finite on every rank (one small all-reduce under DDP)."""
    flag = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if info.enabled and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0.5)


def reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over ranks (identity for one process)."""
    if info.enabled and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= info.world_size
    return values


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not (info.enabled and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
