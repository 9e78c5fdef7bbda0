"""The LoRA parameter count the estimator uses (``Estimate.trainable_params``: the LoRA weights, their
gradients and optimizer state all scale with it) against what peft really builds, on the full-size
models built on the meta device (no memory, seconds): dense GQA, a subset of targets, and Mixtral's
fused expert stacks (per-expert LoRA at 2r for gate_up, r for down, plus the router)."""

import pytest

import ftplan

CASES = [("8b", "all-linear", 16), ("llama2-7b", "q_proj,v_proj", 8), ("mixtral-8x7b", "all-linear", 16),
         ("qwen2.5-7b", "attention", 32)]


@pytest.mark.parametrize("model,targets,rank", CASES)
def test_estimator_counts_what_peft_builds(model, targets, rank):
    import peft
    import torch
    import transformers

    from ftplan.profiles.models import get_model
    from ftplan.stack.build import hf_config_dict, lora_target_modules

    spec = get_model(model)
    est = ftplan.estimate(model, method="lora", quant="bf16", lora_rank=rank, lora_targets=targets)
    config = transformers.AutoConfig.for_model(**hf_config_dict(spec))
    with torch.device("meta"):
        m = transformers.AutoModelForCausalLM.from_config(config)
    lora = peft.LoraConfig(r=rank, lora_alpha=2 * rank, task_type="CAUSAL_LM",
                           target_modules=lora_target_modules(spec, est.config.lora_targets))
    built = peft.get_peft_model(m, lora)
    assert est.trainable_params == sum(p.numel() for p in built.parameters() if p.requires_grad)
