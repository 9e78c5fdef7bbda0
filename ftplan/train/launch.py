"""Several GPUs: the ``accelerate launch`` command and its config for a configuration.

The planner models DDP (every GPU holds the whole model) and FSDP (parameters, gradients and optimizer
state sharded over the GPUs; with QLoRA the 4-bit weights are stored in a float dtype so FSDP can shard
them). ``launch_plan`` writes the accelerate config file beside the run and returns the command.
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import FtplanError
from ..integrations.exports import to_yaml


def accelerate_config(gpus: int, sharding: str, mixed: str = "bf16") -> dict:
    cfg: dict = {"compute_environment": "LOCAL_MACHINE", "num_machines": 1, "num_processes": gpus,
                 "machine_rank": 0, "mixed_precision": mixed, "use_cpu": False}
    if sharding == "fsdp":
        cfg["distributed_type"] = "FSDP"
        cfg["fsdp_config"] = {"fsdp_version": 1, "fsdp_sharding_strategy": "FULL_SHARD",
                              "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_use_orig_params": False,
                              "fsdp_cpu_ram_efficient_loading": True, "fsdp_offload_params": False,
                              "fsdp_state_dict_type": "SHARDED_STATE_DICT", "fsdp_sync_module_states": True}
    else:
        cfg["distributed_type"] = "MULTI_GPU"
    return cfg


def launch_plan(config: str, gpus: int, output: str | None) -> str:
    """Write ``accelerate.yaml`` and return the command that runs ``ftplan train`` on ``gpus`` GPUs."""
    from ..best import read_best

    if gpus < 2:
        raise FtplanError(f"--gpus={gpus}: the accelerate command is for 2 or more GPUs")
    doc = read_best(config)
    sharding = doc["knobs"].get("sharding") or ("fsdp" if doc["knobs"].get("num_gpus", 1) > 1 else "ddp")
    knobs = doc["knobs"]
    mixed = knobs.get("compute_dtype") or ("fp16" if knobs.get("quant") == "fp16" else "bf16")
    folder = Path(output) if output else Path(config).resolve().parent
    path = folder / f"accelerate-{sharding}-{gpus}gpu.yaml"
    atomic_write_text(path, to_yaml(accelerate_config(gpus, sharding, mixed)))
    if sharding == "fsdp":
        from ..integrations.exports import trl

        script = folder / "trl_sft.py"
        if not script.exists():  # autotune writes it beside best.json; a hand-written best.json gets it here
            atomic_write_text(script, trl(doc))
        return (f"# FSDP over {gpus} GPUs; accelerate config written to {path}\n"
                "# ftplan train runs data parallelism (DDP) itself; FSDP runs the TRL script written for this plan\n"
                f"# ({script}: 4-bit weights stored in the load dtype, as FSDP needs) under this config:\n"
                f"accelerate launch --config_file {path} {script} --data <train.jsonl>")
    return (f"# DDP over {gpus} GPUs (one process per GPU, the whole model on each); accelerate config: {path}\n"
            f"accelerate launch --config_file {path} -m ftplan train --config {config} --data <train.jsonl>"
            + (f" --output {output}" if output else ""))
