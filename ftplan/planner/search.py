"""The recommendation: enumerate configurations, keep what fits with a margin, rank by the objective.

Searched unless fixed by the caller: method and base format (QLoRA nf4/fp4 with and without double
quant, 8-bit LoRA, bf16 LoRA; full fine-tuning only when asked for with ``method="full"``),
micro-batch (divisors of the effective batch per GPU, so the effective batch stays exact),
gradient accumulation (follows), checkpointing, optimizer (the AdamW family), attention kernel, and
the loss implementation. LoRA rank and targets are quality choices: they stay at 16 / all-linear
unless the objective is ``quality`` (which searches them) or the caller fixes them.

Objectives: ``throughput`` (tokens/s), ``cost`` ($ per token; GPU-seconds when no price is known),
``quality`` (least quantization, then widest adapter, then tokens/s).

Ties: rates are bucketed in steps of ``SPEED_TIE`` down from the best one (bucket 0: within 0.5% of
the best; the model is not that precise), and within a bucket the simpler and, on a real GPU, faster
setup wins (``tie_break``): the
standard loss and SDPA (no extra kernels), no gradient checkpointing, a plain AdamW when the optimizer
state is small (``optimizer_state_is_small``), the largest micro-batch (fewest accumulation steps);
only then less memory. Memory decides only when it is the constraint: whatever is ranked fits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .estimate import build_estimate, host_breakdown, optimizer_traffic_bytes
from .memory.phases import cached_terms, device_bytes_fast
from .options import BNB_OPTIMIZERS, DEFAULTS, choice, flag, make_config, parse_targets, positive_int, require_buildable
from .timing import tokens_per_s
from .types import FSDP_SHARDINGS, Estimate, GiB, GPUSpec, ModelSpec, Plan, TrainConfig

SEARCH_OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
QUALITY_RANKS = (8, 16, 32, 64, 128)
QUALITY_TARGETS = (("all-linear",), ("attention",))
DEFAULT_MARGIN = 0.05  # keep 5% of the usable memory free
# Rates within 0.5% of each other tie: the speed model's priors (MFU, bandwidth efficiency) are far less
# precise than that, so a 0.5% edge is no reason to take a more complex or leaner setup.
SPEED_TIE = 0.005
# A plain AdamW keeps two moments in the trainable parameters' dtype (8 B/param for fp32 LoRA adapters);
# 8-bit AdamW keeps ~2 B/param, so switching saves 3/4 of the plain state. Under 1 GiB of plain state
# that is at most 0.75 GiB (about one CUDA context plus the allocator's slack, below the model's own
# error on a multi-GiB peak); under 5% of the memory budget it is at most 3.75% of it, inside the
# default 5% safety margin. Such a saving does not pay for bitsandbytes' block-wise quantized moments
# (an optimizer-quality risk) or paged state (host-device page traffic under memory pressure), so ties
# go to the plain optimizer then. Above both, memory decides among tied configurations as before.
SMALL_OPTIMIZER_STATE_BYTES = 1 * GiB
SMALL_OPTIMIZER_STATE_FRACTION = 0.05
# Among tied configurations with a small optimizer state: plain fused AdamW, then the foreach variant,
# then bitsandbytes' 8-bit and paged variants (in the allocator, then managed memory).
_OPTIMIZER_PREFERENCE = {"adamw": 0, "adamw_torch": 1, "adamw_8bit": 2, "paged_adamw_8bit": 3,
                         "paged_adamw_32bit": 3}
_METHOD_LEVEL = {("full", "fp32"): 6, ("full", "bf16"): 5, ("full", "fp16"): 5, ("lora", "fp32"): 4,
                 ("lora", "bf16"): 4, ("lora", "fp16"): 4, ("lora", "int8"): 3, ("qlora", "nf4"): 2,
                 ("qlora", "fp4"): 1}

SortKey = tuple[int, ...]  # light_key's: smaller is better
_Scored = tuple[SortKey, TrainConfig]
_Signature = tuple[str, str, bool, bool, str, int, tuple[str, ...]]


@dataclass(frozen=True)
class SearchResult:
    plans: list[Plan]
    candidates: int  # configurations evaluated
    feasible: int  # of which fit
    warnings: tuple[str, ...]


def _divisors(n: int, limit: int) -> list[int]:
    """The divisors of ``n`` up to ``limit`` (at most ``limit`` steps, whatever ``n``)."""
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def _formats(fixed: dict[str, Any], cfg0: TrainConfig) -> list[tuple[str, str, bool]]:
    """(method, quant, double_quant) combinations to try. ``cfg0`` is the fixed knobs resolved by
    ``make_config``: a 16-bit base is in its compute dtype (fp16 on GPUs without bf16), and a fixed
    method/quant is taken as it resolved them (full fine-tuning under fp16 autocast: fp32 master weights)."""
    sixteen = cfg0.compute_dtype
    combos = [("qlora", "nf4", True), ("qlora", "nf4", False), ("qlora", "fp4", True), ("qlora", "fp4", False),
              ("lora", "int8", False), ("lora", sixteen, False)]
    m, q = fixed.get("method"), fixed.get("quant")
    if m is not None or q is not None:
        m, q = cfg0.method, cfg0.quant
        if m == "full":
            combos = [("full", q, False)]
        else:
            combos = [c for c in combos if c[0] == m and c[1] == q] or [(m, q, q in ("nf4", "fp4"))]
    if "double_quant" in fixed:
        combos = [(m, q, flag("double_quant", fixed["double_quant"]) if q in ("nf4", "fp4") else dq) for m, q, dq in combos]
        combos = list(dict.fromkeys(combos))
    if cfg0.is_zero:
        combos = [c for c in combos if c[1] not in ("nf4", "fp4", "int8")]  # ZeRO with a quantized base: not modelled
    return combos


def enumerate_configs(spec: ModelSpec, gpu: GPUSpec | None, fixed: dict[str, Any],
                      objective: str) -> Iterator[tuple[TrainConfig, tuple[str, ...]]]:
    """Yield (TrainConfig, warnings) for every combination of the free knobs."""
    base = make_config(spec, gpu, **fixed)  # validates the fixed knobs once
    cfg0 = base.config
    require_buildable(cfg0, "a plan")
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
                mbs = _divisors(per_gpu_eff, 256)
    ckpts = [flag("gradient_checkpointing", fixed["gradient_checkpointing"])] if "gradient_checkpointing" in fixed else [True, False]
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
    for (method, quant, dq), (sharding, offload), mb, ckpt, opt, attn, loss, rank, tg in itertools.product(
            _formats(fixed, cfg0), _strategies(fixed, cfg0), mbs, ckpts, opts, attns, losses, ranks, targets):
        if method == "full" and (rank != ranks[0] or tg != targets[0]):
            continue  # rank and targets mean nothing without LoRA
        if sharding in FSDP_SHARDINGS and opt in BNB_OPTIMIZERS:
            continue  # bitsandbytes optimizers cannot step FSDP2's sharded (DTensor) parameters
        if loss == "chunked" and sharding in FSDP_SHARDINGS and "loss_impl" not in fixed:
            continue  # ftplan train runs the chunked loss without FSDP only; the others through Liger: not searched
        accum = cfg0.grad_accum if per_gpu_eff is None else per_gpu_eff // mb
        yield _with(base_fields, method=method, quant=quant, double_quant=dq, sharding=sharding, offload=offload,
                    micro_batch=mb, grad_accum=accum,
                    gradient_checkpointing=ckpt, optimizer=opt, attention=attn, loss_impl=loss, lora_rank=rank,
                    lora_alpha=rank * 2 if "lora_alpha" not in fixed else cfg0.lora_alpha,
                    lora_targets=tg), base.warnings


# the strategies searched on several GPUs when --sharding is not given: what every hand-off builds (ZeRO waits for
# an exported DeepSpeed config), FSDP with and without parameters on the host
SEARCH_STRATEGIES = (("ddp", "none"), ("fsdp", "none"), ("fsdp_grad_op", "none"), ("fsdp", "params"))


def _strategies(fixed: dict[str, Any], cfg0: TrainConfig) -> list[tuple[str | None, str]]:
    """(sharding, offload) pairs to search: the given ones, or ``SEARCH_STRATEGIES`` on several GPUs."""
    if cfg0.num_gpus <= 1 or "sharding" in fixed:
        return [(cfg0.sharding, cfg0.offload)]
    pairs: list[tuple[str | None, str]] = list(SEARCH_STRATEGIES)
    if "offload" in fixed:
        pairs = [p for p in pairs if p[1] == cfg0.offload] or [(cfg0.sharding, cfg0.offload)]
    return pairs


def _with(fields: dict[str, Any], **changes: Any) -> TrainConfig:
    """A TrainConfig from validated fields without re-running the dataclass machinery (hot loop)."""
    cfg = object.__new__(TrainConfig)
    cfg.__dict__.update(fields)
    cfg.__dict__.update(changes)
    return cfg


def _tokens_per_s(est: Estimate) -> float:
    return est.time.tokens_per_s if est.time else 0.0


def plain_adamw_state_bytes(spec: ModelSpec, cfg: TrainConfig, gpu: GPUSpec | None) -> int:
    """Bytes per GPU a plain AdamW would keep for ``cfg``'s trainable parameters: two moments in the
    parameters' dtype, ``2 * gradient bytes`` (sharded like the gradients under FSDP)."""
    return 2 * cached_terms(spec, cfg, gpu)[0].grads


