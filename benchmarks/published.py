"""Predictions against published measured peak-memory figures.

Reads ``shared/reference/published_memory_dev.csv`` (beside the repository; or ``--csv PATH``), keeps
the rows the planner can model, predicts each with ``ftplan.estimate`` using the run's framework
switches, and prints per-row error, the median and the 90th percentile of the absolute error.

Row selection (applied in code; ``--all`` prints the reason for every excluded row): measured (not
the ESTIMATE rows); a dense decoder in the catalog; micro-batch and sequence length stated, and the
data packed or fixed-length (an unpacked ``max_seq_len`` says nothing of the real lengths); one GPU;
bf16 or NF4 base (bnb or torchao), not GPTQ or 2-bit; no ``modules_to_save``; no
optimizer-in-backward, activation offloading or DeepSpeed (not modelled yet).

Framework switches (what each source's recipe does, from its config):
- torchtune: pure bf16 without autocast (no fp32 upcast: ``prepare_kbit=False, autocast=False``),
  chunked cross-entropy where the row says so, fused AdamW unless the row names bitsandbytes.
- HF Trainer + PEFT (Qwen finetune.py): bf16 autocast, standard loss, ``adamw_torch``, LoRA dropout 0.05.
Metric: ``ACTIVE``/``max_memory_allocated`` rows are compared with ``peak_allocated_bytes``,
``reserved`` rows with ``peak_reserved_bytes``, nvidia-smi rows with ``device_bytes``; rows whose
metric is unspecified with ``peak_reserved_bytes`` (the middle figure), and marked ``?``.

No constant of the model is fitted to these rows.

    python benchmarks/published.py [--csv PATH] [--all]
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from pathlib import Path

import ftplan
from ftplan.errors import FtplanError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT.parent / "shared" / "reference" / "published_memory_dev.csv"
UNITS = {"GB": 1e9, "GiB": 1024**3, "MB": 1e6, "MiB": 1024**2}


def _first_int(s: str) -> int | None:
    m = re.search(r"\d+", s or "")
    return int(m.group(0)) if m else None


def _targets(s: str) -> str:
    s = (s or "").lower()
    if "all-linear" in s or "all linear" in s:
        return "all-linear"
    names = re.findall(r"(q_proj|k_proj|v_proj|output_proj|o_proj|gate_proj|up_proj|down_proj|w1|w2|w3|c_attn|c_proj)", s)
    mapped = []
    for n in names:
        n = {"output_proj": "o_proj", "w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}.get(n, n) \
            if "c_attn" not in s else n
        if n not in mapped:
            mapped.append(n)
    if "mlp" in s and "torchtune" in s:
        mapped += [m for m in ("gate_proj", "up_proj", "down_proj") if m not in mapped]
    return ",".join(mapped) or "q_proj,v_proj"


def _optimizer(s: str, framework: str) -> str:
    s = (s or "").lower()
    if "pagedadamw8bit" in s.replace(" ", "") or "paged_adamw_8bit" in s:
        return "paged_adamw_8bit"
    if "paged" in s:
        return "paged_adamw_32bit"
    if "8-bit" in s or "8bit" in s:
        return "adamw_8bit"
    if "qwen" in framework.lower():
        return "adamw_torch"
    return "adamw"


def _metric(m: str) -> tuple[str, str]:
    m = (m or "").lower()
    if "active" in m or "max_memory_allocated" in m:
        return "peak_allocated_bytes", "alloc"
    if "reserved" in m:
        return "peak_reserved_bytes", "reserved"
    if "nvidia-smi" in m or "screenshot" in m:
        return "device_bytes", "smi"
    return "peak_reserved_bytes", "?"


def row_knobs(r: dict) -> tuple[dict | None, str]:
    """(estimate keyword arguments, '') or (None, reason for excluding the row)."""
    if not r["measured_or_estimated"].startswith("measured"):
        return None, "not a measurement"
    q = r["quant"].lower()
    if "gptq" in q or "2-bit" in q:
        return None, f"base format not modelled ({r['quant']})"
    if "modules_to_save" in r["method"]:
        return None, "modules_to_save not modelled"
    try:
        n_gpus = int(r["num_gpus"] or 1)
    except ValueError:
        n_gpus = 1
    if n_gpus != 1:
        return None, "multi-GPU row"
    other = (r["other_memory_settings"] + " " + r["optimizer"]).lower().replace("no deepspeed", "")
    if "optimizer_in_bwd" in other or "offload" in other or "deepspeed" in other:
        return None, "optimizer-in-backward, activation offloading or DeepSpeed not modelled"
    if "unpacked" in r["seq_len_note"]:
        return None, "unpacked data: seq_len is only a maximum"
    mb, seq = _first_int(r["micro_batch"]), _first_int(r["seq_len"])
    if not mb or not seq or "not stated" in r["micro_batch"]:
        return None, "micro-batch or sequence not stated"
    try:
        model = ftplan.get_model(r["hf_model_id"])
    except FtplanError:
        return None, f"not a catalog dense decoder ({r['hf_model_id'] or r['model']})"
    if model.is_moe:
        return None, "MoE"
    method = r["method"].split()[0]
    quant = "nf4" if "nf4" in q or "4-bit" in q else "bf16"
    if method == "qlora" and quant != "nf4":
        return None, "QLoRA base type not stated"
    fw = r["framework"]
    ck = r["grad_checkpointing"].lower()
    knobs = dict(method=method, quant=quant, micro_batch=mb, seq_len=seq, grad_accum=1,
                 gradient_checkpointing=not ck.startswith("no"), optimizer=_optimizer(r["optimizer"], fw),
                 attention="sdpa")
    if method != "full":
        knobs["lora_rank"] = _first_int(r["lora_r"]) or 8
        knobs["lora_targets"] = _targets(r["lora_targets"] + " " + fw)
    if fw.startswith("torchtune"):
        chunked = "chunked" in other
        knobs.update(prepare_kbit=False, autocast=False, loss_impl="chunked" if chunked else "standard")
    elif "qwen" in fw.lower():
        knobs.update(lora_dropout=0.05, grad_accum=8)
    else:
        return None, f"framework not modelled yet ({fw[:40]})"
    return knobs, ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--all", action="store_true", help="also list the excluded rows and why")
    args = ap.parse_args()
    if not args.csv.exists():
        sys.exit(f"error: {args.csv} not found; pass --csv PATH to published_memory_dev.csv")
    rows = list(csv.DictReader(args.csv.open(newline="")))
    print(f"{'row':>4} {'model':<20}{'method':<7}{'base':<5}{'r':>4}{'mb':>3}{'seq':>6}{'ck':>3} {'optimizer':<17}"
          f"{'metric':<9}{'published GiB':>14}{'predicted':>10}{'error':>8}{'device err':>11}  source")
    errors, excluded, dev_errors = [], [], []
    for r in rows:
        knobs, why = row_knobs(r)
        if knobs is None:
            excluded.append((r["row_id"], why))
            continue
        est = ftplan.estimate(r["hf_model_id"], **knobs)
        attr, label = _metric(r["peak_mem_metric"])
        pred = getattr(est, attr)
        pub = float(r["peak_mem_value"]) * UNITS[r["peak_mem_unit"]]
        err = (pred - pub) / pub
        errors.append(abs(err))
        # unspecified metric: also show the error if the figure was the process's device memory
        dev_err = (est.device_bytes - pub) / pub if label == "?" else err
        dev_errors.append(abs(dev_err))
        print(f"{r['row_id']:>4} {est.model[:19]:<20}{knobs['method']:<7}{knobs['quant']:<5}"
              f"{knobs.get('lora_rank', '-'):>4}{knobs['micro_batch']:>3}{knobs['seq_len']:>6}"
              f"{'y' if knobs['gradient_checkpointing'] else 'n':>3} {knobs['optimizer']:<17}{label:<9}"
              f"{pub / 1024**3:>14.2f}{pred / 1024**3:>10.2f}{err:>+8.1%}{dev_err:>+11.1%}  {r['source_group']}")
    if not errors:
        sys.exit("no comparable rows")
    errors.sort()
    p90 = errors[min(len(errors) - 1, int(round(0.9 * (len(errors) - 1))))]
    print(f"\n{len(errors)} rows compared, {len(excluded)} excluded. |error|: median {statistics.median(errors):.1%}, "
          f"90th percentile {p90:.1%}, max {errors[-1]:.1%}")
    dev_errors.sort()
    p90d = dev_errors[min(len(dev_errors) - 1, int(round(0.9 * (len(dev_errors) - 1))))]
    print(f"reading the unspecified ('?') figures as device memory instead: median {statistics.median(dev_errors):.1%}, "
          f"90th percentile {p90d:.1%}, max {dev_errors[-1]:.1%}")
    if args.all:
        for rid, why in excluded:
            print(f"  excluded row {rid}: {why}")


if __name__ == "__main__":
    main()
