"""Read a Hugging Face ``config.json`` into a ``ModelSpec``: from a path, the local HF cache, or the Hub.

Field names follow transformers' configuration classes (``hidden_size``, ``num_key_value_heads``,
``head_dim``, ``tie_word_embeddings``, ``attention_bias``, ``num_local_experts`` /
``num_experts`` + ``num_experts_per_tok``, ``moe_intermediate_size``,
``shared_expert_intermediate_size``...). Multimodal configs (Gemma 3) keep the language model under
``text_config``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes
from ..errors import FtplanError
from ..planner.types import ModelSpec

# model_type -> (family for module names, extra ModelSpec fields)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {}), "mistral": ("llama", {}), "granite": ("llama", {}), "yi": ("llama", {}),
    "qwen2": ("llama", {"qkv_bias": True}), "qwen3": ("llama", {"qk_norm": True}),
    "qwen2_moe": ("llama", {"qkv_bias": True}), "qwen3_moe": ("llama", {"qk_norm": True}),
    "mixtral": ("mixtral", {}), "gemma": ("llama", {}),
    "gemma2": ("llama", {"norms_per_layer": 4, "final_logit_softcap": True, "attn_logit_softcap": True}),
    "gemma3": ("llama", {"norms_per_layer": 4, "qk_norm": True}),
    "gemma3_text": ("llama", {"norms_per_layer": 4, "qk_norm": True}),
    "phi3": ("phi3", {"fused_qkv": True, "fused_gate_up": True}),
    "phi": ("phi", {"mlp": "plain", "norm": "layernorm", "norms_per_layer": 1, "parallel_block": True,
                    "qkv_bias": True, "o_bias": True, "mlp_bias": True, "lm_head_bias": True}),
    "falcon": ("falcon", {"mlp": "plain", "norm": "layernorm", "parallel_block": True, "fused_qkv": True}),
    "stablelm": ("llama", {"norm": "layernorm"}),
    "olmo2": ("llama", {"qk_norm": True}), "olmoe": ("llama", {"qk_norm": True}),
    "qwen": ("qwen", {"fused_qkv": True, "qkv_bias": True}),
}


def _int(cfg: dict, where: str, *keys: str, default: int | None = None) -> int:
    for k in keys:
        v = cfg.get(k)
        if v is not None:
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise FtplanError(f"{where}: {k}={v!r} must be a positive integer")
            return v
    if default is not None:
        return default
    raise FtplanError(f"{where}: missing {' / '.join(keys)}")


def spec_from_config(cfg: dict, name: str, hf_id: str = "", where: str = "config.json") -> ModelSpec:
    """A ``ModelSpec`` from a parsed config.json; errors name the offending value."""
    if not isinstance(cfg, dict):
        raise FtplanError(f"{where}: expected a JSON object")
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
    mtype = str(cfg.get("model_type", "llama"))
    family, extra = FAMILIES.get(mtype, ("llama", {}))
    extra = dict(extra)
    h = _int(cfg, where, "hidden_size", "n_embd", "d_model")
    heads = _int(cfg, where, "num_attention_heads", "n_head")
    if mtype == "falcon":
        multi_query = cfg.get("multi_query", True)
        kv = cfg.get("num_kv_heads") if cfg.get("new_decoder_architecture") else (1 if multi_query else heads)
        kv = _int({"num_kv_heads": kv}, where, "num_kv_heads")
        extra["norms_per_layer"] = 2 if cfg.get("new_decoder_architecture") else 1
        extra["tied_embeddings"] = cfg.get("tie_word_embeddings", True)
        f = _int(cfg, where, "ffn_hidden_size", default=4 * h)
        extra["qkv_bias"] = extra["o_bias"] = extra["mlp_bias"] = bool(cfg.get("bias", False))
    else:
        kv = _int(cfg, where, "num_key_value_heads", default=heads)
        f = _int(cfg, where, "intermediate_size", "n_inner", default=4 * h)
        if mtype == "qwen":  # Qwen 1.x: intermediate_size spans w1 and w2 together
            f //= 2
    head_dim = cfg.get("head_dim")
    if head_dim is None:
        if h % heads:
            raise FtplanError(f"{where}: num_attention_heads={heads} does not divide hidden_size={h} "
                              "(and no head_dim is given)")
        head_dim = h // heads
    head_dim = _int({"head_dim": head_dim}, where, "head_dim")
    if heads % kv:
        raise FtplanError(f"{where}: num_key_value_heads={kv} does not divide num_attention_heads={heads}")
    layers = _int(cfg, where, "num_hidden_layers", "n_layer", "num_layers")
    vocab = _int(cfg, where, "vocab_size")
    max_pos = _int(cfg, where, "max_position_embeddings", "n_positions", "seq_length", default=2048)
    if mtype not in ("falcon",):
        extra.setdefault("tied_embeddings", bool(cfg.get("tie_word_embeddings", mtype.startswith("gemma"))))
    if cfg.get("attention_bias") is not None and mtype != "phi":
        extra["qkv_bias"] = extra["o_bias"] = bool(cfg["attention_bias"])
    if cfg.get("use_qkv_bias"):
        extra["qkv_bias"] = True
    if cfg.get("mlp_bias") is not None and mtype != "phi":
        extra["mlp_bias"] = bool(cfg["mlp_bias"])
    n_exp = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
    if n_exp:
        extra["num_experts"] = _int({"num_experts": n_exp}, where, "num_experts")
        extra["experts_per_token"] = _int(cfg, where, "num_experts_per_tok")
        extra["moe_intermediate"] = _int(cfg, where, "moe_intermediate_size", default=f)
        if cfg.get("shared_expert_intermediate_size"):
            extra["shared_expert_intermediate"] = _int(cfg, where, "shared_expert_intermediate_size")
        family = "mixtral" if mtype == "mixtral" else family
    if mtype == "gemma2":
        extra["final_logit_softcap"] = bool(cfg.get("final_logit_softcapping"))
        extra["attn_logit_softcap"] = bool(cfg.get("attn_logit_softcapping"))
    return ModelSpec(name=name, hidden=h, intermediate=f, layers=layers, heads=heads, kv_heads=kv,
                     head_dim=head_dim, vocab=vocab, max_positions=max_pos, hf_id=hf_id, family=family,
                     source=where, **extra)


def _load_json(path: Path, where: str) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise FtplanError(f"cannot read {where}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise FtplanError(f"{where} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def spec_from_path(path: Path) -> ModelSpec:
    """A ``config.json`` file, or a model folder that holds one."""
    cfg_path = path / "config.json" if path.is_dir() else path
    if not cfg_path.exists():
        raise FtplanError(f"model path {str(path)!r}: no config.json there")
    name = path.name if path.is_dir() else path.parent.name or path.stem
    return spec_from_config(_load_json(cfg_path, str(cfg_path)), name=name, where=str(cfg_path))


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def cached_config(hf_id: str) -> Path | None:
    """``config.json`` of ``hf_id`` in the local HF cache (``models--org--name/snapshots/<rev>/``)."""
    repo = hf_cache_dir() / ("models--" + hf_id.replace("/", "--"))
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.exists():
        p = snaps / ref.read_text().strip() / "config.json"
        if p.exists():
            return p
    found = sorted(snaps.glob("*/config.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return found[0] if found else None


def _ftplan_cache() -> Path:
    return Path(os.environ.get("FTPLAN_CACHE", Path.home() / ".cache" / "ftplan")) / "configs"


def spec_from_hub(hf_id: str, timeout: float = 10.0) -> ModelSpec:
    """An HF id: the HF cache, ftplan's own config cache, then the Hub (unless ``HF_HUB_OFFLINE``)."""
    for p in (cached_config(hf_id), _ftplan_cache() / (hf_id.replace("/", "--") + ".json")):
        if p is not None and p.exists():
            return spec_from_config(_load_json(p, str(p)), name=hf_id, hf_id=hf_id, where=f"{hf_id} ({p})")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise FtplanError(f"model {hf_id!r} is not in the catalog or the local HF cache and HF_HUB_OFFLINE is "
                          "set; pass a path to its config.json")
    url = f"https://huggingface.co/{hf_id}/resolve/main/config.json"
    req = urllib.request.Request(url)
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        hint = " (gated: set HF_TOKEN)" if e.code in (401, 403) else ""
        raise FtplanError(f"model {hf_id!r}: the Hub answered HTTP {e.code}{hint}; check the id or pass a "
                          "path to its config.json") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FtplanError(f"model {hf_id!r} is not in the catalog or the local HF cache, and the Hub cannot "
                          f"be reached ({reason}); pass a path to its config.json") from None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError:
        raise FtplanError(f"model {hf_id!r}: the Hub's config.json is not valid JSON") from None
    spec = spec_from_config(cfg, name=hf_id, hf_id=hf_id, where=f"{hf_id} (Hub)")
    dest = _ftplan_cache() / (hf_id.replace("/", "--") + ".json")
    try:  # keep it for offline use; atomic so a kill never leaves half a file
        atomic_write_bytes(dest, raw)
    except OSError:
        pass
    return spec
