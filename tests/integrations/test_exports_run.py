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


@pytest.mark.slow
@pytest.mark.parametrize("sharding,offload", [("zero2", "none"), ("zero3", "optimizer")])
def test_the_trl_script_runs_a_zero_plan_under_deepspeed(tiny_hf_model, tmp_path, sharding, offload):
    """A ZeRO plan's TRL script carries its DeepSpeed config (the one ``write_all`` writes as deepspeed.json)
    and trains 2 steps on 2 CPU processes under DeepSpeed (its CPU accelerator over gloo) with HF Trainer."""
    import os
    import shutil

    pytest.importorskip("deepspeed")
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    plan = ftplan.plan("8b", "h100", top=1, num_gpus=2, sharding=sharding, offload=offload, method="lora",
                       quant="bf16", loss_impl="standard", handoff="trl", calibrate=False)[0]
    k = plan.config.knobs()
    doc = {"model": str(tiny_hf_model), "knobs": k}
    written = exports.write_all(tmp_path, doc, str(tiny_hf_model / "train.jsonl"))
    ds = json.loads((tmp_path / "deepspeed.json").read_text())
    assert written["deepspeed"] and ds["zero_optimization"]["stage"] == int(sharding[-1])
    assert ("offload_optimizer" in ds["zero_optimization"]) == (offload != "none")
    script = tmp_path / "trl_sft.py"
    assert "deepspeed={" in script.read_text() and "bf16=True" in script.read_text()
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(29700 + os.getpid() % 200),
                        str(script), "--max-steps", "2", "--cpu", "--output", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert (out / "checkpoint-2" / "trainer_state.json").exists(), r.stderr[-3000:]
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert json.loads((out / "adapter_config.json").read_text())["r"] == k["lora_rank"]
