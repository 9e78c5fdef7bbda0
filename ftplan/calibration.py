"""The calibration store: measured/predicted ratios from real runs, per GPU and library versions; on
its own because ``tune`` writes it and the library face (``api``) reads it.

``ftplan autotune`` writes, after each study, the median ratio of the measured to the predicted
figure over its finished trials (``memory``: peak reserved on CUDA, the tensor-level peak on the CPU;
``tokens_per_s``: measured over predicted throughput). ``ftplan.estimate`` applies the factors recorded
for the same GPU and the same torch/transformers/peft/bitsandbytes versions and says so in
``Estimate.calibration``; with other versions nothing is applied (a new library can change memory).

The store is one JSON file: ``$FTPLAN_CALIBRATION`` or ``~/.cache/ftplan/calibration.json``.
Standard library only: ``import ftplan`` must stay light.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .planner.types import Calibration, Estimate

STACK = ("torch", "transformers", "peft", "bitsandbytes")
FACTOR_RANGE = (0.25, 4.0)  # a ratio outside this says the run measured something else: not stored


def store_path() -> Path:
    env = os.environ.get("FTPLAN_CALIBRATION")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ftplan" / "calibration.json"


def stack_versions() -> str:
    """'torch=2.13.0 transformers=5.23.0 ...' read from package metadata (no import of the packages)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in STACK:
        try:
            out.append(f"{pkg}={version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg}=none")
    return " ".join(out)


def load(path: Path | None = None) -> dict[str, Any]:
    p = path or store_path()
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        return {"entries": {}}
    except (OSError, ValueError):
        return {"entries": {}}  # unreadable store: estimates stay uncalibrated rather than fail
    return data if isinstance(data.get("entries"), dict) else {"entries": {}}


def _key(gpu: str, versions: str) -> str:
    return f"{gpu}|{versions}"


def ratios(pairs: Iterable[tuple[float | None, float | None]]) -> list[float]:
    """measured/predicted for every pair where both are known and positive, in ``FACTOR_RANGE``."""
    out = []
    for measured, predicted in pairs:
        if measured and predicted and measured > 0 and predicted > 0:
            r = measured / predicted
            if FACTOR_RANGE[0] <= r <= FACTOR_RANGE[1]:
                out.append(r)
    return out


def record(gpu: str, memory: list[float], tokens_per_s: list[float], source: str,
           versions: str | None = None, path: Path | None = None) -> dict[str, Any] | None:
    """Store the medians of the given ratios for ``gpu`` and the installed stack; None if no ratio."""
    if not memory and not tokens_per_s:
        return None
    versions = versions or stack_versions()
    factors: dict[str, float] = {}
    if memory:
        factors["memory"] = statistics.median(memory)
    if tokens_per_s:
        factors["tokens_per_s"] = statistics.median(tokens_per_s)
    entry = {"gpu": gpu, "versions": versions, "factors": factors, "source": source,
             "samples": {"memory": len(memory), "tokens_per_s": len(tokens_per_s)}}
    p = path or store_path()
    data = load(p)
    data["entries"][_key(gpu, versions)] = entry
    atomic_write_text(p, json.dumps(data, indent=1, sort_keys=True))
    return entry


def lookup(gpu: str, path: Path | None = None) -> Calibration | None:
    p = path or store_path()
    if not p.exists():
        return None
    entries = load(p)["entries"]
    if not any(k.startswith(gpu + "|") for k in entries):
        return None
    versions = stack_versions()
    e = entries.get(_key(gpu, versions))
    if e is None:
        return None
    return Calibration(gpu=gpu, versions=versions, factors=dict(e["factors"]), source=e.get("source", ""))


def apply(est: Estimate, cal: Calibration, margin: float = 0.0) -> Estimate:
    """The estimate with the measured factors applied: reserved and device bytes times ``memory``
    (allocated stays the model's, the term breakdown too), tokens/s times ``tokens_per_s`` (hours and
    dollars follow). ``calibration`` records what was applied."""
    mem = cal.factors.get("memory", 1.0)
    speed = cal.factors.get("tokens_per_s", 1.0)
    reserved = int(est.peak_reserved_bytes * mem)
    device = int(est.device_bytes * mem)
    fits = est.fits if est.usable_bytes is None else device <= est.usable_bytes * (1.0 - margin)
    time, cost = est.time, est.cost
    if time is not None and speed != 1.0:
        time = replace(time, tokens_per_s=time.tokens_per_s * speed, step_time_s=time.step_time_s / speed,
                       calibrated=True)
        if cost is not None:
            dollars = cost.dollars / speed if cost.dollars is not None else None
            cost = replace(cost, hours=cost.hours / speed, gpu_hours=cost.gpu_hours / speed, dollars=dollars)
    return replace(est, peak_reserved_bytes=reserved, device_bytes=device, fits=fits, time=time, cost=cost,
                   calibration=cal)
