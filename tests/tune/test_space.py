"""The autotuner's space holds every knob the planner can recommend, the loss among them: a chunked
candidate is measured as chunked (``ftplan.stack.loss``), never replaced by the standard loss."""

import pytest

from ftplan.profiles.gpus import get_gpu
from ftplan.profiles.models import get_model
from ftplan.tune import space
from ftplan.tune import study as S


def test_space_offers_both_losses_and_keys_them_apart():
    spec, gpu = get_model("8b"), get_gpu("rtx4080")
    cands = space.candidates(spec, gpu, {"seq_len": 1024, "effective_batch": 16}, int(gpu.usable_bytes * 0.95), "cuda")
    losses = {c.config.loss_impl for c in cands}
    assert losses == {"standard", "chunked"}
    assert space.choices(cands)["loss_impl"] == sorted(losses, key=[c.config.loss_impl for c in cands].index)
    # the same knobs with either loss are two candidates, two keys
    assert len({c.key for c in cands}) == len(cands)
    # the planner's first choice is the tuner's first candidate: chunked here (17.9 GiB standard > 14.3 usable)
    assert cands[0].config.loss_impl == "chunked" and not cands[0].far_over


def test_a_key_stored_before_the_loss_was_a_parameter_is_the_standard_loss():
    old = {"format": "qlora-nf4-dq", "micro_batch": 1, "gradient_checkpointing": True, "optimizer": "adamw",
           "attention": "sdpa", "lora_rank": 16}
    assert space.key_of(old) == space.key_of({**old, "loss_impl": "standard"})
    assert space.key_of(old) != space.key_of({**old, "loss_impl": "chunked"})


def test_fixed_loss_is_kept():
    spec, gpu = get_model("1b"), get_gpu("rtx4090")
    for loss in ("standard", "chunked"):
        cands = space.candidates(spec, gpu, {"loss_impl": loss}, gpu.usable_bytes, "cuda")
        assert cands and {c.config.loss_impl for c in cands} == {loss}


def test_a_chunked_trial_measures_the_chunked_loss(tiny_llama, tmp_path):
    pytest.importorskip("optuna")
    ts = S.TuneSpec(model=tiny_llama, spec=get_model(tiny_llama), gpu=get_gpu("cpu"), device="cpu",
                    fixed={"seq_len": 32, "effective_batch": 4, "optimizer": "adamw", "loss_impl": "chunked",
                           "micro_batch": 2}, trials=1, synthetic_weights=True, runs_dir=tmp_path / "runs")
    res = S.run(ts)
    (row,) = res.rows
    assert row["state"] == "COMPLETE" and row["params"]["loss_impl"] == "chunked"
    import json

    assert json.loads(open(res.files["best"]).read())["knobs"]["loss_impl"] == "chunked"
    assert "liger_fused_linear_cross_entropy: true" in open(res.files["axolotl"]).read()
