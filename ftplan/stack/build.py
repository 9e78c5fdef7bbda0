"""Build the model a configuration trains: the HF config, weights (real or synthetic), 4/8-bit
quantization, ``prepare_model_for_kbit_training``, LoRA, gradient checkpointing — the path a HF
Trainer + PEFT + bitsandbytes run takes, so that what is measured is what users run.

Synthetic weights: ``AutoModelForCausalLM.from_config`` with random initialisation, then for 4-bit
and 8-bit bases every decoder-layer ``nn.Linear`` is replaced by a bitsandbytes ``Linear4bit`` /
``Linear8bitLt`` quantized on the fly, the modules transformers' bitsandbytes integration would
convert (``lm_head`` and embeddings stay unquantized).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import FtplanError
from ..planner.arch import hf_names
from ..planner.types import ModelSpec, TrainConfig
from ..profiles.hf_config import offline_if_unreachable

TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def hf_config_dict(spec: ModelSpec) -> dict[str, Any]:
    """A transformers ``config.json`` for a catalog ``ModelSpec`` (the reverse of
    ``profiles.hf_config.spec_from_config`` for the families it reads)."""
    base: dict[str, Any] = {
        "hidden_size": spec.hidden, "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads, "head_dim": spec.head_dim, "vocab_size": spec.vocab,
        "max_position_embeddings": spec.max_positions, "tie_word_embeddings": spec.tied_embeddings,
        "rms_norm_eps": 1e-5, "hidden_act": "silu",
    }
    if spec.family == "phi3":
        return {**base, "model_type": "phi3", "architectures": ["Phi3ForCausalLM"]}
    if spec.family == "mixtral":
        return {**base, "model_type": "mixtral", "num_local_experts": spec.num_experts,
                "num_experts_per_tok": spec.experts_per_token, "intermediate_size": spec.moe_intermediate}
    if spec.is_moe:
        return {**base, "model_type": "qwen2_moe", "num_experts": spec.num_experts,
                "num_experts_per_tok": spec.experts_per_token, "moe_intermediate_size": spec.moe_intermediate,
                "shared_expert_intermediate_size": spec.shared_expert_intermediate, "decoder_sparse_step": 1,
                "mlp_only_layers": [], "norm_topk_prob": False}
    if spec.family not in ("llama",):
        raise FtplanError(f"building {spec.name} (family {spec.family}) from the catalog is not supported; "
                          "pass a path to its config.json")
    if spec.norms_per_layer == 4:
        mt = "gemma2" if spec.final_logit_softcap else "gemma3_text"
        extra = {"hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": spec.head_dim}
        if mt == "gemma2":
            extra.update(final_logit_softcapping=30.0, attn_logit_softcapping=50.0)
        return {**base, "model_type": mt, **extra}
    if spec.qk_norm:
        return {**base, "model_type": "qwen3"}
    if spec.qkv_bias:
        return {**base, "model_type": "qwen2"}
    return {**base, "model_type": "llama", "attention_bias": spec.o_bias, "mlp_bias": spec.mlp_bias}


def load_hf_config(model: str, spec: ModelSpec, attention: str):
    """The transformers config: the user's own ``config.json`` when ``model`` is a path, else one made
    from the catalog spec. Attention: ``flash_attention_2`` needs CUDA and the flash-attn package;
    elsewhere the SDPA kernel that keeps the same O(s) memory stands in for it."""
    import transformers

    p = Path(model).expanduser()
    cfg_path = p / "config.json" if p.is_dir() else p
    if cfg_path.suffix == ".json" and cfg_path.exists():
        d = json.loads(cfg_path.read_text())
    else:
        d = hf_config_dict(spec)
    d = {k: v for k, v in d.items() if k not in ("quantization_config", "torch_dtype", "dtype")}
    mt = d.pop("model_type", "llama")
    try:
        cfg = transformers.AutoConfig.for_model(mt, **d)
    except (ValueError, KeyError) as e:
        raise FtplanError(f"transformers cannot build model_type={mt!r}: {e}") from None
    cfg.use_cache = False
    cfg._attn_implementation = attention
    return cfg


def attention_impl(attention: str, device: str) -> str:
    if attention == "flash_attention_2" and device != "cuda":
        return "sdpa"
    if attention == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return "sdpa"
    return attention


def torch_dtype(name: str):
    import torch

    return getattr(torch, TORCH_DTYPES[name])


def base_dtype(cfg: TrainConfig) -> str:
    """The dtype non-quantized weights load in: the compute dtype for 4/8-bit bases (``torch_dtype`` of a
    QLoRA recipe: bf16, fp16 on GPUs without bf16), else the base format itself."""
    return cfg.compute_dtype if cfg.is_quantized else cfg.quant


def decoder_linears(model) -> list:
    """``(name, module)`` of the plain ``nn.Linear`` modules inside the decoder layers: the ones
    bitsandbytes quantizes (``lm_head`` and embeddings are outside the layers), not LoRA's own."""
    import torch

    return [(n, m) for n, m in model.named_modules()
            if type(m) is torch.nn.Linear and ".layers." in f".{n}." and "lora_" not in n]


def replace_module(model, name: str, new) -> None:
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], new)


