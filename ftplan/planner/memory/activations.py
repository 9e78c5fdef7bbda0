"""Activation memory: what autograd saves for backward, per decoder layer and per model.

Notation: ``b`` micro-batch, ``s`` sequence, ``E = b*s`` tokens, ``h`` hidden, ``a``/``k`` query/kv
heads, ``d`` head_dim, ``f`` intermediate; ``X = E*h``, ``Q = E*a*d``, ``K = E*k*d``, ``F = E*f``.
Byte widths come from ``precision.Precision`` (``cb`` compute, ``hb`` residual stream).

What is saved, read from the implementations (transformers Llama-style layers, peft LoRA,
bitsandbytes, torch autograd):
- RMSNorm (``LlamaRMSNorm``) upcasts its input to fp32 and saves it and ``rsqrt(var)`` (``4X + 4E``);
  the normalised tensor is saved only when the norm weight is trainable. LayerNorm saves the fp32
  input, mean and rstd (``4X + 8E``) and, under autocast, outputs fp32.
- A linear saves its input only when its weight needs a gradient (autograd saves ``self`` for
  ``mm``'s ``mat2`` gradient only if requested). bitsandbytes ``MatMul4Bit`` saves only the quantized
  weight, never the activation. Under autocast the saved input is the bf16 copy; one copy per
  module when the input is fp32, one shared tensor when it is already bf16.
- LoRA (peft ``Linear.forward``): ``lora_B(lora_A(dropout(x))) * scaling``. ``lora_A`` saves its
  input, ``lora_B`` saves ``lora_A``'s output (``E*r``). With ``lora_dropout > 0`` each module saves a
  bool mask (1 B/elem) and its own dropped copy.
- SDPA flash / memory-efficient kernels save q, k, v, the output and the fp32 logsumexp
  (``b*a*s``): O(s). HF calls SDPA with ``enable_gqa`` when no mask is passed, so k/v are not repeated.
  Eager attention repeats k/v (``repeat_kv``), saves the fp32 softmax (``4*b*a*s^2``) and the probs
  cast for the value matmul.
- Gated MLP: ``down(act(gate(x)) * up(x))``: the activation saves its input, the product saves both
  factors (``3F`` in the projections' output dtype).
- Gradient checkpointing (HF ``gradient_checkpointing_enable``) keeps each layer's input (``hb*X``)
  and recomputes one layer at a time during backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from ..arch import Linear, fused_experts, layer_linears, resolve_targets
from ..types import ModelSpec, TrainConfig
from .precision import Precision


@dataclass(frozen=True)
class ActivationMemory:
    per_layer: dict[str, int]  # saved by one decoder layer (dense layer; MoE layers use their own)
    layer_saved: int  # bytes saved by all decoder layers (no checkpointing) or their checkpoints
    layer_recompute: int  # one layer's saved set rebuilt during backward (checkpointing), else 0
    last_layer: int  # live activations while back-propagating through the first layer (end of backward)
    model_saved: dict[str, int]  # outside the layers: final norm, rotary tables, masks, ids
    backward_transient: int  # gradient buffers live while back-propagating through one layer
    forward_transient: int  # one layer's intermediates during forward under checkpointing
    dequant_moment: int = 0  # gradient buffers live beside a dequantized weight in backward (4-bit bases)


def saved_linear_inputs(elems: int, in_b: int, cb: int, n_full: int, n_lora: int, dropout: float,
                        shared_already: bool = False, lora_recast: bool = False, mask_b: int = 1) -> int:
    """Bytes a group of linears reading one tensor saves of it for their weight gradients.

    ``n_full`` trainable base linears and ``n_lora`` LoRA ``lora_A`` read the tensor (``elems``
    elements of ``in_b`` bytes). Under autocast each gets a ``cb``-byte copy when ``in_b != cb``,
    otherwise they share the tensor itself (counted once, or not at all when ``shared_already``:
    another op already saves it). ``lora_recast``: peft cast the input to fp32 for each adapter, so
    each ``lora_A`` saves its own ``cb`` copy. Dropout gives each LoRA module a mask (``mask_b``
    bytes per element, see ``precision.dropout_mask_bytes``) and its own copy.
    """
    total = 0
    own_lora = n_lora if (dropout > 0 or lora_recast) else 0
    plain = n_full + n_lora - own_lora
    if plain:
        if in_b != cb:
            total += elems * cb * plain
        elif not shared_already:
            total += elems * cb
    if own_lora:
        total += own_lora * elems * ((mask_b if dropout > 0 else 0) + cb)
    return total


class _LoraKw(TypedDict):
    lora_recast: bool
    mask_b: int


def _lora_kw(prec: Precision) -> _LoraKw:
    return {"lora_recast": prec.lora_recast, "mask_b": prec.dropout_mask}


def norm_saved(elems_tokens: int, width: int, norm: str, trainable: bool, hb: int) -> int:
    """One norm: fp32 input ``4*E*w`` + statistics (``4E`` RMSNorm; ``8E`` LayerNorm mean+rstd);
    plus the normalised tensor (``hb*E*w``) when its weight is trainable."""
    stats = 8 if norm == "layernorm" else 4
    out = 4 * elems_tokens * width + stats * elems_tokens
    if trainable:
        out += hb * elems_tokens * width
    return out


def _group_counts(rows: tuple[Linear, ...], group: str, targets: set[Linear], full: bool) -> tuple[int, int]:
    members = [r for r in rows if r.group == group]
    n_full = len(members) if full else 0
    n_lora = sum(1 for r in members if r in targets)
    return n_full, n_lora


def layer_activations(spec: ModelSpec, cfg: TrainConfig, prec: Precision, moe: bool = False) -> dict[str, int]:
    """Bytes saved for backward by one decoder layer (dense, or MoE when ``moe``), by part."""
    b, s = cfg.micro_batch, cfg.seq_len
    E = b * s
    h, a, k, d = spec.hidden, spec.heads, spec.kv_heads, spec.head_dim
    X, Q, K = E * h, E * a * d, E * k * d
    cb, hb = prec.compute, prec.hidden
    full = cfg.method == "full"
    rows = layer_linears(spec)
    targets = set(resolve_targets(spec, cfg.lora_targets)) if cfg.is_lora else set()
    drop = cfg.lora_dropout if cfg.is_lora else 0.0
    norm_out_b = 4 if (spec.norm == "layernorm" and cfg.autocast) else hb
    proj_b = norm_out_b if prec.quantized else cb  # bnb casts outputs back to the input's dtype
    parts: dict[str, int] = {}

    parts["norms"] = spec.norms_per_layer * norm_saved(E, h, spec.norm, full, hb)
    if spec.qk_norm:
        parts["qk_norm"] = 4 * (Q + K) + 4 * E * (a + k)

    nf, nl = _group_counts(rows, "attn_in", targets, full)
    parts["attn_inputs"] = saved_linear_inputs(X, norm_out_b, cb, nf, nl, drop, **_lora_kw(prec))

    sdpa = cfg.attention in ("sdpa", "flash_attention_2")
    if sdpa:
        parts["attention"] = cb * (2 * Q + 2 * K) + 4 * b * a * s
    else:  # eager: repeated k/v, fp32 softmax and the probs cast to bf16 for the value matmul
        scores = b * a * s * s
        parts["attention"] = cb * 3 * Q + (4 + cb) * scores + (cb * scores if spec.attn_logit_softcap else 0)

    nf, nl = _group_counts(rows, "attn_out", targets, full)
    # flash/efficient SDPA return a (b, s, a, d)-contiguous output: o_proj reads the saved tensor
    parts["o_inputs"] = saved_linear_inputs(Q, cb, cb, nf, nl, drop, shared_already=sdpa, **_lora_kw(prec))

    if moe:
        parts.update(_moe_mlp(spec, cfg, prec, rows, targets, full, drop, norm_out_b, proj_b))
    else:
        parts.update(_dense_mlp(spec, spec.intermediate, E, prec, rows, targets, full, drop, norm_out_b,
                                proj_b, "mlp"))

    fused = moe and fused_experts()
    parts["lora_hidden"] = _lora_tokens(rows, targets, E, spec.experts_per_token, moe, fused) * cfg.lora_rank * cb
    return parts


def _lora_tokens(rows: tuple[Linear, ...], targets: set[Linear], E: int, k: int, moe: bool,
                 fused: bool = False) -> int:
    """Tokens that pass through LoRA A of targeted modules in one layer (``lora_A``'s output, ``r``
    wide, is saved by ``lora_B``): ``E`` per attention/dense/shared module, ``k*E`` per expert role
    (none for fused expert stacks: their LoRA is folded into the weight, see ``_moe_mlp``)."""
    total = 0
    for r in rows:
        if r not in targets or (fused and r.group.startswith("expert")):
            continue
        expert, shared, attn = r.group.startswith("expert"), r.role.startswith("shared_"), r.group.startswith("attn")
        if attn or (moe and (expert or shared)) or (not moe and not (expert or shared)):
            total += E * k if expert else E
    return total


def _dense_mlp(spec: ModelSpec, f: int, tokens: int, prec: Precision, rows: tuple[Linear, ...],
               targets: set[Linear], full: bool, drop: float, norm_out_b: int, proj_b: int,
               group_prefix: str) -> dict[str, int]:
    """Gated: ``3F`` saved (act input, act output, up); plain: the fc1 output saved by the activation."""
    X, F = tokens * spec.hidden, tokens * f
    cb = prec.compute
    members_in = [r for r in rows if r.group == "mlp_in" and (r.role.startswith("shared_") == (group_prefix != "mlp"))]
    members_out = [r for r in rows if r.group == "mlp_out" and (r.role.startswith("shared_") == (group_prefix != "mlp"))]
    nf_in, nl_in = (len(members_in) if full else 0), sum(1 for r in members_in if r in targets)
    nf_out, nl_out = (len(members_out) if full else 0), sum(1 for r in members_out if r in targets)
    out = {}
    out[f"{group_prefix}_inputs"] = saved_linear_inputs(X, norm_out_b, cb, nf_in, nl_in, drop, **_lora_kw(prec))
    if spec.mlp == "plain":
        out[group_prefix] = proj_b * F
    else:
        out[group_prefix] = 3 * proj_b * F
    # down/fc2 reads the product (gated) or the activation output (plain), nobody else saves it
    out[f"{group_prefix}_out_inputs"] = saved_linear_inputs(F, proj_b, cb, nf_out, nl_out, drop, **_lora_kw(prec))
    return out


def _moe_mlp(spec: ModelSpec, cfg: TrainConfig, prec: Precision, rows: tuple[Linear, ...],
             targets: set[Linear], full: bool, drop: float, norm_out_b: int, proj_b: int) -> dict[str, int]:
    """HF per-expert loop (Mixtral/Qwen-MoE in transformers 4.x): router softmax, gathered inputs,
    each token's ``top-k`` expert MLPs (``k*E`` rows in total), the routing-weight multiply."""
    E = cfg.micro_batch * cfg.seq_len
    kE = E * spec.experts_per_token
    cb = prec.compute
    h, f = spec.hidden, spec.moe_intermediate
    out = {"router": E * spec.num_experts * (4 + cb)}
    ex_in = [r for r in rows if r.group == "expert_in"]
    ex_out = [r for r in rows if r.group == "expert_out"]
    if fused_experts() and not full:
        out.update(_fused_experts(spec, prec, ex_in, ex_out, targets, kE, norm_out_b, proj_b))
    else:
        out["expert_inputs"] = saved_linear_inputs(kE * h, norm_out_b, cb, len(ex_in) if full else 0,
                                                   sum(1 for r in ex_in if r in targets), drop, **_lora_kw(prec))
        out["expert_out_inputs"] = saved_linear_inputs(kE * f, proj_b, cb, len(ex_out) if full else 0,
                                                       sum(1 for r in ex_out if r in targets), drop, **_lora_kw(prec))
    out["experts"] = 3 * proj_b * kE * f + proj_b * kE * h  # gated MLP + output saved by the weighting
    if spec.shared_expert_intermediate:
        out.update(_dense_mlp(spec, spec.shared_expert_intermediate, E, prec, rows, targets, full, drop,
                              norm_out_b, proj_b, "shared_mlp"))
    return out


