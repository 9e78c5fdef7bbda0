"""Ranges for every time and cost figure: how far the measured truth has fallen from the model's point.

Uncalibrated, the range is the spread of measured/predicted tokens/s over the published training runs
of ``benchmarks/published_speed.py`` of the same kind (one GPU, or several: communication and sharding err
more), its 10th and 90th percentiles (``profiles/data/speed_band.json``, written by
``python benchmarks/published_speed.py --write-band`` with the row count and date it rests on).
So "7.2 h (5.9-8.8 h)" reads: eight in ten published runs of this kind fell within this range of the
model's figure.

Calibrated (a measured tokens/s ratio from the user's own runs applies, ``ftplan.calibration``), the range
is the spread of that study's own measured/predicted ratios around the median that was applied, and never
narrower than ``CALIBRATED_FLOOR`` either side: run-to-run variation of steady-state tokens/s on the same
machine (data-loader stalls, clocks, other processes).

Hours and dollars are tokens over tokens/s, so their range is the tokens/s range inverted.

Memory (``memory_band``): the device figure's range is the spread of published/predicted peak memory over
the published runs of ``benchmarks/published.py`` (one GPU) and ``benchmarks/published_multi.py`` (several),
each in the metric its source reported, 10th and 90th percentiles (``profiles/data/memory_band.json``,
written by ``--write-band``). Once a measured memory factor applies (``ftplan.calibration``), the figure rests
on the user's own runs and no published range is given.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from .types import CostEstimate, TimeEstimate

BAND_FILE = Path(__file__).resolve().parents[1] / "profiles" / "data" / "speed_band.json"
MEMORY_BAND_FILE = BAND_FILE.with_name("memory_band.json")
CALIBRATED_FLOOR = 0.05
# Without the benchmark's file (a damaged install): a wide range, said as such.
FALLBACK = (0.5, 1.5)


class Band(NamedTuple):
    low: float  # measured/predicted tokens/s at the low end
    high: float
    basis: str  # in words: what the range rests on


def kind_of(num_gpus: int) -> str:
    """The kind of prediction a band is measured for: one GPU, or several (communication and sharding)."""
    return "multi_gpu" if num_gpus > 1 else "single_gpu"


@lru_cache(maxsize=4)
def uncalibrated(kind: str = "single_gpu") -> Band:
    """The published benchmark's 10th-90th percentile of measured/predicted tokens/s for ``kind``."""
    try:
        d = json.loads(BAND_FILE.read_text(encoding="utf-8"))[kind]
        lo, hi, n = float(d["p10"]), float(d["p90"]), int(d["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        return Band(*FALLBACK, "no benchmark band found: a wide default range")
    lo, hi = min(lo, 1.0), max(hi, 1.0)  # the point lies inside its own range
    what = "single-GPU" if kind == "single_gpu" else "multi-GPU"
    return Band(lo, hi, f"10th-90th percentile of measured/predicted tokens/s over {n} published {what} runs "
                        "(benchmarks/published_speed.py)")


@lru_cache(maxsize=4)
def memory_band(kind: str = "single_gpu") -> Band | None:
    """Published/predicted peak memory over the published runs of ``kind``, 10th-90th percentile, or None
    without the benchmark's file (then the figure is said to be analytical, with no range)."""
    try:
        d = json.loads(MEMORY_BAND_FILE.read_text(encoding="utf-8"))[kind]
        lo, hi, n, med = float(d["p10"]), float(d["p90"]), int(d["rows"]), float(d["median_abs_error"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    lo, hi = min(lo, 1.0), max(hi, 1.0)
    what = "single-GPU" if kind == "single_gpu" else "multi-GPU"
    script = "published.py" if kind == "single_gpu" else "published_multi.py"
    return Band(lo, hi, f"analytical; 10th-90th percentile of published/predicted peak memory over {n} published "
                        f"{what} runs, median |error| {med:.1%} (benchmarks/{script})")


def memory_range(device_bytes: int, band: Band) -> tuple[int, int]:
    return int(device_bytes * band.low), int(device_bytes * band.high)


def calibrated(spread: tuple[float, float] | None, kind: str = "single_gpu") -> Band:
    """The range once a measured tokens/s factor applies: the study's own spread around its median,
    at least ``CALIBRATED_FLOOR`` either side, never wider than the uncalibrated range."""
    u = uncalibrated(kind)
    lo, hi = spread if spread else (1.0, 1.0)
    lo = max(min(lo, 1.0 - CALIBRATED_FLOOR), u.low)
    hi = min(max(hi, 1.0 + CALIBRATED_FLOOR), u.high)
    what = "the calibration runs' own spread" if spread else "no spread stored"
    return Band(lo, hi, f"calibrated: {what}, at least {CALIBRATED_FLOOR:.0%} either side")


def tokens_range(tokens_per_s: float, band: Band) -> tuple[float, float]:
    return tokens_per_s * band.low, tokens_per_s * band.high


def inverse_range(value: float, band: Band) -> tuple[float, float]:
    """The range of a figure proportional to 1 / tokens/s (hours, GPU-hours, dollars)."""
    return value / band.high, value / band.low


def with_ranges(time: TimeEstimate | None, cost: CostEstimate | None,
                band: Band) -> tuple[TimeEstimate | None, CostEstimate | None]:
    """``time`` and ``cost`` with their ranges from ``band``."""
    if time is None:
        return None, cost
    time = replace(time, tokens_per_s_range=tokens_range(time.tokens_per_s, band), range_basis=band.basis)
    if cost is not None:
        dollars = inverse_range(cost.dollars, band) if cost.dollars is not None else None
        cost = replace(cost, hours_range=inverse_range(cost.hours, band),
                       gpu_hours_range=inverse_range(cost.gpu_hours, band), dollars_range=dollars)
    return time, cost
