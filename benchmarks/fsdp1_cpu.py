"""FSDP1 measured on the CPU, beside ftplan's FSDP model (which is FSDP2's, what accelerate runs today).

Most published multi-GPU figures come from FSDP1 (``FullyShardedDataParallel``: HF Trainer + accelerate before
FSDP2, AnswerDotAI's fsdp_qlora, fms-acceleration, llama-recipes). accelerate's FSDP plugin refuses the CPU,
but FSDP1 itself runs there (``device_id=cpu``). This script wraps the model as HF Trainer does with FSDP1
(``ftplan.measure.distributed.shard_fsdp1``: PEFT's wrap policy for LoRA, fp32 weights for a full fine-tune,
bf16 mixed precision). QLoRA without ``prepare_model_for_kbit_training``: its fp32
norms cannot be flattened with the bf16 storage of the 4-bit weights in one unit (FSDP1 raises "Must flatten
tensors with uniform dtype"). Rank 0 of 2 runs over PyTorch's fake process group (real allocations, no
communication) under the live-storage tracker, which follows FSDP1's storage resizes
(``LiveStorageTracker.follow_fsdp1``); each phase's peak is printed beside ``ftplan.estimate(...,
sharding="fsdp")``.

    python benchmarks/fsdp1_cpu.py [--out PATH]

Results go to ``results/fsdp1_cpu.json``. What it shows: how far FSDP1's allocated memory is from the
FSDP2 model the planner uses, so that a gap to a published FSDP1 figure can be told from FSDP1 itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_multi import WIDE  # noqa: E402

BASE = {"optimizer": "adamw_torch", "seq_len": 128, "grad_accum": 1}
ROWS = [
    dict(BASE, method="lora", quant="bf16", micro_batch=2, gradient_checkpointing=True),
    dict(BASE, method="lora", quant="bf16", micro_batch=2, gradient_checkpointing=False),
    dict(BASE, method="qlora", quant="nf4", micro_batch=1, gradient_checkpointing=True, prepare_kbit=False),
    dict(BASE, method="qlora", quant="nf4", micro_batch=1, gradient_checkpointing=False, prepare_kbit=False),
    dict(BASE, method="full", quant="bf16", micro_batch=1, gradient_checkpointing=True),
    dict(BASE, method="full", quant="bf16", micro_batch=1, gradient_checkpointing=False),
]


def measure_fsdp1(model: str, kn: dict, steps: int = 2) -> dict:
    """Rank 0 of a 2-rank FSDP1 run (``measure.distributed.shard_fsdp1``) over the fake process group: each
    phase's peak and live set by term."""
    from ftplan.measure.distributed import build_fsdp1, fake_rank0
    from ftplan.measure.step import classify_params, run_steps
    from ftplan.measure.tracker import LiveStorageTracker
    from ftplan.planner.options import make_config
    from ftplan.profiles.models import get_model

    spec = get_model(model)
    cfg = make_config(spec, None, num_gpus=2, sharding="fsdp", **kn).config
    with fake_rank0():
        net, vocab = build_fsdp1(model, spec, cfg, "cpu")
        tracker = LiveStorageTracker()
        for tag, ts in classify_params(net).items():
            tracker.track(ts, tag, weight=tag != "buffers")
        with tracker, tracker.follow_fsdp1():
            records = run_steps(net, cfg, vocab, "cpu", steps, tracker, no_sync=net.no_sync)
    return {ph: {"peak_allocated_bytes": v["peak_allocated_bytes"], "breakdown": v["breakdown"]}
            for ph, v in records[-1].phases.items()}


def describe(kn: dict) -> str:
    s = f"{kn['method']} b{kn['micro_batch']}x{kn['seq_len']} {'gc' if kn['gradient_checkpointing'] else 'nogc'}"
    return s + (" no-kbit-prep" if kn.get("prepare_kbit") is False else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "fsdp1_cpu.json"))
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    import ftplan
    from ftplan.stack import quiet_stack
    from ftplan.stack.env import provenance

    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, quiet_stack():
        folder = Path(tmp) / "wide"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(WIDE))
        print(f"{'configuration (wide Llama, rank 0 of 2)':42} {'FSDP1 measured':>15} {'ftplan (FSDP)':>14} {'error':>7}  phase")
        for kn in ROWS:
            phases = measure_fsdp1(str(folder), kn)
            peak_phase = max(phases, key=lambda ph: phases[ph]["peak_allocated_bytes"])
            meas = phases[peak_phase]["peak_allocated_bytes"]
            est = ftplan.estimate(str(folder), "cpu", num_gpus=2, sharding="fsdp", calibrate=False, **kn)
            pred = est.peak_allocated_bytes
            err = pred / meas - 1
            rows.append({"config": describe(kn), "knobs": kn, "measured_peak": meas, "measured_phase": peak_phase,
                         "predicted_peak": pred, "predicted_phase": est.peak_phase, "error": err,
                         "phases": phases})
            print(f"{describe(kn):42} {meas / 2**20:>12.2f} MiB {pred / 2**20:>10.2f} MiB {err:>+7.1%}  "
                  f"{peak_phase} / {est.peak_phase}")
    errs = sorted(abs(r["error"]) for r in rows)
    line = (f"{len(rows)} FSDP1 configurations: ftplan's FSDP model vs FSDP1 measured, median |error| "
            f"{errs[len(errs) // 2]:.1%}, max {errs[-1]:.1%}")
    print(line)
    from ftplan.atomic import atomic_write_text

    doc = {**provenance("cpu", ["python", "benchmarks/fsdp1_cpu.py"]), "summary": line, "rows": rows,
           "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_text(Path(a.out), json.dumps(doc, indent=1) + "\n")
    print(f"saved {a.out} ({doc['seconds']} s)")


if __name__ == "__main__":
    main()