def _fused_experts(spec: ModelSpec, prec: Precision, ex_in: list[Linear], ex_out: list[Linear],
                   targets: set[Linear], kE: int, norm_out_b: int, proj_b: int) -> dict[str, int]:
    """transformers >= 5 fused expert stacks (``arch.fused_experts``), per MoE layer. Not targeted by
    LoRA: frozen slices, nothing saved for them beyond the gated-MLP activations. Targeted: PEFT builds
    ``W + B@A`` for the whole stack (``baddbmm`` in the stack's dtype, fp32 after kbit preparation) once
    per layer; it requires grad, so each expert's linear keeps its input (one ``cb`` copy per stack)
    and its weight slice, plus the autocast ``cb`` copy of the slice when the stack is not in ``cb``:
    ``E*3*F*h*(w_b + cb)`` bytes, all experts assumed hit. Measured on a small Mixtral (CPU,
    transformers 5.23, peft 0.21.2): QLoRA without checkpointing -8.0% -> see benchmarks/accuracy_cpu."""
    cb = prec.compute
    h, f = spec.hidden, spec.moe_intermediate
    if not any(r in targets for r in (*ex_in, *ex_out)):
        return {"expert_inputs": 0, "expert_out_inputs": 0}
    stack = spec.num_experts * 3 * f * h
    w_b = prec.unquantized if prec.quantized else prec.base_bytes
    return {"expert_inputs": saved_linear_inputs(kE * h, norm_out_b, cb, 1, 0, 0.0),
            "expert_out_inputs": saved_linear_inputs(kE * f, proj_b, cb, 1, 0, 0.0),
            "expert_stacks": stack * (w_b + (cb if w_b != cb else 0))}


