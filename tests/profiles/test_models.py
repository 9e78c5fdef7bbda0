"""The model catalog and --model resolution (aliases, HF ids offline, config.json paths); HF ids outside the
catalog (HF cache, Hub) are in test_hub.py."""

import json

import pytest

from ftplan.errors import FtplanError, UnknownNameError
from ftplan.planner.arch import total_params
from ftplan.profiles.hf_config import spec_from_config
from ftplan.profiles.models import get_model, list_models, load_catalog


def test_catalog_size_and_families():
    models = list_models()
    assert len(models) >= 40
    names = {m.name for m in models}
    for needed in ("llama2-7b", "llama3-8b", "llama3.1-405b", "llama3.2-1b", "llama3.3-70b", "mistral-7b",
                   "mixtral-8x7b", "qwen2.5-7b", "qwen3-8b", "qwen3-30b-a3b", "gemma2-9b", "gemma3-27b", "phi-2",
                   "phi-3-mini", "phi-4", "falcon-7b", "stablelm-2-1.6b", "tinyllama-1.1b", "smollm2-1.7b",
                   "olmo2-7b"):
        assert needed in names


@pytest.mark.parametrize("name", sorted(load_catalog()))
def test_every_catalog_model_answers_to_its_hf_id_and_aliases(name):
    m = load_catalog()[name]
    assert get_model(m.hf_id) is m
    for a in m.aliases:
        assert get_model(a) is m
    assert m.heads % m.kv_heads == 0
    assert total_params(m) > 0


def test_documented_aliases():
    assert get_model("8b").hf_id == "meta-llama/Llama-3.1-8B"
    assert get_model("70b").hf_id == "meta-llama/Llama-3.1-70B"
    assert get_model("meta-llama/Llama-2-7b-hf").name == "llama2-7b"


def test_tied_and_biases_facts():
    assert get_model("llama3.2-1b").tied_embeddings and not get_model("8b").tied_embeddings
    assert get_model("qwen2.5-7b").qkv_bias and not get_model("qwen3-8b").qkv_bias
    assert get_model("gemma2-9b").head_dim == 256
    mx = get_model("mixtral-8x7b")
    assert (mx.num_experts, mx.experts_per_token) == (8, 2)


def _llama_cfg(**over):
    cfg = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 1024}
    cfg.update(over)
    return cfg


def test_config_path_and_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_llama_cfg()))
    a = get_model(str(tmp_path / "config.json"))
    b = get_model(str(tmp_path))
    assert a.hidden == b.hidden == 256 and a.head_dim == 64 and a.kv_heads == 2


def test_config_errors_name_the_value(tmp_path):
    with pytest.raises(FtplanError, match="num_attention_heads=3 does not divide hidden_size=256"):
        spec_from_config(_llama_cfg(num_attention_heads=3, num_key_value_heads=3), "x")
    with pytest.raises(FtplanError, match="num_key_value_heads=3"):
        spec_from_config(_llama_cfg(num_key_value_heads=3), "x")
    with pytest.raises(FtplanError, match="hidden_size=-1"):
        spec_from_config(_llama_cfg(hidden_size=-1), "x")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(FtplanError, match="not valid JSON"):
        get_model(str(bad))


def test_families_from_config():
    q = spec_from_config({**_llama_cfg(), "model_type": "qwen2"}, "q")
    assert q.qkv_bias
    moe = spec_from_config({**_llama_cfg(), "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2}, "m")
    assert moe.num_experts == 8 and moe.moe_intermediate == 512 and moe.family == "mixtral"
    gemma3 = spec_from_config({"model_type": "gemma3", "text_config": {**_llama_cfg(), "model_type": "gemma3_text",
                                                                       "head_dim": 128}}, "g")
    assert gemma3.head_dim == 128 and gemma3.qk_norm


def test_unknown_alias_suggests():
    with pytest.raises(UnknownNameError, match="8x7b"):
        get_model("8x")
