"""The accelerate config a multi-GPU plan runs under (``ftplan train --gpus N``, the exports): DDP, or FSDP2 as the
planner models it (``docs/multi_gpu.md``)."""

from __future__ import annotations

from ..planner.types import FSDP_SHARDINGS, ZERO_SHARDINGS


def fsdp2_config(sharding: str, offload: str = "none") -> dict:
    """accelerate's ``fsdp_config`` for FSDP2 as the planner models it (``planner.memory.sharding``): every decoder
    layer a unit, resharded after forward unless ``fsdp_grad_op``, parameters on the host with ``--offload params``,
    rank 0 loading the weights (``cpu_ram_efficient_loading``)."""
    return {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_reshard_after_forward": sharding != "fsdp_grad_op", "fsdp_offload_params": offload == "params",
            "fsdp_cpu_ram_efficient_loading": True, "fsdp_state_dict_type": "SHARDED_STATE_DICT"}


def accelerate_config(gpus: int, sharding: str, mixed: str = "bf16", offload: str = "none", nodes: int = 1) -> dict:
    """accelerate's config for ``gpus`` processes in all over ``nodes`` servers (each sets its ``machine_rank``)."""
    cfg: dict = {"compute_environment": "LOCAL_MACHINE", "num_machines": nodes, "num_processes": gpus,
                 "machine_rank": 0, "mixed_precision": mixed, "use_cpu": False}
    if sharding in FSDP_SHARDINGS:
        cfg["distributed_type"] = "FSDP"
        cfg["fsdp_config"] = fsdp2_config(sharding, offload)
    else:
        cfg["distributed_type"] = "MULTI_GPU"
    return cfg


def deepspeed_config(sharding: str, offload: str = "none") -> dict:
    """The DeepSpeed config of a ZeRO plan as the planner models it (``planner.memory.sharding.zero_terms``):
    HF Trainer fills every ``"auto"`` from its arguments and the model (batch, accumulation, bf16/fp16 from
    the plan's precision flags, ``reduce_bucket_size = hidden^2``, stage 3's prefetch bucket and persistence
    threshold); the plan's optimizer is the one HF Trainer builds (no ``"optimizer"`` block), kept with offload
    (``zero_force_ds_cpu_optimizer: false``)."""
    stage = int(sharding[-1])
    zero: dict = {"stage": stage, "reduce_bucket_size": "auto", "contiguous_gradients": True}
    if stage == 3:
        zero.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
                    stage3_gather_16bit_weights_on_model_save=True)
    if offload in ("optimizer", "params"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload == "params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {"bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}, "zero_optimization": zero,
            "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto", "zero_allow_untested_optimizer": True,
            "zero_force_ds_cpu_optimizer": False}


def is_zero(knobs) -> bool:
    """A plan's knobs (a best.json ``knobs`` mapping) describe DeepSpeed ZeRO on several GPUs."""
    return knobs.get("num_gpus", 1) > 1 and knobs.get("sharding") in ZERO_SHARDINGS


def is_fsdp(knobs) -> bool:
    """A plan's knobs describe FSDP2 on several GPUs."""
    return knobs.get("num_gpus", 1) > 1 and knobs.get("sharding") in FSDP_SHARDINGS
