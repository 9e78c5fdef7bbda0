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
- NCCL's own device memory on several GPUs (its kernels, and per channel and connected peer the LL, LL128
  and Simple protocol buffers, about 10 MiB rounded, ``NCCL_BUFFSIZE`` 4 MiB of it): outside the caching
  allocator, inside nvidia-smi. It grows with channels (bandwidth) and peers, so with the GPUs of the job up to
  about two servers, then no more (NCCL's maintainers, NVIDIA/nccl#864 and #986).
  Published measurements per process, one communicator after its first all-reduce: 544 MB for 2 ranks and
  688 MB for 3-4 ranks (4x A100 NVLink, PyTorch; NVIDIA/nccl#964, 2023); 1.06 GB on 8x H100 NVSwitch before
  any all-to-all (NVIDIA/nccl#1685, 2025); 958 MiB-1 GiB per rank released by ``ncclCommSuspend`` on 8-GPU
  nodes (vLLM pull requests #46234 and #51485, NCCL >= 2.29.7, 2026); 576 MiB per communicator on 8x GB200
  (SGLang #30908, NCCL 2.30.4). Not counted: NVLink SHARP buffers of NCCL <= 2.20 on NVSwitch systems (2.25
  GiB on 8x H200, vLLM #9699; ``NCCL_NVLS_ENABLE=0`` turns them off, NCCL >= 2.22 needs 256 MiB), the
  network transport's buffers across nodes, extra process groups, and all-to-all (4.34 GB in nccl#1685).
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
# NCCL per process by the job's GPUs (see the docstring's sources): priors from published measurements, not
# ours (a measurement needs two GPUs or more)
NCCL_MIB_2_RANKS = 519  # 544 MB, 2-rank group, 4x A100 NVLink (NVIDIA/nccl#964)
NCCL_MIB_4_RANKS = 656  # 688 MB, 3-4 rank group, the same run
NCCL_MIB_8_RANKS = 1011  # 1.06 GB, 8x H100 NVSwitch (NVIDIA/nccl#1685); 958-1024 MiB in the vLLM measurements


def cuda_context_bytes(gpu: GPUSpec | None) -> int:
    """CUDA context of one process (outside the allocator, inside nvidia-smi's figure); 0 on the CPU. Without a GPU the pre-Hopper value is used."""
    if gpu is not None and gpu.key == "cpu":
        return 0
    cc = (gpu.compute_capability if gpu else None) or 8.0
    return (CUDA_CONTEXT_MIB_HOPPER_PLUS if cc >= 9 else CUDA_CONTEXT_MIB_PRE_HOPPER) * MiB


def nccl_bytes(gpu: GPUSpec | None, ranks: int) -> int:
    """NCCL's device memory per process (outside the allocator, inside nvidia-smi) for a job of ``ranks`` GPUs:
    0 on one GPU or the CPU; ``NCCL_MIB_2_RANKS`` for 2, ``NCCL_MIB_4_RANKS`` for 3-4, ``NCCL_MIB_8_RANKS``
    above (the published measurements of the module docstring; never less with more ranks)."""
    if ranks <= 1 or (gpu is not None and gpu.key == "cpu"):
        return 0
    mib = NCCL_MIB_2_RANKS if ranks == 2 else NCCL_MIB_4_RANKS if ranks <= 4 else NCCL_MIB_8_RANKS
    return mib * MiB


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
