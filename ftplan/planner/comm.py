"""Communication and host-transfer time of a step on several GPUs, by strategy.

Bytes per rank over the link for ring collectives on ``n`` ranks (the NCCL algorithms' bus traffic): an
all-reduce moves ``2 (n-1)/n`` of the buffer, an all-gather or a reduce-scatter ``(n-1)/n``. When each
collective runs (read in the libraries):
- DDP (HF Trainer): one gradient all-reduce per optimizer step (``no_sync`` on the other micro-batches),
  bucketed and overlapped with the backward.
- FSDP2 full shard: each micro-batch all-gathers the parameters twice (forward; backward re-gathers what
  was resharded); gradients are reduce-scattered once per optimizer step (``set_requires_gradient_sync``).
  ``fsdp_grad_op`` gathers once per micro-batch (kept from forward to backward).
- ZeRO-1: gradients all-reduced at the step boundary, the updated 16-bit parameters all-gathered after it.
  ZeRO-2: gradients reduced on every micro-batch (into the partition), parameters all-gathered after the
  step. ZeRO-3: parameters all-gathered in forward and backward and gradients reduce-scattered, every
  micro-batch.
- Offload: FSDP's ``CPUOffloadPolicy`` copies each unit's shard to the device before every gather and the
  gradient shard back once per step, and runs the optimizer on the host; ZeRO's ``offload_optimizer`` copies
  the gradient partition to the host and the updated 16-bit partition back once per step.

Overlap (stated, not measured yet): per-micro-batch collectives overlap that micro-batch's compute
(prefetch, bucketing), so a micro-batch takes the longer of the two; per-step collectives overlap the last
backward for up to ``BACKWARD_SHARE`` of a micro-batch; host transfers and the host optimizer step do not
overlap.
"""

from __future__ import annotations

from typing import NamedTuple

from .types import FSDP_SHARDINGS, TrainConfig

# links (GB/s per direction, effective): NVLink-class within a node, PCIe 4.0 x16 (32 GB/s theoretical)
NVLINK_GBS = 300.0
PCIE_GBS = 25.0
# between servers (GB/s per GPU, effective): one 400 Gb/s InfiniBand NDR / RoCE adapter per GPU, as DGX/HGX
# H100 nodes are built (8 x ConnectX-7), about 50 GB/s of which ~80% is reached; a prior for other networks
NETWORK_GBS = 40.0
# the backward's share of a micro-batch's compute (2 of its 3 matmul passes): what a per-step all-reduce can hide under
BACKWARD_SHARE = 2 / 3
# host memory traffic of an optimizer step on the host (GB/s per rank, prior): DeepSpeed's CPU Adam and torch's
# AdamW on a server CPU's share of its memory channels; replaced by a calibration once measured
HOST_OPTIMIZER_GBS = 10.0


class Traffic(NamedTuple):
    """Bytes one rank moves per optimizer step: overlapped with each micro-batch, at the step, over PCIe to
    the host; and the host optimizer's memory traffic."""

    per_micro: float
    per_step: float
    host_link: float
    host_optimizer: float


def ring(n: int) -> float:
    """``(n-1)/n``: the share of a buffer one rank sends in a ring all-gather or reduce-scatter."""
    return (n - 1) / n if n > 1 else 0.0


def traffic(cfg: TrainConfig, gathered_bytes: float, grad_bytes: float, trainable16_bytes: float,
            state_bytes: float) -> Traffic:
    """Bytes per rank and step for ``cfg``'s strategy (module docstring). ``gathered_bytes``: the parameters as
    gathered (compute dtype; 4-bit weights packed); ``grad_bytes``: the gradients as reduced; ``trainable16_bytes``:
    the trainable parameters in 16 bits; ``state_bytes``: master weights and optimizer state of the whole model
    (what a host optimizer step reads and writes, split over the ranks)."""
    n, a, sh = cfg.num_gpus, cfg.grad_accum, cfg.sharding
    r = ring(n)
    if n <= 1 or sh is None:
        return Traffic(0.0, 0.0, 0.0, 0.0)
    host = host_opt = 0.0
    if sh == "ddp":
        micro, step = 0.0, 2 * r * grad_bytes
    elif sh in FSDP_SHARDINGS:
        micro = (2 if sh == "fsdp" else 1) * r * gathered_bytes
        step = r * grad_bytes
        if cfg.offload == "params":
            host = a * (2 if sh == "fsdp" else 1) * gathered_bytes / n + grad_bytes / n
            host_opt = 2 * state_bytes / n
    elif sh == "zero1":
        micro, step = 0.0, 2 * r * grad_bytes + r * trainable16_bytes
    elif sh == "zero2":
        micro, step = r * grad_bytes, r * trainable16_bytes
    else:  # zero3
        micro, step = 2 * r * gathered_bytes + r * grad_bytes, 0.0
    if sh.startswith("zero") and cfg.offload in ("optimizer", "params"):
        host = (grad_bytes + trainable16_bytes) / n
        if cfg.offload == "params":
            host += a * 2 * gathered_bytes / n
        host_opt = 2 * state_bytes / n
    return Traffic(a * micro, step, host, host_opt)


def comm_seconds(t: Traffic, micro_compute_s: float, grad_accum: int, nvlink: bool, nodes: int = 1) -> float:
    """Seconds a step spends beyond its compute on communication and host transfers (module docstring). Over
    several servers a ring runs at its slowest link: the network (``NETWORK_GBS``) unless that is faster."""
    link = (NVLINK_GBS if nvlink else PCIE_GBS) * 1e9
    if nodes > 1:
        link = min(link, NETWORK_GBS * 1e9)
    per_micro = t.per_micro / max(grad_accum, 1) / link
    exposed = grad_accum * max(0.0, per_micro - micro_compute_s)
    exposed += max(0.0, t.per_step / link - BACKWARD_SHARE * micro_compute_s)
    return exposed + t.host_link / (PCIE_GBS * 1e9) + t.host_optimizer / (HOST_OPTIMIZER_GBS * 1e9)
