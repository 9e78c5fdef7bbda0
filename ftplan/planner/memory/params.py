"""Resident parameter memory of a configuration: base weights by format, unquantized modules, LoRA."""

from __future__ import annotations

from ..arch import (Linear, embedding_params, layer_linears, lm_head_params, n_layers_of, norm_params,
                    resolve_targets, router_params)
from ..types import ModelSpec, TrainConfig
from .optimizer import Tensor
from .precision import Precision
from .weights import (dense_bytes, four_bit_code_bytes, four_bit_constant_bytes, four_bit_packed_bytes,
                      int8_constant_bytes, int8_weight_bytes)


def _n(spec: ModelSpec, lin: Linear) -> int:
    return lin.count * n_layers_of(spec, lin)


def base_linear_terms(spec: ModelSpec, cfg: TrainConfig, prec: Precision) -> dict[str, int]:
    """Decoder-layer linear weights by format: packed data and quantization constants, or dense."""
    packed = consts = dense = 0
    for lin in layer_linears(spec):
        n, w = _n(spec, lin), lin.weight_params
        if cfg.quant in ("nf4", "fp4"):
            packed += four_bit_packed_bytes(w) * n
            consts += (four_bit_constant_bytes(w, cfg.double_quant) + four_bit_code_bytes(cfg.double_quant)) * n
        elif cfg.quant == "int8":
            packed += int8_weight_bytes(lin.out_features, lin.in_features) * n
            consts += int8_constant_bytes(lin.out_features) * n
        else:
            dense += dense_bytes(w, prec.base_bytes) * n
    if prec.quantized:
        return {"weights_quantized": packed, "quant_constants": consts}
    return {"weights_dense": dense}


def bias_params(spec: ModelSpec) -> int:
    return sum(lin.out_features * _n(spec, lin) for lin in layer_linears(spec) if lin.bias)


def unquantized_bytes(spec: ModelSpec, prec: Precision) -> int:
    """Embeddings, lm_head (absent when tied), norms, router, and linear biases, in ``prec.unquantized``
    bytes (fp32 after ``prepare_model_for_kbit_training``). Biases of dense base linears are counted
    with those linears' dtype, which is the same."""
    n = embedding_params(spec) + lm_head_params(spec) + norm_params(spec) + router_params(spec)
    n += bias_params(spec)
    return n * prec.unquantized


def lora_tensors(spec: ModelSpec, cfg: TrainConfig) -> tuple[Tensor, ...]:
    """LoRA A (``r x in``) and B (``out x r``) of every targeted module."""
    r = cfg.lora_rank
    out: list[Tensor] = []
    for lin in resolve_targets(spec, cfg.lora_targets):
        n = _n(spec, lin)
        out.append(Tensor(r * lin.in_features, n, r))
        out.append(Tensor(lin.out_features * r, n, lin.out_features))
    return tuple(out)


def full_tensors(spec: ModelSpec) -> tuple[Tensor, ...]:
    """Every parameter tensor of the model (full fine-tuning)."""
    out = [Tensor(lin.weight_params, _n(spec, lin), lin.out_features) for lin in layer_linears(spec)]
    out += [Tensor(lin.out_features, _n(spec, lin)) for lin in layer_linears(spec) if lin.bias]
    out.append(Tensor(embedding_params(spec), 1, spec.vocab))
    if lm_head_params(spec):
        out.append(Tensor(lm_head_params(spec), 1, spec.vocab))
    norm_vectors = spec.layers * spec.norms_per_layer + 1
    per = 2 if spec.norm == "layernorm" else 1
    out.append(Tensor(spec.hidden, norm_vectors * per))
    if spec.qk_norm:
        out.append(Tensor(spec.head_dim, 2 * spec.layers))
    if spec.is_moe:
        out.append(Tensor(spec.hidden * spec.num_experts, spec.n_moe_layers, spec.num_experts))
        if spec.shared_expert_intermediate:
            out.append(Tensor(spec.hidden, spec.n_moe_layers, 1))
    return tuple(out)


def trainable_tensors(spec: ModelSpec, cfg: TrainConfig) -> tuple[Tensor, ...]:
    return lora_tensors(spec, cfg) if cfg.is_lora else full_tensors(spec)


def numel(tensors: tuple[Tensor, ...]) -> int:
    return sum(t.numel * t.count for t in tensors)