def optimizer_state_is_small(plain_state_bytes: int, budget_bytes: float | None) -> bool:
    """True when a plain AdamW's state is under ``SMALL_OPTIMIZER_STATE_BYTES`` or under
    ``SMALL_OPTIMIZER_STATE_FRACTION`` of the memory budget (see the constants for why)."""
    limit = float(SMALL_OPTIMIZER_STATE_BYTES)
    if budget_bytes is not None:
        limit = max(limit, SMALL_OPTIMIZER_STATE_FRACTION * budget_bytes)
    return plain_state_bytes < limit


def _rate(objective: str, cfg: TrainConfig, tps: float, gpu: GPUSpec | None, price: float | None) -> float:
    """What the objective maximises at equal quality: tokens/s, or tokens per dollar (per GPU-second
    when no price is known) for ``cost``."""
    if objective != "cost" or not tps:
        return tps
    p = price if price is not None else (gpu.price_per_hour if gpu is not None else None)
    return tps / ((p or 1.0) * cfg.num_gpus)


def _speed_bucket(rate: float, best: float | None = None) -> int:
    """Rates within ``SPEED_TIE`` tie (the model is not that precise). With ``best`` (the best rate of
    the search): 0 for the rates within ``SPEED_TIE`` of it, 1 for the next step down, and so on;
    without it, steps on a fixed logarithmic grid (smaller is faster)."""
    step = math.log1p(SPEED_TIE)
    if rate <= 0:
        return 1 << 30 if best else 0
    if best:
        return int(math.log(max(best, rate) / rate) / step)
    return -int(math.log(rate) / step)


