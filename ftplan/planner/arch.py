"""The linear modules of one decoder layer, parameter counts, and LoRA target resolution.

A ``Linear`` row is one ``nn.Linear`` role in a layer: its input/output features, whether it has a
bias, which activation it reads (``group``: modules in the same group read the same tensor, e.g.
q/k/v read the attention norm's output) and how many copies a layer holds (MoE experts).

HF module names differ by family; ``HF_NAMES`` maps each family's names to ftplan's roles so that a
user can name LoRA targets as they would in ``peft.LoraConfig(target_modules=[...])``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from ..errors import FtplanError, UnknownNameError
from .types import ModelSpec


@dataclass(frozen=True)
class Linear:
    role: str  # q, k, v, qkv, o, gate, up, gate_up, down, fc1, fc2, expert_gate, ..., shared_gate, ...
    in_features: int
    out_features: int
    bias: bool
    group: str  # attn_in | attn_out | mlp_in | mlp_out | expert_in | expert_out
    count: int = 1  # copies per layer (experts)
    layers: int = 0  # number of layers that hold it (0 = all)

    @property
    def weight_params(self) -> int:
        return self.in_features * self.out_features

    @property
    def params(self) -> int:
        return self.weight_params + (self.out_features if self.bias else 0)


@lru_cache(maxsize=1)
def fused_experts() -> bool:
    """Whether MoE experts are fused 3-D parameters (transformers >= 5) rather than one ``nn.Linear``
    per expert (4.x). Fused experts are not quantized by bitsandbytes (its transformers integration
    replaces ``nn.Linear`` modules only), so kbit preparation upcasts them to fp32, and PEFT wraps them
    with per-expert LoRA on the parameters (gate_up at twice the rank). Read from the installed
    transformers (package metadata, no import); none installed means the current release (fused).
    ``FTPLAN_MOE_LAYOUT=fused|per_expert`` overrides."""
    env = os.environ.get("FTPLAN_MOE_LAYOUT", "").strip().lower()
    if env in ("fused", "per_expert"):
        return env == "fused"
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = int(version("transformers").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return True
    return major >= 5


# role -> HF module name, per family; unlisted families use the Llama names.
LLAMA_NAMES = {
    "q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
    "gate": "gate_proj", "up": "up_proj", "down": "down_proj",
    "expert_gate": "gate_proj", "expert_up": "up_proj", "expert_down": "down_proj",
    "shared_gate": "gate_proj", "shared_up": "up_proj", "shared_down": "down_proj",
}
HF_NAMES: dict[str, dict[str, str]] = {
    "llama": LLAMA_NAMES,
    "mixtral": {**LLAMA_NAMES, "expert_gate": "w1", "expert_down": "w2", "expert_up": "w3"},
    "phi3": {**LLAMA_NAMES, "qkv": "qkv_proj", "gate_up": "gate_up_proj"},
    "phi": {**LLAMA_NAMES, "o": "dense", "fc1": "fc1", "fc2": "fc2"},
    "falcon": {"qkv": "query_key_value", "o": "dense", "fc1": "dense_h_to_4h", "fc2": "dense_4h_to_h"},
    "gpt2": {"qkv": "c_attn", "o": "c_proj", "fc1": "c_fc", "fc2": "c_proj"},
    # Qwen (1.x, remote code): a1 = w1(x); a2 = w2(x); c_proj(a1 * silu(a2)) -> w2 is the gate
    "qwen": {"qkv": "c_attn", "o": "c_proj", "gate": "w2", "up": "w1", "down": "c_proj"},
}


def hf_names(spec: ModelSpec) -> dict[str, str]:
    return HF_NAMES.get(spec.family, LLAMA_NAMES)


@lru_cache(maxsize=256)
def layer_linears(spec: ModelSpec) -> tuple[Linear, ...]:
    """Linear modules of one decoder layer (MoE experts counted with ``count``).

    Shapes follow the HF implementations: q is ``hidden -> heads*head_dim``, k and v are
    ``hidden -> kv_heads*head_dim`` (GQA), o is ``heads*head_dim -> hidden``; gated MLPs have
    gate/up ``hidden -> intermediate`` and down ``intermediate -> hidden``.
    """
    h, d = spec.hidden, spec.head_dim
    q_out, kv_out = spec.heads * d, spec.kv_heads * d
    rows: list[Linear] = []
    if spec.fused_qkv:
        rows.append(Linear("qkv", h, q_out + 2 * kv_out, spec.qkv_bias, "attn_in"))
    else:
        rows += [Linear("q", h, q_out, spec.qkv_bias, "attn_in"),
                 Linear("k", h, kv_out, spec.qkv_bias, "attn_in"),
                 Linear("v", h, kv_out, spec.qkv_bias, "attn_in")]
    rows.append(Linear("o", q_out, h, spec.o_bias, "attn_out"))

    dense_layers = spec.layers - spec.n_moe_layers
    if dense_layers > 0:
        rows += _mlp_rows(spec, spec.intermediate, "", dense_layers if spec.is_moe else 0)
    if spec.is_moe:
        n = spec.n_moe_layers if spec.n_moe_layers != spec.layers else 0
        f = spec.moe_intermediate
        rows += [Linear("expert_gate", h, f, False, "expert_in", spec.num_experts, n),
                 Linear("expert_up", h, f, False, "expert_in", spec.num_experts, n),
                 Linear("expert_down", f, h, False, "expert_out", spec.num_experts, n)]
        if spec.shared_expert_intermediate:
            rows += _mlp_rows(spec, spec.shared_expert_intermediate, "shared_", n)
    return tuple(rows)


def _mlp_rows(spec: ModelSpec, f: int, prefix: str, layers: int) -> list[Linear]:
    h, b = spec.hidden, spec.mlp_bias
    if spec.mlp == "plain":
        return [Linear(prefix + "fc1", h, f, b, "mlp_in", 1, layers),
                Linear(prefix + "fc2", f, h, b, "mlp_out", 1, layers)]
    if spec.fused_gate_up:
        return [Linear(prefix + "gate_up", h, 2 * f, b, "mlp_in", 1, layers),
                Linear(prefix + "down", f, h, b, "mlp_out", 1, layers)]
    return [Linear(prefix + "gate", h, f, b, "mlp_in", 1, layers),
            Linear(prefix + "up", h, f, b, "mlp_in", 1, layers),
            Linear(prefix + "down", f, h, b, "mlp_out", 1, layers)]


def n_layers_of(spec: ModelSpec, lin: Linear) -> int:
    return lin.layers or spec.layers


def linear_params(spec: ModelSpec) -> int:
    """Parameters in all decoder-layer linears (weights and biases): the ones QLoRA quantizes."""
    return sum(lin.params * lin.count * n_layers_of(spec, lin) for lin in layer_linears(spec))


def norm_params(spec: ModelSpec) -> int:
    """All norm weights (and LayerNorm biases): per layer, qk-norms, and the final norm."""
    per = spec.hidden * (2 if spec.norm == "layernorm" else 1)
    n = spec.layers * spec.norms_per_layer * per + per
    if spec.qk_norm:
        n += spec.layers * 2 * spec.head_dim  # Qwen3/Gemma 3 normalise per head over head_dim
    return n


def router_params(spec: ModelSpec) -> int:
    """MoE router (``hidden -> num_experts``, no bias) and the shared-expert gate (``hidden -> 1``)."""
    if not spec.is_moe:
        return 0
    n = spec.hidden * spec.num_experts
    if spec.shared_expert_intermediate:
        n += spec.hidden
    return n * spec.n_moe_layers


def embedding_params(spec: ModelSpec) -> int:
    return spec.vocab * spec.hidden


def lm_head_params(spec: ModelSpec) -> int:
    """0 when the output projection is tied to the input embedding (one shared tensor)."""
    head = 0 if spec.tied_embeddings else spec.vocab * spec.hidden
    return head + (spec.vocab if spec.lm_head_bias else 0)


@lru_cache(maxsize=256)
def total_params(spec: ModelSpec) -> int:
    return (linear_params(spec) + norm_params(spec) + router_params(spec)
            + embedding_params(spec) + lm_head_params(spec))


def active_params(spec: ModelSpec) -> int:
    """Parameters one token touches: for MoE, ``experts_per_token`` of the experts."""
    if not spec.is_moe:
        return total_params(spec)
    expert = sum(lin.params * n_layers_of(spec, lin) for lin in layer_linears(spec) if lin.count > 1)
    return total_params(spec) - expert * spec.num_experts + expert * spec.experts_per_token


# ---------------------------------------------------------------------------------------------------
# LoRA targets

ATTN_ROLES = ("q", "k", "v", "qkv", "o")


@lru_cache(maxsize=1024)
def resolve_targets(spec: ModelSpec, targets: tuple[str, ...]) -> tuple[Linear, ...]:
    """The layer linears LoRA wraps, given targets as a user writes them for PEFT.

    ``all-linear`` is PEFT's shorthand: every ``nn.Linear`` except the output layer
    (peft ``tuners_utils._maybe_include_all_linear_layers`` excludes the ``get_output_embeddings()``
    module). The MoE router is an ``nn.Linear`` too; PEFT includes it with ``all-linear`` but it is
    tiny (``hidden x num_experts``) and is ignored here. Other names are the family's HF module names
    (``q_proj``), ftplan roles (``q``), or ``attention`` / ``mlp`` shorthands.
    """
    rows = layer_linears(spec)
    if not targets:
        raise FtplanError("lora targets: empty list; use all-linear or module names such as q_proj,v_proj")
    if any(t in ("all-linear", "all_linear", "all") for t in targets):
        return rows
    names = hf_names(spec)
    by_name: dict[str, list[Linear]] = {}
    for lin in rows:
        for key in {lin.role, names.get(lin.role, lin.role)}:
            by_name.setdefault(key, []).append(lin)
    chosen: list[Linear] = []
    for t in targets:
        if t in ("attention", "attn"):
            hits = [r for r in rows if r.role in ATTN_ROLES]
        elif t == "mlp":
            hits = [r for r in rows if r.role not in ATTN_ROLES]
        elif t in by_name:
            hits = by_name[t]
        else:
            valid = sorted({names.get(r.role, r.role) for r in rows}) + ["all-linear", "attention", "mlp"]
            raise UnknownNameError(f"LoRA target for {spec.name}", t, valid)
        for r in hits:
            if r not in chosen:
                chosen.append(r)
    return tuple(chosen)
