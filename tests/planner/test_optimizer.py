"""Optimizer state and temporaries (bitsandbytes and torch layouts), hand-computed."""

import pytest

from ftplan.planner.memory.optimizer import Tensor, adafactor_state_bytes, adam8bit_state_bytes, gradient_bytes, optimizer_memory


def test_adam8bit_blockwise_layout():
    assert adam8bit_state_bytes(4096) == 2 * 4096 + 2 * 4 * 16  # uint8 x2 + fp32 absmax per 256
    assert adam8bit_state_bytes(4095) == 8 * 4095  # below min_8bit_size: fp32 states
    assert adam8bit_state_bytes(1_000_000) / 1_000_000 == pytest.approx(2.03125, abs=1e-3)


def test_torch_adamw_states_in_param_dtype_and_foreach_temp():
    ts = (Tensor(1000, 3, 10),)
    fused = optimizer_memory("adamw", ts, 4)
    foreach = optimizer_memory("adamw_torch", ts, 4)
    assert fused.state == 2 * 3000 * 4 and fused.temp == 0
    assert foreach.state == fused.state and foreach.temp == 3000 * 4
    assert optimizer_memory("adamw", ts, 2).state == 2 * 3000 * 2  # bf16 params -> bf16 states


def test_paged_state_leaves_the_allocator_only_above_1e5_elements():
    small, big = Tensor(65_536, 1, 16), Tensor(229_376, 1, 16)
    m = optimizer_memory("paged_adamw_8bit", (small, big), 4)
    assert m.state_paged == 2 * 229_376  # uint8 codes of the big tensor
    assert m.state == adam8bit_state_bytes(65_536) + 2 * 4 * (229_376 // 256)
    m32 = optimizer_memory("paged_adamw_32bit", (small, big), 4)
    assert m32.state_paged == 8 * 229_376 and m32.state == 8 * 65_536


def test_sgd_has_no_state_and_adafactor_is_factored():
    assert optimizer_memory("sgd", (Tensor(100, 1, 10),), 4).state == 0
    assert adafactor_state_bytes(Tensor(100 * 30, 1, 100)) == 4 * (100 + 30)
    assert adafactor_state_bytes(Tensor(50, 1)) == 200


def test_gradients_in_param_dtype():
    assert gradient_bytes((Tensor(10, 2), Tensor(5, 1)), 4) == 100
