"""4-bit / 8-bit / dense weight terms, checked against hand-computed bytes."""

from ftplan.planner.memory.weights import (
    dense_bytes,
    four_bit_constant_bytes,
    four_bit_packed_bytes,
    int8_constant_bytes,
    int8_weight_bytes,
)


def test_four_bit_packs_two_values_per_byte():
    assert four_bit_packed_bytes(4096 * 4096) == 8_388_608
    assert four_bit_packed_bytes(3) == 2  # odd count rounds up


def test_absmax_without_double_quant_is_fp32_per_64():
    # 4096*4096 / 64 = 262,144 blocks x 4 B
    assert four_bit_constant_bytes(4096 * 4096, double_quant=False) == 1_048_576


def test_double_quant_constants():
    # 262,144 uint8 codes + ceil(262144/256)=1024 fp32 absmax + 4 B offset
    assert four_bit_constant_bytes(4096 * 4096, double_quant=True) == 262_144 + 4 * 1024 + 4


def test_bytes_per_param_match_the_published_rule():
    n = 4096 * 14336
    nf4 = (four_bit_packed_bytes(n) + four_bit_constant_bytes(n, False)) / n
    dq = (four_bit_packed_bytes(n) + four_bit_constant_bytes(n, True)) / n
    assert abs(nf4 - 0.5625) < 1e-9  # 0.5 + 4/64
    assert abs(dq - (0.5 + 1 / 64 + 4 / (64 * 256))) < 1e-6  # ~0.5159


def test_int8_weight_and_row_scales():
    assert int8_weight_bytes(4096, 1024) == 4096 * 1024
    assert int8_constant_bytes(4096) == 16384


def test_dense():
    assert dense_bytes(10, 2) == 20
