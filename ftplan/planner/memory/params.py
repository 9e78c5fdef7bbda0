"""Resident parameter memory of a configuration: base weights by format, unquantized modules, LoRA."""

from __future__ import annotations

from ..arch import (
    Linear,
    embedding_params,
    fused_experts,
    layer_linears,
    lm_head_params,
    n_layers_of,
    norm_params,
    resolve_targets,
    router_params,
)
from ..types import ModelSpec, TrainConfig
from .optimizer import Tensor
from .precision import Precision
from .weights import (
    dense_bytes,
    four_bit_code_bytes,
    four_bit_constant_bytes,
    four_bit_packed_bytes,
    int8_constant_bytes,
    int8_weight_bytes,
)


def _n(spec: ModelSpec, lin: Linear) -> int:
    return lin.count * n_layers_of(spec, lin)


def base_linear_terms(spec: ModelSpec, cfg: TrainConfig, prec: Precision) -> dict[str, int]:
    """Decoder-layer linear weights by format: packed data and quantization constants, or dense."""
    packed = consts = dense = 0
    skip_experts = prec.quantized and spec.is_moe and fused_experts()
    for lin in layer_linears(spec):
        if skip_experts and lin.group.startswith("expert"):
            continue  # fused 3-D experts: bitsandbytes leaves them; counted with the unquantized weights
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
    if prec.quantized and spec.is_moe and fused_experts():
        n += fused_expert_params(spec)
    return n * prec.unquantized


def fused_expert_params(spec: ModelSpec) -> int:
    """Weights of the fused expert stacks (``gate_up_proj`` ``E x 2F x H`` and ``down_proj`` ``E x H x F``
    per MoE layer), the same count as the per-expert linears."""
    return sum(lin.weight_params * _n(spec, lin) for lin in layer_linears(spec) if lin.group.startswith("expert"))


def lora_tensors(spec: ModelSpec, cfg: TrainConfig, fused_stacks: bool = True) -> tuple[Tensor, ...]:
    """LoRA A (``r x in``) and B (``out x r``) of every targeted module.

    Fused MoE experts (transformers >= 5, ``arch.fused_experts``): PEFT's parameter wrapper puts one
    A (``r*E x in``) and one B (``out x r*E``) on each 3-D stack, ``gate_up_proj`` at rank ``2r`` (its
    rank pattern for the fused pair), ``down_proj`` at ``r``; with ``all-linear`` it also wraps the
    router (``hidden -> E``). Measured: a small Mixtral's LoRA parameter count exactly.
    ``fused_stacks=False`` leaves out the stacks' factors (used outside autocast: no bf16 copies)."""
    r = cfg.lora_rank
    out: list[Tensor] = []
    targets = resolve_targets(spec, cfg.lora_targets)
    fused = spec.is_moe and fused_experts()
    for lin in targets:
        n = _n(spec, lin)
        if fused and lin.group.startswith("expert"):
            if not fused_stacks or (lin.role == "expert_up" and any(t.role == "expert_gate" for t in targets)):
                continue  # one gate_up stack for both
            rank = r * spec.num_experts * (2 if lin.role == "expert_gate" else 1)
            outf = 2 * lin.out_features if lin.role == "expert_gate" else lin.out_features
            layers = n // lin.count
            out.append(Tensor(rank * lin.in_features, layers, rank))
            out.append(Tensor(outf * rank, layers, outf))
            continue
        out.append(Tensor(r * lin.in_features, n, r))
        out.append(Tensor(lin.out_features * r, n, lin.out_features))
    if fused and any(t in ("all-linear", "all_linear", "all") for t in cfg.lora_targets):
        out.append(Tensor(r * spec.hidden, spec.n_moe_layers, r))
        out.append(Tensor(spec.num_experts * r, spec.n_moe_layers, spec.num_experts))
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
