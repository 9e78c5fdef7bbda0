"""``ftplan trace --gpus N --sharding fsdp``: one rank of an N-rank FSDP2 step at full size, in one process.

The model is built on the ``meta`` device inside ``FakeTensorMode``, wrapped by ``distributed.shard_fsdp2``
(accelerate's units and mixed-precision policy) over a mesh of the fake process group that PyTorch ships for
its tests (``torch.testing._internal.distributed.fake_pg``: collectives return at once, outputs keep their
sizes), then ``to_empty`` gives every shard a fake CPU tensor. The steps run as ``ftplan trace`` runs them,
under the live-storage tracker (which follows FSDP2's storage resizes and tags its all-gather and
reduce-scatter buffers): rank 0's tensor-level peak per phase, 70B on 8 ranks in seconds with no memory.

What a real GPU run adds is outside any tensor-level count: NCCL's own buffers and the caching allocator's
rounding and per-stream pools (modelled in ``planner.memory.overhead``); what a gloo run adds (a full-size
temporary per collective inside the C++ backend) neither this trace nor the GPU has.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import FtplanError


def _fix_meta_buffers(model) -> None:
    """Buffers ``to_empty`` left on ``meta`` (rotary tables made at init): fake CPU tensors of their shape."""
    import torch

    for mod in model.modules():
        for name, b in list(mod._buffers.items()):
            if b is not None and b.device.type == "meta":
                mod._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device="cpu")
        inv = getattr(mod, "original_inv_freq", None)
        if isinstance(inv, torch.Tensor) and inv.device.type == "meta":
            mod.original_inv_freq = torch.empty(inv.shape, dtype=inv.dtype, device="cpu")


def _fake_quant_states(model) -> None:
    """The 4-bit stand-ins' quantization constants (module attributes FSDP does not see): fake CPU tensors."""
    import torch

    from .fake import fake_quant_state

    for mod in model.modules():
        fake_quant_state(getattr(mod, "traced_state", None),
                         lambda t: torch.empty(t.shape, dtype=t.dtype, device="cpu"))


def trace_sharded(model: str, spec, cfg, steps: int, argv: list[str] | None) -> dict[str, Any]:
    """Rank 0 of ``cfg.num_gpus`` FSDP2 ranks; returns the ``profile``-shaped dict (see module docstring)."""
    if not cfg.is_fsdp:
        raise FtplanError(f"trace --gpus {cfg.num_gpus} traces FSDP (--sharding fsdp or fsdp_grad_op), not "
                          f"{cfg.sharding}: DDP keeps the whole model on each GPU, trace it with --gpus 1")
    if cfg.quant == "int8":
        raise FtplanError("trace does not model 8-bit (LLM.int8) bases; use nf4/fp4 or a 16-bit base")
    import torch
    import torch.distributed as dist
    import transformers
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.device_mesh import init_device_mesh

    from ..stack.build import attention_impl, base_dtype, load_hf_config, prepare_for_training, torch_dtype
    from ..stack.env import provenance
    from ..stack.optim import make_optimizer
    from .distributed import fake_rank0, shard_fsdp2
    from .fake import traced_params, unpacked_positions
    from .profile import summarize
    from .step import run_steps
    from .tracker import LiveStorageTracker

    t0 = time.perf_counter()
    if dist.is_initialized():
        raise FtplanError("a process group is already initialised in this process; trace needs its own")
    with fake_rank0(cfg.num_gpus):
        mesh = init_device_mesh("cpu", (cfg.num_gpus,))
        hf_cfg = load_hf_config(model, spec, attention_impl(cfg.attention, "cpu"))
        fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        with torch.device("meta"):  # PEFT and fully_shard on meta tensors, outside the fake mode (PEFT's
            # device moves cannot swap fake parameters)
            m = transformers.AutoModelForCausalLM.from_config(
                hf_cfg, dtype=torch_dtype(base_dtype(cfg)), attn_implementation=hf_cfg._attn_implementation)
        if cfg.quant in ("nf4", "fp4"):
            from .fake import _quantize_meta

            _quantize_meta(m, cfg)
        m = prepare_for_training(m, spec, cfg)
        m = shard_fsdp2(m, cfg, reshard_after_forward=cfg.sharding == "fsdp", mesh=mesh)
        with fake_mode:
            m.to_empty(device="cpu")
            _fix_meta_buffers(m)
            _fake_quant_states(m)
        # built outside the fake mode, as ``trace`` builds it (bitsandbytes reads values at construction)
        opt = make_optimizer(cfg.optimizer, [p for p in m.parameters() if p.requires_grad], "cpu")
        tracker = LiveStorageTracker()
        for tag, ts in traced_params(m).items():
            tracker.track(ts, tag, weight=tag != "buffers")
        vocab = hf_cfg.vocab_size

        def batch(b, s):
            return torch.randint(0, vocab, (b, s))

        def no_sync():
            from .distributed import _no_sync

            return _no_sync(m, cfg.sharding)

        with fake_mode, tracker, tracker.follow_fsdp2(), unpacked_positions():
            records = run_steps(m, cfg, vocab, "cpu", steps, tracker, make_batch=batch, optimizer=opt,
                                no_sync=no_sync)
    out: dict[str, Any] = {"status": "ok", "model": spec.name, "device": "fake", "config": cfg.to_dict(),
                           "memory_source": (f"live-storage tracker under FakeTensorMode, rank 0 of {cfg.num_gpus} "
                                             "FSDP2 ranks over a fake process group (tensor level)"),
                           "provenance": provenance("fake", argv)}
    out.update(summarize(records, cfg.grad_accum))
    for k in ("tokens_per_s", "step_time_s", "micro_step_time_s", "optimizer_time_s"):
        out.pop(k, None)
    out["trace_seconds"] = time.perf_counter() - t0
    return out
