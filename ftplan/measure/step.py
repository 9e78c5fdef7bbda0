"""Measured training steps: forward + loss, backward, optimizer step, as HF Trainer runs them.

The loop mirrors ``transformers.Trainer.training_step``: the forward and the loss run under autocast
(``bf16=True``), the model computes the loss from ``labels`` (``loss_impl="chunked"``: the decoder, then
``ftplan.stack.loss``'s chunked cross-entropy with ``lm_head``'s weight) and only the loss is kept (the logits
leave with the model output before ``backward``), ``backward`` runs outside autocast, then
``optimizer.step()`` and ``zero_grad(set_to_none=True)``. With gradient accumulation the memory of
every micro-step after the first is the same, so a step runs ``min(grad_accum, 2)`` micro-steps.

Memory per phase: on CUDA the allocator's peak counters (``reset_peak_memory_stats`` at the start
of each phase) and NVML's figure for the process; on the CPU (or under fake tensors) the
``LiveStorageTracker``, whose breakdown names each live tensor's term.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from ..planner.types import TrainConfig
from ..stack.loss import for_loss
from ..stack.optim import autocast, grad_scaler, make_optimizer, optimizer_step
from .tracker import LiveStorageTracker

PHASES = ("forward_end", "backward", "optimizer_step")


def quant_state_tensors(qs) -> list:
    """The tensors of a bitsandbytes 4-bit ``QuantState``: absmax, offset, code, and the nested state's."""
    out = [qs.absmax, getattr(qs, "offset", None), qs.code]
    if getattr(qs, "state2", None) is not None:
        out += [qs.state2.absmax, qs.state2.code]
    return out


def classify_params(model) -> dict[str, list]:
    """Parameters and buffers by memory term, as the analytical model names them. A 4-bit module's weight is
    quantized whatever wraps it (FSDP2 replaces ``Params4bit`` by DTensor shards; a trace by a fake tensor);
    its constants are read from the weight's ``quant_state``, or the module's, where bitsandbytes keeps them
    for FSDP."""
    import torch

    out: dict[str, list] = {"weights_quantized": [], "quant_constants": [], "weights_dense": [],
                            "weights_unquantized": [], "lora_weights": [], "buffers": []}
    from ..stack.build import decoder_linears

    linear_weights = {id(mod.weight) for _, mod in decoder_linears(model)}
    four_bit = {id(mod.weight): mod for mod in model.modules()
                if any(c.__name__ == "Linear4bit" for c in type(mod).__mro__)}
    for name, p in model.named_parameters():
        cls = type(p).__name__
        if cls in ("Params4bit", "Int8Params") or id(p) in four_bit:
            out["weights_quantized"].append(p)
            qs = getattr(p, "quant_state", None) or getattr(four_bit.get(id(p)), "quant_state", None)
            if qs is not None:
                out["quant_constants"] += quant_state_tensors(qs)
            scb = getattr(p, "SCB", None)
            if scb is not None:
                out["quant_constants"].append(scb)
        elif "lora_" in name:
            out["lora_weights"].append(p)
        elif id(p) in linear_weights:
            out["weights_dense"].append(p)
        else:
            out["weights_unquantized"].append(p)
    out["buffers"] = list(model.buffers())
    return {k: [t for t in v if isinstance(t, torch.Tensor)] for k, v in out.items()}


def optimizer_tensors(opt) -> list:
    import torch

    ts = []
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                ts.append(v)
    return ts


@dataclass
class StepRecord:
    step: int
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    time_s: float = 0.0
    tokens: int = 0
    micro_steps: int = 0
    optimizer_time_s: float = 0.0  # the optimizer step and zero_grad
    forward_s: float = 0.0  # all micro-batches' forward passes (with the loss), seconds
    backward_s: float = 0.0  # all micro-batches' backward passes

    def full_step(self, grad_accum: int) -> tuple[float, float]:
        """(seconds, tokens) of a whole optimizer step of ``grad_accum`` micro-batches, from the
        ``micro_steps`` run here: the optimizer is paid once per ``grad_accum`` micro-batches, not once
        per the (at most two) micro-batches a measured step runs."""
        if not self.micro_steps:
            return self.time_s, float(self.tokens)
        micro = max(self.time_s - self.optimizer_time_s, 0.0) / self.micro_steps
        return grad_accum * micro + self.optimizer_time_s, grad_accum * self.tokens / self.micro_steps

    def tokens_per_s(self, grad_accum: int) -> float | None:
        t, n = self.full_step(grad_accum)
        return n / t if t > 0 else None


