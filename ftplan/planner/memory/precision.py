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


def precision(cfg: TrainConfig) -> Precision:
    """The dtype flow of a configuration (see module docstring)."""
    if cfg.is_quantized:
        unq = 4 if cfg.prepare_kbit else 2
        trainable = 4  # LoRA adapters; full fine-tuning of quantized weights is rejected in options
        return Precision(2, unq, unq, trainable, True, 0)
    base = FORMAT_BYTES[cfg.quant]
    compute = 2 if (cfg.autocast or base == 2) else base
    trainable = 4 if cfg.is_lora else base  # peft keeps adapters in fp32 (autocast_adapter_dtype=True)
    return Precision(compute, base, base, trainable, False, base)