def backward_transient(spec: ModelSpec, cfg: TrainConfig, prec: Precision) -> int:
    """Gradient buffers alive while back-propagating through one layer (the largest of):
    MLP product backward: incoming grad and both factor grads (``3F`` at the projection dtype) plus the
    residual gradient pair (``2*hb*X``); attention backward: dq, dk, dv, grad_out in ``cb`` plus the fp32
    dq accumulator of the flash kernel (``4Q``); eager: the score gradients (``(4+cb)*b*a*s^2``)."""
    b, s = cfg.micro_batch, cfg.seq_len
    E = b * s
    X, Q, K = E * spec.hidden, E * spec.heads * spec.head_dim, E * spec.kv_heads * spec.head_dim
    cb, hb = prec.compute, prec.hidden
    norm_out_b = 4 if (spec.norm == "layernorm" and cfg.autocast) else hb
    proj_b = norm_out_b if prec.quantized else cb
    f = spec.intermediate if not spec.is_moe else spec.moe_intermediate * spec.experts_per_token
    mlp = 3 * proj_b * E * f + 2 * hb * X
    if cfg.attention in ("sdpa", "flash_attention_2"):
        attn = cb * (2 * Q + 2 * K) + 4 * Q + 2 * hb * X
    else:
        attn = (4 + cb) * b * spec.heads * s * s + cb * 3 * Q + 2 * hb * X
    return max(mlp, attn)


