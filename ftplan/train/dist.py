"""Data parallelism for ``ftplan train`` under ``accelerate launch`` or ``torchrun``: one process per
device, the whole model on each (DDP), gradients averaged by ``DistributedDataParallel``; each process
takes every ``world``-th micro-batch of the same deterministic order, and only rank 0 writes logs,
checkpoints and the adapter. NCCL on CUDA, Gloo on the CPU (which the tests use)."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    world: int = 1
    rank: int = 0
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch
    import torch.distributed as dist

    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return Dist(world, rank, local)


def wrap(model, d: Dist, device: str):
    if d.world <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[d.local] if device == "cuda" else None)


def no_sync(model, d: Dist, last: bool):
    """Skip the gradient all-reduce on every micro-batch but the last of an accumulation."""
    return model.no_sync() if d.world > 1 and not last else nullcontext()


def mean(value: float, d: Dist, device: str) -> float:
    if d.world <= 1:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device if device == "cpu" else f"cuda:{d.local}")
    dist.all_reduce(t)
    return float(t.item()) / d.world


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def teardown(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
