"""Weight memory by storage format.

Sources (read before writing each term):
- bitsandbytes ``functional.quantize_4bit``: packs two 4-bit codes per byte (``(n + 1) // 2`` uint8)
  and keeps one fp32 ``absmax`` per ``blocksize`` values (64 on CUDA). With ``compress_statistics``
  (transformers' ``bnb_4bit_use_double_quant``) the absmax vector is itself quantized by
  ``quantize_blockwise(absmax, blocksize=256)``: one uint8 per block, one fp32 absmax per 256 blocks,
  plus one fp32 offset per tensor.
- bitsandbytes ``Int8Params`` (LLM.int8): int8 weight ``out x in`` plus fp32 row statistics ``SCB`` of
  ``out`` values.
- transformers ``integrations.bitsandbytes.get_keys_to_not_convert``: the output embedding (and
  tied weights) stay unquantized; ``nn.Embedding`` and norms are never ``nn.Linear`` and stay too.
- peft ``prepare_model_for_kbit_training``: every parameter in fp16/bf16 that is not ``Params4bit`` is
  cast to fp32 (embeddings, lm_head, norms, biases).
"""

from __future__ import annotations

import math

NF4_BLOCKSIZE = 64  # bitsandbytes 4-bit blocksize on CUDA (128 on ROCm)
DQ_BLOCKSIZE = 256  # blocksize of the nested (double) quantization of absmax
FOUR_BIT_CODE_ENTRIES = 16  # get_4bit_type(): the 16 NF4/FP4 values in fp32, a new tensor per weight
NESTED_CODE_ENTRIES = 256  # quantize_blockwise's dynamic map, copied per weight (code.to(copy=True))


def four_bit_packed_bytes(n_weights: int) -> int:
    """Packed NF4/FP4 codes: two per byte. ``ceil(n / 2)`` bytes (uint8)."""
    return (n_weights + 1) // 2


def four_bit_constant_bytes(n_weights: int, double_quant: bool, blocksize: int = NF4_BLOCKSIZE) -> int:
    """Quantization constants of one 4-bit tensor, bytes.

    Without double quant: ``4 * ceil(n / 64)`` (fp32 absmax per block) = 0.0625 B/param.
    With double quant: ``ceil(n/64)`` uint8 absmax codes + ``4 * ceil(ceil(n/64) / 256)`` fp32 absmax
    of the absmax + 4 B offset ≈ 0.0159 B/param.
    """
    blocks = math.ceil(n_weights / blocksize)
    if not double_quant:
        return 4 * blocks
    return blocks + 4 * math.ceil(blocks / DQ_BLOCKSIZE) + 4


def four_bit_code_bytes(double_quant: bool) -> int:
    """The code tables each 4-bit weight keeps in its ``QuantState``, bytes.

    ``quantize_4bit`` stores ``code = get_4bit_type(...)`` (16 fp32 values: 64 B) per tensor; with
    double quant the nested state keeps ``code.to(device, copy=True)`` of the 256-entry dynamic map
    (1 KiB) per tensor. Source: bitsandbytes ``functional.quantize_4bit`` / ``quantize_blockwise``
    (0.45-0.50). Measured: 28 tensors of a 4-layer Llama = 30,464 B more than absmax alone.
    """
    return 4 * FOUR_BIT_CODE_ENTRIES + (4 * NESTED_CODE_ENTRIES if double_quant else 0)


def int8_weight_bytes(out_features: int, in_features: int) -> int:
    """LLM.int8 weight: ``out * in`` int8 bytes."""
    return out_features * in_features


def int8_constant_bytes(out_features: int) -> int:
    """LLM.int8 row-wise scale ``SCB``: ``4 * out`` bytes (fp32)."""
    return 4 * out_features


def dense_bytes(n: int, bytes_per_element: int) -> int:
    """A plain tensor of ``n`` elements."""
    return n * bytes_per_element
