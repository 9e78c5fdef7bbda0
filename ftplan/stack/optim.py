"""The precision and the optimizer of a training step, as HF Trainer sets them up; shared by the measured
step (``ftplan.measure``) and the training run (``ftplan.train``)."""

from __future__ import annotations

from ..planner.types import TrainConfig

LR = 2e-4


def autocast(cfg: TrainConfig, device: str):
    """The autocast region HF Trainer opens for the forward and the loss (bf16=True, or fp16=True for an
    fp16 model); disabled when the configuration says so."""
    import torch

    dtype = torch.float16 if cfg.quant == "fp16" else torch.bfloat16
    return torch.autocast(device_type="cuda" if device == "cuda" else "cpu", dtype=dtype, enabled=cfg.autocast)


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
