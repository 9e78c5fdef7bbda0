"""Every export runs: the TRL script written for a plan trains 2 steps on the CPU with a tiny random-weight
model, its own tokenizer and generated data, and saves what the plan describes (adapter rank and targets,
or the full model). Plans on an Ampere+ GPU (bf16) and on a T4 (fp16; ``--cpu`` turns the fp16 loss scaling
off, which needs CUDA), QLoRA, LoRA and full fine-tuning, the standard loss (Liger's kernel, the chunked
plans' switch, needs CUDA: its settings are checked field by field in test_chunked_handoffs.py)."""

import json
import subprocess
import sys

import pytest

import ftplan
from ftplan.integrations import exports

pytest.importorskip("trl")
pytest.importorskip("datasets")



@pytest.fixture(scope="module")
def tiny_hf_model(tmp_path_factory):
    from tests.integrations.tiny_hf import write_tiny_hf_model

    return write_tiny_hf_model(tmp_path_factory.mktemp("tiny-hf"))


@pytest.mark.slow
@pytest.mark.parametrize("model,gpu,knobs", [
    ("8b", "rtx4090", {"method": "qlora"}),
    ("8b", "t4", {"method": "qlora"}),
    ("8b", "rtx4090", {"method": "qlora", "quant": "fp4", "double_quant": False}),
    ("8b", "a100-80gb", {"method": "lora", "quant": "bf16", "lora_targets": "q_proj,v_proj"}),
    ("1b", "h100", {"method": "full"}),
], ids=["qlora-bf16", "qlora-fp16-t4", "qlora-fp4", "lora-qv", "full"])
def test_the_trl_script_trains_two_steps(tiny_hf_model, tmp_path, model, gpu, knobs):
    plan = ftplan.plan(model, gpu, top=1, loss_impl="standard", handoff="trl", **knobs)[0]
    k = plan.config.knobs()
    doc = {"model": str(tiny_hf_model), "knobs": k}
    script = tmp_path / "trl_sft.py"
    script.write_text(exports.trl(doc, str(tiny_hf_model / "train.jsonl")))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(script), "--max-steps", "2", "--cpu", "--output", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    if plan.config.is_lora:
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert adapter["r"] == k["lora_rank"] and adapter["lora_alpha"] == k["lora_alpha"]
        want = ({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
                if k["lora_targets"] == ["all-linear"] else set(k["lora_targets"]))
        got = adapter["target_modules"]  # PEFT saves all-linear as the module names it matched
        assert {str(t).rsplit(".", 1)[-1] for t in (got if isinstance(got, list) else [got])} == want
    else:
        assert (out / "model.safetensors").exists()
