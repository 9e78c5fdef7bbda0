"""The library face: ``estimate``, ``plan``, ``suggest`` (re-exported by ``ftplan``; top level because it
joins the planner, the catalogs and the calibration store). Plain objects, no side effects, no torch."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .errors import FtplanError
from .planner.estimate import build_estimate
from .planner.memory.phases import memory_model
from .planner.options import make_config
from .planner.search import DEFAULT_MARGIN, SearchResult, min_memory_config, search
from .planner.types import Estimate, GPUSpec, ModelSpec, Plan
from .profiles.gpus import get_gpu, list_gpus
from .profiles.models import get_model

__all__ = ["estimate", "plan", "plan_search", "suggest", "get_gpu", "get_model"]


def _gpu(gpu: str | GPUSpec | None, gpu_file: str | None) -> GPUSpec | None:
    if gpu is None:
        return None
    return get_gpu(gpu, gpu_file)


def estimate(model: str | ModelSpec, gpu: str | GPUSpec | None = None, *, tokens: float | None = None,
             epochs: float = 1.0, price: float | None = None, gpu_file: str | None = None,
             spot_discount: float = 0.0, calibrate: bool = True, **knobs: Any) -> Estimate:
    """Memory per phase, the peak, whether it fits ``gpu``, and (with a GPU) tokens/s, hours and dollars
    for one configuration. Knobs not given take the defaults in ``planner.options.DEFAULTS``.
    With ``calibrate`` (the default), measured factors that ``ftplan autotune`` stored for this GPU and
    the installed library versions are applied, and ``Estimate.calibration`` says which.

    >>> est = estimate("8b", "a100-80gb", method="qlora", micro_batch=1, seq_len=2048)
    >>> est.fits, est.peak_phase
    (True, 'backward')
    """
    spec = get_model(model)
    g = _gpu(gpu, gpu_file)
    resolved = make_config(spec, g, **knobs)
    est = build_estimate(spec, resolved.config, g, tokens, epochs, price, resolved.warnings, spot_discount)
    return _calibrated(est) if calibrate and g is not None else est


def _calibrated(est: Estimate, margin: float = 0.0) -> Estimate:
    from . import calibration

    cal = calibration.lookup(est.gpu) if est.gpu else None
    return calibration.apply(est, cal, margin) if cal is not None else est


def plan_search(model: str | ModelSpec, gpu: str | GPUSpec, *, objective: str = "throughput",
                tokens: float | None = None, epochs: float = 1.0, price: float | None = None,
                margin: float = DEFAULT_MARGIN, top: int | None = None, gpu_file: str | None = None,
                spot_discount: float = 0.0, diverse: bool = False, calibrate: bool = True, **knobs: Any) -> SearchResult:
    """``plan`` with the search's counts (candidates evaluated, feasible) and warnings. ``diverse`` keeps
    only the best configuration of each (method, base, micro-batch, checkpointing, loss, rank, targets)."""
    if not 0.0 <= margin < 1.0:
        raise FtplanError(f"margin={margin} must be in [0, 1)")
    spec = get_model(model)
    g = _gpu(gpu, gpu_file)
    if g is None:
        raise FtplanError("plan needs a GPU (a name from `ftplan gpus`, or 'auto')")
    res = search(spec, g, knobs, objective, tokens, epochs, price, margin, top, spot_discount, diverse)
    if not calibrate:
        return res
    from . import calibration

    cal = calibration.lookup(g.key)
    if cal is None:
        return res
    plans = [replace(p, estimate=calibration.apply(p.estimate, cal, margin)) for p in res.plans]
    return replace(res, plans=plans)


def plan(model: str | ModelSpec, gpu: str | GPUSpec, **kwargs: Any) -> list[Plan]:
    """Ranked configurations that fit ``gpu`` (best first); knobs given are fixed, the rest searched.
    An empty list means nothing fits (see ``suggest``)."""
    return plan_search(model, gpu, **kwargs).plans


def suggest(model: str | ModelSpec, gpu: str | GPUSpec | None = None, *, margin: float = DEFAULT_MARGIN,
            gpu_file: str | None = None, **knobs: Any) -> dict[str, Any]:
    """When nothing fits: the smallest catalog GPU that fits the leanest allowed configuration, and the
    smallest count of ``gpu`` (FSDP) that does."""
    spec = get_model(model)
    g = _gpu(gpu, gpu_file)
    fixed = {k: v for k, v in knobs.items() if v is not None and k not in ("num_gpus", "sharding")}
    lean = min_memory_config(spec, g, fixed)
    out: dict[str, Any] = {"lean_config": lean, "smallest_gpu": None, "gpu_count": None,
                           "lean_bytes": memory_model(spec, lean, g).device_bytes if g is not None else None}
    for cand in list_gpus(gpu_file):
        if memory_model(spec, lean, cand).device_bytes <= cand.usable_bytes * (1 - margin):
            out["smallest_gpu"] = cand.key
            break
    if g is not None:
        for n in (2, 4, 8, 16, 32, 64):
            cfg = make_config(spec, g, **{**lean.knobs(), "num_gpus": n, "sharding": "fsdp"}).config
            if memory_model(spec, cfg, g).device_bytes <= g.usable_bytes * (1 - margin):
                out["gpu_count"] = n
                break
    return out
