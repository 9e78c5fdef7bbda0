"""Shared by the accuracy benchmarks: run a grid, print per-configuration and per-term errors."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import ftplan
from ftplan.atomic import atomic_write_text
from ftplan.measure.compare import PHASES, phase_totals, rel_error, term_rows, worst_term

MiB = 1024**2


def describe(kn: dict[str, Any]) -> str:
    parts = [kn.get("method", "qlora")]
    if kn.get("quant"):
        parts.append(kn["quant"] + ("" if kn.get("double_quant", True) else "-nodq"))
    if kn.get("method", "qlora") != "full":
        parts.append(f"r{kn.get('lora_rank', 16)}")
        if kn.get("lora_targets", "all-linear") != "all-linear":
            parts.append(str(kn["lora_targets"]).replace("_proj", ""))
        if kn.get("lora_dropout"):
            parts.append(f"drop{kn['lora_dropout']}")
    parts.append(f"b{kn.get('micro_batch', 1)}x{kn.get('seq_len')}")
    if kn.get("grad_accum", 1) > 1:
        parts.append(f"acc{kn['grad_accum']}")
    parts.append("gc" if kn.get("gradient_checkpointing", True) else "nogc")
    parts.append(kn.get("optimizer", "paged_adamw_8bit"))
    if kn.get("attention", "sdpa") != "sdpa":
        parts.append(kn["attention"])
    return " ".join(parts)


def compare_one(arch: str, model: str, kn: dict[str, Any], measured: dict[str, Any], gpu: str) -> dict[str, Any]:
    est = ftplan.estimate(model, gpu, calibrate=False, **kn)
    pred = phase_totals(est.phases)
    meas = {ph: measured["phase_peaks"][ph]["peak_allocated_bytes"] for ph in PHASES}
    peak_m = measured["peak_allocated_bytes"]
    rows = term_rows(est.phases[measured["peak_phase"]], measured["phases"][measured["peak_phase"]])
    w = worst_term(rows)
    return {"arch": arch, "config": describe(kn), "knobs": kn, "measured_peak": peak_m,
            "predicted_peak": est.peak_allocated_bytes, "error": rel_error(est.peak_allocated_bytes, peak_m),
            "measured_phase": measured["peak_phase"], "predicted_phase": est.peak_phase,
            "phase_errors": {ph: rel_error(pred[ph], meas[ph]) for ph in PHASES},
            "terms": [{"term": r.group, "predicted": r.predicted, "measured": r.measured} for r in rows],
            "worst_term": None if w is None else {"term": w.group, "diff": w.diff}}


def print_table(results: list[dict[str, Any]], label: str) -> None:
    print(f"{'#':>3} {'arch':<8} {'configuration':<58} {label + ' MiB':>13} {'pred MiB':>10} {'error':>7}  "
          f"{'fwd':>6} {'bwd':>6} {'opt':>6}  worst term (pred - meas)")
    for i, r in enumerate(results, 1):
        pe = r["phase_errors"]
        w = r["worst_term"]
        wt = f"{w['term']} {w['diff'] / MiB:+.2f} MiB" if w else ""
        print(f"{i:>3} {r['arch']:<8} {r['config'][:58]:<58} {r['measured_peak'] / MiB:>13.1f} "
              f"{r['predicted_peak'] / MiB:>10.1f} {100 * r['error']:>+6.2f}%  "
              f"{100 * pe['forward_end']:>+5.1f}% {100 * pe['backward']:>+5.1f}% {100 * pe['optimizer_step']:>+5.1f}%  {wt}")
    errs = [abs(r["error"]) for r in results]
    if errs:
        print(f"\n{len(errs)} configurations: median |error| {100 * statistics.median(errs):.2f}%, "
              f"max {100 * max(errs):.2f}% (peak allocated; phases: forward end / backward / optimizer step)")
    by_term: dict[str, list[float]] = {}
    for r in results:
        for t in r["terms"]:
            by_term.setdefault(t["term"], []).append(abs(t["predicted"] - t["measured"]) / max(r["measured_peak"], 1))
    print("per term at the peak, |pred - meas| as a share of the peak:  " + ",  ".join(
        f"{k} median {100 * statistics.median(v):.2f}% max {100 * max(v):.2f}%" for k, v in sorted(by_term.items())))


def save(results: list[dict[str, Any]], provenance: dict, path: Path) -> None:
    """Atomic write of the table and its provenance."""
    errs = [abs(r["error"]) for r in results]
    doc = {"provenance": provenance, "median_abs_error": statistics.median(errs) if errs else None,
           "max_abs_error": max(errs) if errs else None, "results": results}
    atomic_write_text(path, json.dumps(doc, indent=1))


def run_grid(grid: list[tuple[str, str, dict]], measure: Callable[[str, dict], dict], gpu: str,
             label: str) -> list[dict[str, Any]]:
    results = []
    for arch, model, kn in grid:
        m = measure(model, kn)
        if m.get("status") != "ok":
            print(f"   {arch} {describe(kn)}: {m.get('status')} {m.get('error', '')}")
            continue
        r = compare_one(arch, model, kn, m, gpu)
        results.append(r)
        print(f"   {len(results):>3} {arch:<8} {r['config'][:60]:<60} {100 * r['error']:+.2f}%", flush=True)
    return results


def run_and_report(grid: Callable[[Path], list[tuple[str, str, dict]]], measure: Callable[[str, dict], dict],
                   label: str, device: str, script: str, out: str,
                   keep: Callable[[list], list] = lambda g: g) -> None:
    """Build the grid in a temporary folder, measure each row, print the table and its timing, and
    save it with the provenance of ``device`` and the command that ran it."""
    from ftplan.stack.env import provenance

    with tempfile.TemporaryDirectory() as tmp:
        rows = keep(grid(Path(tmp)))
        t0 = time.perf_counter()
        results = run_grid(rows, measure, "cpu", label)
        took = time.perf_counter() - t0
    print()
    print_table(results, label)
    print(f"({took:.0f} s)")
    save(results, provenance(device, ["python", script, *sys.argv[1:]]), Path(out))
