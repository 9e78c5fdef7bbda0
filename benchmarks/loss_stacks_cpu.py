"""The loss's memory under each transformers stack, measured on the CPU against ``planner.memory.logits``.

transformers changed how a causal LM's loss holds its logits twice: up to 4.45 the model upcast the logits to
fp32 itself and the loss shifted them with a ``.contiguous()`` copy (``loss_impl="legacy_upcast"``); 4.46-4.48
moved the upcast into ``ForCausalLMLoss`` and kept the copy (``"legacy_shift"``); from 4.49 the labels are
shifted instead (``"standard"``). Published runs of 2023-2024 ran the older stacks, so their memory is read
with the matching model (``benchmarks/published_multi.py``).

Each interpreter given (``--python``, default: this one) runs a one-layer Llama whose logits dwarf the rest
(h=64, V=32,000, b=2, s=128), bf16 and fp32, with the model's output dropped before ``backward`` (HF Trainer)
and kept through it (a loop that writes ``out = model(...); out.loss.backward()``), under the project's
``LiveStorageTracker``. The forward and backward peaks above the weights are compared with the loss model
for the stack's loss (``loss.forward_peak`` and ``loss.backward_peak + held`` when the output is kept); the
rest of the peak is the decoder's own activations, well under 1% here.

    python benchmarks/loss_stacks_cpu.py [--python PATH ...] [--out PATH]

With several stacks, make one venv per transformers version (``pip install torch==2.13.0`` first, then
``pip install transformers==4.45.2``; ftplan is found through ``PYTHONPATH``, which this script sets).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE = dict(hidden=64, intermediate=128, layers=1, heads=4, vocab=32_000, batch=2, seq=128)


def stack_loss(version: str) -> str:
    """The ``loss_impl`` that describes transformers ``version``'s causal-LM loss."""
    major, minor = (int(p) for p in version.split(".")[:2])
    if (major, minor) < (4, 46):
        return "legacy_upcast"
    if (major, minor) < (4, 49):
        return "legacy_shift"
    return "standard"


def probe() -> dict:
    """Run the configurations in this interpreter; bytes above the weights and inputs."""
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftplan.measure.tracker import LiveStorageTracker

    torch.manual_seed(0)
    out: dict = {"transformers": transformers.__version__, "torch": torch.__version__, "runs": {}}
    for dtype in ("bf16", "fp32"):
        for held in (False, True):
            cfg = LlamaConfig(hidden_size=SHAPE["hidden"], intermediate_size=SHAPE["intermediate"],
                              num_hidden_layers=SHAPE["layers"], num_attention_heads=SHAPE["heads"],
                              num_key_value_heads=SHAPE["heads"], vocab_size=SHAPE["vocab"], tie_word_embeddings=False)
            model = LlamaForCausalLM(cfg).to(torch.bfloat16 if dtype == "bf16" else torch.float32)
            ids = torch.randint(0, SHAPE["vocab"], (SHAPE["batch"], SHAPE["seq"]))
            tr = LiveStorageTracker()
            tr.track(list(model.parameters()), "weights", weight=True)
            tr.track([ids], "inputs")
            with tr:
                base = tr.current
                tr.start_phase()
                output = model(input_ids=ids, labels=ids)
                loss = output.loss
                fwd = tr.phase_report("forward").peak_bytes - base
                if not held:
                    del output  # HF Trainer: compute_loss returns the loss alone
                tr.start_phase()
                loss.backward()
                bwd = tr.phase_report("backward").peak_bytes - base
            out["runs"][f"{dtype}/{'kept' if held else 'dropped'}"] = {"forward": fwd, "backward": bwd}
    return out


def predicted(loss_impl: str, dtype: str, held: bool) -> dict:
    from dataclasses import replace

    from ftplan.planner.memory.logits import loss_memory
    from ftplan.planner.memory.precision import precision
    from ftplan.planner.types import TrainConfig
    from ftplan.profiles.models import get_model

    spec = replace(get_model("llama-3-8b"), vocab=SHAPE["vocab"], hidden=SHAPE["hidden"])
    q = "bf16" if dtype == "bf16" else "fp32"
    cfg = TrainConfig(method="full", quant=q, autocast=False, micro_batch=SHAPE["batch"], seq_len=SHAPE["seq"],
                      loss_impl=loss_impl, output_held=held, prepare_kbit=False)
    m = loss_memory(spec, cfg, precision(cfg))
    return {"forward": m.forward_peak, "backward": m.backward_peak + (m.held if held else 0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", action="append", help="an interpreter with torch and one transformers version")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loss_stacks_cpu.json"))
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.probe:
        print(json.dumps(probe()))
        return 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    rows, errors = [], []
    print(f"{'transformers':<13}{'loss_impl':<15}{'run':<14}{'phase':<10}{'measured':>12}{'model':>12}{'error':>8}")
    for py in a.python or [sys.executable]:
        res = subprocess.run([py, __file__, "--probe"], capture_output=True, text=True, env=env, check=True)
        got = json.loads(res.stdout.strip().splitlines()[-1])
        impl = stack_loss(got["transformers"])
        for run, m in got["runs"].items():
            dtype, kept = run.split("/")
            p = predicted(impl, dtype, kept == "kept")
            for phase in ("forward", "backward"):
                err = p[phase] / m[phase] - 1
                errors.append(abs(err))
                rows.append({"transformers": got["transformers"], "torch": got["torch"], "loss_impl": impl,
                             "run": run, "phase": phase, "measured_bytes": m[phase], "predicted_bytes": p[phase],
                             "error": err})
                print(f"{got['transformers']:<13}{impl:<15}{run:<14}{phase:<10}{m[phase]:>12,}{p[phase]:>12,}"
                      f"{err:>+8.2%}")
    summary = f"{len(rows)} figures: median |error| {statistics.median(errors):.2%}, max {max(errors):.2%}"
    print(summary)
    doc = {"provenance": {"date": dt.date.today().isoformat(), "command": "python benchmarks/loss_stacks_cpu.py "
                          + " ".join(f"--python {Path(p).parent.parent.name}/bin/python" for p in a.python or []),
                          "shape": SHAPE, "tracker": "ftplan.measure.tracker.LiveStorageTracker (live storages)"},
           "summary": summary, "rows": rows}
    out = Path(a.out)
    from ftplan.atomic import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(doc, indent=1) + "\n")
    print(f"saved {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
