"""Every object built from a plan matches its precision, field by field: on GPUs without bf16 (GTX 1650, T4)
fp16 compute with loss scaling, on Ampere (RTX 3090, A100) bf16. The HF objects (``BitsAndBytesConfig``,
``LoraConfig``, ``TrainingArguments``, ``from_pretrained`` keywords), the three exports (Axolotl and
LLaMA-Factory YAML parsed back; the TRL script parsed with ``ast``) and the stack's own model build."""

import ast

import pytest
import yaml

import ftplan
from ftplan import best
from ftplan.integrations import exports, hf

GPUS = ("gtx1650", "t4", "rtx3090", "a100-80gb")
METHODS = ("qlora", "lora", "full")


def _plan(model: str, gpu: str, method: str):
    plans = ftplan.plan(model, gpu, method=method, seq_len=64, effective_batch=8, calibrate=False)
    assert plans, (gpu, method)
    return plans[0]


def _expected(gpu: str, method: str) -> dict:
    """What the plan must build on ``gpu``: fp16 with loss scaling exactly when the GPU has no bf16."""
    fp16 = not ftplan.get_gpu(gpu).bf16
    compute = "float16" if fp16 else "bfloat16"
    load = {"qlora": compute, "lora": compute, "full": "float32" if fp16 else "bfloat16"}[method]
    return {"fp16": fp16, "compute": compute, "load": load}


def _calls(source: str) -> dict[str, dict[str, str]]:
    """Keyword arguments (as source text) of each call in a script, by the called name (the first call of a
    name: the model's ``from_pretrained`` comes before the tokenizer's)."""
    out: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            out.setdefault(name, {k.arg: ast.unparse(k.value) for k in node.keywords if k.arg})
    return out


