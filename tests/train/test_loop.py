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


def test_group_by_length_runs_the_longest_batch_first(tiny_llama, tmp_path, monkeypatch):
    """--group-by-length: the first micro-batch holds the longest example, the order is still a permutation,
    a resume must keep the option (it is part of the run's fingerprint), and it is refused with --packing."""
    import ftplan.train.loop as L
    from tests.stack_fixtures import write_jsonl

    data = tmp_path / "d.jsonl"
    write_jsonl(data, n=40)
    with open(data, "a") as f:  # one long example
        f.write(json.dumps({"prompt": "Q: " + "seven " * 20, "completion": " A: long."}) + "\n")
    seen = []
    real = L._tensor_batch

    def spy(b, dev):
        seen.append(max(sum(m) for m in b["attention_mask"]))
        return real(b, dev)

    monkeypatch.setattr(L, "_tensor_batch", spy)
    res = _train(best_doc(tiny_llama), str(data), tmp_path / "g", max_steps=2, save_every=1, group_by_length=True)
    assert res.steps == 2 and seen[0] == max(seen)
    doc = json.loads((tmp_path / "g" / "ftplan-config.json").read_text())
    assert doc["trained"]["group_by_length"] is True
    with pytest.raises(FtplanError, match="another configuration"):
        _train(best_doc(tiny_llama), str(data), tmp_path / "g", max_steps=3, resume=True)
    with pytest.raises(FtplanError, match="--packing and --group-by-length"):
        _train(best_doc(tiny_llama), str(data), tmp_path / "p", packing=True, group_by_length=True)


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


def _torchrun(args, cwd, timeout=420):
    import shutil

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(29500 + (os.getpid() + 7) % 1000),
                           "-m", "ftplan", "train", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_two_process_fsdp_trains_like_one_process_and_resumes(tiny_llama, data_file, tmp_path):
    """``ftplan train`` runs an FSDP plan itself: 2 CPU ranks (Gloo), FSDP2 with accelerate's units and mixed
    precision, accumulation 1, against one process with accumulation 2 over the same micro-batches. FSDP
    gathers the adapters in bf16 and reduces in bf16, so the numbers agree to bf16 precision, not bit for bit:
    the losses within 2%, and the adapters far closer to each other than to their starting point. A run
    stopped after 2 steps and resumed from its sharded checkpoint ends where the uninterrupted run ends."""
    import torch

    lora = dict(method="lora", quant="bf16", double_quant=False, micro_batch=1, lora_dropout=0.0)
    one = tmp_path / "one.json"
    one.write_text(json.dumps(best_doc(tiny_llama, grad_accum=2, **lora)))
    two = tmp_path / "two.json"
    two.write_text(json.dumps(best_doc(tiny_llama, grad_accum=1, num_gpus=2, sharding="fsdp", **lora)))
    common = ["--data", data_file, "-q", "--lr", "2e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r1 = subprocess.run([sys.executable, "-m", "ftplan", "train", "--config", str(one), "-o", "one", "--max-steps", "4",
                         *common], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr
    r2 = _torchrun(["--config", str(two), "-o", "two", "--max-steps", "4", *common], tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    l1 = [json.loads(x)["loss"] for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    l2 = [json.loads(x)["loss"] for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert len(l2) == 4 and all(abs(a - b) <= 0.02 * abs(a) for a, b in zip(l1, l2, strict=True)), (l1, l2)
    a, b = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    assert a.keys() == b.keys()
    # lora_B starts at zero, so its norm is how far training moved it; Adam's first steps are about lr x sign(g),
    # so single elements whose gradient is near zero may differ by 2 lr: compare norms, not elements
    b_keys = [k for k in a if "lora_B" in k]
    moved = sum(a[k].float().norm() ** 2 for k in b_keys) ** 0.5
    gap = sum((a[k].float() - b[k].float()).norm() ** 2 for k in b_keys) ** 0.5
    assert moved > 0 and gap < 0.1 * moved, (float(gap), float(moved))
    # a checkpoint each step; the run's last two checkpoints and its adapter removed (as if killed after step 2),
    # then resumed to 4: the same adapter as the straight run
    r3 = _torchrun(["--config", str(two), "-o", "three", "--max-steps", "4", "--save-every", "1", "--keep", "10",
                    *common], tmp_path)
    assert r3.returncode == 0, r3.stderr[-3000:]
    import shutil

    ckroot = tmp_path / "three" / "checkpoints"
    assert json.loads((ckroot / "step-000002" / "state.json").read_text())["optimizer_format"] == "full"
    for gone in (ckroot / "step-000003", ckroot / "step-000004", tmp_path / "three" / "adapter"):
        shutil.rmtree(gone)
    r5 = _torchrun(["--config", str(two), "-o", "three", "--max-steps", "4", "--resume", *common], tmp_path)
    assert r5.returncode == 0, r5.stderr[-3000:]
    c = _adapter(tmp_path / "three")
    for k in b:
        assert torch.allclose(b[k].float(), c[k].float(), atol=1e-6), (k, (b[k].float() - c[k].float()).abs().max())
    assert len((tmp_path / "three" / "log.jsonl").read_text().splitlines()) == 4
