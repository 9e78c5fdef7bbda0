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

A selected row whose prediction fails or whose published figure cannot be read is a failed row: it is
listed with its reason, counted on the summary lines ("N of M rows failed") and saved under ``failed``;
it is never part of the median, percentile or maximum. The table, the failed and the excluded rows go
to ``results/published.json`` with the provenance (versions, date, command, CPU count, the CSV's sha256).

    python benchmarks/published.py [--csv PATH] [--all] [--out PATH]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _accuracy import failure_summary, scrub  # noqa: E402

import ftplan  # noqa: E402
from ftplan.atomic import atomic_write_text  # noqa: E402
from ftplan.errors import FtplanError  # noqa: E402
from ftplan.stack.env import versions  # noqa: E402

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


def _pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile of ``xs``, the nearest rank (the benchmarks' one definition)."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))]


def _p90(errs: list[float]) -> float:
    return _pct(errs, 0.9)


def _stats(errs: list[float]) -> dict:
    return {"median_abs_error": statistics.median(errs) if errs else None,
            "p90_abs_error": _p90(errs) if errs else None, "max_abs_error": max(errs) if errs else None}


def _line(errs: list[float], failed: int, total: int) -> str:
    if not errs:
        return f"no row compared; {failure_summary(failed, total)}"
    return (f"median {statistics.median(errs):.1%}, 90th percentile {_p90(errs):.1%}, max {max(errs):.1%}; "
            f"{failure_summary(failed, total)}")


def _shown(path: Path) -> str:
    """The CSV as the results name it: relative to the folder above the repository, never absolute."""
    try:
        return path.resolve().relative_to(ROOT.parent.resolve()).as_posix()
    except ValueError:
        return path.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--all", action="store_true", help="also list the excluded rows and why")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "published.json")
    ap.add_argument("--write-band", action="store_true", help="write the single-GPU memory band the fit output shows")
    args = ap.parse_args()
    if not args.csv.exists():
        sys.exit(f"error: {args.csv} not found; pass --csv PATH to published_memory_dev.csv")
    raw = args.csv.read_bytes()
    rows = list(csv.DictReader(args.csv.open(newline="")))
    print(f"{'row':>4} {'model':<20}{'method':<7}{'base':<5}{'r':>4}{'mb':>3}{'seq':>6}{'ck':>3} {'optimizer':<17}"
          f"{'metric':<9}{'published GiB':>14}{'predicted':>10}{'error':>8}{'device err':>11}  source")
    compared: list[dict] = []
    failed: list[dict] = []
    excluded: list[dict] = []
    for r in rows:
        knobs, why = row_knobs(r)
        if knobs is None:
            excluded.append({"row_id": r["row_id"], "reason": why})
            continue
        attr, label = _metric(r["peak_mem_metric"])
        try:
            pub = float(r["peak_mem_value"]) * UNITS[r["peak_mem_unit"]]
            if pub <= 0:
                raise ValueError(f"published figure {r['peak_mem_value']!r} is not positive")
        except (KeyError, ValueError) as e:
            reason = f"published figure unreadable: {r['peak_mem_value']!r} {r['peak_mem_unit']!r} ({type(e).__name__}: {e})"
        else:
            try:
                est = ftplan.estimate(r["hf_model_id"], **knobs)
                reason = ""
            except Exception as e:  # noqa: BLE001 - one broken row must not hide the others
                reason = f"prediction failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if reason:
            reason = scrub(reason)
            failed.append({"row_id": r["row_id"], "model": r["hf_model_id"] or r["model"], "knobs": knobs,
                           "source_group": r["source_group"], "status": "error", "reason": reason})
            print(f"{r['row_id']:>4} {(r['hf_model_id'] or r['model'])[:19]:<20}FAILED {reason[:160]}  {r['source_group']}")
            continue
        pred = getattr(est, attr)
        err = (pred - pub) / pub
        # unspecified metric: also show the error if the figure was the process's device memory
        dev_err = (est.device_bytes - pub) / pub if label == "?" else err
        compared.append({"row_id": r["row_id"], "model": est.model, "knobs": knobs, "metric": label,
                         "compared_with": attr, "published_bytes": pub, "predicted_bytes": pred, "error": err,
                         "device_error": dev_err, "source_group": r["source_group"]})
        print(f"{r['row_id']:>4} {est.model[:19]:<20}{knobs['method']:<7}{knobs['quant']:<5}"
              f"{knobs.get('lora_rank', '-'):>4}{knobs['micro_batch']:>3}{knobs['seq_len']:>6}"
              f"{'y' if knobs['gradient_checkpointing'] else 'n':>3} {knobs['optimizer']:<17}{label:<9}"
              f"{pub / 1024**3:>14.2f}{pred / 1024**3:>10.2f}{err:>+8.1%}{dev_err:>+11.1%}  {r['source_group']}")
    total = len(compared) + len(failed)
    errors = [abs(c["error"]) for c in compared]
    dev_errors = [abs(c["device_error"]) for c in compared]
    print(f"\n{len(compared)} rows compared, {len(failed)} failed, {len(excluded)} excluded. "
          f"|error|: {_line(errors, len(failed), total)}")
    print(f"reading the unspecified ('?') figures as device memory instead: {_line(dev_errors, len(failed), total)}")
    if failed:
        print("failed rows:")
        for f in failed:
            print(f"  row {f['row_id']} ({f['model']}): {f['reason']}")
    if args.all:
        for x in excluded:
            print(f"  excluded row {x['row_id']}: {x['reason']}")


    prov = {"what": "predictions only (ftplan.estimate), against published figures; nothing runs",
            "versions": versions(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["python", "benchmarks/published.py", *sys.argv[1:]]),
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "csv": {"path": _shown(args.csv), "sha256": hashlib.sha256(raw).hexdigest(), "rows": len(rows)}}
    doc = {"provenance": prov, "rows": total, "compared": len(compared), "failed_count": len(failed),
           "excluded_count": len(excluded), **_stats(errors),
           "as_device_memory": _stats(dev_errors),
           "summary": f"{len(compared)} rows compared: {_line(errors, len(failed), total)}",
           "results": compared, "failed": failed, "excluded": excluded}
    save_results(args.out, doc, bool(compared))
    if args.write_band and compared:
        write_memory_band("single_gpu", compared, "benchmarks/published.py")


MEMORY_BAND = ROOT / "ftplan" / "profiles" / "data" / "memory_band.json"


def write_memory_band(kind: str, compared: list[dict], source: str, path: Path = MEMORY_BAND) -> None:
    """Write ``kind``'s entry of ``ftplan/profiles/data/memory_band.json`` (the range every shown device figure
    carries, ``planner.bands.memory_band``): the 10th and 90th percentiles of published/predicted over the
    compared rows (each in the metric its source reported), their count, the median |error|, the date."""
    ratios = [1.0 / (1.0 + c["error"]) for c in compared]
    try:
        band = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        band = {}
    band[kind] = {"p10": _pct(ratios, 0.1), "p90": _pct(ratios, 0.9), "rows": len(ratios),
                  "median_abs_error": statistics.median(abs(c["error"]) for c in compared),
                  "source": f"{source} (published/predicted peak memory, each in its source's metric)",
                  "date": dt.date.today().isoformat()}
    atomic_write_text(path, json.dumps(band, indent=1, sort_keys=True) + "\n")
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    print(f"band {kind}: published/predicted {band[kind]['p10']:.2f}-{band[kind]['p90']:.2f} (10th-90th percentile, "
          f"{len(ratios)} rows); wrote {shown}")


def save_results(path: Path, doc: dict, any_compared: bool) -> None:
    """Write the results document atomically, say where (relative to the repository), and fail the run when
    no row could be compared."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=1))
    out = path.resolve()
    print(f"saved {out.relative_to(ROOT.resolve()) if out.is_relative_to(ROOT.resolve()) else out.name}")
    if not any_compared:
        sys.exit("no comparable rows")


if __name__ == "__main__":
    main()
