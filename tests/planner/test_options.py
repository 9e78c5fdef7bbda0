"""Knob spellings and validation errors (they name the value and what is valid)."""

import pytest

from ftplan.errors import FtplanError, UnknownNameError
from ftplan.planner.options import choice, make_config, method_quant, parse_targets
from ftplan.profiles.gpus import get_gpu
from ftplan.profiles.models import get_model

M = get_model("8b")


@pytest.mark.parametrize("kind,value,expected", [
    ("optimizer", "adamw_torch_fused", "adamw"), ("optimizer", "paged_adamw_8bit", "paged_adamw_8bit"),
    ("optimizer", "adamw_bnb_8bit", "adamw_8bit"), ("attention", "flash", "flash_attention_2"),
    ("attention", "SDPA", "sdpa"), ("quant", "4bit", "nf4"), ("objective", "speed", "throughput"),
])
def test_spellings(kind, value, expected):
    assert choice(kind, value) == expected


def test_unknown_choice_lists_valid():
    with pytest.raises(UnknownNameError, match="sdpa"):
        choice("attention", "xformers")


def test_method_quant_consistency():
    assert method_quant(None, None) == ("qlora", "nf4")
    assert method_quant("lora", None) == ("lora", "bf16")
    assert method_quant("lora", "nf4") == ("qlora", "nf4")
    with pytest.raises(FtplanError, match="cannot use a quantized base"):
        method_quant("full", "nf4")
    with pytest.raises(FtplanError, match="4-bit base"):
        method_quant("qlora", "int8")


@pytest.mark.parametrize("knob,value,msg", [
    ("lora_rank", 0, "lora_rank=0"), ("micro_batch", -2, "micro_batch=-2"), ("seq_len", 0, "seq_len=0"),
    ("lora_dropout", 1.5, "lora_dropout=1.5"), ("micro_batch", "two", "micro_batch='two'"),
])
def test_bad_numbers(knob, value, msg):
    with pytest.raises(FtplanError, match=msg):
        make_config(M, **{knob: value})


def test_effective_batch_rounding_is_said():
    r = make_config(M, micro_batch=3, effective_batch=16)
    assert r.config.grad_accum == 6 and r.config.effective_batch == 18
    assert any("not a multiple" in w for w in r.warnings)
    exact = make_config(M, micro_batch=4, effective_batch=16, num_gpus=2)
    assert exact.config.grad_accum == 2 and exact.config.sharding == "ddp" and not exact.warnings


def test_conflicting_accumulation():
    with pytest.raises(FtplanError, match="effective_batch=16"):
        make_config(M, micro_batch=2, grad_accum=4, effective_batch=16)


def test_long_sequence_warns_and_bf16_less_gpu_uses_fp16():
    r = make_config(get_model("llama2-7b"), seq_len=8192)
    assert any("max_position_embeddings=4096" in w for w in r.warnings)
    t4 = make_config(M, get_gpu("t4"), method="lora", quant="bf16")
    assert t4.config.quant == "fp16" and any("no bf16" in w for w in t4.warnings)


def test_targets_parse_and_validate():
    assert parse_targets("q_proj, v_proj") == ("q_proj", "v_proj")
    with pytest.raises(FtplanError):
        make_config(M, lora_targets="qkv_proj")


def test_unknown_keyword():
    with pytest.raises(FtplanError, match="unknown option"):
        make_config(M, rankk=8)
