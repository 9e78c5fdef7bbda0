"""The library API: estimate() and plan() as other trainers call them."""

import pytest

import ftplan
from ftplan.planner.types import GiB


def test_estimate_api_from_the_issue():
    est = ftplan.estimate(model="meta-llama/Llama-3.1-8B", gpu="a100-80gb", method="qlora", quant="nf4",
                          double_quant=True, lora_rank=16, lora_targets="all-linear", lora_dropout=0.0, micro_batch=1,
                          seq_len=2048, gradient_checkpointing=True, optimizer="paged_adamw_8bit", attention="sdpa",
                          num_gpus=1, sharding=None)
    assert est.peak_allocated_bytes <= est.peak_reserved_bytes <= est.device_bytes
    assert est.peak_phase in ("forward_end", "backward", "optimizer_step")
    assert sum(est.breakdown.values()) == est.peak_allocated_bytes
    assert est.fits is True
    assert est.time is not None and est.time.tokens_per_s > 0
    # 4-bit base of an 8B model: packed 8-bit-per-2-params data of its 6.98B linear weights
    assert est.breakdown["weights_quantized"] == pytest.approx(6_979_321_856 / 2, rel=1e-6)
    # embeddings + lm_head + norms upcast to fp32 by prepare_model_for_kbit_training
    assert est.breakdown["weights_unquantized"] == (2 * 128_256 * 4096 + 65 * 4096) * 4


def test_estimate_without_gpu():
    est = ftplan.estimate("8b")
    assert est.fits is None and est.usable_bytes is None and est.time is None
    assert est.peak_allocated_bytes > 5 * GiB


def test_cpu_estimate_has_no_cuda_overheads():
    est = ftplan.estimate("smollm2-135m", gpu="cpu", optimizer="paged_adamw_8bit")
    assert est.device_bytes == est.peak_allocated_bytes == est.peak_reserved_bytes
    assert est.overheads["paged_optimizer_state"] == 0


def test_paged_state_counts_on_the_device_only():
    est = ftplan.estimate("8b", gpu="h100", optimizer="paged_adamw_8bit")
    assert est.overheads["paged_optimizer_state"] > 0
    assert est.device_bytes > est.peak_reserved_bytes + est.overheads["cuda_context"]


def test_plan_returns_ranked_fitting_candidates():
    plans = ftplan.plan(model="8b", gpu="rtx4090", seq_len=2048, effective_batch=16)
    assert plans and all(p.estimate.fits for p in plans)
    assert plans[0].config.effective_batch == 16
    assert plans[0].estimate.cost is None  # no token count given


def test_plan_respects_fixed_knobs():
    plans = ftplan.plan("8b", "rtx4090", method="qlora", micro_batch=2, optimizer="adamw_8bit", top=5)
    assert plans
    for p in plans:
        c = p.config
        assert (c.method, c.micro_batch, c.optimizer) == ("qlora", 2, "adamw_8bit")


def test_nothing_fits_is_an_empty_list_and_suggest_names_a_gpu():
    assert ftplan.plan("70b", "gtx1650") == []
    s = ftplan.suggest("70b", "gtx1650")
    assert s["smallest_gpu"] is not None
    assert ftplan.get_gpu(s["smallest_gpu"]).usable_bytes > ftplan.get_gpu("gtx1650").usable_bytes


def test_cost_uses_catalog_price_or_override():
    est = ftplan.estimate("8b", "rtx4090", tokens=1e7)
    assert est.cost.price_per_gpu_hour == 0.69 and est.cost.price_date
    est2 = ftplan.estimate("8b", "rtx4090", tokens=1e7, price=1.0)
    assert est2.cost.dollars == pytest.approx(est2.cost.gpu_hours * 1.0)
    with pytest.raises(ftplan.FtplanError, match="price"):
        ftplan.estimate("8b", "rtx4090", tokens=1e7, price=-1)


def test_fsdp_shards_weights():
    one = ftplan.estimate("70b", "h100", method="qlora")
    four = ftplan.estimate("70b", "h100", method="qlora", num_gpus=4, sharding="fsdp")
    assert four.breakdown["weights_quantized"] == pytest.approx(one.breakdown["weights_quantized"] / 4, rel=1e-6)


def test_to_dict_is_json_ready():
    import json
    json.dumps(ftplan.estimate("8b", "rtx4090", tokens=1e6).to_dict())


def test_diverse_runner_ups_keep_the_feasible_count():
    plain = ftplan.plan_search("8b", "rtx4090", top=6)
    diverse = ftplan.plan_search("8b", "rtx4090", top=6, diverse=True)
    assert diverse.feasible == plain.feasible and diverse.candidates == plain.candidates
    sigs = {(p.config.method, p.config.quant, p.config.double_quant, p.config.micro_batch,
             p.config.gradient_checkpointing, p.config.loss_impl) for p in diverse.plans}
    assert len(sigs) == len(diverse.plans)
    assert diverse.plans[0].config == plain.plans[0].config
