"""Read a Hugging Face ``config.json`` into a ``ModelSpec``: from a path, or for an HF id through
``huggingface_hub`` (the local HF cache, then the Hub).

Field names follow transformers' configuration classes (``hidden_size``, ``num_key_value_heads``,
``head_dim``, ``tie_word_embeddings``, ``attention_bias``, ``num_local_experts`` /
``num_experts`` + ``num_experts_per_tok``, ``moe_intermediate_size``,
``shared_expert_intermediate_size``...). Multimodal configs (Gemma 3) keep the language model under
``text_config``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import check_input
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


# the largest value a config field may take: beyond the largest real models by orders of magnitude, small
# enough that every count and product stays a plain number (a vocabulary of 1e30 is a broken file)
CONFIG_MAX = 1 << 24  # 16,777,216: sizes, vocabularies, positions
COUNT_MAX = 1 << 16  # layers, heads, experts


def _int(cfg: dict, where: str, *keys: str, default: int | None = None) -> int:
    for k in keys:
        v = cfg.get(k)
        if v is not None:
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise FtplanError(f"{where}: {k}={v!r} must be a positive integer")
            top = COUNT_MAX if any(w in k for w in ("layer", "head", "expert", "n_head")) else CONFIG_MAX
            if v > top and k not in ("max_position_embeddings", "n_positions", "seq_length"):
                raise FtplanError(f"{where}: {k}={v} is beyond the largest accepted, {top:,}")
            return min(v, 1 << 30)
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
    if mtype not in FAMILIES:
        raise FtplanError(f"{where}: model_type={mtype!r} is not one ftplan can plan (it would guess its layout); "
                          f"known: {', '.join(sorted(FAMILIES))} (to plan it as one of those, set model_type in a copy "
                          "of its config.json)")
    family, extra = FAMILIES[mtype]
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
        if extra["experts_per_token"] > extra["num_experts"]:
            raise FtplanError(f"{where}: num_experts_per_tok={extra['experts_per_token']} is more than the "
                              f"{extra['num_experts']} experts")
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
    except UnicodeDecodeError as e:
        raise FtplanError(f"{where} is not UTF-8 text (byte {e.start + 1})") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise FtplanError(f"{where} is not JSON ftplan can read ({str(e)[:120]})") from None
    except RecursionError:
        raise FtplanError(f"{where}: JSON nested too deeply") from None


def spec_from_path(path: Path) -> ModelSpec:
    """A ``config.json`` file, or a model folder that holds one."""
    cfg_path = path / "config.json" if path.is_dir() else path
    if not cfg_path.exists():
        raise FtplanError(f"model path {str(path)!r}: no config.json there")
    check_input(cfg_path, "model config")  # a device or a FIFO is not a config (it would be read forever)
    name = path.name if path.is_dir() else path.parent.name or path.stem
    return spec_from_config(_load_json(cfg_path, str(cfg_path)), name=name, where=str(cfg_path))


_LOGIN = "log in with `hf auth login` (`huggingface-cli login` on older huggingface_hub) or set HF_TOKEN"


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _hub_error(e: Exception, hf_id: str, revision: str | None) -> str:
    """A one-line message for an error from ``hf_hub_download``: what went wrong and what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        DisabledRepoError,
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    model = f"model {hf_id!r}"
    fallback = "or pass a path to its config.json"
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(e, GatedRepoError):
        return (f"{model} is gated on the Hugging Face Hub: accept its terms on its Hub page and {_LOGIN}; "
                f"{fallback}")
    if isinstance(e, RepositoryNotFoundError):
        if status == 401:  # what the Hub answers without a token, for a missing and for a private repository
            return (f"{model} was not found on the Hugging Face Hub: check the id (`ftplan models` lists the "
                    f"built-in ones), or if it is private or gated, {_LOGIN}")
        return (f"{model} does not exist on the Hugging Face Hub (or your token cannot see it): check the id "
                f"(`ftplan models` lists the built-in ones), {fallback}")
    if isinstance(e, RevisionNotFoundError):
        return (f"{model} has no revision {revision or 'main'!r} on the Hugging Face Hub: check the branch, tag "
                "or commit")
    if isinstance(e, DisabledRepoError):
        return f"{model} has been disabled on the Hugging Face Hub; {fallback}"
    # not cached and no Hub: LocalEntryNotFoundError (before EntryNotFoundError: it is one), or a connection
    # error the library let through (OfflineModeIsEnabled is a ConnectionError)
    if isinstance(e, (LocalEntryNotFoundError, ConnectionError, TimeoutError)):
        if constants.HF_HUB_OFFLINE:
            return (f"{model} is not in the catalog or the local Hugging Face cache, and Hugging Face offline "
                    "mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE): unset it to fetch its config.json from "
                    f"the Hub, {fallback}")
        reason = e.__cause__ if isinstance(e, LocalEntryNotFoundError) else e
        cause = f" ({_first_line(reason)})" if reason is not None else ""
        return (f"{model} is not in the catalog or the local Hugging Face cache, and the Hub cannot be reached"
                f"{cause}: check your connection (and HF_ENDPOINT if you use a mirror), {fallback}")
    if isinstance(e, EntryNotFoundError):
        return f"{model} has no config.json on the Hugging Face Hub (is it a model repository?); {fallback}"
    if isinstance(e, HfHubHTTPError) and status in (401, 403):
        return f"{model}: the Hugging Face Hub refused access (HTTP {status}): {_LOGIN}"
    if isinstance(e, HfHubHTTPError) and status is not None:
        return f"{model}: the Hugging Face Hub answered HTTP {status} for its config.json; try again later, {fallback}"
    if isinstance(e, HFValidationError):
        return f"model {hf_id!r} is neither an existing path nor a valid Hugging Face id (org/name)"
    return f"{model}: fetching its config.json from the Hugging Face Hub failed ({_first_line(e)}); {fallback}"


