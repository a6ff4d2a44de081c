"""Which process this is in a (torchrun) training job, its device, and the few collectives the trainer needs.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT); the trainer initialises the process group
itself, NCCL on GPUs and gloo on CPUs. A plain `python`/`wit train` is a world of one and touches no process group.
"""

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # this module created the process group, so it destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda was asked for but no GPU is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


def init_distributed(device: str = "auto", timeout_s: float = 1800) -> DistInfo:
    """This process's place in the job: from an initialised process group, from torchrun's variables, or alone."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo(0, 1, local_rank, dev)
    rank = int(os.environ["RANK"])
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank, world_size, local_rank, dev, owns_group=True)


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj` in rank order (for per-rank RNG and loader states in the checkpoint)."""
    if info.world_size == 1:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world_size == 1:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / info.world_size


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()
