"""The autotuner's search space: the planner's configurations, each with its prediction.

A candidate is a full configuration the planner enumerates (``planner.search.enumerate_configs``) with
the user's fixed knobs (the loss too: the standard and the chunked loss are both measured by a profiled
run, ``ftplan.stack.loss``) and an exact effective batch. Its ``key`` names it as Optuna parameters do. Candidates the planner predicts over the memory
budget by more than ``FAR_OVER`` are never run: they are counted as skipped, with the reason. So are
candidates whose attention kernel cannot run here (``attention_unavailable``): the model build would
fall back to SDPA and the trial would measure SDPA under the other kernel's name.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from ..planner.estimate import build_estimate
from ..planner.search import enumerate_configs, light_key
from ..planner.types import GPUSpec, ModelSpec, TrainConfig

# a candidate predicted up to 10% over the budget is still run (the prediction could be pessimistic);
# beyond that a trial would only confirm an OOM
FAR_OVER = 0.10


@dataclass(frozen=True)
class Candidate:
    config: TrainConfig
    predicted: dict[str, Any]  # peak_allocated/reserved/device bytes, tokens_per_s (None when unknown)
    budget_bytes: int
    compared: str  # which predicted figure is held against the budget

    @property
    def params(self) -> dict[str, Any]:
        return params_of(self.config)

    @property
    def key(self) -> str:
        return key_of(self.params)

    @property
    def predicted_bytes(self) -> int:
        return self.predicted[self.compared]

    @property
    def far_over(self) -> bool:
        return self.predicted_bytes > self.budget_bytes * (1.0 + FAR_OVER)


def fmt_of(cfg: TrainConfig) -> str:
    """'qlora-nf4-dq', 'lora-int8', 'lora-bf16', 'full-bf16'."""
    s = f"{cfg.method}-{cfg.quant}"
    return s + "-dq" if cfg.quant in ("nf4", "fp4") and cfg.double_quant else s


def params_of(cfg: TrainConfig) -> dict[str, Any]:
    return {"format": fmt_of(cfg), "micro_batch": cfg.micro_batch, "gradient_checkpointing": cfg.gradient_checkpointing,
            "optimizer": cfg.optimizer, "attention": cfg.attention, "lora_rank": cfg.lora_rank,
            "loss_impl": cfg.loss_impl}


def key_of(params: dict[str, Any]) -> str:
    # a study stored before the loss was a parameter measured the standard loss: same key
    params = {"loss_impl": "standard", **params}
    return ",".join(f"{k}={params[k]}" for k in sorted(params))


def budget_for(gpu: GPUSpec, margin: float, max_memory: int | None) -> int:
    return int(max_memory if max_memory is not None else gpu.usable_bytes * (1.0 - margin))


def candidates(spec: ModelSpec, gpu: GPUSpec, fixed: dict[str, Any], budget: int, device: str,
               ranks: tuple[int, ...] | None = None, objective: str = "throughput") -> list[Candidate]:
    """Every configuration of the space, best predicted first (the planner's ranking)."""
    fixed = {k: v for k, v in fixed.items() if v is not None}
    fixed.setdefault("num_gpus", 1)
    rank_list = ranks or (None,)
    compared = "peak_allocated_bytes" if device == "cpu" else "device_bytes"
    scored = []
    for r in rank_list:
        fx = dict(fixed) if r is None else {**fixed, "lora_rank": r}
        for cfg, _ in enumerate_configs(spec, gpu, fx, "throughput"):
            if cfg.method == "full" and r not in (None, rank_list[0]):
                continue
            est = build_estimate(spec, cfg, gpu)  # cfg is already validated: no second make_config
            tps = est.time.tokens_per_s if est.time else None
            pred = {"peak_allocated_bytes": est.peak_allocated_bytes, "peak_reserved_bytes": est.peak_reserved_bytes,
                    "device_bytes": est.device_bytes, "tokens_per_s": tps}
            c = Candidate(cfg, pred, budget, compared)
            key = (c.far_over, c.predicted_bytes > budget, light_key(objective, cfg, tps, c.predicted_bytes, gpu, None))
            scored.append((key, c))
    scored.sort(key=lambda x: x[0])
    seen, out = set(), []
    for _, c in scored:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out


def attention_unavailable(attention: str, device: str) -> str | None:
    """Why the attention kernel ``attention`` cannot run on ``device`` (cuda | cpu), None when it can.
    Only ``flash_attention_2`` has requirements: CUDA and the flash-attn package. Checked without
    importing anything (a look for the package), so the tuner can skip such candidates before the study."""
    if attention != "flash_attention_2":
        return None
    if device != "cuda":
        return f"flash_attention_2 needs CUDA (device is {device})"
    if importlib.util.find_spec("flash_attn") is None:
        return "flash_attention_2 needs the flash-attn package, which is not installed (pip install flash-attn)"
    return None


def choices(cands: list[Candidate]) -> dict[str, list]:
    """The Optuna distributions: every value each parameter takes among the candidates, in order."""
    out: dict[str, list] = {}
    for c in cands:
        for k, v in c.params.items():
            vals = out.setdefault(k, [])
            if v not in vals:
                vals.append(v)
    return out
