"""Which dtype each kind of tensor has in a run: the dtype flow that activation sizes depend on.

How the bytes are decided (read in the library sources):
- bitsandbytes ``Linear4bit.forward`` casts its input to ``compute_dtype`` (bf16) for the matmul and
  casts the output back to the input's dtype (``...).to(inp_dtype)``). After
  ``prepare_model_for_kbit_training`` the embeddings and norms are fp32, so the residual stream, the
  norm outputs and the outputs of quantized projections that read them are fp32 (4 B), while
  tensors produced by autocast ops (SDPA, LoRA matmuls) are bf16.
- torch autocast (HF Trainer ``bf16=True``) runs ``linear``/``matmul``/SDPA in bf16 and hands them a
  bf16 *copy* of an fp32 input; that copy is what autograd saves.
- A bf16 model without the upcast keeps everything in bf16 apart from RMSNorm's internal fp32 math.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..types import TrainConfig

FORMAT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


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
    of its input even when the input already was bf16; bitsandbytes' LoRA layers skip that cast
    under autocast. The dropout of a LoRA module sees the adapter-dtype input (plain Linear) or the
    stream (bitsandbytes)."""
    if cfg.is_quantized:
        unq = 4 if cfg.prepare_kbit else 2
        trainable = 4  # LoRA adapters; full fine-tuning of quantized weights is rejected in options
        return Precision(2, unq, unq, trainable, True, 0, False, dropout_mask_bytes(device, unq))
    base = FORMAT_BYTES[cfg.quant]
    compute = 2 if (cfg.autocast or base == 2) else base
    trainable = 4 if cfg.is_lora else base  # peft keeps adapters in fp32 (autocast_adapter_dtype=True)
    recast = cfg.is_lora and trainable != base
    return Precision(compute, base, base, trainable, False, base, recast,
                     dropout_mask_bytes(device, trainable if cfg.is_lora else base))
