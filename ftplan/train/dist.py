"""Data parallelism for ``ftplan train`` under ``accelerate launch`` or ``torchrun``: one process per
device; DDP (the whole model on each, gradients averaged by ``DistributedDataParallel``) or FSDP2 (the plan's
``sharding`` ``fsdp``/``fsdp_grad_op``: ``measure.distributed.shard_fsdp2``, the units and mixed-precision policy
accelerate uses, so the run holds what the plan counted). Each process takes every ``world``-th micro-batch of
the same deterministic order, and only rank 0 writes logs, checkpoints and the adapter (under FSDP every rank
takes part in gathering the full state first). NCCL on CUDA, Gloo on the CPU (which the tests use)."""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
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


def sharded(cfg, d: Dist) -> bool:
    """Whether this run shards the model with FSDP2 (several processes and an FSDP plan)."""
    from ..planner.types import FSDP_SHARDINGS

    return d.world > 1 and cfg.sharding in FSDP_SHARDINGS


def shard(model, cfg, d: Dist):
    """FSDP2 over the processes, as accelerate builds it (before the optimizer: its parameters are the shards)."""
    if not sharded(cfg, d):
        return model
    from ..measure.distributed import shard_fsdp2

    return shard_fsdp2(model, cfg, reshard_after_forward=cfg.sharding == "fsdp", offload=cfg.offload == "params")


def wrap(model, d: Dist, device: str, cfg=None):
    if d.world <= 1 or (cfg is not None and sharded(cfg, d)):
        return model  # FSDP2 wraps the modules in place (``shard``)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[d.local] if device == "cuda" else None)


@contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def no_sync(model, d: Dist, last: bool, fsdp_model=None):
    """Skip the gradient reduction on every micro-batch but the last of an accumulation (DDP's ``no_sync``;
    FSDP2's ``set_requires_gradient_sync(False)``, as accelerate does under HF Trainer)."""
    if d.world <= 1 or last:
        return nullcontext()
    if fsdp_model is not None:
        return _fsdp_no_sync(fsdp_model)
    return model.no_sync()


def full_state(model, optimizer):
    """(trainable parameters, optimizer state) gathered whole onto rank 0's CPU from an FSDP2 model; a
    collective: every rank calls it (the others get empty dicts)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd, osd = get_state_dict(model, optimizer, options=opts)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in msd.items() if k in trainable}, osd


def load_full_state(model, optimizer, msd: dict, osd: dict) -> None:
    """Put a whole checkpoint (every rank read the same files) into an FSDP2 model and its optimizer: each
    rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd,
                   options=StateDictOptions(full_state_dict=True, strict=False))


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
