"""``ftplan trace``: a full-size training step on the CPU with no memory, under ``FakeTensorMode``.

The real HF model (any size) is built on the ``meta`` device, 4-bit linears are replaced by a
stand-in that holds the exact packed storage (a ``uint8`` tensor of ``ceil(n/2)`` bytes and a
``QuantState`` of the real sizes) and calls ``bitsandbytes.matmul_4bit`` (its fake kernels give the
shapes), ``prepare_model_for_kbit_training`` and PEFT are applied there, and then every meta
parameter and buffer is swapped for a fake CPU tensor. Real training steps (forward, loss, backward,
optimizer step; two steps so optimizer state exists) then run while the ``LiveStorageTracker``
counts live storages: the tensor-level peak per phase of the full-size step.

What the GPU would run is modelled: transformers gets no attention mask, so SDPA runs the causal
O(s) kernel as a GPU with packed or equal-length batches does (eager keeps its O(s^2) scores);
bitsandbytes optimizers are built outside the fake mode (their ``step`` works inside). Limits: the
kernels are the CPU's (CPU autocast's op lists, the CPU SDPA kernel), temporaries inside one
operator (a fused kernel's workspace) are invisible, and 8-bit (LLM.int8) bases are not traced.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from ..errors import FtplanError
from ..planner.options import make_config, require_buildable
from ..planner.types import ModelSpec
from ..profiles.models import get_model
from .fake import _quantize_meta, fake_quant_state, quant_state, traced_params, unpacked_positions  # noqa: F401 - quant_state: public here too


def _fakeify(model, fake_mode) -> None:
    """Every meta parameter, buffer and quantization-state tensor becomes a fake CPU tensor of the same
    shape and dtype (tied parameters stay tied)."""
    import torch

    memo: dict[int, Any] = {}

    def fake(t):
        hit = memo.get(id(t))
        if hit is None or hit[0] is not t:  # keep the source alive: ids of dead temporaries are reused
            with fake_mode:
                hit = memo[id(t)] = (t, torch.empty(t.shape, dtype=t.dtype, device="cpu"))
        return hit[1]

    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            hit = memo.get(id(p))
            if hit is None or hit[0] is not p:  # tied parameters map to one fake parameter
                new = torch.nn.Parameter(fake(p.data), requires_grad=p.requires_grad and p.is_floating_point())
                hit = memo[id(p)] = (p, new)
            mod._parameters[name] = hit[1]
        for name, b in list(mod._buffers.items()):
            if b is not None:
                mod._buffers[name] = fake(b)
        fake_quant_state(getattr(mod, "traced_state", None), fake)


def trace(model: str | ModelSpec, *, steps: int = 2, argv: list[str] | None = None, modes: Sequence[Any] = (),
          **knobs: Any) -> dict[str, Any]:
    """Trace ``steps`` training steps of the full-size model; returns the ``profile``-shaped dict. ``modes``:
    more dispatch modes (context managers) to run the traced steps under, inside the fake mode and the
    tracker (e.g. an op-by-op runtime estimator)."""
    if steps < 2:
        raise FtplanError(f"steps={steps} must be at least 2 (the first step creates the optimizer state)")
    from ..stack.env import require_stack

    require_stack()
    spec = get_model(model)
    cfg = make_config(spec, None, **knobs).config
    require_buildable(cfg, "ftplan trace (it traces the installed stack's step)")
    if cfg.quant == "int8":
        raise FtplanError("trace does not model 8-bit (LLM.int8) bases; use nf4/fp4 or a 16-bit base")
    if cfg.num_gpus > 1:
        from .sharded_trace import trace_sharded

        return trace_sharded(str(model) if not isinstance(model, ModelSpec) else spec.name, spec, cfg, steps, argv)
    import torch
    import transformers
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ..stack.build import attention_impl, base_dtype, load_hf_config, prepare_for_training, torch_dtype
    from ..stack.env import provenance
    from ..stack.optim import make_optimizer
    from .profile import summarize
    from .step import run_steps
    from .tracker import LiveStorageTracker

    t0 = time.perf_counter()
    hf_cfg = load_hf_config(str(model) if not isinstance(model, ModelSpec) else spec.name, spec,
                            attention_impl(cfg.attention, "cpu"))
    with torch.device("meta"):
        m = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=torch_dtype(base_dtype(cfg)),
                                                          attn_implementation=hf_cfg._attn_implementation)
    if cfg.quant in ("nf4", "fp4"):
        _quantize_meta(m, cfg)
    m = prepare_for_training(m, spec, cfg)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    _fakeify(m, fake_mode)
    vocab = hf_cfg.vocab_size
    tracker = LiveStorageTracker()
    for tag, ts in traced_params(m).items():
        tracker.track(ts, tag, weight=tag != "buffers")
    params = [p for p in m.parameters() if p.requires_grad]
    opt = make_optimizer(cfg.optimizer, params, "cpu")  # built outside the fake mode (bitsandbytes needs it)

    def batch(b, s):
        return torch.randint(0, vocab, (b, s))

    with fake_mode, tracker, unpacked_positions(), ExitStack() as stack:
        for mode in modes:
            stack.enter_context(mode)
        records = run_steps(m, cfg, vocab, "cpu", steps, tracker, make_batch=batch, optimizer=opt)
    out: dict[str, Any] = {"status": "ok", "model": spec.name, "device": "fake", "config": cfg.to_dict(),
                           "memory_source": "live-storage tracker under FakeTensorMode (tensor level)",
                           "provenance": provenance("fake", argv)}
    out.update(summarize(records))
    for k in ("tokens_per_s", "step_time_s", "micro_step_time_s", "optimizer_time_s"):
        out.pop(k, None)  # fake tensors take no real time
    out["trace_seconds"] = time.perf_counter() - t0
    return out
