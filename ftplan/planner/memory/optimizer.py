"""Gradient and optimizer memory.

Sources:
- torch ``optim.AdamW``: ``exp_avg`` and ``exp_avg_sq`` are ``zeros_like(param)`` (the parameter's dtype).
  The fused kernel (``adamw_torch_fused``, the HF Trainer default with torch >= 2.8 per
  ``training_args.py``) updates in place. The foreach path (``adamw_torch``) allocates
  ``exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs)``: one temporary the size of the states of a
  param group.
- bitsandbytes ``Optimizer2State.init_state``: 8-bit blockwise states are uint8 with one fp32 absmax
  per 256 values per state; tensors with fewer than ``min_8bit_size = 4096`` elements keep fp32
  states. ``get_state_buffer`` pages (``cudaMallocManaged``, outside the torch allocator) the state of
  tensors with at least 1e5 elements when ``is_paged``.
- transformers ``Adafactor`` (beta1=None): factored second moment, fp32 row (``out``) and column
  (``in``) vectors for matrices, a full fp32 vector for 1-D tensors; ``step`` makes fp32 temporaries
  the size of the parameter (``grad**2 + eps`` and the approximated update).
- torch ``optim.SGD`` with momentum 0 (HF ``sgd``) keeps no state.
- torch ``amp.GradScaler`` (fp16 compute, ``precision.loss_scaling``): a few one-element tensors, see
  ``grad_scaler_state_bytes`` and ``grad_scaler_step_bytes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_8BIT_SIZE = 4096  # bitsandbytes min_8bit_size
PAGED_MIN_NUMEL = 100_000  # bitsandbytes get_state_buffer: smaller tensors are not paged
BLOCKWISE_8BIT = 256  # bitsandbytes 8-bit optimizer state blocksize

CUDA_MIN_BLOCK = 512  # torch CUDACachingAllocator kMinBlockSize: every allocation is rounded up to 512 B
GRAD_SCALER_STATE_TENSORS = 2  # GradScaler._scale (fp32) and _growth_tracker (int32), one element each
SCALAR_BYTES = 4  # one fp32 or int32 element

OPTIMIZERS = ("adamw", "adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd",
              "adafactor")


@dataclass(frozen=True)
class Tensor:
    """A trainable tensor shape class: ``numel`` elements, ``count`` such tensors, ``rows`` x cols."""

    numel: int
    count: int
    rows: int = 0  # 0 for 1-D tensors

    @property
    def cols(self) -> int:
        return self.numel // self.rows if self.rows else 0


@dataclass(frozen=True)
class OptimizerMemory:
    state: int  # in the torch caching allocator
    state_paged: int  # bitsandbytes managed (paged) memory: on the device while it fits
    temp: int  # live only during optimizer.step()


def gradient_bytes(tensors: tuple[Tensor, ...], param_bytes: int) -> int:
    """Gradients: one per trainable element, in the parameter's dtype."""
    return sum(t.numel * t.count for t in tensors) * param_bytes


def scalar_tensor_bytes(device: str) -> int:
    """What one 0-d fp32/int32 tensor takes, bytes: ``4`` on the CPU (the storage), ``512`` on CUDA
    (the caching allocator rounds every block up to ``kMinBlockSize = 512``; ``torch.cuda.memory_allocated``
    counts the block). ``device`` is "cpu", "cuda" or "none" (no GPU given: as CUDA)."""
    return SCALAR_BYTES if device == "cpu" else CUDA_MIN_BLOCK


def grad_scaler_state_bytes(device: str) -> int:
    """``torch.amp.GradScaler``'s resident state, bytes: ``2 * scalar_tensor_bytes`` (1 KiB on CUDA).

    ``_lazy_init_scale_growth_tracker`` (first ``scale(loss)``) creates ``_scale`` (fp32) and
    ``_growth_tracker`` (int32), 0-d tensors on the loss's device that live for the whole run.
    Source: torch ``amp/grad_scaler.py`` (2.13)."""
    return GRAD_SCALER_STATE_TENSORS * scalar_tensor_bytes(device)


def grad_scaler_step_bytes(device: str) -> int:
    """The scaler's temporaries of the optimizer step, bytes: ``4 * scalar_tensor_bytes`` (2 KiB on CUDA).

    The inf/NaN check before the update (``unscale_`` -> ``_unscale_grads_``; for fused AdamW, which
    unscales inside its kernel, ``step`` -> ``_check_inf_per_device`` with a dummy scale of 1) holds a
    0-d scale (``inv_scale`` or the dummy), a 0-d ``found_inf`` and a per-device copy of each
    (``_MultiDeviceReplicator.get`` copies): 4 tensors. The ``found_inf`` copy stays until ``update()``;
    fused AdamW also gets the summed ``found_inf`` and ``grad_scale = scale * 1`` during its update: 3.
    Counted as 4 with the optimizer's own temporaries (at most 3 blocks over when those peak inside
    ``step()``). Not counted: the scaled loss (``loss * scale``, one 0-d tensor through backward).
    Source: torch ``amp/grad_scaler.py`` (2.13); measured on the CPU: +8 B at the end of forward, +24 B
    at the optimizer step (QLoRA, fused AdamW)."""
    return 4 * scalar_tensor_bytes(device)


def adam8bit_state_bytes(numel: int) -> int:
    """bitsandbytes 8-bit Adam state of one tensor: ``2n + 2 * 4 * ceil(n/256)`` (≈2.031 B/param);
    ``8n`` (fp32) when ``n < 4096``."""
    if numel < MIN_8BIT_SIZE:
        return 8 * numel
    return 2 * numel + 2 * 4 * math.ceil(numel / BLOCKWISE_8BIT)


def adafactor_state_bytes(t: Tensor) -> int:
    """Factored second moment: ``4 * (rows + cols)`` for a matrix, ``4 * n`` for a vector."""
    if t.rows:
        return 4 * (t.rows + t.cols)
    return 4 * t.numel


def optimizer_memory(optimizer: str, tensors: tuple[Tensor, ...], param_bytes: int) -> OptimizerMemory:
    """State (allocator and paged) and step temporaries of ``optimizer`` over ``tensors``."""
    state = paged = temp = 0
    total = sum(t.numel * t.count for t in tensors)
    largest = max((t.numel for t in tensors), default=0)
    if optimizer in ("adamw", "adamw_torch"):
        state = 2 * total * param_bytes
        if optimizer == "adamw_torch":
            temp = total * param_bytes  # _foreach_sqrt copy of exp_avg_sq
    elif optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        for t in tensors:
            b = adam8bit_state_bytes(t.numel) * t.count
            if optimizer == "paged_adamw_8bit" and t.numel >= PAGED_MIN_NUMEL and t.numel >= MIN_8BIT_SIZE:
                codes = 2 * t.numel * t.count  # uint8 state1/state2 are paged, absmax is not
                paged += codes
                state += b - codes
            else:
                state += b
    elif optimizer == "paged_adamw_32bit":
        for t in tensors:
            b = 8 * t.numel * t.count
            if t.numel >= PAGED_MIN_NUMEL:
                paged += b
            else:
                state += b
    elif optimizer == "adafactor":
        state = sum(adafactor_state_bytes(t) * t.count for t in tensors)
        temp = 4 * largest * (2 if param_bytes == 4 else 3)
    elif optimizer == "sgd":
        pass
    else:  # options.normalize_optimizer guards this
        raise ValueError(optimizer)
    return OptimizerMemory(state, paged, temp)
