"""Memory outside the tensors (``planner.memory.overhead``): the CUDA context, cuBLAS workspaces and NCCL's
buffers by hand, and where each enters the device figure."""

import ftplan
from ftplan.planner.memory.overhead import (
    CUDA_CONTEXT_MIB_HOPPER_PLUS,
    CUDA_CONTEXT_MIB_PRE_HOPPER,
    NCCL_MIB_2_RANKS,
    NCCL_MIB_4_RANKS,
    NCCL_MIB_8_RANKS,
    cuda_context_bytes,
    nccl_bytes,
)
from ftplan.planner.types import MiB
from ftplan.profiles.gpus import get_gpu


def test_cuda_context_by_generation():
    assert cuda_context_bytes(get_gpu("h100")) == CUDA_CONTEXT_MIB_HOPPER_PLUS * MiB
    assert cuda_context_bytes(get_gpu("rtx4090")) == CUDA_CONTEXT_MIB_PRE_HOPPER * MiB
    assert cuda_context_bytes(get_gpu("cpu")) == 0


def test_nccl_by_the_jobs_gpus():
    h100 = get_gpu("h100")
    assert nccl_bytes(h100, 1) == 0  # one GPU: no communicator
    assert nccl_bytes(h100, 2) == NCCL_MIB_2_RANKS * MiB == 544_210_944  # 544 MB as published, in MiB
    assert nccl_bytes(h100, 3) == nccl_bytes(h100, 4) == NCCL_MIB_4_RANKS * MiB
    assert nccl_bytes(h100, 8) == NCCL_MIB_8_RANKS * MiB
    assert nccl_bytes(get_gpu("cpu"), 8) == 0  # gloo on the CPU
    sizes = [nccl_bytes(h100, n) for n in range(1, 17)]
    assert sizes == sorted(sizes)  # never less with more ranks



def test_nccl_is_in_the_device_figure_only():
    one = ftplan.estimate("8b", "h100", calibrate=False, method="lora", quant="bf16", micro_batch=1)
    two = ftplan.estimate("8b", "h100", calibrate=False, method="lora", quant="bf16", micro_batch=1, num_gpus=2,
                          sharding="ddp")
    assert one.overheads["nccl_buffers"] == 0
    assert two.overheads["nccl_buffers"] == NCCL_MIB_2_RANKS * MiB
    extra = two.device_bytes - two.peak_reserved_bytes
    assert extra == two.overheads["cuda_context"] + two.overheads["paged_optimizer_state"] + NCCL_MIB_2_RANKS * MiB
    cpu = ftplan.estimate("8b", "cpu", calibrate=False, num_gpus=2, sharding="fsdp")
    assert cpu.overheads["nccl_buffers"] == 0
