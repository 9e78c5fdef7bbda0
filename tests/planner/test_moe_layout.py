"""MoE experts as transformers 5 stores them (fused 3-D stacks) against the 4.x layout (one nn.Linear
per expert): quantization, LoRA shapes, activations. Hand-computed for a small Mixtral
(h=128, F=256, E=4, top-2, 2 layers, r=16); the fused LoRA count is what peft 0.21 builds (245,888
trainable parameters, counted on the real model)."""

import pytest

from ftplan.planner.arch import fused_experts
from ftplan.planner.memory.params import base_linear_terms, lora_tensors, numel, unquantized_bytes
from ftplan.planner.memory.precision import precision
from ftplan.planner.options import make_config
from ftplan.planner.types import ModelSpec

MIX = ModelSpec(name="mix", hidden=128, intermediate=256, layers=2, heads=4, kv_heads=2, head_dim=32, vocab=4096,
                max_positions=4096, family="mixtral", num_experts=4, experts_per_token=2, moe_intermediate=256)


@pytest.fixture(params=["fused", "per_expert"])
def layout(request, monkeypatch):
    monkeypatch.setenv("FTPLAN_MOE_LAYOUT", request.param)
    fused_experts.cache_clear()
    yield request.param
    fused_experts.cache_clear()


def test_lora_parameters(layout):
    cfg = make_config(MIX, None, method="qlora", lora_rank=16).config
    h, f, E, r, L = 128, 256, 4, 16, 2
    attn = r * ((h + 128) + (h + 64) + (h + 64) + (128 + h))  # q, k, v, o
    if layout == "fused":
        experts = 2 * r * E * (h + 2 * f) + r * E * (f + h)  # gate_up at 2r, down at r
        router = r * (h + E)
    else:
        experts = 3 * r * (h + f) * E
        router = 0  # ignored in the 4.x model (tiny)
    assert numel(lora_tensors(MIX, cfg)) == L * (attn + experts + router)
    if layout == "fused":
        assert numel(lora_tensors(MIX, cfg)) == 245_888


def test_fused_experts_stay_unquantized_in_fp32(layout):
    cfg = make_config(MIX, None, method="qlora").config
    prec = precision(cfg)
    stack = 2 * 4 * 3 * 256 * 128  # layers x experts x (gate, up, down) x F x h
    q = base_linear_terms(MIX, cfg, prec)
    per_expert = base_linear_terms(MIX, cfg, prec)["weights_quantized"]
    if layout == "fused":
        assert q["weights_quantized"] == 2 * (128 * 128 + 64 * 128 * 2 + 128 * 128) // 2  # attention only, 4 bit
        assert unquantized_bytes(MIX, prec) - _unq_without_experts(prec) == stack * 4
    else:
        assert per_expert > 2 * (128 * 128 + 64 * 128 * 2 + 128 * 128) // 2


def _unq_without_experts(prec):
    from ftplan.planner.arch import embedding_params, lm_head_params, norm_params, router_params

    return (embedding_params(MIX) + lm_head_params(MIX) + norm_params(MIX) + router_params(MIX)) * prec.unquantized


def test_fused_activation_stack_term(layout):
    from ftplan.planner.memory.activations import layer_activations

    cfg = make_config(MIX, None, method="qlora", micro_batch=2, seq_len=256, gradient_checkpointing=False).config
    parts = layer_activations(MIX, cfg, precision(cfg), moe=True)
    if layout == "fused":
        assert parts["expert_stacks"] == 4 * 3 * 256 * 128 * (4 + 2)  # fp32 W + B@A and its bf16 copy
    else:
        assert "expert_stacks" not in parts
