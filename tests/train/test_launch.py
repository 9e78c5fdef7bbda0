"""``ftplan train --gpus N``: the accelerate config and command (DDP run by ftplan; FSDP via the TRL export)."""

import json

import pytest
import yaml

from ftplan.errors import FtplanError
from ftplan.train.launch import launch_plan
from tests.stack_fixtures import best_doc


def test_ddp_and_fsdp_configs(tmp_path):
    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps(best_doc("8b")))
    text = launch_plan(str(cfg), 4, None)
    y = yaml.safe_load((tmp_path / "accelerate-ddp-4gpu.yaml").read_text())
    assert y["distributed_type"] == "MULTI_GPU" and y["num_processes"] == 4 and y["mixed_precision"] == "bf16"
    assert "-m ftplan train --config" in text
    doc = best_doc("70b", num_gpus=8, sharding="fsdp")
    cfg.write_text(json.dumps(doc))
    text = launch_plan(str(cfg), 8, str(tmp_path / "out"))
    y = yaml.safe_load((tmp_path / "out" / "accelerate-fsdp-8gpu.yaml").read_text())
    # FSDP2 as the planner models it (accelerate's fsdp2_prepare_model): resharded after forward, nothing offloaded
    assert y["distributed_type"] == "FSDP" and y["fsdp_config"]["fsdp_version"] == 2
    assert y["fsdp_config"]["fsdp_reshard_after_forward"] is True and y["fsdp_config"]["fsdp_offload_params"] is False
    script = tmp_path / "out" / "trl_sft.py"  # written for the plan when best.json has none beside it
    assert f"{script} --data" in text
    body = script.read_text()
    compile(body, "trl_sft.py", "exec")
    assert "bnb_4bit_quant_storage=torch.bfloat16" in body  # FSDP shards 4-bit weights stored in the load dtype
    assert 'load_dataset("json", data_files=a.data, split="train")' in body and "loss_type='nll'" in body
    with pytest.raises(FtplanError, match="2 or more"):
        launch_plan(str(cfg), 1, None)


def test_grad_op_and_offload_reach_the_accelerate_config(tmp_path):
    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps(best_doc("70b", num_gpus=2, sharding="fsdp", offload="params")))
    launch_plan(str(cfg), 2, str(tmp_path))
    y = yaml.safe_load((tmp_path / "accelerate-fsdp-2gpu.yaml").read_text())
    assert y["fsdp_config"]["fsdp_offload_params"] is True
    cfg.write_text(json.dumps(best_doc("8b", num_gpus=2, sharding="fsdp_grad_op", method="lora", quant="bf16")))
    text = launch_plan(str(cfg), 2, str(tmp_path))
    assert f"torchrun --nproc_per_node 2 -m ftplan train --config {cfg}" in text  # a 16-bit FSDP plan: ftplan itself
    y = yaml.safe_load((tmp_path / "accelerate-fsdp_grad_op-2gpu.yaml").read_text())
    assert y["distributed_type"] == "FSDP" and y["fsdp_config"]["fsdp_reshard_after_forward"] is False
