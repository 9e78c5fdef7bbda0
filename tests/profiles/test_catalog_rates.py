"""The catalog's compute rates as the speed model uses them: every GPU with a bandwidth gets a speed that
says what it rests on, the sourced dense tensor figures are in place, and the GPUs still without one are a
known, listed set (no speed is shown for them, and the ranking says it used memory instead)."""

from __future__ import annotations

import pytest

from ftplan.planner.options import make_config
from ftplan.planner.timing import (
    BASIS_BANDWIDTH,
    BASIS_CUDA_CORE,
    BASIS_TENSOR,
    ranking_basis,
    speed_basis,
    step_time,
)
from ftplan.profiles.gpus import get_gpu, list_gpus

# Cards with tensor cores whose dense fp32-accumulate tensor figure no source read gave (see the rows'
# notes). Sourcing one moves the card out of this set: update it then.
NO_TENSOR_FIGURE = {"rtx2060", "rtx3060", "rtx4060ti", "rtx4070ti", "a4000", "a5000"}
# Sourced cards without tensor cores: their 16-bit matmuls run on the CUDA cores.
NO_TENSOR_CORES = {"gtx1650", "gtx1660ti"}

# Dense (no sparsity) tensor figures with FP32 accumulate filled from NVIDIA whitepapers, and the source tag
# each row must cite: (bf16, fp16, tag).
FILLED = {
    "rtx2080ti": (None, 53.8, "TURING_BLOG"),
    "rtx3080": (59.5, 59.5, "DOC_3080"),
    "rtx5090": (209.5, 209.5, "RTXBW_WP"),
    "a6000": (154.8, 154.8, "RTXPRO_WP"),
    "rtx6000ada": (364.0, 364.0, "RTXPRO_WP"),
    "rtx-pro-6000": (503.8, 503.8, "RTXPRO_WP"),
}


def _with_bandwidth():
    return [g for g in list_gpus() if g.bandwidth_gbs]


@pytest.mark.parametrize("gpu", _with_bandwidth(), ids=lambda g: g.key)
def test_every_gpu_with_a_bandwidth_gets_a_speed_that_says_what_it_rests_on(tiny, gpu):
    cfg = make_config(tiny, gpu, method="qlora", micro_batch=1, seq_len=64).config
    t = step_time(tiny, cfg, gpu)
    basis = speed_basis(gpu, cfg)
    if gpu.key in NO_TENSOR_FIGURE:  # no speed shown; the ranking says it used memory instead
        assert basis == BASIS_BANDWIDTH and t is None
        assert ranking_basis(gpu, cfg).startswith("least device memory (no speed estimate")
        return
    assert t is not None and t.tokens_per_s > 0
    if gpu.key in NO_TENSOR_CORES:
        assert basis == BASIS_CUDA_CORE and "no tensor cores" in t.notes[0]
    else:
        assert basis == BASIS_TENSOR and t.notes[0].startswith("by operation from the ")
        assert "tensor" in t.notes[0] and "matmul " in t.notes[0] and "bandwidth " in t.notes[0]
        assert "measured" in t.notes[0]  # either a measured rate or the median ratio of measured cards
    assert any(n.startswith("throughput objective: ") for n in t.notes)


def test_the_gaps_are_exactly_the_listed_cards(tiny):
    gaps = set()
    for g in _with_bandwidth():
        cfg = make_config(tiny, g, method="qlora").config
        if speed_basis(g, cfg) == BASIS_BANDWIDTH:
            gaps.add(g.key)
    assert gaps == NO_TENSOR_FIGURE


@pytest.mark.parametrize("key", sorted(FILLED))
def test_filled_dense_tensor_figures_and_their_sources(key):
    g = get_gpu(key)
    bf16, fp16, tag = FILLED[key]
    assert g.bf16_tflops == bf16 and g.fp16_tflops == fp16
    assert tag in g.sources


def test_tensor_columns_hold_dense_tensor_figures():
    """The RTX 6000 Ada's tensor rate is above the older A6000's (the issue: it was predicted slower from its
    fp32 CUDA-core rate); no tensor figure is at or below the card's CUDA-core fp32 rate (a shader figure in a
    tensor column: the trap the catalog notes describe for the Lightning table's GeForce bf16 = fp32
    entries); GPUs without bf16 (Turing, Volta) have no bf16 figure."""
    ada, amp = get_gpu("rtx6000ada"), get_gpu("a6000")
    assert ada.bf16_tflops is not None and amp.bf16_tflops is not None and ada.bf16_tflops > amp.bf16_tflops
    for g in list_gpus():
        for rate in (g.bf16_tflops, g.fp16_tflops):
            if rate and g.fp32_tflops:
                assert rate > g.fp32_tflops, g.key
        if not g.bf16:
            assert g.bf16_tflops is None, g.key