def tie_break(cfg: TrainConfig, small_state: bool) -> tuple[int, ...]:
    """Among configurations of one speed bucket, the simpler and faster setup first (smaller is better):
    the standard loss, SDPA, no checkpointing (it recomputes the forward), a plain AdamW when the
    optimizer state is small, the largest micro-batch (fewest accumulation steps: fuller kernels and
    fewer launches on a real GPU, which the per-token speed model does not see)."""
    opt = _OPTIMIZER_PREFERENCE.get(cfg.optimizer, 4) if small_state else 0
    return (cfg.loss_impl != "standard", cfg.attention != "sdpa", cfg.gradient_checkpointing, opt, -cfg.micro_batch)


def light_key(objective: str, cfg: TrainConfig, tps: float | None, device_bytes: int, gpu: GPUSpec | None,
              price: float | None, small_state: bool = False, best: float | None = None) -> SortKey:
    """Sort key (smaller is better) from the configuration, its tokens/s and its device bytes: the
    objective's speed bucket (relative to ``best``, the best rate of the search, when given), the
    ``tie_break``, then less memory, then NF4 before FP4 (equal figures; NF4 is the QLoRA default).
    Without a speed (the CPU: no speed model) nothing says what is faster, so after the standard loss
    and SDPA the leanest configuration comes first, as before (the autotuner's CPU seeds rely on it)."""
    tps = tps or 0.0
    if tps > 0:
        tail: SortKey = (*tie_break(cfg, small_state), device_bytes, cfg.quant == "fp4")
    else:
        tail = (cfg.loss_impl != "standard", cfg.attention != "sdpa", device_bytes, cfg.quant == "fp4")
    bucket = _speed_bucket(_rate(objective, cfg, tps, gpu, price), best)
    if objective == "quality":
        level = _METHOD_LEVEL.get((cfg.method, cfg.quant), 0)
        wide = 1 if "all-linear" in cfg.lora_targets else 0
        return (-level, -wide, -cfg.lora_rank, bucket, *tail)
    return (bucket, *tail)


