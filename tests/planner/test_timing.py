"""The speed model's rate rules (``timing.compute_rate`` / ``_rate``): which datasheet figure a step time
rests on, by compute dtype, what happens when the catalog has none, and how the achievable rate is made
from it (measured, or the datasheet x the median measured/datasheet ratio, ``profiles.rates``). The
operations' own times are tested in ``test_ops.py``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

import ftplan
from ftplan.planner.timing import (
    BASIS_BANDWIDTH,
    BASIS_CUDA_CORE,
    BASIS_NONE,
    BASIS_TENSOR,
    DEFAULT_MATMUL_RATIO,
    _rate,
    compute_dtype,
    compute_rate,
    ranking_basis,
    speed_basis,
    step_time,
    tokens_per_s,
)
from ftplan.planner.types import GPUSpec, TrainConfig

RATIO = DEFAULT_MATMUL_RATIO  # the fake GPU carries no ratio of its own


def _gpu(**kw: object) -> GPUSpec:
    base: dict[str, object] = dict(key="fake", name="Fake GPU", memory_gb=24.0, usable_bytes=24 << 30,
                                   usable_source="test", bandwidth_gbs=1000.0, bf16_tflops=1.0, fp16_tflops=0.8,
                                   fp32_tflops=0.25, compute_capability=8.6, bf16=True, flash_attention_2=True,
                                   price_per_hour=None)
    base.update(kw)
    return GPUSpec(**base)  # type: ignore[arg-type]


def _cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = dict(method="full", quant="bf16", micro_batch=1, seq_len=8, grad_accum=1,
                                   gradient_checkpointing=False, optimizer="adamw", attention="sdpa")
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _achievable(g: GPUSpec, cfg: TrainConfig) -> float | None:
    r = _rate(g, cfg)
    return None if r is None else r.tflops


# --- which figure, by compute dtype --------------------------------------------------------------

def test_bf16_compute_rests_on_the_bf16_tensor_rate(tiny):
    t = step_time(tiny, _cfg(), _gpu())
    assert t is not None and _achievable(_gpu(), _cfg()) == pytest.approx(1.0 * RATIO)
    assert t.notes[0].startswith("by operation from the bf16 tensor rate; matmul datasheet x 0.75")
    assert "throughput objective: tokens/s from the bf16 tensor rate" in t.notes
    assert speed_basis(_gpu(), _cfg()) == BASIS_TENSOR


def test_bf16_without_a_bf16_figure_uses_the_fp16_figure_and_says_so(tiny):
    g = _gpu(bf16_tflops=None)
    t = step_time(tiny, _cfg(), g)
    assert t is not None and _achievable(g, _cfg()) == pytest.approx(0.8 * RATIO)
    assert t.notes[0].startswith("by operation from the fp16 tensor (no bf16 figure in the catalog")


def test_fp16_model_rests_on_the_fp16_rate_not_bf16(tiny):
    # the fake GPU's fp16 figure (0.8) differs from bf16 (1.0): an fp16 model must use 0.8
    cfg = _cfg(quant="fp16")
    assert compute_dtype(_gpu(), cfg) == "fp16"
    t = step_time(tiny, cfg, _gpu())
    assert t is not None and _achievable(_gpu(), cfg) == pytest.approx(0.8 * RATIO)
    assert t.notes[0].startswith("by operation from the fp16 tensor rate")
    assert step_time(tiny, cfg, _gpu()).tokens_per_s < step_time(tiny, _cfg(), _gpu()).tokens_per_s  # type: ignore[union-attr]


def test_gpu_without_bf16_computes_in_fp16(tiny):
    g = _gpu(bf16=False, bf16_tflops=None, fp16_tflops=65.0)  # Turing/T4-like
    assert compute_dtype(g, _cfg()) == "fp16"
    assert compute_rate(g, "fp16") == (65.0, "fp16 tensor", BASIS_TENSOR)


def test_fp32_without_autocast_rests_on_the_cuda_core_rate(tiny):
    cfg = _cfg(quant="fp32", autocast=False)
    t = step_time(tiny, cfg, _gpu())
    assert t is not None and _achievable(_gpu(), cfg) == pytest.approx(0.25 * RATIO)
    assert t.notes[0].startswith("by operation from the fp32 CUDA-core rate")
    assert speed_basis(_gpu(), cfg) == BASIS_CUDA_CORE


def test_gpu_without_tensor_cores_uses_the_cuda_core_rate_and_says_so(tiny):
    g = _gpu(bf16=False, bf16_tflops=None, fp16_tflops=None, sources="no-tensor:SOME_SOURCE")
    t = step_time(tiny, _cfg(quant="fp16"), g)
    assert t is not None and _achievable(g, _cfg(quant="fp16")) == pytest.approx(0.25 * RATIO)
    assert "no tensor cores" in t.notes[0] and "fp32 CUDA-core" in t.notes[0]
    assert speed_basis(g, _cfg(quant="fp16")) == BASIS_CUDA_CORE


# --- no rate for the compute dtype: no speed, and the ranking says so --------------------------------

def test_no_tensor_rate_gives_no_speed_and_a_memory_ranking(tiny):
    # tensor cores, no tensor figure, an fp32 figure: neither the fp32 rate nor a bandwidth-only figure
    # (memory traffic alone ignores the matmuls, many times too fast) is shown as a speed
    g = _gpu(bf16_tflops=None, fp16_tflops=None)
    assert step_time(tiny, _cfg(), g) is None and tokens_per_s(tiny, _cfg(), g) is None
    assert speed_basis(g, _cfg()) == BASIS_BANDWIDTH
    rank = ranking_basis(g, _cfg())
    assert rank.startswith("least device memory") and "no bf16 tensor rate" in rank


def test_no_bandwidth_means_no_estimate_and_memory_ranking(tiny):
    g = _gpu(bandwidth_gbs=None)
    assert step_time(tiny, _cfg(), g) is None and tokens_per_s(tiny, _cfg(), g) is None
    assert speed_basis(g, _cfg()) == BASIS_NONE
    assert ranking_basis(g, _cfg()).startswith("least device memory")


def test_fp32_rate_never_stands_in_for_tensor_work():
    g = _gpu(bf16_tflops=None, fp16_tflops=None)
    for dtype in ("bf16", "fp16"):
        peak, _, basis = compute_rate(g, dtype)
        assert peak is None and basis == BASIS_BANDWIDTH


# --- the catalog cases from the issue -------------------------------------------------------------

KNOBS = dict(method="qlora", micro_batch=2, seq_len=2048, gradient_checkpointing=True)


def test_rtx6000ada_predicted_faster_than_a6000():
    ada = ftplan.estimate(model="8b", gpu="rtx6000ada", **KNOBS)
    amp = ftplan.estimate(model="8b", gpu="a6000", **KNOBS)
    assert ada.time is not None and amp.time is not None
    assert ada.time.tokens_per_s > 1.5 * amp.time.tokens_per_s  # 364 vs 154.8 dense bf16 TFLOPS
    assert ada.time.notes[0].startswith("by operation from the bf16 tensor rate")


def test_rtx5090_gets_a_speed_and_the_search_ranks_by_it():
    est = ftplan.estimate(model="8b", gpu="rtx5090", **KNOBS)
    assert est.time is not None and est.time.tokens_per_s > 0
    assert est.time.notes[0].startswith("by operation from the bf16 tensor rate")
    plans = ftplan.plan("8b", "rtx5090", objective="throughput", top=5)
    assert plans and all(p.estimate.time is not None for p in plans)
    tps = [p.estimate.time.tokens_per_s for p in plans if p.estimate.time is not None]
    assert tps[0] >= max(tps) * 0.99  # ranked by speed (ties within 0.5% go to the simpler setup)


def test_fast_path_equals_step_time_for_every_basis(tiny):
    for g in (_gpu(), _gpu(bf16_tflops=None, fp16_tflops=None), _gpu(sources="no-tensor:X")):
        for cfg in (_cfg(), _cfg(quant="fp16"), _cfg(quant="fp32", autocast=False), replace(_cfg(), grad_accum=3)):
            t = step_time(tiny, cfg, g, 1e5)
            fast = tokens_per_s(tiny, cfg, g, 1e5)
            assert (fast is None and t is None) if t is None else fast == t.tokens_per_s
