"""The library face: ``estimate``, ``plan``, ``suggest`` (re-exported by ``ftplan``; top level because it
joins the planner, the catalogs and the calibration store). Plain objects, no side effects, no torch."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .errors import FtplanError
from .planner.estimate import build_estimate
from .planner.handoff import handoff_knobs
from .planner.memory.phases import device_bytes_fast
from .planner.options import DEFAULTS, make_config, method_quant, no_bf16, parse_targets, positive_int
from .planner.search import DEFAULT_MARGIN, SearchResult, enumerate_configs, search
from .planner.types import Estimate, GPUSpec, ModelSpec, Plan, TrainConfig
from .profiles.gpus import get_gpu, list_gpus
from .profiles.models import get_model
from .units import parse_bytes, real

__all__ = ["estimate", "plan", "plan_search", "suggest", "get_gpu", "get_model"]


def _gpu(gpu: str | GPUSpec | None, gpu_file: str | None) -> GPUSpec | None:
    if gpu is None:
        return None
    return get_gpu(gpu, gpu_file)


def estimate(model: str | ModelSpec, gpu: str | GPUSpec | None = None, *, tokens: float | None = None,
             epochs: float = 1.0, price: float | None = None, gpu_file: str | None = None,
             spot_discount: float = 0.0, calibrate: bool = True, handoff: str | None = None,
             host_ram: str | int | None = None, **knobs: Any) -> Estimate:
    """Memory per phase, the peak, whether it fits ``gpu``, and (with a GPU) tokens/s, hours and dollars
    for one configuration. Knobs not given take the defaults in ``planner.options.DEFAULTS``.
    With ``calibrate`` (the default), measured factors that ``ftplan autotune`` stored for this GPU and
    the installed library versions are applied, and ``Estimate.calibration`` says which. ``handoff``
    (``ftplan``, ``hf``, ``trl``, ``axolotl``, ``llamafactory``; see ``planner.handoff``) sets the knobs that
    trainer decides (its k-bit preparation, the standard loss where it cannot run the chunked one).
    ``host_ram`` (bytes, or text such as "64GiB"): the host memory of one node; a plan whose offloaded state
    or model loading needs more does not fit (``Estimate.host_bytes`` is always computed).
    ``Estimate.time`` holds tokens/s with its range (``tokens_per_s_range``: where eight in ten published runs
    of the kind fell, or a calibration's own spread; ``range_basis`` says which) and the step by piece
    (``pieces``: seconds and bound); ``Estimate.cost`` the hours and dollars with the same range inverted.

    >>> est = estimate("8b", "a100-80gb", method="qlora", micro_batch=1, seq_len=2048)
    >>> est.fits, est.peak_phase
    (True, 'backward')
    """
    spec = get_model(model)
    g = _gpu(gpu, gpu_file)
    if handoff is not None:
        knobs = handoff_knobs(spec, handoff, knobs)[0]
    resolved = make_config(spec, g, **knobs)
    ram = parse_bytes(host_ram, "host_ram")
    est = build_estimate(spec, resolved.config, g, tokens, epochs, price, resolved.warnings, spot_discount,
                         host_ram=ram)
    return _calibrated(est) if calibrate and g is not None else est


def _calibrated(est: Estimate, margin: float = 0.0) -> Estimate:
    from . import calibration

    cal = calibration.lookup(est.gpu) if est.gpu else None
    return calibration.apply(est, cal, margin) if cal is not None else est


def plan_search(model: str | ModelSpec, gpu: str | GPUSpec, *, objective: str = "throughput",
                tokens: float | None = None, epochs: float = 1.0, price: float | None = None,
                margin: float = DEFAULT_MARGIN, top: int | None = None, gpu_file: str | None = None,
                spot_discount: float = 0.0, diverse: bool = False, calibrate: bool = True,
                handoff: str | None = None, host_ram: str | int | None = None, **knobs: Any) -> SearchResult:
    """``plan`` with the search's counts (candidates evaluated, feasible) and warnings. ``diverse`` keeps
    only the best configuration of each family (see ``planner.search``: nf4/fp4 and double-quant twins and
    micro-batch variants of the same setup count as one). With ``calibrate``, plans are corrected by the
    stored measured factors, and a plan the correction pushes over the budget is dropped. ``handoff``:
    plan for that trainer (``estimate``)."""
    margin = real("margin", margin, low=0, high=1, high_open=True)
    if top is not None:
        top = positive_int("top", top)  # None: every plan that fits
    spec = get_model(model)
    g = _gpu(gpu, gpu_file)
    if handoff is not None:
        knobs = handoff_knobs(spec, handoff, knobs)[0]
    if g is None:
        raise FtplanError("plan needs a GPU (a name from `ftplan gpus`, or 'auto')")
    res = search(spec, g, knobs, objective, tokens, epochs, price, margin, top, spot_discount, diverse,
                 parse_bytes(host_ram, "host_ram"))
    if not calibrate:
        return res
    from . import calibration

    cal = calibration.lookup(g.key)
    if cal is None:
        return res
    calibrated = [replace(p, estimate=calibration.apply(p.estimate, cal, margin)) for p in res.plans]
    # a measured correction can push a plan over the budget: it is then no longer offered
    kept = [p for p in calibrated if p.estimate.fits is not False]
    plans = [replace(p, rank=i + 1) for i, p in enumerate(kept)]
    warnings = res.warnings
    if len(kept) < len(calibrated):
        warnings = (*warnings, f"{len(calibrated) - len(kept)} plan(s) no longer fit once calibrated and were dropped")
    return replace(res, plans=plans, feasible=res.feasible - (len(calibrated) - len(kept)), warnings=warnings)


def plan(model: str | ModelSpec, gpu: str | GPUSpec, **kwargs: Any) -> list[Plan]:
    """Ranked configurations that fit ``gpu`` (best first); knobs given are fixed, the rest searched.
    An empty list means nothing fits (see ``suggest``). (``ftplan.plan`` also takes ``gpu="any"``.)"""
    return plan_search(model, gpu, **kwargs).plans


# --- suggestions when nothing fits ------------------------------------------------------------------
# Every way out is checked with the search that gave the verdict (``plan_search`` with the same fixed
# knobs, objective, margin and calibration): a suggestion is offered only if that search returns a plan.

MIN_SEQ_LEN = 512  # the shortest sequence a suggestion offers (and the floor of "a length the user accepts")
NODE_GPUS = 8  # GPU counts stop at one node unless the user asked for more GPUs than that
GPU_COUNTS = (2, 4, 8, 16, 32, 64)
# lighter methods, heaviest first: full -> LoRA on a 16-bit base -> 8-bit -> QLoRA (4-bit)
METHOD_LADDER = (("full", "bf16"), ("lora", "bf16"), ("lora", "int8"), ("qlora", "nf4"))
_LADDER_STEP = {"fp32": "bf16", "fp16": "bf16", "bf16": "bf16", "int8": "int8", "nf4": "nf4", "fp4": "nf4"}


def suggest(model: str | ModelSpec, gpu: str | GPUSpec | None = None, *, objective: str = "throughput",
            margin: float = DEFAULT_MARGIN, gpu_file: str | None = None, calibrate: bool = True,
            max_gpus: int | None = None, handoff: str | None = None, **knobs: Any) -> dict[str, Any]:
    """When nothing fits ``gpu``: the budget that was checked and the nearest ways out, each re-checked
    with ``plan_search`` (same fixed knobs, ``objective``, ``margin``, calibration):

    - ``seq_len``: the longest power-of-two length below the current one (down to ``MIN_SEQ_LEN``) that
      fits, when the caller did not fix ``seq_len`` (``seq_len_fixed`` says when they did);
    - ``method``: the next lighter method/base that fits (full -> lora -> qlora, bf16 -> int8 -> nf4),
      when the caller fixed ``method`` or ``quant``;
    - ``smallest_gpu``: the catalog GPU with the least usable memory (never less than ``gpu``'s) that fits
      (with ``smallest_gpu_name`` and ``smallest_gpu_usable_bytes``); else ``smallest_gpu_short``: the same at ``MIN_SEQ_LEN`` tokens (when the length is not fixed);
    - ``gpu_count``: the least count of ``gpu`` (FSDP) that fits, only when no single catalog GPU fits at
      any length the caller accepts, and at most ``max_gpus`` (default one node, ``NODE_GPUS``, unless
      ``num_gpus`` asks for more); ``gpu_count_note`` says why there is none.
    """
    spec = get_model(model)
    g = _gpu(gpu, gpu_file)
    fixed = {k: v for k, v in knobs.items() if v is not None}
    if handoff is not None:  # every way out is searched for the same trainer
        fixed = handoff_knobs(spec, handoff, fixed)[0]
    check = _Check(objective, margin, gpu_file, calibrate)
    if g is None:
        return {"smallest_gpu": _smallest_gpu(spec, None, fixed, check)}
    lean, lean_bytes = _leanest(spec, g, fixed, objective)
    out: dict[str, Any] = {"usable_bytes": g.usable_bytes, "margin": margin,
                           "budget_bytes": int(g.usable_bytes * (1.0 - margin)),
                           "lean_config": lean, "lean_bytes": lean_bytes}
    out.update(_seq_way_out(spec, g, fixed, check))
    out.update(_method_way_out(spec, g, fixed, check))
    out["smallest_gpu"] = _smallest_gpu(spec, g, fixed, check)
    if out["smallest_gpu"]:
        found = get_gpu(out["smallest_gpu"], gpu_file)
        out["smallest_gpu_name"], out["smallest_gpu_usable_bytes"] = found.name, found.usable_bytes
    out["smallest_gpu_short"] = None
    if out["smallest_gpu"] is None and out["seq_len"] is None and "seq_len" not in fixed:
        short = _smallest_gpu(spec, g, {**fixed, "seq_len": MIN_SEQ_LEN}, check)
        out["smallest_gpu_short"] = {"gpu": short, "seq_len": MIN_SEQ_LEN} if short else None
    out.update(_count_way_out(spec, g, fixed, check, max_gpus, single_fits=bool(
        out["smallest_gpu"] or out["smallest_gpu_short"] or out["seq_len"])))
    return out


@dataclass(frozen=True)
class _Check:
    """The search settings of the verdict; ``fits`` asks the same search about changed knobs."""

    objective: str
    margin: float
    gpu_file: str | None
    calibrate: bool

    def fits(self, spec: ModelSpec, gpu: GPUSpec, knobs: dict[str, Any]) -> bool:
        """True when ``plan_search`` returns at least one plan (knobs that do not validate: False)."""
        return self.best(spec, gpu, knobs) is not None

    def best(self, spec: ModelSpec, gpu: GPUSpec, knobs: dict[str, Any]) -> Plan | None:
        """The search's first plan for the changed knobs, or None (nothing fits, or the knobs do not validate)."""
        try:
            res = plan_search(spec, gpu, objective=self.objective, margin=self.margin, top=1,
                              gpu_file=self.gpu_file, calibrate=self.calibrate, **knobs)
        except FtplanError:
            return None
        return res.plans[0] if res.plans else None


def _leanest(spec: ModelSpec, gpu: GPUSpec, fixed: dict[str, Any], objective: str) -> tuple[TrainConfig, int]:
    """The configuration with the least device memory among the search's candidates, and that memory
    (the figure the search compared with the budget)."""
    knobs = dict(fixed)
    if "lora_targets" in knobs:
        knobs["lora_targets"] = parse_targets(knobs["lora_targets"])
    best: tuple[int, TrainConfig] | None = None
    for cfg, _ in enumerate_configs(spec, gpu, knobs, objective):
        dev = device_bytes_fast(spec, cfg, gpu)
        if best is None or dev < best[0]:
            best = (dev, cfg)
    assert best is not None  # the search space always has a candidate
    return best[1], best[0]


def _seq_way_out(spec: ModelSpec, gpu: GPUSpec, fixed: dict[str, Any], check: _Check) -> dict[str, Any]:
    """The longest power-of-two sequence length below the current one (>= MIN_SEQ_LEN) that fits."""
    if "seq_len" in fixed:
        return {"seq_len": None, "seq_len_fixed": int(fixed["seq_len"]), "seq_len_tried": []}
    current = int(DEFAULTS["seq_len"])
    tried = []
    length = 1 << ((current - 1).bit_length() - 1)  # the largest power of two below the current length
    while length >= MIN_SEQ_LEN:
        tried.append(length)
        if check.fits(spec, gpu, {**fixed, "seq_len": length}):
            return {"seq_len": length, "seq_len_fixed": None, "seq_len_tried": tried}
        length //= 2
    return {"seq_len": None, "seq_len_fixed": None, "seq_len_tried": tried}


def _method_way_out(spec: ModelSpec, gpu: GPUSpec, fixed: dict[str, Any], check: _Check) -> dict[str, Any]:
    """The next lighter (method, base) that fits, when the caller fixed the method or the base."""
    if "method" not in fixed and "quant" not in fixed:
        return {"method": None, "method_fixed": None, "method_tried": []}
    method, quant = method_quant(fixed.get("method"), fixed.get("quant"))
    step = METHOD_LADDER.index((method, _LADDER_STEP[quant]) if method != "qlora" else ("qlora", "nf4"))
    quant = _on_gpu(gpu, quant)
    tried = []
    for m, q in METHOD_LADDER[step + 1:]:
        q = _on_gpu(gpu, q)
        tried.append(f"{m}/{q}")
        if check.fits(spec, gpu, {**fixed, "method": m, "quant": q}):
            return {"method": {"method": m, "quant": q}, "method_fixed": f"{method}/{quant}", "method_tried": tried}
    return {"method": None, "method_fixed": f"{method}/{quant}", "method_tried": tried}


def _on_gpu(gpu: GPUSpec, quant: str) -> str:
    """bf16 is fp16 on a GPU without bf16 (as ``make_config`` does)."""
    return "fp16" if quant == "bf16" and no_bf16(gpu) else quant


def _smallest_gpu(spec: ModelSpec, gpu: GPUSpec | None, fixed: dict[str, Any], check: _Check) -> str | None:
    """The catalog GPU with the least usable memory that fits (never one with less memory than ``gpu``)."""
    for cand in list_gpus(check.gpu_file):
        if gpu is not None and (cand.key == gpu.key or cand.usable_bytes < gpu.usable_bytes):
            continue
        if check.fits(spec, cand, fixed):
            return cand.key
    return None


def _count_way_out(spec: ModelSpec, gpu: GPUSpec, fixed: dict[str, Any], check: _Check, max_gpus: int | None,
                   single_fits: bool) -> dict[str, Any]:
    """The least count of ``gpu`` that fits, with the strategy the search picks for it (DDP, FSDP, FSDP with
    parameters on the host; the one given with ``sharding``), only when no single GPU does (see ``suggest``)."""
    asked = int(fixed.get("num_gpus") or 1)
    nodes = int(fixed.get("nodes") or 1)
    cap = max_gpus if max_gpus is not None else (NODE_GPUS * nodes if asked <= NODE_GPUS * nodes else GPU_COUNTS[-1])
    out: dict[str, Any] = {"gpu_count": None, "max_gpus": cap, "sharding": None, "offload": "none",
                           "host_bytes": 0, "gpu_count_note": ""}
    if single_fits:
        out["gpu_count_note"] = "not suggested: a single GPU fits (see the other ways out)"
        return out
    for n in GPU_COUNTS:
        if not asked < n <= cap:
            continue
        if n % nodes:
            continue
        plan = check.best(spec, gpu, {**fixed, "num_gpus": n})
        if plan is not None:
            out.update(gpu_count=n, sharding=plan.config.sharding, offload=plan.config.offload,
                       host_bytes=plan.estimate.host_bytes, nodes=plan.config.nodes)
            return out
    out["gpu_count_note"] = f"no count up to {cap} x {gpu.key} fits"
    return out
