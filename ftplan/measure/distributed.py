"""Measured per-rank memory of data-parallel and sharded training: several CPU processes (gloo).

``measure(model, world=2, sharding="fsdp", **knobs)`` starts ``world`` processes, each builds the same model
(same seed), wraps it as the hand-off does, runs the measured steps of ``ftplan.measure.step`` under the
live-storage tracker and reports its phases; the answer is every rank's record and the largest per phase.

How each strategy is wrapped (read in the library sources, so the measurement is what users run):
- ``ddp``: ``torch.nn.parallel.DistributedDataParallel`` with its defaults (25 MiB buckets,
  ``gradient_as_bucket_view=False``), as HF Trainer/accelerate wrap it.
- ``fsdp`` (FSDP2, ``fully_shard``), as accelerate's ``fsdp2_prepare_model`` does for HF Trainer: with
  mixed precision the trainable parameters are upcast to fp32 (FSDP2 needs one original dtype per group) and
  ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=bf16)`` gathers them in the compute dtype; each decoder
  layer is a unit (``TRANSFORMER_BASED_WRAP``), the input embedding one more when untied, the final norm and
  lm_head a tail unit that is not resharded after forward, the root the rest. ``fsdp_grad_op`` keeps every
  unit gathered from forward to backward (``reshard_after_forward=False``, FSDP1's ``SHARD_GRAD_OP``).
  A 4-bit base stores its packed weights in the compute dtype (``stack.build.quantize_linears``), as FSDP
  needs. ``offload="params"`` adds ``CPUOffloadPolicy``: on a CPU run there is no device to leave, so offload is
  accounted, not measured (``docs/multi_gpu.md``).
- ``zero1``/``zero2``/``zero3``: DeepSpeed's engine as HF Trainer builds it (``measure.zero``).
Micro-batches before the last of an accumulation skip the gradient reduction (HF Trainer's ``no_sync``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from ..errors import FtplanError


def _tail_modules(model) -> list:
    """The final norm and lm_head (and the embedding when tied): one unit kept gathered after forward."""
    inner = model
    for attr in ("base_model", "model"):
        while hasattr(inner, attr) and not hasattr(inner, "layers"):
            inner = getattr(inner, attr)
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    norm = getattr(inner, "norm", None) or getattr(inner, "final_layernorm", None)
    tied = emb is not None and head is not None and emb.weight is head.weight
    mods = [norm, emb, head] if tied else [norm, head]
    return [m for m in mods if m is not None]


def decoder_layers(model) -> list:
    """The decoder layers (each an FSDP unit, as accelerate's ``TRANSFORMER_BASED_WRAP`` makes them): the
    ``layers`` list of the module that also holds the input embedding (HF's ``*Model`` under ``*ForCausalLM``)."""
    for mod in model.modules():
        layers = getattr(mod, "layers", None)
        if layers is not None and hasattr(layers, "__len__") and len(layers) and hasattr(mod, "embed_tokens"):
            return list(layers)
    raise FtplanError(f"{type(model).__name__}: no decoder layers found to shard (a module with layers and "
                      "embed_tokens)")


def shard_fsdp2(model, cfg, reshard_after_forward: bool = True, offload: bool = False, mesh=None):
    """Wrap ``model`` as accelerate's FSDP2 preparation does (see module docstring)."""
    import torch
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    from ..stack.build import torch_dtype

    compute = torch_dtype(cfg.compute_dtype)
    quantized = any(type(p).__name__ == "Params4bit" for p in model.parameters())
    if cfg.autocast and not quantized:
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.to(torch.float32)
    mp = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=compute) if cfg.autocast else MixedPrecisionPolicy()
    kw: dict[str, Any] = {"mp_policy": mp, "offload_policy": CPUOffloadPolicy(pin_memory=False) if offload
                          else OffloadPolicy(), "mesh": mesh}
    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=reshard_after_forward, **kw)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = emb is not None and head is not None and emb.weight is head.weight
    if not tied and emb is not None:
        fully_shard(emb, reshard_after_forward=reshard_after_forward, **kw)
    fully_shard(_tail_modules(model), reshard_after_forward=False, **kw)
    fully_shard(model, **kw)
    return model


def shard_fsdp1(model, cfg, device: str = "cpu"):
    """Wrap ``model`` with FSDP1 (``FullyShardedDataParallel``) as HF Trainer does: ``FULL_SHARD``,
    ``limit_all_gathers``, ``use_orig_params``, the compute dtype's ``MixedPrecision`` (param, reduce, buffer)
    under autocast. A PEFT model gets PEFT's ``fsdp_auto_wrap_policy`` (each decoder layer a unit and each
    trainable LoRA module one of its own: FSDP1 cannot flatten the fp32 adapters with the 16-bit base, "Must
    flatten tensors with uniform dtype"); a full fine-tune the decoder layers as units, its weights in fp32 (FSDP1
    keeps the dtype it is given: a 16-bit model would train in pure 16-bit). Runs on the CPU too (accelerate's
    plugin refuses it, torch does not). Read the vocabulary before wrapping: under ``use_orig_params`` a
    parameter outside forward is a view of its flat shard."""
    import functools

    import torch
    from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    from ..stack.build import torch_dtype

    if cfg.is_lora:
        from peft.utils.other import fsdp_auto_wrap_policy

        policy = fsdp_auto_wrap_policy(model)
    else:
        for p in model.parameters():
            p.data = p.data.to(torch.float32)
        layers = {type(layer) for layer in decoder_layers(model)}
        policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layers)
    compute = torch_dtype(cfg.compute_dtype)
    mp = MixedPrecision(param_dtype=compute, reduce_dtype=compute, buffer_dtype=compute) if cfg.autocast else None
    return FullyShardedDataParallel(model, auto_wrap_policy=policy, sharding_strategy=ShardingStrategy.FULL_SHARD,
                                    use_orig_params=True, limit_all_gathers=True, mixed_precision=mp,
                                    device_id=torch.device("cpu") if device == "cpu" else torch.cuda.current_device())


