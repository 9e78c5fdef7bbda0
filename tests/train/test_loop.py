"""``ftplan train`` on a small Llama-shaped model with random weights on the CPU: the loss falls, the
adapter reloads with peft and gives the same outputs, a run killed mid-way resumes to the same weights."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftplan.errors import FtplanError
from tests.stack_fixtures import best_doc


def _train(doc, data, out, **kw):
    from ftplan.train.loop import TrainOptions, train

    return train(TrainOptions(config=doc, data=data, output=Path(out), **kw))


def test_loss_falls_and_adapter_reloads(tiny_llama, data_file, tmp_path):
    import torch

    from ftplan.train.loop import load_trained

    res = _train(best_doc(tiny_llama), data_file, tmp_path / "run", max_steps=10, lr=2e-3, save_every=4)
    first, last = sum(res.losses[:2]) / 2, sum(res.losses[-2:]) / 2
    assert last < first * 0.9, res.losses
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "run" / "ftplan-config.json").read_text())["trained"]["steps"] == 10
    probe = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(7))
    res.model.eval()
    reloaded = load_trained(tmp_path / "run").eval()
    with torch.no_grad():
        a = res.model(input_ids=probe).logits.float()
        b = reloaded(input_ids=probe).logits.float()
    assert torch.equal(a, b) or torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()
    base = load_trained(tmp_path / "run").eval()
    with base.disable_adapter(), torch.no_grad():
        c = base(input_ids=probe).logits.float()
    assert not torch.allclose(a, c, atol=1e-3), "the adapter changed nothing: the comparison would prove nothing"


def _cli(args, cwd, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "ftplan", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _adapter(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "adapter" / "adapter_model.safetensors"))


def test_killed_run_resumes_to_the_same_weights(tiny_llama, data_file, tmp_path):
    import torch

    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps(best_doc(tiny_llama, micro_batch=1, grad_accum=2)))
    common = ["train", "--config", str(cfg), "--data", data_file, "--max-steps", "10", "--save-every", "2", "-q"]
    ref = _cli([*common, "-o", "ref"], tmp_path)
    killed = _cli([*common, "-o", "run"], tmp_path)
    ck = tmp_path / "run" / "checkpoints"
    deadline = time.monotonic() + 240
    while not (ck / "step-000004").exists():
        assert killed.poll() is None, killed.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "run" / "adapter").exists()  # it died before the end
    again = _cli([*common, "-o", "run"], tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 2 and "--resume" in err  # never silently restarts over a checkpoint
    resumed = _cli([*common, "-o", "run", "--resume"], tmp_path)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resumed at step" in out
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    a, b = _adapter(tmp_path / "ref"), _adapter(tmp_path / "run")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))  # the steps redone after the resume are logged once


def test_resume_with_other_config_refused(tiny_llama, data_file, tmp_path):
    _train(best_doc(tiny_llama), data_file, tmp_path / "r", max_steps=2, save_every=1)
    with pytest.raises(FtplanError, match="another configuration"):
        _train(best_doc(tiny_llama, lora_rank=4), data_file, tmp_path / "r", max_steps=3, resume=True)


def test_bad_config_and_data_exit_2(tmp_path, tiny_llama):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    p = _cli(["train", "--config", str(bad), "--data", "x.jsonl"], tmp_path)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "knobs" in err and "Traceback" not in err
    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps(best_doc(tiny_llama)))
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "fine"}\n{"oops"\n')
    p = _cli(["train", "--config", str(cfg), "--data", str(data)], tmp_path)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and f"{data}:2" in err and "Traceback" not in err


def test_two_process_ddp_equals_one_process_accumulation(tiny_llama, data_file, tmp_path):
    """torchrun, 2 CPU processes (Gloo), accumulation 1 == one process, accumulation 2: the same
    micro-batches, gradients averaged either way, so the same adapter."""
    import shutil

    import torch

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    one = tmp_path / "one.json"
    one.write_text(json.dumps(best_doc(tiny_llama, micro_batch=1, grad_accum=2, lora_dropout=0.0)))
    two = tmp_path / "two.json"
    two.write_text(json.dumps(best_doc(tiny_llama, micro_batch=1, grad_accum=1, lora_dropout=0.0)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--data", data_file, "--max-steps", "4", "-q"]
    r1 = subprocess.run([sys.executable, "-m", "ftplan", "train", "--config", str(one), "-o", "one", *common],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr
    r2 = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000), "-m",
                         "ftplan", "train", "--config", str(two), "-o", "two", *common],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.count("trained 4 steps") == 1  # rank 0 reports, once
    a, b = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), (k, (a[k] - b[k]).abs().max())
    assert len((tmp_path / "two" / "log.jsonl").read_text().splitlines()) == 4


def test_merge_writes_weights_that_match_the_adapter(tiny_llama, data_file, tmp_path):
    """--merge adds the adapter into a 16-bit base: the merged model gives the adapter model's outputs
    (up to bf16 rounding of the merged weights)."""
    import torch
    import transformers

    from ftplan.train.loop import load_trained

    doc = best_doc(tiny_llama, method="lora", quant="bf16", double_quant=False)
    res = _train(doc, data_file, tmp_path / "m", max_steps=3, lr=2e-3, merge=True)
    merged = transformers.AutoModelForCausalLM.from_pretrained(res.files["merged"]).eval()
    with_adapter = load_trained(tmp_path / "m").eval()
    probe = torch.randint(3, 200, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = with_adapter(input_ids=probe).logits.float()
        b = merged(input_ids=probe).logits.float()
        with with_adapter.disable_adapter():
            c = with_adapter(input_ids=probe).logits.float()
    gap = (a - b).abs().max().item()
    assert gap < 0.1 * (a - c).abs().max().item(), gap  # far closer to the adapter model than to the base


@pytest.mark.parametrize("optimizer", ["adamw", "paged_adamw_8bit", "adafactor"])
def test_resume_loads_tensors_only(tiny_llama, data_file, tmp_path, optimizer):
    """Every checkpoint file loads with ``weights_only=True`` (the optimizers' and scheduler's states are
    tensors and plain values), and a crafted one that would run code on unpickling is refused without
    running it."""
    import pickle

    doc = best_doc(tiny_llama, optimizer=optimizer)
    _train(doc, data_file, tmp_path / "r", max_steps=2, save_every=1)
    res = _train(doc, data_file, tmp_path / "r", max_steps=3, resume=True)
    assert res.resumed_from == 2 and res.steps == 3
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    step = sorted((tmp_path / "r" / "checkpoints").glob("step-*"))[-1]
    (step / "rng.pt").write_bytes(pickle.dumps({"torch": Payload()}))
    with pytest.raises(FtplanError, match="cannot be loaded safely"):
        _train(doc, data_file, tmp_path / "r", max_steps=4, resume=True)
    assert not marker.exists()


def test_a_failed_checkpoint_save_leaves_no_partial_folder(tmp_path):
    from ftplan.errors import WriteError
    from ftplan.train.checkpoint import save_folder_atomic

    def write(folder):
        (folder / "half.pt").write_bytes(b"x" * 10)
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match="the disk is full"):
        save_folder_atomic(tmp_path / "step-000002", write)
    assert list(tmp_path.iterdir()) == []
