"""The recommendation: enumerate configurations, keep what fits with a margin, rank by the objective.

Searched unless fixed by the caller: method and base format (QLoRA nf4/fp4 with and without double
quant, 8-bit LoRA, bf16 LoRA; full fine-tuning only when asked for with ``method="full"``),
micro-batch (divisors of the effective batch per GPU, so the effective batch stays exact),
gradient accumulation (follows), checkpointing, optimizer (the AdamW family), attention kernel, and
the loss implementation. LoRA rank and targets are quality choices: they stay at 16 / all-linear
unless the objective is ``quality`` (which searches them) or the caller fixes them.

Objectives: ``throughput`` (tokens/s), ``cost`` ($ per token; GPU-seconds when no price is known),
``quality`` (least quantization, then widest adapter, then tokens/s).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .estimate import build_estimate, optimizer_traffic_bytes
from .memory.phases import device_bytes_fast
from .options import DEFAULTS, choice, make_config, method_quant, parse_targets, positive_int
from .timing import tokens_per_s
from .types import Estimate, GPUSpec, ModelSpec, Plan, TrainConfig

SEARCH_OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
QUALITY_RANKS = (8, 16, 32, 64, 128)
QUALITY_TARGETS = (("all-linear",), ("attention",))
DEFAULT_MARGIN = 0.05  # keep 5% of the usable memory free
_METHOD_LEVEL = {("full", "fp32"): 6, ("full", "bf16"): 5, ("full", "fp16"): 5, ("lora", "fp32"): 4,
                 ("lora", "bf16"): 4, ("lora", "fp16"): 4, ("lora", "int8"): 3, ("qlora", "nf4"): 2,
                 ("qlora", "fp4"): 1}

SortKey = tuple[int, ...]  # light_key's: smaller is better
_Scored = tuple[SortKey, TrainConfig]
_Signature = tuple[str, str, bool, int, bool, str, int, tuple[str, ...]]


@dataclass(frozen=True)
class SearchResult:
    plans: list[Plan]
    candidates: int  # configurations evaluated
    feasible: int  # of which fit
    warnings: tuple[str, ...]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _formats(fixed: dict[str, Any], gpu: GPUSpec | None) -> list[tuple[str, str, bool]]:
    """(method, quant, double_quant) combinations to try."""
    sixteen = "bf16" if (gpu is None or gpu.bf16 or gpu.key == "cpu") else "fp16"
    combos = [("qlora", "nf4", True), ("qlora", "nf4", False), ("qlora", "fp4", True), ("qlora", "fp4", False),
              ("lora", "int8", False), ("lora", sixteen, False)]
    m, q = fixed.get("method"), fixed.get("quant")
    if m is not None or q is not None:
        m, q = method_quant(m, q)
        if q == "bf16" and sixteen == "fp16":
            q = "fp16"
        if m == "full":
            combos = [("full", q, False)]
        else:
            combos = [c for c in combos if c[0] == m and c[1] == q] or [(m, q, q in ("nf4", "fp4"))]
    if "double_quant" in fixed:
        combos = [(m, q, bool(fixed["double_quant"]) if q in ("nf4", "fp4") else dq) for m, q, dq in combos]
        combos = list(dict.fromkeys(combos))
    return combos


def enumerate_configs(spec: ModelSpec, gpu: GPUSpec | None, fixed: dict[str, Any],
                      objective: str) -> Iterator[tuple[TrainConfig, tuple[str, ...]]]:
    """Yield (TrainConfig, warnings) for every combination of the free knobs."""
    base = make_config(spec, gpu, **fixed)  # validates the fixed knobs once
    cfg0 = base.config
    per_gpu_eff = None
    if "micro_batch" in fixed:
        mbs = [cfg0.micro_batch]
    else:
        eff = positive_int("effective_batch", fixed.get("effective_batch", DEFAULTS["effective_batch"]))
        if "grad_accum" in fixed:
            mbs = [d for d in (1, 2, 4, 8, 16, 32, 64)]
        else:
            if eff % cfg0.num_gpus:
                mbs = [cfg0.micro_batch]
            else:
                per_gpu_eff = eff // cfg0.num_gpus
                mbs = [d for d in _divisors(per_gpu_eff) if d <= 256]
    ckpts = [bool(fixed["gradient_checkpointing"])] if "gradient_checkpointing" in fixed else [True, False]
    opts = [cfg0.optimizer] if "optimizer" in fixed else list(SEARCH_OPTIMIZERS)
    if "attention" in fixed:
        attns = [cfg0.attention]
    else:
        attns = ["sdpa"] + (["flash_attention_2"] if (gpu is not None and gpu.flash_attention_2) else [])
    losses = [cfg0.loss_impl] if "loss_impl" in fixed else ["standard", "chunked"]
    if objective == "quality":
        ranks = [cfg0.lora_rank] if "lora_rank" in fixed else list(QUALITY_RANKS)
        targets = [cfg0.lora_targets] if "lora_targets" in fixed else list(QUALITY_TARGETS)
    else:
        ranks, targets = [cfg0.lora_rank], [cfg0.lora_targets]
    base_fields = dict(cfg0.__dict__)
    for (method, quant, dq), mb, ckpt, opt, attn, loss, rank, tg in itertools.product(
            _formats(fixed, gpu), mbs, ckpts, opts, attns, losses, ranks, targets):
        if method == "full" and (rank != ranks[0] or tg != targets[0]):
            continue  # rank and targets mean nothing without LoRA
        accum = cfg0.grad_accum if per_gpu_eff is None else per_gpu_eff // mb
        yield _with(base_fields, method=method, quant=quant, double_quant=dq, micro_batch=mb, grad_accum=accum,
                    gradient_checkpointing=ckpt, optimizer=opt, attention=attn, loss_impl=loss, lora_rank=rank,
                    lora_alpha=rank * 2 if "lora_alpha" not in fixed else cfg0.lora_alpha,
                    lora_targets=tg), base.warnings


def _with(fields: dict[str, Any], **changes: Any) -> TrainConfig:
    """A TrainConfig from validated fields without re-running the dataclass machinery (hot loop)."""
    cfg = object.__new__(TrainConfig)
    cfg.__dict__.update(fields)
    cfg.__dict__.update(changes)
    return cfg


def _tokens_per_s(est: Estimate) -> float:
    return est.time.tokens_per_s if est.time else 0.0


def _speed_bucket(tps: float) -> int:
    """Throughputs within 0.5% of each other tie (the model is not that precise); ties go to the
    simpler setup (standard loss, SDPA), then to less memory."""
    return -int(math.log(tps) / math.log(1.005)) if tps > 0 else 0


def light_key(objective: str, cfg: TrainConfig, tps: float | None, device_bytes: int, gpu: GPUSpec | None,
               price: float | None) -> SortKey:
    """Sort key (smaller is better) from the configuration, its tokens/s and its device bytes."""
    tps = tps or 0.0
    simple = (cfg.loss_impl != "standard", cfg.attention != "sdpa")
    if objective == "cost":
        p = price if price is not None else (gpu.price_per_hour if gpu is not None else None)
        per_token = (p or 1.0) * cfg.num_gpus / tps if tps else float("inf")
        return (_speed_bucket(1.0 / per_token) if tps else 0, *simple, device_bytes)
    if objective == "quality":
        level = _METHOD_LEVEL.get((cfg.method, cfg.quant), 0)
        wide = 1 if "all-linear" in cfg.lora_targets else 0
        return (-level, -wide, -cfg.lora_rank, _speed_bucket(tps), *simple, device_bytes)
    return (_speed_bucket(tps), *simple, device_bytes)


def score_of(objective: str, est: Estimate) -> float:
    tps = _tokens_per_s(est)
    if objective == "cost" and est.cost and est.cost.dollars is not None and tps:
        return est.cost.dollars
    return tps


def search(spec: ModelSpec, gpu: GPUSpec | None, fixed: dict[str, Any], objective: str = "throughput",
           tokens: float | None = None, epochs: float = 1.0, price: float | None = None, margin: float = DEFAULT_MARGIN,
           top: int | None = None, spot_discount: float = 0.0, diverse: bool = False) -> SearchResult:
    """Every candidate that fits ``gpu`` with ``margin``, best first (see module docstring)."""
    objective = choice("objective", objective)
    fixed = {k: v for k, v in fixed.items() if v is not None}
    if "lora_targets" in fixed:
        fixed["lora_targets"] = parse_targets(fixed["lora_targets"])
    usable = gpu.usable_bytes * (1.0 - margin) if gpu is not None else None
    scored: list[_Scored] = []
    n = 0
    warnings: tuple[str, ...] = ()
    for cfg, cfg_warnings in enumerate_configs(spec, gpu, fixed, objective):
        n += 1
        warnings = cfg_warnings  # the fixed knobs' warnings: the same for every candidate
        dev = device_bytes_fast(spec, cfg, gpu)
        if usable is not None and dev > usable:
            continue
        tps = tokens_per_s(spec, cfg, gpu, optimizer_traffic_bytes(spec, cfg))
        scored.append((light_key(objective, cfg, tps, dev, gpu, price), cfg))
    scored.sort(key=lambda x: x[0])
    feasible = len(scored)
    if diverse:
        scored = _diverse(scored)
    chosen = scored if not top else scored[:top]
    ests = [build_estimate(spec, c, gpu, tokens, epochs, price, warnings, spot_discount, margin) for _, c in chosen]
    plans = [Plan(config=e.config, estimate=e, score=score_of(objective, e), rank=i + 1) for i, e in enumerate(ests)]
    return SearchResult(plans, n, feasible, warnings)


def _signature(cfg: TrainConfig) -> _Signature:
    return (cfg.method, cfg.quant, cfg.double_quant, cfg.micro_batch, cfg.gradient_checkpointing, cfg.loss_impl,
            cfg.lora_rank, cfg.lora_targets)


def _diverse(scored: list[_Scored]) -> list[_Scored]:
    """Best first, but only the best of each (method, base, micro-batch, checkpointing, loss, rank, targets):
    runner-ups that differ only in an equivalent optimizer or kernel say nothing new."""
    seen: set[_Signature] = set()
    out = []
    for key, cfg in scored:
        sig = _signature(cfg)
        if sig not in seen:
            seen.add(sig)
            out.append((key, cfg))
    return out


def min_memory_config(spec: ModelSpec, gpu: GPUSpec | None, fixed: dict[str, Any]) -> TrainConfig:
    """The leanest configuration the fixed knobs allow (for 'nothing fits' suggestions)."""
    lean = {"method": "qlora", "quant": "nf4", "double_quant": True, "micro_batch": 1, "gradient_checkpointing": True,
            "optimizer": "paged_adamw_8bit", "loss_impl": "chunked", "attention": "sdpa"}
    knobs = {**lean, **{k: v for k, v in fixed.items() if v is not None}}
    if "method" in fixed or "quant" in fixed:
        knobs["method"], knobs["quant"] = method_quant(fixed.get("method"), fixed.get("quant"))
    if knobs["method"] == "full":
        knobs["optimizer"] = fixed.get("optimizer", "adamw_8bit")
    knobs.pop("effective_batch", None)
    knobs["grad_accum"] = fixed.get("grad_accum", 1)
    return make_config(spec, gpu, **knobs).config
