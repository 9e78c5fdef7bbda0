"""Achievable rates per GPU: measured dense 16-bit matmul FLOP/s and memory bandwidth where a public benchmark
measured them (``data/gpu_rates.csv``; sources and method per row in ``data/gpu_rates.md``), turned into
each catalog card's ratio of achievable to datasheet (``GPUSpec.matmul_ratio``/``bandwidth_ratio``).

A card measured gets its own ratio; any other card gets the median ratio of the measured ones, flagged as
such in ``GPUSpec.rates_note``. Datasheet peaks overstate what kernels reach: tensor-core peaks assume boost
clocks that power-limited cards do not hold under a sustained GEMM, and no copy kernel reaches the memory's
peak. The medians come from the file itself, so adding a measurement moves them; ``ftplan gpus --rates``
prints every card's figures.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from ..planner.types import GPUSpec

DATA = Path(__file__).parent / "data" / "gpu_rates.csv"


class Measured(NamedTuple):
    matmul_tflops: float | None  # dense 16-bit matmul, TFLOP/s
    matmul_source: str
    bandwidth_gbs: float | None  # device memory, GB/s
    bandwidth_source: str


def _num(s: str | None) -> float | None:
    try:
        v = float((s or "").strip())
    except ValueError:
        return None
    return v if v > 0 else None


@lru_cache(maxsize=1)
def measured() -> dict[str, Measured]:
    """{catalog key: the measured figures} from ``data/gpu_rates.csv`` (empty cells are None)."""
    if not DATA.exists():
        return {}
    out: dict[str, Measured] = {}
    with DATA.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out[row["key"].strip()] = Measured(_num(row.get("matmul_tflops_measured")), row.get("matmul_source", ""),
                                               _num(row.get("bandwidth_gbs_measured")), row.get("bandwidth_source", ""))
    return out


def tensor_peak(gpu: GPUSpec) -> float | None:
    """The dense 16-bit tensor rate with fp32 accumulation a measured GEMM is compared with."""
    return (gpu.bf16_tflops if gpu.bf16 else None) or gpu.fp16_tflops


def with_rates(catalog: dict[str, GPUSpec]) -> dict[str, GPUSpec]:
    """The catalog with each card's achievable/datasheet ratios and the note saying what they rest on."""
    m = measured()
    mm = {k: m[k].matmul_tflops / p for k, g in catalog.items()  # type: ignore[operator]
          if k in m and m[k].matmul_tflops and (p := tensor_peak(g))}
    bw = {k: m[k].bandwidth_gbs / g.bandwidth_gbs for k, g in catalog.items()  # type: ignore[operator]
          if k in m and m[k].bandwidth_gbs and g.bandwidth_gbs}
    med_mm = statistics.median(mm.values()) if mm else None
    med_bw = statistics.median(bw.values()) if bw else None
    out = {}
    for k, g in catalog.items():
        r_mm, r_bw = mm.get(k, med_mm), bw.get(k, med_bw)
        parts = []
        if k in mm:
            parts.append(f"matmul measured ({m[k].matmul_tflops:g} TFLOP/s)")
        elif med_mm is not None:
            parts.append(f"matmul datasheet x {med_mm:.2f} (median of {len(mm)} measured cards)")
        if k in bw:
            parts.append(f"bandwidth measured ({m[k].bandwidth_gbs:g} GB/s)")
        elif med_bw is not None:
            parts.append(f"bandwidth datasheet x {med_bw:.2f} (median of {len(bw)} measured cards)")
        out[k] = replace(g, matmul_ratio=r_mm, bandwidth_ratio=r_bw, rates_note="; ".join(parts))
    return out
