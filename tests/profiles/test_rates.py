"""Achievable rates per card (``profiles.rates``): a measured card's ratio is its measurement over its
datasheet figure, any other card gets the median of the measured ratios, and the note says which."""

from __future__ import annotations

import statistics

import pytest

from ftplan.profiles.gpus import get_gpu, list_gpus
from ftplan.profiles.rates import measured, tensor_peak


def test_measured_card_uses_its_own_measurement():
    # rtx4090: 165.71 TFLOP/s measured (gpu_rates.csv) over the 165.2 datasheet dense figure; 921.85 GB/s over 1008
    g = get_gpu("rtx4090")
    m = measured()["rtx4090"]
    assert g.matmul_ratio == pytest.approx(m.matmul_tflops / 165.2)
    assert g.bandwidth_ratio == pytest.approx(m.bandwidth_gbs / 1008)
    assert "matmul measured" in g.rates_note and "bandwidth measured" in g.rates_note


def test_unmeasured_card_gets_the_median_and_says_so():
    cards = {g.key: g for g in list_gpus()}
    ratios = [m.matmul_tflops / p for k, m in measured().items()
              if k in cards and m.matmul_tflops and (p := tensor_peak(cards[k]))]
    med = statistics.median(ratios)
    g = cards["rtx6000ada"]  # no public GEMM measurement found (gpu_rates.md)
    assert measured()["rtx6000ada"].matmul_tflops is None
    assert g.matmul_ratio == pytest.approx(med)
    assert f"median of {len(ratios)} measured cards" in g.rates_note


def test_every_ratio_is_plausible():
    # below 0.4 or above 1.2 would say a file entry measured something else (sparse, fp16-accumulate, a typo)
    for g in list_gpus():
        assert g.matmul_ratio is None or 0.4 <= g.matmul_ratio <= 1.2, g.key
        assert g.bandwidth_ratio is None or 0.6 <= g.bandwidth_ratio <= 1.0, g.key
