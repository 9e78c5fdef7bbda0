"""Which dtype each kind of tensor has in a run: the dtype flow that activation sizes depend on.

The compute dtype (``TrainConfig.compute_dtype``) is bf16, or fp16 on GPUs without bf16 (compute
capability < 8: T4, V100, GTX 16xx, RTX 20xx; ``planner.options.compute_dtype_for``). Both are 2 bytes,
so every activation, autocast copy and dequantized weight below has the same size either way; fp16
adds dynamic loss scaling (``loss_scaling``: ``torch.amp.GradScaler``'s tensors, counted in
``memory.optimizer``) and needs fp32 trainable parameters (LoRA adapters are fp32 already; full
fine-tuning keeps fp32 master weights, see ``options.base_format_for``).

How the bytes are decided (read in the library sources):
- bitsandbytes ``Linear4bit.forward`` casts its input to ``compute_dtype`` (bf16 or fp16) for the matmul
  and casts the output back to the input's dtype (``...).to(inp_dtype)``). After
  ``prepare_model_for_kbit_training`` the embeddings and norms are fp32, so the residual stream, the
  norm outputs and the outputs of quantized projections that read them are fp32 (4 B), while
  tensors produced by autocast ops (SDPA, LoRA matmuls) are in the compute dtype (2 B).
- torch autocast (HF Trainer ``bf16=True`` / ``fp16=True``) runs ``linear``/``matmul``/SDPA in the
  compute dtype and hands them a 2-byte *copy* of an fp32 input; that copy is what autograd saves.
- A 16-bit model without the upcast keeps everything in 16 bits apart from RMSNorm's internal fp32 math.
- peft keeps LoRA adapters in fp32 over a bf16 or fp16 base (``LoraModel`` with
  ``autocast_adapter_dtype=True`` casts fp16/bf16 adapter weights to fp32), so their gradients are fp32
  and ``GradScaler`` can unscale them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..types import TrainConfig

FORMAT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
AUTOCAST_ASSUMPTION = {
    "bf16": "HF Trainer + PEFT + bitsandbytes with bf16 autocast; steady state (step >= 2, optimizer state exists)",
    "fp16": ("HF Trainer + PEFT + bitsandbytes with fp16 autocast and dynamic loss scaling (torch.amp.GradScaler, "
             "fp32 trainable parameters); steady state (step >= 2, optimizer state exists)"),
}


def loss_scaling(cfg: TrainConfig) -> bool:
    """Whether the step scales the loss: fp16 autocast (HF Trainer ``fp16=True`` creates a
    ``torch.amp.GradScaler``; bf16 has fp32's exponent range and needs none)."""
    return cfg.autocast and cfg.compute_dtype == "fp16"


def autocast_assumption(cfg: TrainConfig) -> str:
    """The stated assumption about the training step's precision (``Estimate.assumptions``' first line)."""
    return AUTOCAST_ASSUMPTION[cfg.compute_dtype]


@dataclass(frozen=True)
class Precision:
    compute: int  # bytes of autocast/matmul outputs (bf16/fp16 = 2)
    hidden: int  # residual stream, embedding output, rotary tables
    unquantized: int  # embeddings, lm_head, norms, biases (after any upcast)
    trainable: int  # trainable parameters, their gradients
    quantized: bool
    base_bytes: int  # dense base-linear bytes when not quantized (0 if quantized)
    lora_recast: bool = False  # peft casts a plain Linear's input to the adapter dtype: one copy per module
    dropout_mask: int = 1  # bytes per element of a dropout mask (see ``dropout_mask_bytes``)


def dropout_mask_bytes(device: str, input_bytes: int) -> int:
    """What ``F.dropout`` saves per element for backward.

    CUDA runs the fused ``native_dropout`` kernel and saves a bool mask (1 B). On the CPU
    ``at::dropout`` takes the composite path (``input * bernoulli_(empty_like(input)) / (1 - p)``):
    the multiply saves the noise tensor in the input's dtype. Source: ATen ``Dropout.cpp``
    (``is_fused_kernel_acceptable`` accepts CUDA/XPU/PrivateUse1 only)."""
    return input_bytes if device == "cpu" else 1


def precision(cfg: TrainConfig, device: str = "cuda") -> Precision:
    """The dtype flow of a configuration (see module docstring).

    LoRA input: peft's plain ``Linear.forward`` casts ``x`` to the adapter's dtype (fp32) before
    ``lora_A`` (``_cast_input_dtype``), so under autocast each adapter gets its own compute-dtype copy
    of its input even when the input already was 16-bit; bitsandbytes' LoRA layers skip that cast
    under autocast. The dropout of a LoRA module sees the adapter-dtype input (plain Linear) or the
    stream (bitsandbytes)."""
    if cfg.is_quantized:
        unq = 4 if cfg.prepare_kbit else 2
        trainable = 4  # LoRA adapters; full fine-tuning of quantized weights is rejected in options
        # under FSDP's mixed precision the fp32 norms and embeddings are gathered in the compute dtype: the
        # stream between layers is 16-bit (measured: QLoRA on 2 CPU ranks), while their shards stay fp32
        hidden = FORMAT_BYTES[cfg.compute_dtype] if gathered_in_compute_dtype(cfg) else unq
        return Precision(FORMAT_BYTES[cfg.compute_dtype], hidden, unq, trainable, True, 0, False,
                         dropout_mask_bytes(device, hidden))
    base = FORMAT_BYTES[cfg.quant]
    compute = FORMAT_BYTES[cfg.compute_dtype] if (cfg.autocast or base == 2) else base
    trainable = 4 if cfg.is_lora else base  # peft keeps adapters in fp32 (autocast_adapter_dtype=True)
    if deepspeed_cast(cfg):
        trainable = base  # DeepSpeed's bf16/fp16 engine casts the whole module, adapters included
    recast = cfg.is_lora and trainable != base and not gathered_in_compute_dtype(cfg)
    return Precision(compute, base, base, trainable, False, base, recast,
                     dropout_mask_bytes(device, trainable if recast else base))


def deepspeed_cast(cfg: TrainConfig) -> bool:
    """DeepSpeed ZeRO with bf16/fp16 enabled (what HF Trainer's ``"auto"`` config turns on) casts the module to
    that dtype in ``DeepSpeedEngine._configure_distributed_model`` (``module.bfloat16()``/``half()``): every
    parameter, LoRA adapters included, is 16-bit; the fp32 master copy lives in the optimizer's partition."""
    return cfg.is_zero


def gathered_in_compute_dtype(cfg: TrainConfig) -> bool:
    """FSDP with mixed precision gathers every parameter in the compute dtype
    (``MixedPrecisionPolicy(param_dtype=bf16)``): the adapters the forward sees are 16-bit, so peft's cast of
    a layer's input to the adapter dtype makes no copy (measured: LoRA + checkpointing on 2 CPU ranks)."""
    return cfg.autocast and cfg.is_fsdp