def build_fsdp1(model: str, spec, cfg, device: str = "cpu", seed: int = 0) -> tuple[Any, int]:
    """(the model built by ``stack.build.build_model`` and wrapped by ``shard_fsdp1``, its vocabulary), the
    vocabulary read before wrapping (after it, the embedding's weight is a view of its flat shard)."""
    from ..stack.build import build_model

    m = build_model(model, spec, cfg, device, synthetic=True, seed=seed)
    vocab = m.get_input_embeddings().weight.shape[0]
    return shard_fsdp1(m, cfg, device), vocab


@contextmanager
def fake_rank0(world: int = 2) -> Iterator[None]:
    """Run the block as rank 0 of ``world`` over PyTorch's fake process group: real allocations, no
    communication, so one process stands for a rank of a sharded run (the group is destroyed after)."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


def _rank_main(rank: int, world: int, init_file: str, model: str, knobs: dict, sharding: str, steps: int,
               out_dir: str) -> None:
    import sys

    import torch
    import torch.distributed as dist

    from ..planner.options import make_config
    from ..profiles.models import get_model
    from ..stack.build import build_model
    from .step import classify_params, run_steps
    from .tracker import LiveStorageTracker

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        spec = get_model(model)
        cfg = make_config(spec, None, num_gpus=world, sharding=sharding, **knobs).config
        m = build_model(model, spec, cfg, "cpu", synthetic=True, seed=0)
        if sharding.startswith("zero"):
            from .zero import run_zero_rank

            phases = run_zero_rank(m, spec, cfg, world, steps)
            Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"rank": rank, "phases": phases}))
            dist.barrier()
            dist.destroy_process_group()
            # DeepSpeed's background threads can abort the interpreter's teardown ("terminate called without an
            # active exception") after the work is done and written: leave without it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        if sharding == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(m)
            inner = net.module
        else:
            net = inner = shard_fsdp2(m, cfg, reshard_after_forward=sharding == "fsdp")
        tracker = LiveStorageTracker()
        for tag, ts in classify_params(inner).items():
            tracker.track([_local(t) for t in ts], tag, weight=tag != "buffers")
        vocab = inner.get_input_embeddings().weight.shape[0]
        follow = tracker.follow_fsdp2() if sharding != "ddp" else nullcontext()
        with tracker, follow:
            records = run_steps(_Forward(net, inner), cfg, vocab, "cpu", steps, tracker,
                                no_sync=lambda: _no_sync(net, sharding))
        phases = {k: v for k, v in records[-1].phases.items()}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"rank": rank, "phases": phases}))
    finally:
        dist.destroy_process_group()


@contextmanager
def _no_sync(net, sharding: str):
    """Skip the gradient reduction of a micro-batch, as accelerate's ``no_sync`` does under HF Trainer."""
    if sharding == "ddp":
        with net.no_sync():
            yield
        return
    net.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        net.set_requires_gradient_sync(True)


def _local(t):
    return getattr(t, "_local_tensor", t)


class _Forward:
    """What ``run_steps`` needs of a model, with the wrapper's forward (DDP) and the inner model's parts."""

    def __init__(self, net, inner) -> None:
        self._net, self._inner = net, inner

    def __call__(self, *a, **kw):
        return self._net(*a, **kw)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def measure(model: str, world: int = 2, sharding: str = "fsdp", steps: int = 2, timeout_s: float = 1800,
            **knobs: Any) -> dict[str, Any]:
    """Per-rank measured phases of ``world`` CPU processes (gloo) training ``model`` under ``sharding``.

    Each rank is a fresh interpreter (``python -m ftplan.measure.distributed``), as a launcher starts it."""
    import subprocess
    import sys

    from ..planner.options import SHARDINGS

    if sharding not in SHARDINGS:
        raise FtplanError(f"sharding={sharding!r}: measured strategies are {', '.join(SHARDINGS)}")
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "init")
        args = {"world": world, "init_file": init, "model": model, "knobs": knobs, "sharding": sharding,
                "steps": steps, "out_dir": tmp}
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        procs = [subprocess.Popen([sys.executable, "-m", "ftplan.measure.distributed", json.dumps(dict(args, rank=r))],
                                  env=dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world)),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for r in range(world)]
        outs = []
        try:
            for p in procs:
                outs.append(p.communicate(timeout=timeout_s)[0])
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        bad = [(r, p.returncode, o) for r, (p, o) in enumerate(zip(procs, outs, strict=True)) if p.returncode]
        if bad:
            r, rc, o = bad[0]
            raise RuntimeError(f"rank {r} exited with {rc}:\n{o[-4000:]}")
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    return {"world": world, "sharding": sharding, "ranks": ranks}


if __name__ == "__main__":
    import sys

    a = json.loads(sys.argv[1])
    _rank_main(a["rank"], a["world"], a["init_file"], a["model"], a["knobs"], a["sharding"], a["steps"], a["out_dir"])