def score_of(objective: str, est: Estimate) -> float:
    tps = _tokens_per_s(est)
    if objective == "cost" and est.cost and est.cost.dollars is not None and tps:
        return est.cost.dollars
    return tps


def search(spec: ModelSpec, gpu: GPUSpec | None, fixed: dict[str, Any], objective: str = "throughput",
           tokens: float | None = None, epochs: float = 1.0, price: float | None = None, margin: float = DEFAULT_MARGIN,
           top: int | None = None, spot_discount: float = 0.0, diverse: bool = False,
           host_ram: int | None = None) -> SearchResult:
    """Every candidate that fits ``gpu`` with ``margin`` (and, with ``host_ram``, the node's host memory),
    best first (see module docstring)."""
    objective = choice("objective", objective)
    fixed = {k: v for k, v in fixed.items() if v is not None}
    if "lora_targets" in fixed:
        fixed["lora_targets"] = parse_targets(fixed["lora_targets"])
    usable = gpu.usable_bytes * (1.0 - margin) if gpu is not None else None
    fits: list[tuple[TrainConfig, float, int, bool]] = []
    small: dict[tuple[str, str, int, tuple[str, ...], int, str | None], bool] = {}
    n = 0
    warnings: tuple[str, ...] = ()
    for cfg, cfg_warnings in enumerate_configs(spec, gpu, fixed, objective):
        n += 1
        warnings = cfg_warnings  # the fixed knobs' warnings: the same for every candidate
        dev = device_bytes_fast(spec, cfg, gpu)
        if usable is not None and dev > usable:
            continue
        if host_ram is not None and sum(host_breakdown(spec, cfg, cached_terms(spec, cfg, gpu)[0].host).values()) > host_ram:
            continue
        tps = tokens_per_s(spec, cfg, gpu, optimizer_traffic_bytes(spec, cfg)) or 0.0
        fam = (cfg.method, cfg.quant, cfg.lora_rank, cfg.lora_targets, cfg.num_gpus, cfg.sharding)
        is_small = small.get(fam)
        if is_small is None:
            is_small = small[fam] = optimizer_state_is_small(plain_adamw_state_bytes(spec, cfg, gpu), usable)
        fits.append((cfg, tps, dev, is_small))
    best = max((_rate(objective, c, t, gpu, price) for c, t, _, _ in fits), default=0.0)
    scored: list[_Scored] = [(light_key(objective, c, t, d, gpu, price, sm, best), c) for c, t, d, sm in fits]
    scored.sort(key=lambda x: x[0])
    feasible = len(scored)
    if diverse:
        scored = _diverse(scored, fixed)
    chosen = scored if not top else scored[:top]
    ests = [build_estimate(spec, c, gpu, tokens, epochs, price, warnings, spot_discount, margin, host_ram)
            for _, c in chosen]
    plans = [Plan(config=e.config, estimate=e, score=score_of(objective, e), rank=i + 1) for i, e in enumerate(ests)]
    return SearchResult(plans, n, feasible, warnings)


def _signature(cfg: TrainConfig, fixed: Mapping[str, Any]) -> _Signature:
    """What makes a runner-up a distinct alternative: method, base format, checkpointing, loss, rank and
    targets. NF4 and FP4 are one 4-bit family unless the caller fixed ``quant``, and double quant is part
    of that family unless the caller fixed ``double_quant`` (the model gives the variants equal or
    near-equal figures). The micro-batch is not part of it: the best micro-batch of a setup stands for
    it (a smaller one is the same setup, slower or with more headroom)."""
    four = cfg.quant in ("nf4", "fp4")
    quant = "4bit" if four and "quant" not in fixed else cfg.quant
    dq = cfg.double_quant if (not four or "double_quant" in fixed) else False
    return (cfg.method, quant, dq, cfg.gradient_checkpointing, cfg.loss_impl, cfg.lora_rank, cfg.lora_targets)


def _diverse(scored: list[_Scored], fixed: Mapping[str, Any] | None = None) -> list[_Scored]:
    """Best first, but only the best of each ``_signature``: runner-ups that differ only in an equivalent
    optimizer, kernel or micro-batch, or only in NF4 vs FP4 or double quant (unless the caller fixed
    them), say nothing new."""
    seen: set[_Signature] = set()
    out = []
    for key, cfg in scored:
        sig = _signature(cfg, fixed or {})
        if sig not in seen:
            seen.add(sig)
            out.append((key, cfg))
    return out
