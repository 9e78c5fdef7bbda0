"""The precision and the optimizer of a training step, as HF Trainer sets them up; shared by the measured
step (``ftplan.measure``) and the training run (``ftplan.train``)."""

from __future__ import annotations

from ..planner.memory.precision import loss_scaling
from ..planner.types import TrainConfig

LR = 2e-4


def _device_type(device: str) -> str:
    return "cuda" if device == "cuda" else "cpu"


def autocast(cfg: TrainConfig, device: str):
    """The autocast region HF Trainer opens for the forward and the loss, in the compute dtype (bf16=True,
    or fp16=True on GPUs without bf16); disabled when the configuration says so."""
    import torch

    dtype = torch.float16 if cfg.compute_dtype == "fp16" else torch.bfloat16
    return torch.autocast(device_type=_device_type(device), dtype=dtype, enabled=cfg.autocast)


def grad_scaler(cfg: TrainConfig, device: str):
    """The loss scaler HF Trainer (accelerate) makes for ``fp16=True``: ``torch.amp.GradScaler`` with its
    defaults (initial scale 2**16, growth x2 every 2000 clean steps, backoff x0.5); disabled (every call
    a no-op, ``step`` a plain ``optimizer.step()``) for bf16 or without autocast. torch 2.13 (the floor)
    runs it on the CPU too: ``GradScaler("cpu")`` with the CPU kernels of
    ``_amp_foreach_non_finite_check_and_unscale_`` and ``_amp_update_scale_``."""
    import torch

    return torch.amp.GradScaler(_device_type(device), enabled=loss_scaling(cfg))


def optimizer_step(opt, scaler) -> bool:
    """One optimizer step through the loss scaler (``scaler.step`` + ``update``; a plain ``opt.step()``
    when scaling is off). False when the scaler skipped the step (inf/NaN gradients: the scale backed
    off), as accelerate's ``optimizer_step_was_skipped`` tells HF Trainer, which then leaves the learning
    rate scheduler where it is."""
    if not scaler.is_enabled():
        opt.step()
        return True
    before = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    return scaler.get_scale() >= before


def make_optimizer(name: str, params: list, device: str):
    """The optimizer HF Trainer builds for ``optim=<name>`` (learning rate and decay do not change memory)."""
    import torch

    if name == "adamw":  # adamw_torch_fused
        return torch.optim.AdamW(params, lr=LR, weight_decay=0.0, fused=True)
    if name == "adamw_torch":
        return torch.optim.AdamW(params, lr=LR, weight_decay=0.0, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=LR)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=LR, scale_parameter=False, relative_step=False, warmup_init=False)
    import bitsandbytes as bnb

    cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
           "paged_adamw_32bit": bnb.optim.PagedAdamW32bit}[name]
    return cls(params, lr=LR, weight_decay=0.0)
