"""Parameter counts (golden: the exact totals the Hugging Face model pages / safetensors index report)
and LoRA counts (golden: PEFT's print_trainable_parameters output)."""

import pytest

import ftplan
from ftplan.errors import FtplanError, UnknownNameError
from ftplan.planner.arch import active_params, resolve_targets, total_params
from ftplan.profiles.models import get_model

# Sources: "Model size" / safetensors parameter totals on each model's Hugging Face page.
PUBLISHED_PARAMS = {
    "meta-llama/Llama-3.1-8B": 8_030_261_248,
    "meta-llama/Llama-2-7b-hf": 6_738_415_616,
    "mistralai/Mistral-7B-v0.1": 7_241_732_096,
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": 1_100_048_384,
    "Qwen/Qwen2.5-7B": 7_615_616_512,
    "google/gemma-2-9b": 9_241_705_984,
    "microsoft/phi-2": 2_779_683_840,
    "mistralai/Mixtral-8x7B-v0.1": 46_702_792_704,
    "meta-llama/Llama-3.2-1B": 1_235_814_400,
    "Qwen/Qwen3-8B": 8_190_735_360,
    "microsoft/Phi-3-mini-4k-instruct": 3_821_079_552,
    "Qwen/Qwen3-30B-A3B": 30_532_122_624,
    "HuggingFaceTB/SmolLM2-135M": 134_515_008,
    "meta-llama/Llama-3.1-70B": 70_553_706_496,
}


@pytest.mark.parametrize("hf_id,expected", PUBLISHED_PARAMS.items())
def test_total_params_match_published(hf_id, expected):
    assert total_params(get_model(hf_id)) == expected


def test_moe_active_params():
    # Qwen3-30B-A3B: "3.3B activated"
    assert active_params(get_model("qwen3-30b-a3b")) == pytest.approx(3.3e9, rel=0.03)
    # Mixtral 8x7B: "12.9B active parameters"
    assert active_params(get_model("mixtral-8x7b")) == pytest.approx(12.9e9, rel=0.01)


# LoRA parameters PEFT creates, against the count the estimator uses (Estimate.trainable_params, the
# figure behind the LoRA weight, gradient and optimizer terms). Sources: PEFT's print_trainable_parameters
# for Llama-3.1-8B r=16 all-linear; the PEFT README for Llama-2-7b r=8 q_proj,v_proj; Mixtral-8x7B r=16
# all-linear counted with peft 0.21.2 on transformers 5.24's model built on the meta device (fused expert
# stacks: per-expert LoRA at 2r for gate_up, r for down, plus the router); tests/integrations recounts it.
PEFT_LORA_COUNTS = [("8b", "all-linear", 16, 41_943_040), ("llama2-7b", "q_proj,v_proj", 8, 4_194_304),
                    ("mixtral-8x7b", "all-linear", 16, 359_665_664)]


@pytest.mark.parametrize("model,targets,rank,expected", PEFT_LORA_COUNTS)
def test_estimator_lora_count_matches_peft(model, targets, rank, expected):
    for method, quant in (("lora", "bf16"), ("qlora", "nf4")):
        est = ftplan.estimate(model, method=method, quant=quant, lora_rank=rank, lora_targets=targets)
        assert est.trainable_params == expected


def test_targets_by_family_names():
    phi3 = get_model("phi-3-mini")
    assert {lin.role for lin in resolve_targets(phi3, ("qkv_proj",))} == {"qkv"}
    mixtral = get_model("mixtral-8x7b")
    assert {lin.role for lin in resolve_targets(mixtral, ("w1",))} == {"expert_gate"}
    with pytest.raises(UnknownNameError, match="q_proj"):
        resolve_targets(phi3, ("q_proj",))
    with pytest.raises(FtplanError):
        resolve_targets(phi3, ())
