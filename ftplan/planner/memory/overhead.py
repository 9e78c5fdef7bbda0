"""Memory outside the tensors: CUDA context, library workspaces, the caching allocator's overhead.

Sources (shared reference notes on GPUs, with their citations):
- CUDA context with lazy module loading (CUDA >= 11.7, torch default): 300-600 MiB per process;
  measured 426 MiB on an RTX 6000 Ada (torch 2.10, CUDA 13), 256 MiB on an RTX 3090 idle process,
  555 MiB on an RTX PRO 6000 Blackwell (scales with SM count).
- cuBLAS workspace per stream (torch ``CublasHandlePool.cpp``): ``:4096:2:16:8`` = 8.125 MiB before
  Hopper, 32 MiB on compute capability >= 9; cuBLASLt 1 MiB. Allocated through the caching allocator.
- The caching allocator reserves whole segments (2 MiB for small pools, 20 MiB for 1-10 MiB
  requests, exact multiples of 2 MiB above) and keeps freed blocks cached: reserved exceeds allocated
  by rounding plus fragmentation of the transient (activation) traffic.
"""

from __future__ import annotations

from ..types import GPUSpec, MiB

CUDA_CONTEXT_MIB_PRE_HOPPER = 450  # middle of 256-555 MiB measured on Ampere/Ada (see docstring)
CUDA_CONTEXT_MIB_HOPPER_PLUS = 550  # larger parts, more SMs (555 MiB on Blackwell)
CUBLAS_WORKSPACE_PRE_HOPPER = int(8.125 * MiB)
CUBLAS_WORKSPACE_HOPPER_PLUS = 32 * MiB
CUBLASLT_WORKSPACE = 1 * MiB
LARGE_SEGMENT = 20 * MiB  # kLargeBuffer: the segment that serves 1-10 MiB requests
# Fraction of the step's transient (activation, logits, gradient-buffer) bytes that the caching
# allocator keeps reserved beyond the live peak. A prior, not a measurement: it is replaced by the
# ratio measured with ``max_memory_reserved / max_memory_allocated`` on a GPU (calibration store).
FRAGMENTATION_PRIOR = 0.10


def cuda_context_bytes(gpu: GPUSpec | None) -> int:
    """CUDA context of one process (outside the allocator, inside nvidia-smi's figure); 0 on the CPU. Without a GPU the pre-Hopper value is used."""
    if gpu is not None and gpu.key == "cpu":
        return 0
    cc = (gpu.compute_capability if gpu else None) or 8.0
    return (CUDA_CONTEXT_MIB_HOPPER_PLUS if cc >= 9 else CUDA_CONTEXT_MIB_PRE_HOPPER) * MiB


def cublas_workspace_bytes(gpu: GPUSpec | None) -> int:
    """cuBLAS + cuBLASLt workspace of the default stream (in the allocator's counters); 0 on the CPU. Without a GPU the pre-Hopper value is used."""
    if gpu is not None and gpu.key == "cpu":
        return 0
    cc = (gpu.compute_capability if gpu else None) or 8.0
    return (CUBLAS_WORKSPACE_HOPPER_PLUS if cc >= 9 else CUBLAS_WORKSPACE_PRE_HOPPER) + CUBLASLT_WORKSPACE


def allocator_overhead_bytes(transient_bytes: int, gpu: GPUSpec | None) -> int:
    """reserved - allocated: one partly used 20 MiB large-pool segment plus the fragmentation prior on
    the step's transient traffic. 0 on CPU (the CPU figure is the tensor-level live set)."""
    if gpu is not None and gpu.key == "cpu":
        return 0
    return LARGE_SEGMENT // 2 + int(FRAGMENTATION_PRIOR * transient_bytes)
