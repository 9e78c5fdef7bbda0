"""The attention kernel a trial really ran: candidates whose kernel cannot run here are skipped and
counted before the study (never measured under their name), and a trial whose model still ran another
kernel is failed with that reason. In-process studies on the CPU with real trial workers."""

import pytest

from ftplan.profiles.gpus import get_gpu
from ftplan.profiles.models import get_model
from ftplan.tune import space
from ftplan.tune import study as S

optuna = pytest.importorskip("optuna")


def _spec(model, tmp_path, gpu="cpu", **fixed):
    # the budget is the GPU's: on the CPU the tiny model's measured figures are far below it
    return S.TuneSpec(model=model, spec=get_model(model), gpu=get_gpu(gpu), device="cpu",
                      fixed={"seq_len": 32, "effective_batch": 4, "optimizer": "adamw", **fixed}, trials=1,
                      synthetic_weights=True, runs_dir=tmp_path / "runs")


def test_space_with_flash_attention_skips_it_with_a_reason(tiny_llama, tmp_path):
    """A GPU whose space holds flash_attention_2, measured where it cannot run (no CUDA, no flash-attn):
    those candidates are counted as skipped with why, and no trial measures one."""
    res = S.run(_spec(tiny_llama, tmp_path, gpu="h100"))
    (why,) = [k for k in res.skipped if k.startswith("attention unavailable")]
    assert "flash_attention_2 needs CUDA" in why and res.skipped[why] > 0
    assert res.runnable + sum(res.skipped[k] for k in (why, "predicted over memory (never sampled)")) == res.candidates
    assert res.rows and all(r["params"]["attention"] != "flash_attention_2" for r in res.rows)
    assert all(r["attention_ran"] == r["params"]["attention"] for r in res.rows)


def test_trial_that_ran_another_kernel_fails(tiny_llama, tmp_path, monkeypatch):
    """Should the check before the study miss (here: told flash_attention_2 can run), the worker's model
    falls back to sdpa, the trial says so, and it is failed: no winner under flash_attention_2's name."""
    monkeypatch.setattr(space, "attention_unavailable", lambda attention, device: None)
    res = S.run(_spec(tiny_llama, tmp_path, attention="flash_attention_2"))
    (row,) = res.rows
    assert row["state"] == "FAIL" and row["attention_ran"] == "sdpa"
    assert "the model ran sdpa, not the flash_attention_2 asked for" in row["reason"]
    assert res.best is None and not res.files


@pytest.mark.parametrize("attention,device,why", [
    ("sdpa", "cpu", None), ("eager", "cuda", None),
    ("flash_attention_2", "cpu", "needs CUDA"),
])
def test_attention_unavailable(attention, device, why):
    got = space.attention_unavailable(attention, device)
    assert got is None if why is None else why in got
