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
    est = ftplan.estimate("1b", "cpu", **knobs)
    assert abs(rel_error(est.peak_allocated_bytes, res["peak_allocated_bytes"])) <= TOL
    # 4-bit weights and their constants, with the exact packed sizes
    assert res["breakdown"]["weights_quantized"] == est.breakdown["weights_quantized"]
    assert res["breakdown"]["quant_constants"] == est.breakdown["quant_constants"]
    # the 128k-vocabulary logits are there at full size: more than 1 GiB at 1024 tokens
    assert res["phases"]["backward"].get("logits_loss", 0) > 2**30 or not knobs["gradient_checkpointing"]


def test_trace_refuses_what_it_cannot_model():
    with pytest.raises(FtplanError, match="int8"):
        trace("1b", method="lora", quant="int8", grad_accum=1)
    with pytest.raises(FtplanError, match="standard loss"):
        trace("1b", loss_impl="chunked", grad_accum=1)
