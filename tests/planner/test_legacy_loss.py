"""Older transformers' losses and a loop that keeps the model's output (``planner.memory.logits``): the
terms by hand, where they enter the phases, and that nothing ftplan builds accepts them (estimate() only)."""

from dataclasses import replace

import pytest

import ftplan
from ftplan.errors import FtplanError
from ftplan.planner.memory.logits import loss_memory
from ftplan.planner.memory.phases import memory_model
from ftplan.planner.memory.precision import precision
from ftplan.planner.options import make_config, require_buildable
from ftplan.planner.types import TrainConfig
from ftplan.profiles.models import get_model

N = 1 * 8 * 100  # b * s * V of the tiny model and qlora_cfg


def _loss(spec, cfg):
    return loss_memory(spec, cfg, precision(cfg))


def test_legacy_shift_adds_the_shifted_copy_in_forward(tiny, qlora_cfg):
    m = _loss(tiny, replace(qlora_cfg, loss_impl="legacy_shift"))
    assert m.forward_peak == 2 * N + 4 * N + 4 * N + 4 * N  # bf16 logits, fp32 upcast, shifted copy, log-probs
    assert (m.saved, m.backward_peak, m.held) == (4 * N, 12 * N, 2 * N)


def test_legacy_upcast_frees_the_autocast_logits_and_returns_fp32(tiny, qlora_cfg):
    m = _loss(tiny, replace(qlora_cfg, loss_impl="legacy_upcast"))
    assert m.forward_peak == 4 * N + 4 * N + 4 * N  # fp32 logits, shifted copy, log-probs
    assert (m.saved, m.backward_peak, m.held) == (4 * N, 12 * N, 4 * N)


def test_fp32_logits_are_not_copied_by_the_upcast(tiny):
    cfg = TrainConfig(method="full", quant="fp32", autocast=False, micro_batch=1, seq_len=8, grad_accum=1,
                      optimizer="adamw", prepare_kbit=False)
    assert _loss(tiny, cfg).forward_peak == 4 * N + 4 * N  # logits (already fp32) and log-probs
    assert _loss(tiny, replace(cfg, loss_impl="legacy_shift")).forward_peak == 12 * N
    assert _loss(tiny, replace(cfg, loss_impl="legacy_upcast")).forward_peak == 12 * N
    assert _loss(tiny, cfg).held == 4 * N


def test_the_standard_loss_holds_the_logits_the_output_carries(tiny, qlora_cfg):
    m = _loss(tiny, qlora_cfg)
    assert (m.forward_peak, m.held) == (10 * N, 2 * N)
    assert _loss(tiny, replace(qlora_cfg, loss_impl="chunked")).held == 0  # no logits returned


@pytest.mark.parametrize("loss", ["standard", "legacy_shift", "legacy_upcast"])
def test_a_kept_output_adds_its_logits_to_backward_and_the_step_only(tiny, qlora_cfg, loss):
    cfg = replace(qlora_cfg, loss_impl=loss)
    dropped = {k: sum(v.values()) for k, v in memory_model(tiny, cfg, None).phases.items()}
    kept = {k: sum(v.values()) for k, v in memory_model(tiny, replace(cfg, output_held=True), None).phases.items()}
    held = _loss(tiny, cfg).held
    assert kept["forward_end"] == dropped["forward_end"]
    assert kept["backward"] == dropped["backward"] + held
    assert kept["optimizer_step"] == dropped["optimizer_step"] + held


def test_estimate_reads_an_older_stack_and_a_custom_loop():
    std = ftplan.estimate("8b", "a100-80gb", calibrate=False, micro_batch=4, seq_len=2048, gradient_checkpointing=True)
    old = ftplan.estimate("8b", "a100-80gb", calibrate=False, micro_batch=4, seq_len=2048, gradient_checkpointing=True,
                          loss_impl="legacy_upcast", output_held=True)
    assert old.config.loss_impl == "legacy_upcast" and old.config.output_held
    V = get_model("8b").vocab
    # the kept fp32 logits (4 b s V) are live through backward
    assert old.phases["backward"]["logits_held"] == 4 * 4 * 2048 * V
    assert old.device_bytes > std.device_bytes
    assert any("transformers <= 4.45" in a for a in old.assumptions)
    assert any("keeps the model's output" in a for a in old.assumptions)
    assert not any("transformers <= 4.45" in a or "keeps the model's output" in a for a in std.assumptions)


def test_plans_and_runs_refuse_what_they_cannot_build():
    with pytest.raises(FtplanError, match="legacy_upcast.*estimate\\(\\) only.*valid: standard, chunked"):
        ftplan.plan("8b", "rtx4090", loss_impl="legacy_upcast")
    with pytest.raises(FtplanError, match="output_held=True describes a custom loop"):
        ftplan.plan("8b", "rtx4090", output_held=True)
    with pytest.raises(FtplanError, match="older transformers.*HF Trainer with ftplan.integrations.hf runs the installed"):
        ftplan.estimate("8b", "rtx4090", handoff="hf", loss_impl="shift")
    with pytest.raises(FtplanError, match="output_held"):
        ftplan.estimate("8b", "rtx4090", handoff="ftplan", output_held="yes")
    cfg = make_config(get_model("8b"), None, loss_impl="legacy_shift").config
    with pytest.raises(FtplanError, match="ftplan trace"):
        require_buildable(cfg, "ftplan trace")
    require_buildable(make_config(get_model("8b"), None).config, "ftplan trace")  # the standard loss: no error


def test_output_held_is_absent_from_plans_and_round_trips_when_set():
    spec = get_model("8b")
    plain = make_config(spec, None).config
    assert "output_held" not in plain.to_dict()
    held = make_config(spec, None, output_held=True).config
    assert held.knobs()["output_held"] is True
    assert make_config(spec, None, **held.knobs()).config == held
    with pytest.raises(FtplanError, match="output_held"):
        make_config(spec, None, output_held="sometimes")


def test_the_hand_off_helpers_refuse_an_estimate_of_another_stack(tmp_path):
    from ftplan.integrations import exports, hf

    est = ftplan.estimate("8b", "rtx4090", calibrate=False, loss_impl="legacy_upcast")
    with pytest.raises(FtplanError, match="ftplan.integrations.hf"):
        hf.config_of(est)
    with pytest.raises(FtplanError, match="output_held"):
        hf.knobs(replace(est.config, loss_impl="standard", output_held=True))
    doc = {"format": "ftplan-best/1", "model": "8b", "knobs": {**est.config.knobs(), "loss_impl": "legacy_shift"}}
    with pytest.raises(FtplanError, match="legacy_shift.*axolotl"):
        exports.axolotl(doc)
    assert hf.config_of(ftplan.estimate("8b", "rtx4090", calibrate=False)).loss_impl == "standard"