HUB_PROBE_TIMEOUT = 1.5  # seconds to wait for the Hub's TCP handshake before treating it as unreachable
_unreachable: str | None = None  # why the Hub was found unreachable in this process (offline mode then set)


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """Why the Hub endpoint (``HF_ENDPOINT``, else huggingface.co) cannot be reached, or None when a TCP
    connection to it opens within ``timeout`` seconds (name resolution included). Behind a proxy
    (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``) the endpoint is not probed: None."""
    import os
    import socket
    import threading
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return None
    u = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    if not u.hostname:
        return None
    port = u.port or (443 if u.scheme == "https" else 80)
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((u.hostname, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"{u.hostname}: {e.strerror or e}")

    t = threading.Thread(target=probe, daemon=True)  # name resolution has no timeout of its own
    t.start()
    t.join(timeout)
    return result[0] if result else f"{u.hostname}: no answer within {timeout:g} s"


def offline_env() -> bool:
    """Hugging Face offline mode asked for in the environment (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    import os

    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def offline_if_unreachable() -> str | None:
    """Before anything reads from the Hub: when it cannot be reached, turn on Hugging Face offline mode for
    this process (cached files then load at once, missing ones fail at once, instead of minutes of
    retries) and return why; None when it is reachable or offline mode is already on."""
    import os
    import sys

    global _unreachable
    if _unreachable is not None:
        return _unreachable
    if offline_env():
        return None
    why = hub_unreachable()
    if why is None:
        return None
    _unreachable = why
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:  # already imported: it read the variable at import
        hub.HF_HUB_OFFLINE = True
    return why


def require_weights_source(model: str, hf_id: str, what: str = "weights") -> None:
    """Before the training stack is imported: when ``model`` (an alias, whose id is ``hf_id``, or an HF id)
    would be read from the Hub and the Hub is unreachable or offline mode is on, its files must already
    be in the local Hugging Face cache; an FtplanError at once otherwise (instead of minutes of retries
    after a torch import). A local folder or file needs nothing."""

    if Path(model).expanduser().exists():
        return
    src = model if "/" in model else hf_id
    if not src:
        return
    offline = offline_env()
    why = None if offline else offline_if_unreachable()
    if not offline and why is None:
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(src, "config.json"), str)
    except Exception:  # noqa: BLE001 - an id the library rejects is not cached either
        cached = False
    if not cached:
        reason = f"the Hub cannot be reached ({why})" if why else "Hugging Face offline mode is on (HF_HUB_OFFLINE)"
        raise FtplanError(f"the {what} of {model!r} ({src}) are not in the local Hugging Face cache, and {reason}: "
                          "connect, or use --synthetic-weights (random weights from the config)")


def hub_config_path(hf_id: str, revision: str | None = None) -> Path:
    """``config.json`` of ``hf_id`` through ``huggingface_hub``: the shared HF cache first (no network),
    then the Hub, which stores it in that cache. The library handles the login token (``hf auth login`` /
    ``HF_TOKEN``), ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` / ``HF_HOME``. Imported here only,
    so planning with catalog models or local configs loads no HTTP stack."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise FtplanError(f"model {hf_id!r} is not in the catalog: reading a Hugging Face id needs the "
                          "huggingface_hub package (pip install huggingface_hub), or pass a path to its "
                          "config.json") from None
    try:
        try:
            path = huggingface_hub.hf_hub_download(hf_id, "config.json", revision=revision, local_files_only=True)
        except LocalEntryNotFoundError:
            why = None if huggingface_hub.constants.HF_HUB_OFFLINE else hub_unreachable()
            if why is not None:  # at once, instead of the library's retries (about 25 s without a network)
                raise FtplanError(f"model {hf_id!r} is not in the catalog or the local Hugging Face cache, and the Hub "
                                  f"cannot be reached ({why}): check your connection (and HF_ENDPOINT if you use a "
                                  "mirror), or pass a path to its config.json") from None
            path = huggingface_hub.hf_hub_download(hf_id, "config.json", revision=revision)
    except FtplanError:
        raise
    except Exception as e:  # only the library call is guarded: its errors become one line, never a traceback
        raise FtplanError(_hub_error(e, hf_id, revision)) from None
    return Path(path)


def spec_from_hub(hf_id: str, revision: str | None = None) -> ModelSpec:
    """An HF id not in the catalog: its ``config.json`` from the local HF cache, else the Hub (see
    ``hub_config_path``)."""
    path = hub_config_path(hf_id, revision)
    return spec_from_config(_load_json(path, f"{hf_id} config.json ({path})"), name=hf_id, hf_id=hf_id,
                            where=f"{hf_id} ({path})")
