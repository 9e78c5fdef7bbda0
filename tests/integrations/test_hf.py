"""``ftplan.integrations.hf``: a plan turned into transformers/peft/bitsandbytes objects that a plain
HF Trainer runs with (CPU, small Llama-shaped model with random weights)."""

import pytest

import ftplan
from ftplan.integrations import hf
from tests.stack_fixtures import best_doc


def test_objects_match_the_plan(tiny_llama):
    plan = ftplan.plan(tiny_llama, "rtx4090", seq_len=64, effective_batch=8, method="qlora")[0]
    cfg = plan.config
    q = hf.bnb_config(plan)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == cfg.quant and q.bnb_4bit_use_double_quant == cfg.double_quant
    lc = hf.lora_config(plan, tiny_llama)
    assert lc.r == cfg.lora_rank and lc.lora_alpha == cfg.lora_alpha
    assert lc.target_modules == "all-linear"  # peft's own keyword: every linear layer but the head
    att = hf.lora_config(ftplan.estimate(tiny_llama, lora_targets="attention"), tiny_llama)
    assert set(att.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    args = hf.training_arguments(plan, "out", use_cpu=True)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 8
    assert getattr(args, "activation_checkpointing", None) in (None, cfg.gradient_checkpointing)
    assert args.gradient_checkpointing == cfg.gradient_checkpointing
    assert hf.bnb_config(ftplan.estimate(tiny_llama, method="lora", quant="bf16")) is None
    assert hf.lora_config(ftplan.estimate(tiny_llama, method="full", quant="bf16")) is None
    with pytest.raises(TypeError, match="Plan"):
        hf.config_of(42)


def test_hf_trainer_runs_with_them(tiny_llama, tmp_path):
    import peft
    import torch
    import transformers

    from ftplan.stack.build import load_base

    doc = best_doc(tiny_llama, method="lora", quant="bf16", micro_batch=2, grad_accum=1, seq_len=16)
    cfg = hf.config_of(doc)
    base = load_base(tiny_llama, ftplan.get_model(tiny_llama), cfg, "cpu", synthetic=True)
    model = peft.get_peft_model(base, hf.lora_config(doc))
    est = ftplan.estimate(tiny_llama, **hf.knobs(doc))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == est.trainable_params  # the planner counts the adapter peft builds
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": (ids := torch.randint(3, 300, (16,), generator=g)), "labels": ids} for _ in range(8)]
    cb = hf.MemoryCallback(doc)
    args = hf.training_arguments(doc, str(tmp_path), use_cpu=True, max_steps=2, logging_steps=1, save_strategy="no",
                                 learning_rate=1e-3)
    tr = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[cb])
    out = tr.train()
    assert out.global_step == 2
    assert cb.predicted_allocated == est.peak_allocated_bytes
    assert cb.history == []  # no CUDA device here: nothing measured, nothing invented


def test_training_arguments_build_on_a_machine_without_cuda(tmp_path):
    """The README's `hf.training_arguments(plan, "out")` on a machine without CUDA: transformers refuses
    bf16 there unless told it trains on the CPU; the helper says so and builds them."""
    import warnings

    import torch

    import ftplan
    from ftplan.integrations import hf

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the CPU fallback does not apply")
    plan = ftplan.plan("8b", "rtx4090", loss_impl="standard")[0]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        args = hf.training_arguments(plan, str(tmp_path / "out"))
    assert args.use_cpu and args.bf16 and not args.fp16
    assert any("use_cpu=True" in str(w.message) for w in seen)
    assert args.per_device_train_batch_size == plan.config.micro_batch


@pytest.mark.parametrize("target,upcast", [("hf", True), ("trl", False)])
def test_peft_model_prepares_as_the_plan_counted(tiny_llama, target, upcast):
    """``hf.peft_model``: peft's k-bit preparation only when the plan counted it (the hand-off target's
    ``prepare_kbit``), so the embeddings, norms and lm_head are fp32 exactly when the estimate says so."""
    import torch

    from ftplan.stack.build import load_base

    est = ftplan.estimate(tiny_llama, "rtx4090", method="qlora", seq_len=16, handoff=target, calibrate=False)
    assert est.config.prepare_kbit is upcast
    base = load_base(tiny_llama, ftplan.get_model(tiny_llama), est.config, "cpu", synthetic=True)
    model = hf.peft_model(base, est, tiny_llama)
    emb = model.get_input_embeddings().weight
    assert emb.dtype == (torch.float32 if upcast else torch.bfloat16)
    unquantized = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                      if "lora_" not in n and p.dtype in (torch.float32, torch.bfloat16))
    assert unquantized == est.breakdown["weights_unquantized"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == est.trainable_params
