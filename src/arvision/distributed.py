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


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def check_in_sync(model: torch.nn.Module, info: DistInfo) -> float:
    """Largest difference between this rank's parameters and rank 0's (0.0 when in sync)."""
    if not info.enabled:
        return 0.0
    worst = torch.zeros(())
    for p in model.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, src=0)
        worst = torch.maximum(worst, (ref - p.detach()).abs().max().cpu())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