@pytest.mark.parametrize("gpu", GPUS)
@pytest.mark.parametrize("method", METHODS)
def test_hf_objects_match_the_plan(tiny_llama, gpu, method):
    import torch

    exp = _expected(gpu, method)
    plan = _plan(tiny_llama, gpu, method)
    cfg = plan.config
    dtype = getattr(torch, exp["compute"])

    kw = hf.model_kwargs(plan)
    assert kw["dtype"] == getattr(torch, exp["load"])
    assert kw["attn_implementation"] == cfg.attention
    q = hf.bnb_config(plan)
    if cfg.quant in ("nf4", "fp4"):
        for made in (q, kw["quantization_config"]):
            assert made.load_in_4bit and not made.load_in_8bit
            assert made.bnb_4bit_quant_type == cfg.quant and made.bnb_4bit_use_double_quant == cfg.double_quant
            assert made.bnb_4bit_compute_dtype == dtype
    elif cfg.quant == "int8":
        assert q.load_in_8bit and kw["quantization_config"].load_in_8bit
    else:
        assert q is None and "quantization_config" not in kw

    args = hf.training_arguments(plan, "out", use_cpu=True)
    assert args.fp16 is exp["fp16"] and args.bf16 is (not exp["fp16"])  # fp16=True: HF makes a GradScaler
    assert args.per_device_train_batch_size == cfg.micro_batch
    assert args.gradient_accumulation_steps == cfg.grad_accum
    assert args.optim.value == exports.HF_OPTIM[cfg.optimizer]

    lc = hf.lora_config(plan, tiny_llama)
    if method == "full":
        assert lc is None
    else:
        assert (lc.r, lc.lora_alpha, lc.lora_dropout) == (cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
        assert lc.target_modules == "all-linear" and lc.bias == "none"

    # the plan's precision itself, and the same objects from its best.json document
    assert cfg.compute_dtype == ("fp16" if exp["fp16"] else "bf16")
    doc = best.document(model=tiny_llama, model_name="tiny", hf_id=None, knobs=cfg.knobs())
    assert hf.config_of(doc) == cfg
    assert hf.model_kwargs(doc)["dtype"] == kw["dtype"]
    assert hf.training_arguments(doc, "out", use_cpu=True).fp16 is exp["fp16"]


FP16 = {True: "not a.cpu", False: "False"}  # the TRL script's fp16 argument


@pytest.mark.parametrize("gpu", GPUS)
@pytest.mark.parametrize("method", METHODS)
def test_exports_match_the_plan(tiny_llama, gpu, method):
    exp = _expected(gpu, method)
    cfg = _plan(tiny_llama, gpu, method).config
    doc = best.document(model=tiny_llama, model_name="tiny", hf_id="org/tiny", knobs=cfg.knobs())

    ax = yaml.safe_load(exports.axolotl(doc))
    assert ax["fp16"] is exp["fp16"] and ax["bf16"] is (not exp["fp16"])
    assert ax["base_model"] == "org/tiny"
    assert ax["micro_batch_size"] == cfg.micro_batch and ax["gradient_accumulation_steps"] == cfg.grad_accum
    if method == "qlora":
        assert ax["adapter"] == "qlora" and ax["load_in_4bit"] is True
    elif method == "lora":
        assert ax["adapter"] == "lora" and ax["load_in_8bit"] is (cfg.quant == "int8")
    else:
        assert "adapter" not in ax
    assert ("fp32 master weights" in exports.axolotl(doc)) is (method == "full" and exp["fp16"])

    lf = yaml.safe_load(exports.llamafactory(doc))
    assert lf["fp16"] is exp["fp16"] and lf["bf16"] is (not exp["fp16"])
    assert lf["finetuning_type"] == ("full" if method == "full" else "lora")
    if cfg.quant in ("nf4", "fp4"):
        assert (lf["quantization_bit"], lf["quantization_type"], lf["double_quantization"]) == (4, cfg.quant,
                                                                                              cfg.double_quant)
    else:
        assert lf.get("quantization_bit") == (8 if cfg.quant == "int8" else None)

    script = exports.trl(doc)
    calls = _calls(script)
    # fp16=True on the GPU; the script's --cpu smoke test turns fp16 loss scaling off (it needs CUDA)
    assert calls["SFTConfig"]["fp16"] == FP16[exp["fp16"]] and calls["SFTConfig"]["bf16"] == str(not exp["fp16"])
    assert calls["from_pretrained"]["dtype"] == f"torch.{exp['load']}"
    if cfg.quant in ("nf4", "fp4"):
        bnb = calls["BitsAndBytesConfig"]
        assert bnb["bnb_4bit_compute_dtype"] == f"torch.{exp['compute']}"
        assert bnb["load_in_4bit"] == "True" and bnb["bnb_4bit_quant_type"] == repr(cfg.quant)
        assert bnb["bnb_4bit_use_double_quant"] == str(cfg.double_quant)
    else:
        assert "BitsAndBytesConfig" not in calls or cfg.quant == "int8"
    if exp["fp16"]:
        assert "bfloat16" not in script and "bf16=True" not in script


@pytest.mark.parametrize("gpu", ("gtx1650", "t4", "rtx3090"))
def test_eight_bit_lora_matches_the_plan(tiny_llama, gpu):
    """LLM.int8 LoRA (searched, rarely the winner): its unquantized modules load in the compute dtype."""
    import torch

    exp = _expected(gpu, "lora")
    est = ftplan.estimate(tiny_llama, gpu, method="lora", quant="int8", seq_len=64, calibrate=False)
    assert est.config.compute_dtype == ("fp16" if exp["fp16"] else "bf16")
    kw = hf.model_kwargs(est)
    assert kw["dtype"] == getattr(torch, exp["compute"]) and kw["quantization_config"].load_in_8bit
    assert hf.training_arguments(est, "out", use_cpu=True).fp16 is exp["fp16"]
    doc = best.document(model=tiny_llama, model_name="tiny", hf_id=None, knobs=est.config.knobs())
    ax, lf = yaml.safe_load(exports.axolotl(doc)), yaml.safe_load(exports.llamafactory(doc))
    assert ax["load_in_8bit"] is True and ax["fp16"] is exp["fp16"] and ax["bf16"] is (not exp["fp16"])
    assert lf["quantization_bit"] == 8 and lf["fp16"] is exp["fp16"] and lf["bf16"] is (not exp["fp16"])
    calls = _calls(exports.trl(doc))
    assert calls["BitsAndBytesConfig"] == {"load_in_8bit": "True"}
    assert calls["from_pretrained"]["dtype"] == f"torch.{exp['compute']}"
    assert calls["SFTConfig"]["fp16"] == FP16[exp["fp16"]]


@pytest.mark.parametrize("gpu", ("gtx1650", "rtx3090"))
def test_stack_builds_the_plans_precision(tiny_llama, gpu):
    """``stack.build`` (what ``ftplan train`` and ``ftplan profile`` run): 4-bit matmuls and the unquantized
    weights in the compute dtype, fp32 adapters (peft), and the autocast region and loss scaler of the step."""
    import bitsandbytes as bnb
    import torch

    from ftplan.stack.build import build_model
    from ftplan.stack.optim import autocast, grad_scaler

    exp = _expected(gpu, "qlora")
    dtype = getattr(torch, exp["compute"])
    cfg = _plan(tiny_llama, gpu, "qlora").config
    spec = ftplan.get_model(tiny_llama)
    model = build_model(tiny_llama, spec, cfg, "cpu", synthetic=True)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and all(m.compute_dtype == dtype for m in four_bit)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    with autocast(cfg, "cpu"):
        assert torch.get_autocast_dtype("cpu") == dtype
    assert grad_scaler(cfg, "cpu").is_enabled() is exp["fp16"]
    lora = _plan(tiny_llama, gpu, "lora").config
    base = build_model(tiny_llama, spec, lora, "cpu", synthetic=True)
    frozen = {p.dtype for p in base.parameters() if not p.requires_grad}
    assert frozen == {dtype}
