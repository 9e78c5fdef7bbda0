"""One measured rank of DeepSpeed ZeRO (stages 1-3) on the CPU, as HF Trainer + DeepSpeed runs it.

DeepSpeed runs here: its CPU accelerator is picked when no GPU is found, and its communication falls back to
gloo without oneCCL. The engine is built as HF Trainer builds it: bf16 enabled (the module cast to bf16),
the client optimizer the plan names wrapped by ZeRO (``zero_allow_untested_optimizer``; with offload
``zero_force_ds_cpu_optimizer: false`` keeps it), and the "auto" values transformers fills from the hidden
size (``reduce_bucket_size = h*h``; stage 3 ``stage3_prefetch_bucket_size = 0.9*h*h``,
``stage3_param_persistence_threshold = 10*h``). The step is ``engine.backward(loss)`` and ``engine.step()``
(accumulation inside the engine: ``gradient_accumulation_steps``).

What existed before the measured steps (16-bit parameters and their flat groups, stage-3 partitions, the fp32
master partition, buckets allocated at init) is registered with the tracker by walking the engine's and the
ZeRO optimizer's tensors; everything later is seen as it is made. On the CPU "device" and "host" are one
memory, so offloaded state is counted separately (``host_bytes``) by where DeepSpeed put it.
"""

from __future__ import annotations

from typing import Any


def ds_config(spec, cfg, world: int) -> dict[str, Any]:
    """The DeepSpeed config HF Trainer would resolve for ``cfg`` ("auto" filled as transformers does)."""
    from ..planner.memory.sharding import zero3_persistence_threshold, zero3_prefetch_bucket_elems, zero_reduce_bucket_elems

    stage = int(cfg.sharding[-1])
    zero: dict[str, Any] = {"stage": stage, "reduce_bucket_size": zero_reduce_bucket_elems(spec)}
    if stage == 3:
        zero["stage3_prefetch_bucket_size"] = zero3_prefetch_bucket_elems(spec)
        zero["stage3_param_persistence_threshold"] = zero3_persistence_threshold(spec)
    if cfg.offload in ("optimizer", "params"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if cfg.offload == "params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {"train_micro_batch_size_per_gpu": cfg.micro_batch, "gradient_accumulation_steps": cfg.grad_accum,
            "train_batch_size": cfg.micro_batch * cfg.grad_accum * world, "bf16": {"enabled": True},
            "zero_optimization": zero, "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 10**9, "wall_clock_breakdown": False}


def _walk(obj, out: list, depth: int, seen: set) -> None:
    """Every tensor reachable from DeepSpeed's objects (attributes, lists, dicts), a few levels deep."""
    import torch

    if depth > 5 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        out.append(obj)
        if isinstance(getattr(obj, "grad", None), torch.Tensor):
            out.append(obj.grad)
        return
    if isinstance(obj, dict):
        for v in list(obj.values()):
            _walk(v, out, depth + 1, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _walk(v, out, depth + 1, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
        if (type(obj).__module__ or "").startswith(("deepspeed", "torch.optim")):
            for v in list(vars(obj).values()):
                _walk(v, out, depth + 1, seen)


def run_zero_rank(m, spec, cfg, world: int, steps: int) -> dict[str, dict]:
    """Wrap ``m`` in a ZeRO engine, run ``steps`` measured steps, return the last step's phases."""
    import deepspeed
    import torch

    from ..stack.optim import make_optimizer
    from .step import Meter, _max, classify_params
    from .tracker import LiveStorageTracker

    opt = make_optimizer(cfg.optimizer, [p for p in m.parameters() if p.requires_grad], "cpu")
    engine, zopt, _, _ = deepspeed.initialize(model=m, optimizer=opt, config=ds_config(spec, cfg, world))
    tracker = LiveStorageTracker()
    module = engine.module
    for tag, ts in classify_params(module).items():
        tracker.track(ts, tag, weight=tag != "buffers")
    tracker.track([p.ds_tensor for p in module.parameters() if getattr(p, "ds_tensor", None) is not None],
                  "weights_dense", weight=True)
    inner = getattr(zopt, "optimizer", None)
    masters = [p for g in getattr(inner, "param_groups", []) for p in g["params"]]
    tracker.track(masters, "master_weights")
    found: list = []
    _walk(zopt, found, 0, set())
    tracker.track([t for t in found if t.device.type != "meta"], "zero_buffers")
    vocab = spec.vocab  # under stage 3 the module holds empty placeholders
    gen = torch.Generator().manual_seed(1234)
    meter = Meter("cpu", tracker)
    micro = min(cfg.grad_accum, 2)
    last: dict[str, dict] = {}
    from deepspeed.runtime.zero import partitioned_param_coordinator as ppc
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    ds_buffers = [(ppc.PartitionedParameterCoordinator, "fetch_sub_module"),
                  (stage_1_and_2.DeepSpeedZeroOptimizer, "reduce_independent_p_g_buckets_and_remove_grads"),
                  (stage3.DeepSpeedZeroOptimizer_Stage3, "reduce_independent_p_g_buckets_and_remove_grads")]
    with tracker, tracker.tag_calls(ds_buffers, "zero_buffers"):
        for _ in range(steps):
            phases: dict[str, dict] = {}
            for j in range(micro):
                ids = torch.randint(0, vocab, (cfg.micro_batch, cfg.seq_len), generator=gen)
                meter.start()
                loss = engine(input_ids=ids, labels=ids).loss
                phases["forward_end"] = _max(phases.get("forward_end"), meter.stop("forward_end", module, inner))
                meter.start()
                engine.backward(loss)
                del loss
                phases["backward"] = _max(phases.get("backward"), meter.stop("backward", module, inner))
                if j < micro - 1:
                    engine.step()  # not a boundary: DeepSpeed only counts the micro-step
            with tracker.scope("optimizer_temp"):
                meter.start()
                engine.step()
                phases["optimizer_step"] = meter.stop("optimizer_step", module, inner)
            last = phases
    return last
