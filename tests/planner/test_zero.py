"""DeepSpeed ZeRO per-rank terms against DeepSpeed's own estimators, term by term.

``estimate_zero2_model_states_mem_needs`` / ``estimate_zero3_model_states_mem_needs`` (DeepSpeed 0.19,
``runtime/zero/stage_1_and_2.py`` and ``stage3.py``) count the model states of full fine-tuning with Adam:
16-bit parameters, 16-bit and fp32 gradients, fp32 master parameters and two fp32 Adam states. The planner
counts the same buffers from DeepSpeed's code, plus the ones the estimators leave out (measured on 2 CPU
ranks: the 16-bit parameter partition of stage 3, the offloaded stages' 16-bit gradient partition and copy-back
buffer); each difference is asserted by name, so a change on either side fails here.
"""

from __future__ import annotations

import pytest

import ftplan
from ftplan.planner.memory import sharding as sh
from ftplan.profiles.models import get_model

ds2 = pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2")
ds3 = pytest.importorskip("deepspeed.runtime.zero.stage3")

N = 8
FULL = dict(method="full", quant="bf16", optimizer="adamw", micro_batch=1, grad_accum=1, seq_len=512)


def _est(model: str, sharding: str, offload: str = "none", n: int = N):
    return ftplan.estimate(model, "h100", calibrate=False, num_gpus=n, sharding=sharding, offload=offload, **FULL)


def _step(e) -> dict[str, int]:
    return dict(e.phases["optimizer_step"])


def test_zero2_model_states_equal_deepspeeds_estimate():
    e = _est("8b", "zero2")
    psi = e.total_params
    _, gpu = ds2.estimate_zero2_model_states_mem_needs(psi, num_gpus_per_node=N, num_nodes=1, cpu_offload=False,
                                                       additional_buffer_factor=1.0)
    s = _step(e)
    weights = s["weights_dense"] + s["weights_unquantized"]
    assert weights == 2 * psi  # 16-bit parameters, whole on every rank
    fp32_grads = 4 * sh.shard(psi, N)  # the step's fp32 copy of the gradient partition (in optimizer_temp)
    flat16 = 2 * sh.shard(psi, N)  # ... and its flat 16-bit copy, which DeepSpeed's estimator leaves out
    assert s["optimizer_temp"] == fp32_grads + flat16  # fused AdamW makes no temporaries of its own
    ours = weights + s["gradients"] + s["master_weights"] + s["optimizer_state"] + fp32_grads
    assert ours == pytest.approx(gpu, rel=1e-6, abs=64)


def test_zero2_offload_device_and_host_against_deepspeed():
    e = _est("8b", "zero2", "optimizer", n=4)
    psi = e.total_params
    cpu, gpu = ds2.estimate_zero2_model_states_mem_needs(psi, num_gpus_per_node=4, num_nodes=1, cpu_offload=True,
                                                         additional_buffer_factor=1.0)
    s = _step(e)
    assert s["weights_dense"] + s["weights_unquantized"] == gpu  # 2 psi on the device
    # beyond the estimator: the 16-bit copy-back buffer (param_buffer_of_bit16_for_cpu_offload_groups); the
    # gradient partition is freed after the step
    assert s["zero_buffers"] == 2 * sh.shard(psi, 4)
    host = e.host_breakdown  # per node: 4 ranks
    offloaded = sum(v for k, v in host.items() if k.startswith("offloaded_") and k != "offloaded_optimizer_temp")
    # master 4 + Adam 8 + fp32 gradients 4 bytes per parameter over the node = 16 psi = max(4G, 16) psi for G <= 4
    assert offloaded == pytest.approx(cpu, rel=1e-6, abs=64)


def test_zero3_model_states_against_deepspeeds_estimate():
    spec = get_model("8b")
    e = _est("8b", "zero3")
    psi = e.total_params
    largest = max(spec.vocab * spec.hidden, max(x.params for x in sh.layer_linears(spec)))
    _, gpu, largest_mem = ds3.estimate_zero3_model_states_mem_needs(
        psi, largest, num_gpus_per_node=N, num_nodes=1, cpu_offload=False, cpu_offload_params=False, zero_init=True,
        additional_buffer_factor=1.0)
    s = _step(e)
    states = gpu - largest_mem  # DeepSpeed: 18 psi / N (16-bit and fp32 gradients, fp32 master, Adam)
    small = (sh.norm_params(spec)) * 2  # under the persistence threshold: whole on every rank
    params16 = s["weights_dense"] + s["weights_unquantized"] - small + sh.shard(small, N)
    grads16 = s["zero_buffers"] - 2 * sh.zero_reduce_bucket_elems(spec)  # the gradient partition buffer
    fp32_grads = 4 * sh.shard(psi, N)
    ours = grads16 + fp32_grads + s["master_weights"] + s["optimizer_state"]
    assert ours == pytest.approx(states, rel=1e-6, abs=256)
    # the estimator leaves out the 16-bit parameter partition (DeepSpeed's ds_tensor, 2 psi / N)
    assert params16 == pytest.approx(2 * psi / N, rel=1e-6, abs=256)


def test_hf_auto_bucket_values():
    spec = get_model("8b")
    assert sh.zero_reduce_bucket_elems(spec) == 4096 * 4096
    assert sh.zero3_prefetch_bucket_elems(spec) == int(0.9 * 4096 * 4096)
    assert sh.zero3_persistence_threshold(spec) == 40_960


def test_zero_stages_order_per_rank_memory():
    peaks = [_est("8b", s).peak_allocated_bytes for s in ("ddp", "zero1", "zero2", "zero3")]
    assert peaks == sorted(peaks, reverse=True)


def test_zero_casts_adapters_and_turns_autocast_off():
    e = ftplan.estimate("8b", "h100", calibrate=False, num_gpus=2, sharding="zero2", method="lora", quant="bf16")
    assert e.config.autocast is False
    assert e.phases["optimizer_step"]["lora_weights"] == 2 * e.trainable_params  # bf16, cast by the engine
    with pytest.raises(ftplan.FtplanError, match="not modelled"):
        ftplan.estimate("8b", "h100", num_gpus=2, sharding="zero3", method="qlora")
