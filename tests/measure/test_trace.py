"""Full-size traced steps (FakeTensorMode) against the analytical model."""

import pytest

import ftplan
from ftplan.errors import FtplanError
from ftplan.measure.compare import rel_error
from ftplan.measure.trace import trace

TOL = 0.02  # the 1B rows measured within 0.3% (benchmarks/accuracy_trace.py)


@pytest.mark.parametrize("knobs", [
    dict(method="qlora", seq_len=1024, micro_batch=1, gradient_checkpointing=True, optimizer="adamw"),
    dict(method="qlora", seq_len=512, micro_batch=1, gradient_checkpointing=False, optimizer="paged_adamw_8bit"),
], ids=["qlora-gc", "qlora-nogc"])
def test_llama_1b_traced_step_matches_the_model(knobs):
    knobs = dict(knobs, grad_accum=1)
    res = trace("1b", **knobs)
    est = ftplan.estimate("1b", "cpu", calibrate=False, **knobs)  # the raw model, whatever the store holds
    assert abs(rel_error(est.peak_allocated_bytes, res["peak_allocated_bytes"])) <= TOL
    # 4-bit weights and their constants, with the exact packed sizes
    assert res["breakdown"]["weights_quantized"] == est.breakdown["weights_quantized"]
    assert res["breakdown"]["quant_constants"] == est.breakdown["quant_constants"]
    # the 128k-vocabulary logits are there at full size: more than 1 GiB at 1024 tokens
    assert res["phases"]["backward"].get("logits_loss", 0) > 2**30 or not knobs["gradient_checkpointing"]


def test_trace_refuses_what_it_cannot_model():
    with pytest.raises(FtplanError, match="int8"):
        trace("1b", method="lora", quant="int8", grad_accum=1)


@pytest.mark.parametrize("seq_len", [1024, 16384])
def test_chunked_loss_traced_at_full_size(seq_len):
    # the chunked loss traces (tensor-only arithmetic: no .item() or float() of a tensor), the full logits
    # never exist, and lm_head's autocast copy is gone by backward: at 1024 tokens the peak is the loss
    # in forward, at 16384 a layer's recompute in backward (benchmarks/accuracy_trace.py: within 3%)
    knobs = dict(method="qlora", seq_len=seq_len, micro_batch=1, grad_accum=1, loss_impl="chunked")
    res = trace("1b", **knobs)
    est = ftplan.estimate("1b", "cpu", calibrate=False, **knobs)  # the raw model, whatever the store holds
    assert abs(rel_error(est.peak_allocated_bytes, res["peak_allocated_bytes"])) <= 0.04
    full_logits = seq_len * 128256 * 4
    assert max(p.get("logits_loss", 0) for p in res["phases"].values()) < full_logits / 8
    assert res["phases"]["backward"].get("autocast_weight_copies", 0) < 2**21  # the 501 MiB head copy freed
