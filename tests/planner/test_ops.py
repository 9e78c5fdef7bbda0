"""The step-time model by operation (``planner.ops``): each operation's bound and time by hand, and the
structure of a micro-batch (which pieces a method, checkpointing or quantization adds).

Hand-computed figures use the ``tiny`` model (conftest): hidden 64, intermediate 128, 2 layers, 4 heads
of 16, 2 KV heads, vocab 100.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftplan.planner.ops import (
    ATTN_EFFICIENCY,
    GEMM_TAIL_S,
    LAUNCH_S,
    Rates,
    _rmsnorm_bytes,
    gemm,
    micro_batch_pieces,
    op,
)
from ftplan.planner.types import TrainConfig

FAST = Rates(flops=1e12, bytes=1e11)  # 1 TFLOP/s, 100 GB/s
SLOW = Rates(flops=1e9, bytes=1e9)  # slow enough that the tiny model's work outweighs launches


def _cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = dict(method="lora", quant="bf16", micro_batch=1, seq_len=8, grad_accum=1,
                                   gradient_checkpointing=False, optimizer="adamw", attention="sdpa", lora_rank=4)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


# --- one operation ----------------------------------------------------------------------------------

def test_op_takes_the_longest_of_math_memory_and_launch():
    # 1e5 B at 1e11 B/s = 1e-6 s < one launch (6e-6 s): launch-bound
    w = op(0.0, 1e5, 1, FAST)
    assert w.seconds == pytest.approx(LAUNCH_S) and w.bound == "launch"
    # 1e7 B = 1e-4 s: memory-bound
    w = op(0.0, 1e7, 1, FAST)
    assert w.seconds == pytest.approx(1e-4) and w.bound == "memory"
    # 1e9 FLOPs at 1e12 x 0.5 = 2e-3 s: compute-bound
    w = op(1e9, 1e7, 1, FAST, rate_scale=0.5)
    assert w.seconds == pytest.approx(2e-3) and w.bound == "compute"


def test_gemm_time_by_hand():
    # 4096 x 4096 x 4096 at 1 TFLOP/s: 2*4096^3 = 1.374e11 FLOPs = 0.1374 s + the tail; bytes 3 x 4096^2 x 2 =
    # 1.007e8 B = 1.007e-3 s: compute-bound
    w = gemm(4096, 4096, 4096, 2, FAST)
    assert w.seconds == pytest.approx(2 * 4096**3 / 1e12 + GEMM_TAIL_S) and w.bound == "compute"
    # 8 x 64 x 64: 65,536 FLOPs = 6.6e-8 s, below the 8e-6 s tail: launch-bound
    w = gemm(8, 64, 64, 2, FAST)
    assert w.seconds == pytest.approx(65_536 / 1e12 + GEMM_TAIL_S) and w.bound == "launch"
    # a skinny GEMM (LoRA's A: 65,536 tokens x rank 16 x 4096) on a slow-memory GPU: bytes 2 x (65536*4096 +
    # 4096*16 + 65536*16) = 5.390e8 B at 1e9 B/s = 0.539 s > math 8.6e9/1e12 = 8.6e-3 s: memory-bound
    w = gemm(65_536, 16, 4096, 2, Rates(1e12, 1e9))
    assert w.seconds == pytest.approx(2 * (65_536 * 4096 + 4096 * 16 + 65_536 * 16) / 1e9) and w.bound == "memory"
    # count multiplies
    assert gemm(4096, 4096, 4096, 2, FAST, count=3).seconds == pytest.approx(3 * w_seconds(4096))


def w_seconds(n: int) -> float:
    return 2 * n**3 / 1e12 + GEMM_TAIL_S


def test_gemm_rate_falls_at_small_m():
    # the achieved rate 2mnk / t rises with m towards the matmul rate: the fixed cost matters less
    rates = [2 * m * 4096 * 4096 / gemm(m, 4096, 4096, 2, Rates(300e12, 2e12)).seconds for m in (256, 1024, 4096, 16384)]
    assert rates == sorted(rates) and rates[-1] < 300e12 and rates[0] < 0.8 * rates[-1]


def test_rmsnorm_bytes_by_hand():
    # bf16 input: cast up (2+4), pow (8), mean (4), scale (8), cast back (4+2), weight multiply (2x2) = 36 B
    assert _rmsnorm_bytes(2) == 36
    # fp32 stream (QLoRA after prepare_model_for_kbit_training): no casts: 8 + 4 + 8 + 8 = 28 B
    assert _rmsnorm_bytes(4) == 28


# --- a micro-batch ----------------------------------------------------------------------------------

def test_sdpa_attention_by_hand(tiny):
    # b=1, s=8: 4 b s^2 a d / 2 (causal) = 4*64*4*16/2 = 8,192 FLOPs per layer; at 1 GFLOP/s x 0.75 =
    # 1.0923e-5 s (> launch, > io 2*8*16*12 = 3,072 B = 3.1e-6 s); backward 2.5x at 0.6; 2 layers
    p = micro_batch_pieces(tiny, _cfg(), SLOW).pieces["attention"]
    fwd = 8192 / (1e9 * ATTN_EFFICIENCY["forward"])
    bwd = 2.5 * 8192 / (1e9 * ATTN_EFFICIENCY["backward"])
    assert p.seconds == pytest.approx(2 * (fwd + bwd)) and p.bound == "compute"


def test_frozen_base_skips_weight_gradients(tiny):
    # LoRA: the base projections' backward is the input gradient only (= forward); full fine-tuning adds the
    # weight gradient: 3 forward-sized GEMMs to LoRA's 2
    lora = micro_batch_pieces(tiny, _cfg(), SLOW).pieces["linear"].seconds
    full = micro_batch_pieces(tiny, _cfg(method="full", lora_rank=16), SLOW).pieces["linear"].seconds
    assert full == pytest.approx(1.5 * lora)


def test_checkpointing_adds_the_layers_forward_once(tiny):
    off = micro_batch_pieces(tiny, _cfg(), SLOW).pieces
    on = micro_batch_pieces(tiny, _cfg(gradient_checkpointing=True), SLOW).pieces
    assert off["recompute"].seconds == 0
    lin_fwd = off["linear"].seconds / 2  # LoRA: forward = input-gradient backward
    att_fwd = off["attention"].seconds / (1 + 2.5 * ATTN_EFFICIENCY["forward"] / ATTN_EFFICIENCY["backward"])
    assert on["recompute"].seconds > lin_fwd + att_fwd
    assert on["recompute"].seconds < sum(w.seconds for k, w in off.items() if k != "loss")
    for k in ("linear", "attention", "lora", "elementwise", "loss"):
        assert on[k] == off[k]


def test_quantized_base_adds_dequantization_per_pass(tiny):
    bf16 = micro_batch_pieces(tiny, _cfg(), SLOW).pieces
    q = micro_batch_pieces(tiny, _cfg(method="qlora", quant="nf4"), SLOW).pieces
    qgc = micro_batch_pieces(tiny, _cfg(method="qlora", quant="nf4", gradient_checkpointing=True), SLOW).pieces
    assert bf16["dequant"].seconds == 0 < q["dequant"].seconds
    assert q["linear"] == bf16["linear"]  # the same GEMMs on the dequantized copy
    assert qgc["dequant"].seconds == pytest.approx(1.5 * q["dequant"].seconds)  # forward, backward, recompute


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mb=st.integers(1, 8), seq=st.sampled_from([128, 512, 2048]), gc=st.booleans(),
       method=st.sampled_from(["full", "lora", "qlora"]))
def test_more_tokens_never_take_less_time(tiny, mb, seq, gc, method):
    quant = "nf4" if method == "qlora" else "bf16"
    rates = Rates(100e12, 1e12)
    a = micro_batch_pieces(tiny, _cfg(method=method, quant=quant, micro_batch=mb, seq_len=seq,
                                      gradient_checkpointing=gc), rates).seconds
    b = micro_batch_pieces(tiny, _cfg(method=method, quant=quant, micro_batch=mb + 1, seq_len=seq,
                                      gradient_checkpointing=gc), rates).seconds
    c = micro_batch_pieces(tiny, _cfg(method=method, quant=quant, micro_batch=mb, seq_len=seq,
                                      gradient_checkpointing=not gc), rates).seconds
    assert b >= a
    assert (c >= a) if not gc else (c <= a)  # checkpointing never makes a micro-batch faster


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mb=st.integers(1, 8), gc=st.booleans(), method=st.sampled_from(["full", "lora", "qlora"]),
       rank=st.sampled_from([4, 16, 64]), dropout=st.sampled_from([0.0, 0.05]))
def test_fast_seconds_equal_the_pieces(tiny, mb, gc, method, rank, dropout):
    """The search ranks by ``micro_batch_seconds`` (cached, no pieces); the estimate shows the pieces."""
    from ftplan.planner.ops import micro_batch_seconds

    cfg = _cfg(method=method, quant="nf4" if method == "qlora" else "bf16", micro_batch=mb, gradient_checkpointing=gc,
               lora_rank=rank, lora_dropout=dropout)
    rates = Rates(50e12, 5e11)
    assert micro_batch_seconds(tiny, cfg, rates) == pytest.approx(micro_batch_pieces(tiny, cfg, rates).seconds, rel=1e-12)
