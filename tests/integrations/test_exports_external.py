"""Every export runs in its own trainer: the Axolotl config and the LLaMA-Factory config written for a plan
train 2 steps on the CPU with a tiny random-weight model and generated data, in each tool's own virtual
environment (``external_tools``: made once, about 4 minutes and 6.5 GB, then reused), and save what the plan
describes (adapter rank, alpha and targets, or the full model).

The only settings changed for the CPU are stated in ``CPU_ONLY``: 2 steps and a scratch output folder,
no bf16/fp16 mixed precision (fp16 loss scaling needs CUDA), Axolotl's Triton LoRA kernels off (CUDA
only); everything else is the export as a user gets it."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

import ftplan
from ftplan.integrations import exports

CASES = [
    ("8b", "rtx4090", {"method": "qlora"}),
    ("8b", "rtx4090", {"method": "qlora", "quant": "fp4", "double_quant": False}),
    ("8b", "t4", {"method": "qlora"}),
    ("8b", "a100-80gb", {"method": "lora", "quant": "bf16", "lora_targets": "q_proj,v_proj"}),
    ("1b", "h100", {"method": "full"}),
]
IDS = ["qlora-nf4", "qlora-fp4-nodq", "qlora-fp16-t4", "lora-qv", "full"]
CPU_ONLY = {"max_steps": 2, "bf16": False, "fp16": False}
AXOLOTL_CPU = {"lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": False,
               "lora_embedding_kernel": False, "save_strategy": "no", "val_set_size": 0}
ROLES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def tiny_hf_model(tmp_path_factory):
    from tests.integrations.tiny_hf import write_tiny_hf_model

    return write_tiny_hf_model(tmp_path_factory.mktemp("tiny-hf"))


def _plan(model, gpu, knobs, target):
    plan = ftplan.plan(model, gpu, top=1, loss_impl="standard", handoff=target, **knobs)[0]
    return plan.config.knobs()


def _check_saved(out, k):
    if k["method"] == "full":
        assert (out / "model.safetensors").exists()
        return
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == k["lora_rank"] and adapter["lora_alpha"] == k["lora_alpha"]
    want = ROLES if k["lora_targets"] == ["all-linear"] else set(k["lora_targets"])
    got = adapter["target_modules"]
    assert {str(t).rsplit(".", 1)[-1] for t in (got if isinstance(got, list) else [got])} == want


def _env(stubs):
    return {**os.environ, "PYTHONPATH": stubs, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
            "AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1"}


@pytest.fixture(scope="module")
def axolotl_env():
    from tests.integrations.external_tools import tool_env

    return tool_env("axolotl")


@pytest.fixture(scope="module")
def llamafactory_env():
    from tests.integrations.external_tools import tool_env

    return tool_env("llamafactory")


@pytest.mark.slow
@pytest.mark.parametrize("model,gpu,knobs", CASES, ids=IDS)
def test_axolotl_config_trains_two_steps(axolotl_env, tiny_hf_model, tmp_path, model, gpu, knobs):
    k = _plan(model, gpu, knobs, "axolotl")
    text = exports.axolotl({"model": str(tiny_hf_model), "knobs": k}, str(tiny_hf_model / "train.jsonl"))
    cfg = yaml.safe_load(text)
    out = tmp_path / "out"
    cfg.update(CPU_ONLY, output_dir=str(out), dataset_prepared_path=str(tmp_path / "prepared"), **AXOLOTL_CPU)
    path = tmp_path / "axolotl.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = subprocess.run([axolotl_env["python"], "-m", "axolotl.cli.train", str(path)], capture_output=True, text=True,
                       timeout=900, cwd=tmp_path, env=_env(axolotl_env["stubs"]))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "'train_runtime'" in r.stdout + r.stderr
    _check_saved(out, k)


@pytest.mark.slow
@pytest.mark.parametrize("model,gpu,knobs", CASES, ids=IDS)
def test_llamafactory_config_trains_two_steps(llamafactory_env, tiny_hf_model, tmp_path, model, gpu, knobs):
    from tests.integrations.tiny_hf import LINES

    k = _plan(model, gpu, knobs, "llamafactory")
    cfg = yaml.safe_load(exports.llamafactory({"model": str(tiny_hf_model), "knobs": k}, "ftplan_tiny"))
    data = [{"instruction": f"line {i}", "input": "", "output": line} for i, line in enumerate(LINES)]
    (tmp_path / "tiny.json").write_text(json.dumps(data))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"ftplan_tiny": {"file_name": "tiny.json"}}))
    out = tmp_path / "out"
    cfg.update(CPU_ONLY, output_dir=str(out), dataset_dir=str(tmp_path), use_cpu=True)
    path = tmp_path / "llamafactory.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cli = str(Path(llamafactory_env["python"]).parent / "llamafactory-cli")
    r = subprocess.run([cli, "train", str(path)], capture_output=True,
                       text=True, timeout=900, cwd=tmp_path, env=_env(llamafactory_env["stubs"]))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "train_runtime" in r.stdout + r.stderr
    _check_saved(out, k)