def dequant_moment_transient(spec: ModelSpec, cfg: TrainConfig, prec: Precision) -> int:
    """Gradient buffers live while bitsandbytes' ``MatMul4Bit.backward`` holds a dequantized weight (the
    largest is an MLP projection's): in the output projection's backward, the incoming gradient
    (``hb*X``) and the gradient of its input (``proj_b*F``). PEFT adds the LoRA branch after the base
    output, so autograd runs it first: ``lora_A``'s input gradient (``F``) is made and the product it
    saved (``F``) freed before the base weight is dequantized. In an input projection's backward the
    product and its factors (``3F`` saved) are freed already and two factor gradients (``2F``) and three
    of the hidden size live (the incoming one, LoRA's and the base's input gradients): ``3*hb*X - F``. The MLP product backward (``backward_transient``'s ``3F``) runs after the
    dequantized weight is freed (``dequantize_4bit(...)`` is a temporary of one matmul).

    Measured: a 4-layer Llama (h 512, f 1408), QLoRA nf4 under FSDP2, 128 tokens (CPU ranks, the
    live-storage tracker's peak at the down projection's base matmul in backward); counting the
    3F + 2X product transient beside the weight over-predicted the rank's peak by 4-7%."""
    if not prec.quantized:
        return 0
    E = cfg.micro_batch * cfg.seq_len
    X = E * spec.hidden
    norm_out_b = 4 if (spec.norm == "layernorm" and cfg.autocast) else prec.hidden
    proj_b = norm_out_b  # bnb casts outputs back to the input's dtype
    f = spec.intermediate if not spec.is_moe else spec.moe_intermediate * spec.experts_per_token
    F = E * f
    return max(prec.hidden * X + proj_b * F, 3 * prec.hidden * X - proj_b * F)