class Meter:
    """Phase-by-phase memory on the CPU/fake (tracker) or CUDA (allocator counters + NVML)."""

    def __init__(self, device: str, tracker: LiveStorageTracker | None) -> None:
        self.device, self.tracker = device, tracker

    def start(self) -> None:
        if self.tracker is not None:
            self.tracker.start_phase()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def stop(self, name: str, model, opt) -> dict[str, Any]:
        rec: dict[str, Any] = {}
        if self.tracker is not None:
            self.tracker.labels.clear()
            self.tracker.label([p.grad for p in model.parameters() if p.grad is not None], "gradients")
            self.tracker.label(optimizer_tensors(opt), "optimizer_state")
            r = self.tracker.phase_report(name)
            rec.update(peak_allocated_bytes=r.peak_bytes, end_allocated_bytes=r.end_bytes, breakdown=r.breakdown)
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            cuda = {"peak_allocated_bytes": torch.cuda.max_memory_allocated(),
                    "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
                    "end_allocated_bytes": torch.cuda.memory_allocated(),
                    "device_bytes": nvml_process_bytes()}
            if self.tracker is not None:
                rec["tensor_peak_bytes"] = rec.pop("peak_allocated_bytes")
                rec.pop("end_allocated_bytes")
            rec.update(cuda)
        return rec


def nvml_process_bytes() -> int | None:
    """Device memory NVML attributes to this process (what nvidia-smi shows), or None."""
    import os

    try:
        import pynvml

        pynvml.nvmlInit()
        import torch

        h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
            if p.pid == os.getpid() and p.usedGpuMemory is not None:
                return int(p.usedGpuMemory)
        return int(pynvml.nvmlDeviceGetMemoryInfo(h).used)  # containers hide pids: whole-device figure
    except Exception:  # noqa: BLE001 - NVML missing or unsupported: the figure stays unknown
        return None


def run_steps(model, cfg: TrainConfig, vocab: int, device: str, steps: int, tracker: LiveStorageTracker | None,
              on_step: Callable[[StepRecord], None] | None = None, make_batch: Callable | None = None,
              optimizer=None, no_sync: Callable | None = None) -> list[StepRecord]:
    """``steps`` optimizer steps of ``min(grad_accum, 2)`` micro-batches each, measured by phase.
    ``no_sync()`` (data-parallel runs) is the context the micro-batches before the last of an accumulation run
    in, as HF Trainer does (DDP's ``no_sync``, FSDP2's ``set_requires_gradient_sync(False)``)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer if optimizer is not None else make_optimizer(cfg.optimizer, params, device)
    scaler = grad_scaler(cfg, device)  # fp16 compute: loss scaling as HF Trainer(fp16=True)
    meter = Meter(device, tracker)
    micro = min(cfg.grad_accum, 2)
    head = model.get_output_embeddings()
    b, s = cfg.micro_batch, cfg.seq_len
    hooks = []

    def at_head(x) -> None:
        tracker.tag = "logits_loss"
        if isinstance(x, torch.Tensor) and x.requires_grad:
            x.register_hook(lambda g: setattr(tracker, "tag", "activations"))

    if tracker is not None and head is not None and cfg.loss_impl != "chunked":
        hooks.append(head.register_forward_pre_hook(lambda mod, args: at_head(args[0] if args else None)))
    # loss_impl="chunked": the decoder, then lm_head fused with the loss (ftplan.stack.loss); no full logits
    net = for_loss(model, cfg.loss_impl, at_head if tracker is not None else None)
    records = []
    gen = torch.Generator(device="cpu").manual_seed(1234)
    try:
        for i in range(steps):
            rec = StepRecord(i + 1)
            t0 = time.perf_counter()
            for j in range(micro):
                with _scope(tracker, "activations"), (no_sync() if no_sync is not None and j < micro - 1
                                                       else nullcontext()):
                    if make_batch is not None:
                        ids = make_batch(b, s)
                    else:
                        ids = torch.randint(0, vocab, (b, s), generator=gen).to(device)
                    meter.start()
                    t_f = _now(device)
                    with autocast(cfg, device):
                        loss = net(input_ids=ids, labels=ids).loss
                    t_b = _now(device)
                    rec.forward_s += t_b - t_f
                    rec.phases["forward_end"] = _max(rec.phases.get("forward_end"), meter.stop("forward_end", model, opt))
                    meter.start()
                    t_b = _now(device)
                    scaler.scale(loss).backward()
                    del loss
                    rec.backward_s += _now(device) - t_b
                    rec.phases["backward"] = _max(rec.phases.get("backward"), meter.stop("backward", model, opt))
                    if tracker is not None:
                        tracker.tag = "activations"
                rec.tokens += b * s
                rec.micro_steps += 1
            if device == "cuda":
                torch.cuda.synchronize()
            t_opt = time.perf_counter()
            with _scope(tracker, "optimizer_temp"):
                meter.start()
                optimizer_step(opt, scaler)
                rec.phases["optimizer_step"] = meter.stop("optimizer_step", model, opt)
                opt.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            rec.time_s = time.perf_counter() - t0
            rec.optimizer_time_s = time.perf_counter() - t_opt
            records.append(rec)
            if on_step is not None:
                on_step(rec)
    finally:
        for h in hooks:
            h.remove()
    return records


def _now(device: str) -> float:
    """A wall-clock reading after the device finished its queued work (a phase's time)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def _scope(tracker, tag):
    from contextlib import nullcontext

    return tracker.scope(tag) if tracker is not None else nullcontext()


def _max(old: dict | None, new: dict) -> dict:
    if old is None:
        return new
    key = "peak_allocated_bytes"
    return new if new.get(key, 0) >= old.get(key, 0) else old
