"""``ftplan profile``: a short real training run, measured phase by phase.

The result names its figures as ``ftplan.estimate`` does (``status``, ``peak_allocated_bytes``,
``peak_reserved_bytes``, ``device_bytes``, ``tokens_per_s``, ``phases``, ``breakdown``,
``peak_phase``) so that a prediction and its measurement line up by name. ``attention_ran`` is the
attention kernel the built model really runs: the build falls back to SDPA where flash-attn is missing
or there is no CUDA, while ``config.attention`` keeps what was asked. The headline figures are
those of the last step (step >= 2: optimizer state exists). An out-of-memory error, real or from a
simulated cap (``max_memory_bytes``), is a result with ``status: "oom"``, never an exception.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from ..errors import FtplanError
from ..planner.options import make_config, require_buildable
from ..planner.types import ModelSpec
from ..profiles.models import get_model
from ..stack.env import is_oom, require_stack, resolve_device

MEMORY_SOURCE = {"cpu": "live-storage tracker (tensor level; stands in for allocated)",
                 "cuda": "CUDA caching allocator counters and NVML"}


def profile(model: str | ModelSpec, *, steps: int = 3, device: str | None = "cpu", synthetic_weights: bool = True,
            max_memory_bytes: int | None = None, breakdown: bool | None = None, seed: int = 0,
            on_step: Callable | None = None, argv: list[str] | None = None, **knobs: Any) -> dict[str, Any]:
    """Run ``steps`` measured training steps of ``model`` with the configuration ``knobs`` describe
    (the knobs of ``ftplan.estimate``) and return the measurement as a JSON-able dict."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= 1000:
        raise FtplanError(f"--steps={steps!r} must be a whole number from 2 (the first step creates the optimizer "
                          "state) to 1,000")
    from ..stack.env import check_device_name

    check_device_name(device)
    if max_memory_bytes is not None and max_memory_bytes <= 0:
        raise FtplanError(f"--max-memory={max_memory_bytes} must be greater than 0")
    spec = get_model(model)
    if not synthetic_weights and isinstance(model, str):
        from ..profiles.hf_config import require_weights_source

        require_weights_source(model, spec.hf_id)  # no network: at once, before torch
    require_stack()
    cfg = make_config(spec, None, **knobs).config
    require_buildable(cfg, "ftplan profile (it runs the installed stack's step)")
    if cfg.num_gpus > 1:
        raise FtplanError("profile runs one process on one device; --gpus > 1 is planned with accelerate launch")
    dev = resolve_device(device)
    from ..stack.env import provenance

    track = dev == "cpu" if breakdown is None else breakdown
    out: dict[str, Any] = {"status": "ok", "model": spec.name, "device": dev, "config": cfg.to_dict(),
                           "memory_source": MEMORY_SOURCE[dev], "provenance": provenance(dev, argv),
                           "synthetic_weights": synthetic_weights, "attention_ran": None}
    try:
        records = _run(model, spec, cfg, dev, steps, synthetic_weights, max_memory_bytes, track, seed, on_step, out)
    except Exception as e:  # noqa: BLE001 - classified below; never a traceback for an OOM
        if not is_oom(e):
            raise
        out.update(status="oom", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        _free(dev)
        return out
    out.update(summarize(records, cfg.grad_accum))
    return out


def attention_ran(model) -> str | None:
    """The attention kernel a built model runs, as transformers recorded it after loading
    (``config._attn_implementation``; a PEFT model answers for its base model); None when unknown.
    Why: the build may run another kernel than the one asked for, and a measurement must say which."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return impl if isinstance(impl, str) else None


def _run(model, spec, cfg, dev, steps, synthetic, cap, track, seed, on_step, out):
    """Build the model, record the attention kernel it runs in ``out``, then run the measured steps."""
    import torch

    from ..stack.build import build_model
    from .step import classify_params, run_steps
    from .tracker import LiveStorageTracker

    if dev == "cuda" and cap is not None:
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
    m = build_model(str(model) if not isinstance(model, ModelSpec) else spec.name, spec, cfg, dev,
                    synthetic=synthetic, seed=seed)
    out["attention_ran"] = attention_ran(m)
    tracker = None
    if track:
        tracker = LiveStorageTracker(cap_bytes=cap if dev == "cpu" else None)
        for tag, ts in classify_params(m).items():
            tracker.track(ts, tag, weight=tag != "buffers")
    vocab = m.get_input_embeddings().weight.shape[0]
    if tracker is None:
        return run_steps(m, cfg, vocab, dev, steps, None, on_step)
    with tracker:
        return run_steps(m, cfg, vocab, dev, steps, tracker, on_step)


def _free(dev: str) -> None:
    gc.collect()
    if dev == "cuda":
        import torch

        torch.cuda.empty_cache()


def summarize(records, grad_accum: int = 1) -> dict[str, Any]:
    """Headline figures from the last step; every step kept under ``steps``. Speed: the median over
    steps >= 2 of a whole optimizer step of ``grad_accum`` micro-batches (micro-batch time measured,
    the optimizer step paid once), so configurations with different accumulation compare fairly."""
    last = records[-1]
    peaks = {ph: last.phases[ph] for ph in ("forward_end", "backward", "optimizer_step")}
    peak_phase = max(peaks, key=lambda ph: peaks[ph].get("peak_allocated_bytes", 0))
    timed = records[1:] if len(records) > 1 else records
    full = sorted((r.full_step(grad_accum) for r in timed), key=lambda x: x[0])
    step_time, tokens = full[len(full) // 2]
    micro = sorted(r.time_s - r.optimizer_time_s for r in timed)[len(timed) // 2] / max(1, last.micro_steps)
    opt_time = sorted(r.optimizer_time_s for r in timed)[len(timed) // 2]
    per_micro = max(1, last.micro_steps)
    fwd = sorted(r.forward_s for r in timed)[len(timed) // 2] / per_micro
    bwd = sorted(r.backward_s for r in timed)[len(timed) // 2] / per_micro
    res: dict[str, Any] = {
        "measured_step": last.step,
        "peak_phase": peak_phase,
        "peak_allocated_bytes": peaks[peak_phase].get("peak_allocated_bytes"),
        "peak_reserved_bytes": max((p.get("peak_reserved_bytes") or 0) for p in peaks.values()) or None,
        "device_bytes": max((p.get("device_bytes") or 0) for p in peaks.values()) or None,
        "tokens_per_s": tokens / step_time if step_time > 0 else None,
        "step_time_s": step_time,
        "tokens_per_step": tokens,
        "micro_step_time_s": micro,
        "optimizer_time_s": opt_time,
        # seconds per micro-batch (forward with the loss, backward) and per optimizer step, medians of steps >= 2;
        # with the memory tracker on (the CPU default) every op is slower: time with breakdown off
        "phase_times_s": {"forward": fwd, "backward": bwd, "optimizer_step": opt_time},
        "grad_accum": grad_accum,
        "breakdown": peaks[peak_phase].get("breakdown", {}),
        "phases": {ph: p.get("breakdown", {}) for ph, p in peaks.items()},
        "phase_peaks": {ph: {k: v for k, v in p.items() if k != "breakdown"} for ph, p in peaks.items()},
        "steps": [{"step": r.step, "time_s": r.time_s, "tokens": r.tokens, "micro_steps": r.micro_steps,
                   "optimizer_time_s": r.optimizer_time_s, "forward_s": r.forward_s, "backward_s": r.backward_s,
                   "phase_peaks": {ph: {k: v for k, v in p.items() if k != "breakdown"} for ph, p in r.phases.items()}}
                  for r in records],
    }
    return res