def model_saved(spec: ModelSpec, cfg: TrainConfig, prec: Precision) -> dict[str, int]:
    """Saved outside the decoder layers: final norm (+ lm_head input when trainable), the rotary
    cos/sin tables (shared, ``2*s*d*hb``), an eager causal mask (``b*s^2*hb``), input ids and labels."""
    b, s = cfg.micro_batch, cfg.seq_len
    E = b * s
    full = cfg.method == "full"
    norm_out_b = 4 if (spec.norm == "layernorm" and cfg.autocast) else prec.hidden
    out = {"final_norm": norm_saved(E, spec.hidden, spec.norm, full, prec.hidden)}
    if full:
        out["lm_head_input"] = saved_linear_inputs(E * spec.hidden, norm_out_b, prec.compute, 1, 0, 0.0)
    out["rotary"] = 2 * s * spec.head_dim * prec.hidden
    if cfg.attention == "eager":
        out["attention_mask"] = b * s * s * prec.hidden
    out["input_ids_labels"] = 2 * 8 * E
    return out


def activation_memory(spec: ModelSpec, cfg: TrainConfig, prec: Precision) -> ActivationMemory:
    dense = layer_activations(spec, cfg, prec, moe=False)
    n_moe = spec.n_moe_layers
    n_dense = spec.layers - n_moe
    moe_parts = layer_activations(spec, cfg, prec, moe=True) if n_moe else {}
    full_layers = n_dense * sum(dense.values()) + n_moe * sum(moe_parts.values())
    one_layer = max(sum(dense.values()) if n_dense else 0, sum(moe_parts.values()))
    per_layer = moe_parts if (n_moe and not n_dense) else dense
    if cfg.gradient_checkpointing:
        # the recomputed RMSNorm saves its fp32 input: the checkpoint's own tensor when the stream is fp32
        ckpt_input = prec.hidden * cfg.micro_batch * cfg.seq_len * spec.hidden
        shared = ckpt_input if prec.hidden == 4 else 0
        saved = spec.layers * ckpt_input
        recompute = one_layer - shared
        fwd_transient = one_layer
        last = ckpt_input + recompute
    else:
        saved, recompute, fwd_transient, last = full_layers, 0, 0, one_layer
    return ActivationMemory(per_layer, saved, recompute, last, model_saved(spec, cfg, prec),
                            backward_transient(spec, cfg, prec), fwd_transient, dequant_moment_transient(spec, cfg, prec))
