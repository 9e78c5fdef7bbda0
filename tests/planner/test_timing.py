"""The speed model's rate rules (``timing.compute_rate`` / ``_rate``): which datasheet figure a step time
rests on, by compute dtype, and what happens when the catalog has none.

Hand-computed figures use the ``tiny`` model (conftest): per layer q 64x64, k 64x32, v 64x32, o 64x64,
gate 64x128, up 64x128, down 128x64 = 36,864 weights; 2 layers = 73,728 linear weights, plus lm_head
100x64 = 6,400, so N = 80,128. Full fine-tuning, seq_len 8, no checkpointing:
- attention 2*s*a*d*L = 2*8*4*16*2 = 2,048 FLOPs per token;
- forward 2N + attn = 162,304; backward 4N + 2 attn = 324,608; total 486,912 FLOPs per token;
- one micro-batch of 8 tokens: 3,895,296 FLOPs;
- weight reads: 2 passes (forward, backward) x 73,728 weights x 2 B (16-bit) = 294,912 B, or x 4 B (fp32)
  = 589,824 B.
The fake GPU has 1,000 GB/s, read at BANDWIDTH_EFFICIENCY 0.8 = 8e11 B/s, so 16-bit weight reads take
294,912 / 8e11 = 3.6864e-7 s; compute at R datasheet TFLOPS takes 3,895,296 / (R * 1e12 * 0.48) s.
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
    compute_dtype,
    compute_rate,
    ranking_basis,
    speed_basis,
    step_time,
    tokens_per_s,
)
from ftplan.planner.types import GPUSpec, TrainConfig

FLOPS_MICRO = 486_912 * 8  # FLOPs of one 8-token micro-batch of the tiny model, full fine-tuning
READS_16 = 2 * 73_728 * 2  # bytes of 16-bit weight reads per micro-batch (forward + backward)
READS_32 = 2 * 73_728 * 4
BW = 1000 * 1e9 * 0.8  # effective bytes/s of the fake GPU


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


def _compute_bound_tps(tflops: float) -> float:
    return 8 / (FLOPS_MICRO / (tflops * 1e12 * 0.48))


# --- which figure, by compute dtype --------------------------------------------------------------

def test_bf16_compute_rests_on_the_bf16_tensor_rate(tiny):
    # 3,895,296 / (1.0e12 * 0.48) = 8.1152e-6 s > reads 3.6864e-7 s: compute-bound, 985,804 tokens/s
    t = step_time(tiny, _cfg(), _gpu())
    assert t is not None and t.bound == "compute"
    assert t.tokens_per_s == pytest.approx(985_804, rel=1e-6) == pytest.approx(_compute_bound_tps(1.0))
    assert t.notes[0] == "compute from the bf16 tensor rate x 0.48 (prior)"
    assert "throughput objective: tokens/s from the bf16 tensor rate" in t.notes
    assert speed_basis(_gpu(), _cfg()) == BASIS_TENSOR


def test_bf16_without_a_bf16_figure_uses_the_fp16_figure_and_says_so(tiny):
    g = _gpu(bf16_tflops=None)
    t = step_time(tiny, _cfg(), g)
    assert t is not None and t.tokens_per_s == pytest.approx(_compute_bound_tps(0.8))  # 788,644 tokens/s
    assert t.notes[0].startswith("compute from the fp16 tensor (no bf16 figure in the catalog")


def test_fp16_model_rests_on_the_fp16_rate_not_bf16(tiny):
    # the fake GPU's fp16 figure (0.8) differs from bf16 (1.0): an fp16 model must use 0.8
    cfg = _cfg(quant="fp16")
    assert compute_dtype(_gpu(), cfg) == "fp16"
    t = step_time(tiny, cfg, _gpu())
    assert t is not None and t.tokens_per_s == pytest.approx(_compute_bound_tps(0.8))
    assert t.notes[0] == "compute from the fp16 tensor rate x 0.48 (prior)"


def test_gpu_without_bf16_computes_in_fp16(tiny):
    g = _gpu(bf16=False, bf16_tflops=None, fp16_tflops=65.0)  # Turing/T4-like
    assert compute_dtype(g, _cfg()) == "fp16"
    assert compute_rate(g, "fp16") == (65.0, "fp16 tensor", BASIS_TENSOR)


def test_fp32_without_autocast_rests_on_the_cuda_core_rate(tiny):
    # 3,895,296 / (0.25e12 * 0.48) = 3.24608e-5 s > reads 589,824 / 8e11 = 7.3728e-7 s: 246,451 tokens/s
    cfg = _cfg(quant="fp32", autocast=False)
    t = step_time(tiny, cfg, _gpu())
    assert t is not None and t.tokens_per_s == pytest.approx(246_451, rel=1e-5)
    assert t.notes[0] == "compute from the fp32 CUDA-core rate x 0.48 (prior)"
    assert speed_basis(_gpu(), cfg) == BASIS_CUDA_CORE


def test_gpu_without_tensor_cores_uses_the_cuda_core_rate_and_says_so(tiny):
    g = _gpu(bf16=False, bf16_tflops=None, fp16_tflops=None, sources="no-tensor:SOME_SOURCE")
    t = step_time(tiny, _cfg(quant="fp16"), g)
    assert t is not None and t.tokens_per_s == pytest.approx(_compute_bound_tps(0.25))
    assert "no tensor cores" in t.notes[0] and "fp32 CUDA-core" in t.notes[0]
    assert speed_basis(g, _cfg(quant="fp16")) == BASIS_CUDA_CORE


# --- no rate for the compute dtype: no speed, and the ranking says so --------------------------------

def test_no_tensor_rate_gives_no_speed_and_a_memory_ranking(tiny):
    # tensor cores, no tensor figure, an fp32 figure: neither the fp32 rate nor a bandwidth-only figure
    # (weight reads alone: 8 / 3.6864e-7 s = 21.7M tokens/s, absurd) is shown as a speed
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
    assert ada.time.notes[0] == amp.time.notes[0] == "compute from the bf16 tensor rate x 0.48 (prior)"


def test_rtx5090_gets_a_speed_and_the_search_ranks_by_it():
    est = ftplan.estimate(model="8b", gpu="rtx5090", **KNOBS)
    assert est.time is not None and est.time.tokens_per_s > 0
    assert est.time.notes[0] == "compute from the bf16 tensor rate x 0.48 (prior)"
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