def quantize_linears(model, cfg: TrainConfig) -> int:
    """Replace the decoder layers' ``nn.Linear`` with bitsandbytes 4-bit / 8-bit modules holding the
    same (random) weights, quantized now; 4-bit matmuls run in the compute dtype. Returns how many were
    replaced."""
    import bitsandbytes as bnb
    import torch

    count = 0
    # FSDP shards every parameter of a unit in one float dtype: the packed 4-bit weights are stored as such
    # (transformers' bnb_4bit_quant_storage; the same bytes)
    storage = torch_dtype(cfg.compute_dtype) if cfg.is_fsdp else torch.uint8
    for name, lin in decoder_linears(model):
        dev = lin.weight.device
        if cfg.quant in ("nf4", "fp4"):
            new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                    compute_dtype=torch_dtype(cfg.compute_dtype), compress_statistics=cfg.double_quant,
                                    quant_type=cfg.quant, quant_storage=storage, device="meta")
            new.weight = bnb.nn.Params4bit(lin.weight.data.to("cpu"), requires_grad=False,
                                           compress_statistics=cfg.double_quant, quant_type=cfg.quant,
                                           quant_storage=storage, module=new)
        else:
            new = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                      has_fp16_weights=False, threshold=6.0, device="meta")
            new.weight = bnb.nn.Int8Params(lin.weight.data.to("cpu"), requires_grad=False, has_fp16_weights=False)
        if lin.bias is not None:
            new.bias = torch.nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        new = new.to(dev)
        replace_module(model, name, new)
        del lin
        count += 1
    return count


def lora_target_modules(spec: ModelSpec, targets: tuple[str, ...]) -> list[str] | str:
    """PEFT ``target_modules`` for ftplan's target names (``all-linear``, roles, HF names)."""
    from ..planner.arch import resolve_targets

    if any(t in ("all-linear", "all_linear", "all") for t in targets):
        return "all-linear"
    names = hf_names(spec)
    return sorted({names.get(r.role, r.role) for r in resolve_targets(spec, targets)})


def build_model(model: str, spec: ModelSpec, cfg: TrainConfig, device: str, synthetic: bool = True,
                seed: int = 0):
    """The trainable model on ``device``: base weights in their format, the kbit preparation, LoRA
    adapters, checkpointing, ``train()`` mode. Real weights come from a local folder or the HF cache."""
    return prepare_for_training(load_base(model, spec, cfg, device, synthetic, seed), spec, cfg)


def load_base(model: str, spec: ModelSpec, cfg: TrainConfig, device: str, synthetic: bool = True, seed: int = 0):
    """The base model alone, weights in ``cfg``'s format (synthetic weights are a function of ``seed``)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    attn = attention_impl(cfg.attention, device)
    hf_cfg = load_hf_config(model, spec, attn)
    dtype = torch_dtype(base_dtype(cfg))
    if synthetic:
        with torch.device(device if cfg.quant not in ("nf4", "fp4", "int8") or device == "cuda" else "cpu"):
            m = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype, attn_implementation=attn)
        if cfg.is_quantized:
            quantize_linears(m, cfg)
            m.is_loaded_in_4bit = cfg.quant in ("nf4", "fp4")
            m.is_loaded_in_8bit = cfg.quant == "int8"
        m = m.to(device)
    else:
        kw: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn}
        if cfg.is_quantized:
            kw["quantization_config"] = transformers.BitsAndBytesConfig(
                load_in_4bit=cfg.quant in ("nf4", "fp4"), load_in_8bit=cfg.quant == "int8",
                bnb_4bit_quant_type=cfg.quant if cfg.quant != "int8" else "nf4",
                bnb_4bit_use_double_quant=cfg.double_quant, bnb_4bit_compute_dtype=torch_dtype(cfg.compute_dtype))
            kw["device_map"] = {"": device}
        # a catalog alias ("8b") means its Hugging Face id; a path or an id is used as given
        local = Path(model).expanduser().exists()
        src = model if (local or "/" in model or not spec.hf_id) else spec.hf_id
        why = None if local else offline_if_unreachable()  # no network: the cache only, at once
        try:
            m = transformers.AutoModelForCausalLM.from_pretrained(src, **kw)
        except OSError as e:
            net = f"; the Hub cannot be reached ({why}), so only the local cache was read" if why else ""
            raise FtplanError(f"cannot load weights for {model!r} ({str(e).splitlines()[0][:200]}){net}; use "
                              "--synthetic-weights to profile the architecture with random weights") from None
        if not cfg.is_quantized:
            m = m.to(device)
    return m


def prepare_for_training(m, spec: ModelSpec, cfg: TrainConfig):
    """What HF Trainer + PEFT do to a loaded model before the first step."""
    m.config.use_cache = False
    gc = cfg.gradient_checkpointing
    if cfg.is_lora:
        import peft

        if cfg.is_quantized and cfg.prepare_kbit:
            m = peft.prepare_model_for_kbit_training(m, use_gradient_checkpointing=gc)
        elif gc:
            m.gradient_checkpointing_enable()
        lcfg = peft.LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                               target_modules=lora_target_modules(spec, cfg.lora_targets), bias="none",
                               task_type="CAUSAL_LM")
        m = peft.get_peft_model(m, lcfg)
    elif gc:
        m.gradient_checkpointing_enable()
    if gc and not cfg.is_lora:
        m.config.use_cache = False
    m.train()
    return m
