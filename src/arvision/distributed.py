"""torchrun helpers: one process per device, gloo on CPU and nccl on GPU.

``init()`` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); without it everything
runs as a single process and every helper is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    own_group: bool = False  # a one-process group made for FSDP, which shutdown() destroys

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device: str) -> tuple[DistInfo, str]:
    """Join the process group when launched by torchrun; returns the info and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return DistInfo(rank, world, local), device


def one_process_group(info: DistInfo, device: str) -> DistInfo:
    """A single process without a group gets a one-process, in-memory one (FSDP needs a group even
    then), which :func:`shutdown` ends; otherwise ``info`` as it is. Made as late as possible, so
    that a mistake found before the model is built leaves no group behind."""
    if info.enabled or dist.is_initialized():
        return info
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    return DistInfo(own_group=True)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def check_in_sync(model: torch.nn.Module, info: DistInfo) -> float:
    """Largest difference between this rank's parameters and rank 0's (0.0 when in sync)."""
    if not info.enabled:
        return 0.0
    worst = torch.zeros(())
    for p in model.parameters():
        if isinstance(p, torch.distributed.tensor.DTensor):  # an FSDP shard: one copy, nothing to compare
            continue
        ref = p.detach().clone()
        dist.broadcast(ref, src=0)
        worst = torch.maximum(worst, (ref - p.detach()).abs().max().cpu())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


def mean_over_ranks(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``x`` over the processes (every rank must call), e.g. each rank's loss on its share."""
    if not info.enabled:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / info.world_size


def shutdown(info: DistInfo) -> None:
    if (info.enabled or info.own_group) and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
