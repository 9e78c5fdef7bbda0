"""``ftplan train`` with fp16 compute (the plan of a GPU without bf16), on the CPU with a small Llama-shaped
model: the loss is scaled by a ``torch.amp.GradScaler``, a run stopped after its first checkpoint resumes
to the same adapter, bit for bit, with the scaler's state carried through the checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftplan.errors import FtplanError
from tests.stack_fixtures import best_doc


class _Stop(Exception):
    pass


def _cli(args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "ftplan", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _state(run: Path, step: int) -> dict:
    return json.loads((run / "checkpoints" / f"step-{step:06d}" / "state.json").read_text())


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_fp16_run_scales_the_loss_and_resumes_bitwise(tiny_llama, data_file, tmp_path):
    import torch
    from safetensors.torch import load_file

    from ftplan.train.loop import TrainOptions, train

    doc = best_doc(tiny_llama, compute_dtype="fp16", micro_batch=1, grad_accum=2)
    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps(doc))
    common = ["train", "--config", str(cfg), "--data", data_file, "--max-steps", "2", "--save-every", "1", "-q"]

    _cli([*common, "-o", "ref"], tmp_path)

    def stop_at_step_2(rec):
        if rec["step"] == 2:
            raise _Stop  # after step 1's checkpoint, before the run ends: as if killed
    with pytest.raises(_Stop):
        train(TrainOptions(config=doc, data=data_file, output=tmp_path / "run", max_steps=2, save_every=1),
              on_log=stop_at_step_2)
    assert not (tmp_path / "run" / "adapter").exists()
    first = _state(tmp_path / "run", 1)["grad_scaler"]
    assert first["scale"] == 65536.0 and first["_growth_tracker"] == 1  # one clean fp16 step, scale 2**16
    out = _cli([*common, "-o", "run", "--resume"], tmp_path)
    assert "resumed at step 1" in out

    ref, run = tmp_path / "ref", tmp_path / "run"
    log_ref, log_run = _log(ref), _log(run)
    assert [r["step"] for r in log_ref] == [1, 2] and log_run[-1]["step"] == 2
    assert all("loss_scale" in r and r["skipped"] is False for r in log_ref)  # the scaler ran every step
    assert log_run[-1]["loss"] == log_ref[-1]["loss"] and log_run[-1]["loss_scale"] == log_ref[-1]["loss_scale"]
    # the resumed run restored the scaler: two clean steps counted, as in the uninterrupted run
    assert _state(run, 2)["grad_scaler"] == _state(ref, 2)["grad_scaler"]
    assert _state(ref, 2)["grad_scaler"]["_growth_tracker"] == 2
    a = load_file(str(ref / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("lora_B.weight") and a[k].abs().sum() > 0 for k in a)  # the steps changed the adapter
    saved = json.loads((run / "ftplan-config.json").read_text())
    assert saved["knobs"]["compute_dtype"] == "fp16"


def test_bf16_plan_refused_on_a_cuda_gpu_without_bf16(tiny_llama, monkeypatch):
    import torch

    from ftplan.best import best_config
    from ftplan.train.loop import check_device_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    _, bf16 = best_config(best_doc(tiny_llama))
    _, fp16 = best_config(best_doc(tiny_llama, compute_dtype="fp16"))
    with pytest.raises(FtplanError, match="Tesla T4 has no bf16.*compute_dtype"):
        check_device_precision(bf16, "cuda")
    check_device_precision(fp16, "cuda")
    check_device_precision(bf16, "cpu")
