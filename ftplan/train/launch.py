"""Several GPUs: the ``accelerate launch`` command and its config for a configuration.

The planner models DDP (every GPU holds the whole model) and FSDP2 (parameters, gradients and optimizer
state sharded over the GPUs; with QLoRA the 4-bit weights are stored in a float dtype so FSDP can shard
them; ``docs/multi_gpu.md``). ``launch_plan`` writes the accelerate config file beside the run and returns the
command.
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import FtplanError
from ..integrations.exports import to_yaml
from ..integrations.launchers import FSDP_SHARDINGS, accelerate_config


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
    nodes = int(knobs.get("nodes") or 1)
    if gpus % nodes:
        raise FtplanError(f"--gpus={gpus} is not a multiple of the plan's {nodes} servers (nodes)")
    atomic_write_text(path, to_yaml(accelerate_config(gpus, sharding, mixed, knobs.get("offload") or "none", nodes)))
    per_node = gpus // nodes
    launcher = (f"torchrun --nproc_per_node {gpus}" if nodes == 1 else
                f"torchrun --nnodes {nodes} --nproc_per_node {per_node} --rdzv_backend c10d --rdzv_endpoint <first-server>:29500")
    quantized = knobs.get("quant") in ("nf4", "fp4", "int8")
    if sharding in FSDP_SHARDINGS and not quantized:
        return (f"# FSDP2 over {gpus} GPUs, run by ftplan train itself (accelerate's units and mixed precision; the\n"
                f"# accelerate config for other trainers: {path})\n"
                f"{launcher} -m ftplan train --config {config} --data <train.jsonl>"
                + (f" --output {output}" if output else ""))
    if sharding in FSDP_SHARDINGS:
        from ..integrations.exports import trl

        script = folder / "trl_sft.py"
        if not script.exists():  # autotune writes it beside best.json; a hand-written best.json gets it here
            atomic_write_text(script, trl(doc))
        return (f"# FSDP over {gpus} GPUs; accelerate config written to {path}\n"
                "# ftplan train shards 16-bit models itself; a 4-bit base under FSDP runs the TRL script written for\n"
                "# this plan\n"
                f"# ({script}: 4-bit weights stored in the load dtype, as FSDP needs) under this config:\n"
                f"accelerate launch --config_file {path} {script} --data <train.jsonl>")
    return (f"# DDP over {gpus} GPUs (one process per GPU, the whole model on each); accelerate config: {path}\n"
            f"accelerate launch --config_file {path} -m ftplan train --config {config} --data <train.jsonl>"
            + (f" --output {output}" if output else ""))
