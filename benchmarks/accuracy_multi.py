"""Analytical per-rank memory vs real multi-process CPU training and full-size sharded traces, term by term.

Each configuration runs ``world`` CPU processes over gloo (``ftplan.measure.distributed.measure``): the same
synthetic model on every rank, wrapped as HF Trainer/accelerate wrap it (DDP, or FSDP2 with accelerate's
units and mixed-precision policy), two measured optimizer steps, micro-batches before the last of an
accumulation without gradient sync. The live-storage tracker measures each rank (it follows FSDP2's storage
resizes and tags its all-gather and reduce-scatter buffers); the largest rank per phase is compared with
``ftplan.estimate(..., gpu="cpu", num_gpus=world, sharding=...)``.

The full-size rows (catalog models, 8B to 70B on 2 to 8 ranks) are traced in one process: rank 0 of an FSDP2
job over PyTorch's fake process group under FakeTensorMode (``ftplan trace --gpus N --sharding fsdp``), the
same tracker, no memory. Prints the table and writes ``results/accuracy_multi.json``.

    python benchmarks/accuracy_multi.py [--quick] [--ranks-only | --traces-only] [--match TEXT] [--out PATH] [--reuse]

Every rank's measured phases go to ``results/accuracy_multi_measured.json``; ``--reuse`` compares the model
with those measurements again without running the ranks (after a change to the model).

Target (issue 13): median |error| <= 2%, max <= 5% on the per-rank peak allocated bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _accuracy  # noqa: E402
from _accuracy import run_and_report  # noqa: E402

from ftplan.measure.small_models import write_config  # noqa: E402

# a layer-heavy Llama (small vocabulary), so the FSDP terms of a layer decide the peak rather than the logits
WIDE = {"model_type": "llama", "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4,
        "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1024, "max_position_embeddings": 4096,
        "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "architectures": ["LlamaForCausalLM"]}


def _wide(folder: Path) -> str:
    d = folder / "wide"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(WIDE))
    return str(d)


def grid(folder: Path) -> list[tuple[str, str, dict]]:
    wide = _wide(folder)
    p = {a: str(write_config(a, folder)) for a in ("llama", "qwen2", "mistral")}
    full = dict(method="full", quant="bf16", optimizer="adamw_torch")
    lora = dict(method="lora", quant="bf16", optimizer="adamw_torch")
    q = dict(method="qlora", quant="nf4", optimizer="adamw_torch")
    rows: list[tuple[str, str, dict]] = []
    for world in (2, 4):
        for sh in ("ddp", "fsdp", "fsdp_grad_op"):
            rows.append(("wide", wide, dict(full, num_gpus=world, sharding=sh, micro_batch=1, seq_len=128,
                                            grad_accum=1, gradient_checkpointing=False)))
            rows.append(("wide", wide, dict(lora, num_gpus=world, sharding=sh, micro_batch=2, seq_len=128,
                                            grad_accum=1, gradient_checkpointing=True)))
        rows.append(("wide", wide, dict(full, num_gpus=world, sharding="fsdp", micro_batch=1, seq_len=128,
                                        grad_accum=2, gradient_checkpointing=True)))
        rows.append(("llama", p["llama"], dict(full, num_gpus=world, sharding="fsdp", micro_batch=2, seq_len=128,
                                               grad_accum=1, gradient_checkpointing=False)))
        rows.append(("llama", p["llama"], dict(lora, num_gpus=world, sharding="fsdp", micro_batch=2, seq_len=256,
                                               grad_accum=2, gradient_checkpointing=False)))
        rows.append(("qwen2", p["qwen2"], dict(full, num_gpus=world, sharding="fsdp", micro_batch=2, seq_len=128,
                                               grad_accum=1, gradient_checkpointing=True)))
        rows.append(("mistral", p["mistral"], dict(lora, num_gpus=world, sharding="fsdp", micro_batch=1,
                                                   seq_len=256, grad_accum=1, gradient_checkpointing=False)))
        rows.append(("llama", p["llama"], dict(q, num_gpus=world, sharding="ddp", micro_batch=2, seq_len=128,
                                               grad_accum=2, gradient_checkpointing=True)))
    # QLoRA under FSDP2: the packed 4-bit weights stored in the compute dtype (bnb_4bit_quant_storage), as FSDP needs
    for world, sh, gc in ((2, "fsdp", True), (2, "fsdp", False), (2, "fsdp_grad_op", True), (4, "fsdp", True)):
        rows.append(("wide", wide, dict(q, num_gpus=world, sharding=sh, micro_batch=1, seq_len=128, grad_accum=1,
                                        gradient_checkpointing=gc)))
    rows.append(("llama", p["llama"], dict(q, num_gpus=2, sharding="fsdp", micro_batch=2, seq_len=128, grad_accum=2,
                                           gradient_checkpointing=True)))
    # DeepSpeed ZeRO as HF Trainer runs it (bf16 module, the plan's optimizer wrapped by ZeRO, "auto" buckets)
    for world, sh, kn in ((2, "zero1", dict(full, gradient_checkpointing=False)),
                          (2, "zero2", dict(full, gradient_checkpointing=False)),
                          (2, "zero2", dict(full, gradient_checkpointing=True, grad_accum=2)),
                          (2, "zero2", dict(lora, gradient_checkpointing=True)),
                          (2, "zero3", dict(full, gradient_checkpointing=False)),
                          (2, "zero3", dict(lora, gradient_checkpointing=True)),
                          (4, "zero2", dict(full, gradient_checkpointing=False)),
                          (4, "zero3", dict(full, gradient_checkpointing=True))):
        rows.append(("wide", wide, dict({"micro_batch": 1, "seq_len": 128, "grad_accum": 1}, **kn, num_gpus=world,
                                        sharding=sh)))
    return rows


def traces() -> list[tuple[str, str, dict]]:
    """Full-size FSDP2 ranks traced under a fake process group (the catalog's real shapes)."""
    lora = dict(method="lora", quant="bf16", optimizer="adamw_torch", micro_batch=1, seq_len=2048, grad_accum=1,
                gradient_checkpointing=True)
    full = dict(lora, method="full")
    fs = dict(sharding="fsdp")
    return [
        ("8b", "8b", dict(lora, num_gpus=2, **fs)),
        ("8b", "8b", dict(lora, num_gpus=4, **fs)),
        ("8b", "8b", dict(lora, num_gpus=8, **fs)),
        ("8b", "8b", dict(lora, num_gpus=8, gradient_checkpointing=False, **fs)),
        ("8b", "8b", dict(full, num_gpus=8, **fs)),
        ("8b", "8b", dict(full, num_gpus=8, grad_accum=2, **fs)),
        ("8b", "8b", dict(lora, num_gpus=4, sharding="fsdp_grad_op")),
        ("mistral", "mistral-7b", dict(lora, num_gpus=2, micro_batch=2, seq_len=1024, **fs)),
        ("qwen14b", "qwen2.5-14b", dict(full, num_gpus=8, **fs)),
        ("qwen32b", "qwen2.5-32b", dict(lora, num_gpus=4, **fs)),
        ("70b", "70b", dict(lora, num_gpus=4, **fs)),
        ("70b", "70b", dict(lora, num_gpus=8, **fs)),
        ("70b", "70b", dict(full, num_gpus=8, **fs)),
        # QLoRA under FSDP: packed 4-bit weights stored in bf16 (bnb_4bit_quant_storage)
        ("8b", "8b", dict(lora, method="qlora", quant="nf4", num_gpus=2, **fs)),
        ("70b", "70b", dict(lora, method="qlora", quant="nf4", num_gpus=2, micro_batch=2, **fs)),
    ]


def describe(kn: dict) -> str:
    return f"{kn['num_gpus']}x{kn['sharding']} " + _describe(kn)


_describe = _accuracy.describe
_accuracy.describe = describe


MEASURED = Path(__file__).resolve().parent / "results" / "accuracy_multi_measured.json"
_measured: dict[str, dict] = {}
_reuse = False


def _key(model: str, kn: dict) -> str:
    return json.dumps([Path(model).name, sorted(kn.items())])


def measure(model: str, kn: dict) -> dict:
    """The per-rank measurement in the shape the shared report reads: each phase's largest rank."""
    from ftplan.measure.distributed import measure as run

    knobs = {k: v for k, v in kn.items() if k not in ("num_gpus", "sharding")}
    key = _key(model, kn)
    if _reuse:
        if key not in _measured:
            return {"status": "not measured", "error": "no stored measurement for this row (run without --reuse)"}
        res = _measured[key]
    elif not Path(model).exists():  # a catalog model: trace rank 0 at full size
        from ftplan.measure.trace import trace

        t = trace(model, **kn)
        res = _measured[key] = {"world": kn["num_gpus"], "sharding": kn["sharding"], "traced": True,
                                "ranks": [{"rank": 0, "phases": {ph: {**t["phase_peaks"][ph], "breakdown": t["phases"][ph]}
                                                                 for ph in t["phase_peaks"]}}]}
    else:
        res = run(model, world=kn["num_gpus"], sharding=kn["sharding"], **knobs)
        _measured[key] = res
    phases: dict[str, dict] = {}
    for r in res["ranks"]:
        for ph, v in r["phases"].items():
            if ph not in phases or v["peak_allocated_bytes"] > phases[ph]["peak_allocated_bytes"]:
                phases[ph] = v
    peak_phase = max(phases, key=lambda ph: phases[ph]["peak_allocated_bytes"])
    return {"status": "ok", "peak_phase": peak_phase, "peak_allocated_bytes": phases[peak_phase]["peak_allocated_bytes"],
            "phase_peaks": {ph: {"peak_allocated_bytes": v["peak_allocated_bytes"]} for ph, v in phases.items()},
            "phases": {ph: v["breakdown"] for ph, v in phases.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the 2-rank half of the grid")
    ap.add_argument("--ranks-only", action="store_true", help="only the multi-process CPU runs")
    ap.add_argument("--traces-only", action="store_true", help="only the full-size fake-process-group traces")
    ap.add_argument("--match", default="", help="only the rows whose description contains this text (e.g. zero)")
    ap.add_argument("--reuse", action="store_true", help="compare with the stored measurements, run nothing")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "accuracy_multi.json"))
    a = ap.parse_args()
    def keep(g: list) -> list:
        rows = [] if a.traces_only else [r for r in g if r[2]["num_gpus"] == 2 or not a.quick]
        if not a.ranks_only:
            rows += traces()[: 4 if a.quick else None]
        return [r for r in rows if a.match in describe(r[2])]

    global _reuse
    if a.reuse:
        _reuse = True
        _measured.update(json.loads(MEASURED.read_text())["measured"])
    run_and_report(grid, measure, "measured", "cpu", "benchmarks/accuracy_multi.py", a.out, keep=keep)
    print(f"measured {len(_measured)} rows" if not a.reuse else "compared with the stored measurements "
          f"({MEASURED.name}; --reuse ran nothing)")
    if not a.reuse:
        from ftplan.atomic import atomic_write_text
        from ftplan.stack.env import provenance

        old = json.loads(MEASURED.read_text()) if MEASURED.exists() else {}
        argv = ["python", "benchmarks/accuracy_multi.py", *(_accuracy.scrub(x) for x in sys.argv[1:])]
        runs = [*old.get("runs", []), {**provenance("cpu", argv), "rows": sorted(_measured)}]
        doc = {"runs": runs, "measured": {**old.get("measured", {}), **_measured}}
        atomic_write_text(MEASURED, json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
