"""Analytical model vs real GPU runs: ``ftplan profile --device cuda --synthetic-weights`` for each
configuration (one subprocess each, so allocator state and an OOM never leak into the next), beside
``ftplan.estimate`` for the same GPU. Compares peak allocated, peak reserved and the process's NVML
memory; writes ``results/accuracy_gpu-<gpu>.json`` with the provenance (GPU, driver, versions, date,
command, CPU count). A run that errored, ran out of memory, timed out or did not measure is a failed
row: listed with its reason, counted in every summary line ("N of M rows failed") and saved under
``failed``; it is never part of a median or maximum.

    python benchmarks/accuracy_gpu.py [--gpu auto|h100|...] [--quick] [--timeout 600]

Needs a CUDA GPU with torch, transformers, peft, bitsandbytes. Grid: synthetic Llama-3.2 1B/3B and
Llama-3.1 8B shapes (QLoRA nf4/fp4, LoRA bf16, full), micro-batch, sequence 512-4096, checkpointing,
optimizers, and a 70B QLoRA when the card has the memory. Target (issue 3): median |error| <= 3%,
max <= 8% on reserved. Use the ratios to set the per-GPU constants (CUDA context, allocator overhead)
that the CPU cannot show.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _accuracy import failure_summary, scrub  # noqa: E402

import ftplan  # noqa: E402
from ftplan.atomic import atomic_write_text  # noqa: E402
from ftplan.measure.compare import rel_error  # noqa: E402

MiB = 1024**2


def grid(total_gib: float) -> list[tuple[str, dict]]:
    q = dict(method="qlora", grad_accum=1)
    rows: list[tuple[str, dict]] = []
    for model in ("1b", "3b", "8b"):
        rows += [
            (model, dict(q, seq_len=2048, micro_batch=1, gradient_checkpointing=True, optimizer="paged_adamw_8bit")),
            (model, dict(q, seq_len=1024, micro_batch=4, gradient_checkpointing=True, optimizer="adamw")),
            (model, dict(q, seq_len=512, micro_batch=2, gradient_checkpointing=False, optimizer="adamw_8bit")),
            (model, dict(q, seq_len=4096, micro_batch=1, gradient_checkpointing=True, optimizer="paged_adamw_8bit",
                         lora_rank=64)),
            (model, dict(q, quant="fp4", double_quant=False, seq_len=2048, micro_batch=1, gradient_checkpointing=True,
                         optimizer="adamw")),
            (model, dict(q, seq_len=2048, micro_batch=2, gradient_checkpointing=False, optimizer="adamw",
                         lora_targets="q_proj,v_proj")),
            (model, dict(q, seq_len=1024, micro_batch=2, gradient_checkpointing=True, optimizer="adamw",
                         lora_dropout=0.05)),
            (model, dict(method="lora", quant="bf16", seq_len=2048, micro_batch=1, gradient_checkpointing=True,
                         optimizer="adamw", grad_accum=1)),
            (model, dict(method="lora", quant="bf16", seq_len=1024, micro_batch=2, gradient_checkpointing=False,
                         optimizer="adamw_torch", grad_accum=1)),
            (model, dict(method="full", quant="bf16", seq_len=1024, micro_batch=1, gradient_checkpointing=True,
                         optimizer="adamw_8bit", grad_accum=1)),
        ]
    rows.append(("8b", dict(q, seq_len=1024, micro_batch=1, gradient_checkpointing=False, optimizer="adamw",
                            attention="eager")))
    if total_gib >= 60:
        rows.append(("70b", dict(q, seq_len=2048, micro_batch=1, gradient_checkpointing=True,
                                 optimizer="paged_adamw_8bit")))
    return rows


def profile_subprocess(model: str, kn: dict, timeout: int) -> dict:
    args = [sys.executable, "-m", "ftplan", "profile", "--model", model, "--synthetic-weights", "--device", "cuda",
            "--json", "--no-compare", "--steps", "3"]
    flag = {"method": "--method", "quant": "--quant", "lora_rank": "--rank", "lora_targets": "--targets",
            "lora_dropout": "--lora-dropout", "micro_batch": "--micro-batch", "seq_len": "--seq-len",
            "grad_accum": "--grad-accum", "optimizer": "--optimizer", "attention": "--attention"}
    for k, v in kn.items():
        if k == "gradient_checkpointing":
            args.append("--grad-ckpt" if v else "--no-grad-ckpt")
        elif k == "double_quant":
            args.append("--double-quant" if v else "--no-double-quant")
        else:
            args += [flag[k], str(v)]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"no result within {timeout} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = out.stderr.strip().splitlines()[-1:]
        return {"status": "error", "error": f"exit {out.returncode}: {tail[0] if tail else 'no output'}"}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as e:
        return {"status": "error", "error": f"unreadable JSON from ftplan profile: {e}"}


KEYS = ("peak_allocated_bytes", "peak_reserved_bytes", "device_bytes")


def summarize(results: list[dict]) -> dict:
    """Per measured figure: median and max |error| over the rows that measured it, and the failed rows."""
    failed = sum(r["status"] != "ok" for r in results)
    out: dict = {}
    for key in KEYS:
        ok = [r for r in results if r["status"] == "ok"]
        errs = [abs(rel_error(r["predicted"][key], r["measured"][key])) for r in ok if r["measured"][key]]
        out[key] = {"runs": len(errs), "without_figure": len(ok) - len(errs),
                    "median_abs_error": statistics.median(errs) if errs else None,
                    "max_abs_error": max(errs) if errs else None}
        line = (f"median |error| {100 * statistics.median(errs):.2f}%, max {100 * max(errs):.2f}% ({len(errs)} runs)"
                if errs else "no run measured it")
        if len(ok) > len(errs):
            line += f"; {len(ok) - len(errs)} ran without this figure"
        out[key]["summary"] = f"{key}: {line}; {failure_summary(failed, len(results))}"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", default="auto", help="catalog GPU for the estimate (default: NVML detection)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("accuracy_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    from ftplan.stack.env import provenance

    gpu = ftplan.get_gpu(args.gpu)
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    rows = grid(total)
    if args.quick:
        rows = rows[::3]
    results = []
    print(f"{'#':>3} {'model':<5} {'configuration':<64} {'alloc':>9} {'err':>7} {'reserved':>9} {'err':>7} "
          f"{'nvml':>9} {'err':>7} {'tok/s':>8}")
    for i, (model, kn) in enumerate(rows, 1):
        rec: dict = {"row": i, "model": model, "knobs": kn}
        try:
            est = ftplan.estimate(model, gpu, calibrate=False, **kn)
        except Exception as e:  # noqa: BLE001 - one broken row must not hide the others
            est, m = None, {"status": "error", "error": f"prediction failed: {type(e).__name__}: {e}"}
        else:
            m = profile_subprocess(model, kn, args.timeout)
            rec["predicted"] = {"peak_allocated_bytes": est.peak_allocated_bytes,
                                "peak_reserved_bytes": est.peak_reserved_bytes, "device_bytes": est.device_bytes,
                                "tokens_per_s": est.time.tokens_per_s if est.time else None,
                                "phases": {k: dict(v) for k, v in est.phases.items()}}
        status = m.get("status") or "error"
        if status == "ok" and not m.get("peak_allocated_bytes"):
            status, m = "no measurement", {**m, "error": "the run reported ok but no peak allocated bytes"}
        rec["status"] = status
        rec["measured"] = {k: m.get(k) for k in (*KEYS, "tokens_per_s", "phase_peaks", "peak_phase")}
        desc = " ".join(f"{k}={v}" for k, v in kn.items() if k != "grad_accum")[:64]
        if status != "ok":
            rec["reason"] = scrub(" ".join(str(m.get("error") or "no error text").split())[:500])
            results.append(rec)
            print(f"{i:>3} {model:<5} {desc:<64} FAILED {status}: {rec['reason'][:200]}", flush=True)
            continue
        results.append(rec)

        def cell(key: str, m: dict = m, est=est) -> str:
            meas, pred = m.get(key), getattr(est, key)
            if not meas:
                return f"{'?':>9} {'':>7}"
            return f"{meas / MiB:>9.0f} {100 * rel_error(pred, meas):>+6.1f}%"
        print(f"{i:>3} {model:<5} {desc:<64} {cell('peak_allocated_bytes')} {cell('peak_reserved_bytes')} "
              f"{cell('device_bytes')} {m.get('tokens_per_s') or 0:>8.0f}", flush=True)
    summary = summarize(results)
    print()
    for key in KEYS:
        print(summary[key]["summary"])
    failed = [r for r in results if r["status"] != "ok"]
    if failed:
        print("failed rows:")
        for r in failed:
            print(f"  #{r['row']} {r['model']} {r['knobs']}: {r['status']}: {r['reason']}")
    ok = [r for r in results if r["status"] == "ok" and r["measured"]["peak_allocated_bytes"]
          and r["measured"]["peak_reserved_bytes"]]
    if ok:
        over = [r["measured"]["peak_reserved_bytes"] / r["measured"]["peak_allocated_bytes"] for r in ok]
        print(f"reserved / allocated: median {statistics.median(over):.3f} over {len(ok)} runs "
              "(sets the allocator overhead prior)")
    out = Path(args.out or Path(__file__).parent / "results" / f"accuracy_gpu-{gpu.key}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    prov = {**provenance("cuda", ["python", "benchmarks/accuracy_gpu.py", *sys.argv[1:]]), "cpu_count": os.cpu_count()}
    doc = {"provenance": prov, "rows": len(results), "failed_count": len(failed), "summary": summary,
           "results": [r for r in results if r["status"] == "ok"], "failed": failed}
    atomic_write_text(out, json.dumps(doc, indent=1))
    print(f"wrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out.name}")
    return 0


if __name__ == "__main__":
    from ftplan.stack import quiet_stack

    with quiet_stack():
        rc = main()
    raise SystemExit(rc)
