"""The accelerate config a multi-GPU plan runs under (``ftplan train --gpus N``, the exports): DDP, or FSDP2 as the
planner models it (``docs/multi_gpu.md``)."""

from __future__ import annotations

FSDP_SHARDINGS = ("fsdp", "fsdp_grad_op")


def fsdp2_config(sharding: str, offload: str = "none") -> dict:
    """accelerate's ``fsdp_config`` for FSDP2 as the planner models it (``planner.memory.sharding``): every decoder
    layer a unit, resharded after forward unless ``fsdp_grad_op``, parameters on the host with ``--offload params``,
    rank 0 loading the weights (``cpu_ram_efficient_loading``)."""
    return {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_reshard_after_forward": sharding != "fsdp_grad_op", "fsdp_offload_params": offload == "params",
            "fsdp_cpu_ram_efficient_loading": True, "fsdp_state_dict_type": "SHARDED_STATE_DICT"}


def accelerate_config(gpus: int, sharding: str, mixed: str = "bf16", offload: str = "none") -> dict:
    cfg: dict = {"compute_environment": "LOCAL_MACHINE", "num_machines": 1, "num_processes": gpus,
                 "machine_rank": 0, "mixed_precision": mixed, "use_cpu": False}
    if sharding in FSDP_SHARDINGS:
        cfg["distributed_type"] = "FSDP"
        cfg["fsdp_config"] = fsdp2_config(sharding, offload)
    else:
        cfg["distributed_type"] = "MULTI_GPU"
    return cfg
