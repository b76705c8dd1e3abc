"""The processes of a ``torchrun`` job: who this process is, the process group, and the
collectives the run needs (a broadcast from rank 0, sums and means over the ranks)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import TrainError

__all__ = ["Dist", "dist_from_env", "init_dist", "destroy_dist", "broadcast_object", "sum_over_ranks",
           "mean_over_ranks"]


@dataclass
class Dist:
    """This process's place in the job (a single process: world size 1, rank 0)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise TrainError(f"environment variable {name} must be an integer, got {value!r}") from None


def dist_from_env() -> Dist:
    """This process's place, from torchrun's WORLD_SIZE, RANK and LOCAL_RANK."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return Dist()
    return Dist(world_size=world_size, rank=_env_int("RANK", 0), local_rank=_env_int("LOCAL_RANK", 0))


def init_dist(d: Dist, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo on the CPU) unless it exists already."""
    import torch.distributed as dist

    if not d.enabled or (dist.is_available() and dist.is_initialized()):
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, **kwargs)
    d.initialized_here = True


def destroy_dist(d: Dist, wait_for_all: bool = False) -> None:
    """Leave the process group if :func:`init_dist` made it; with ``wait_for_all`` (a run that ended
    normally) only after every rank has got there, so that no rank closes its connections while another
    is still in a collective.  A rank that failed leaves at once (the others may never arrive)."""
    if d.initialized_here:
        import torch.distributed as dist

        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_object(d: Dist, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not d.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(values: Tensor, world_size: int) -> Tensor:
    """The sum of ``values`` over the ranks (a new tensor; ``values`` itself with one process)."""
    if world_size <= 1:
        return values
    import torch.distributed as dist

    values = values.clone()
    dist.all_reduce(values)
    return values


def mean_over_ranks(values: Tensor, world_size: int) -> Tensor:
    """The mean of ``values`` over the ranks."""
    if world_size <= 1:
        return values
    return sum_over_ranks(values, world_size) / world_size
