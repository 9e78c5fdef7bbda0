"""Shared by the accuracy benchmarks: run a grid, print per-configuration and per-term errors.

A row that errored or did not measure is a failed row: it is listed in the table with its reason,
counted in the summary ("N of M rows failed") and saved under ``failed`` in the JSON; it is never
part of the median or the maximum (and never counted as 0 error).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def failed_row(arch: str, kn: dict[str, Any], status: str, reason: str) -> dict[str, Any]:
    return {"arch": arch, "config": describe(kn), "knobs": kn, "status": status or "error",
            "reason": " ".join(str(reason).split())[:500] or "(no reason given)"}


def scrub(text: str, *folders: str | Path) -> str:
    """A reason without this machine's paths: the grid's temporary folder, the repository, the Python prefix."""
    named = [(str(f), "<grid>") for f in folders]
    named += [(str(Path(__file__).resolve().parents[1]), "<repo>"), (sys.prefix, "<python>"),
              (tempfile.gettempdir(), "<tmp>")]
    for f, label in sorted(named, key=lambda x: -len(x[0])):
        if f and f != "/":
            text = text.replace(f, label)
    return text


def _exc(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def failure_summary(failed: int, total: int) -> str:
    """``"2 of 43 rows failed (not in the median/max)"``: said next to every median and maximum."""
    return f"{failed} of {total} rows failed" + (" (not in the median/max)" if failed else "")


def error_summary(errs: list[float], failed: int, total: int, what: str = "configurations", note: str = "") -> str:
    """The summary line: median and max |error| over the compared rows, and how many rows failed."""
    if not errs:
        return f"no row compared: {failure_summary(failed, total)}"
    return (f"{len(errs)} {what} compared: median |error| {100 * statistics.median(errs):.2f}%, "
            f"max {100 * max(errs):.2f}%{f' ({note})' if note else ''}; {failure_summary(failed, total)}")


def print_table(rows: list[dict[str, Any]], label: str) -> None:
    """Every row in grid order; a failed row shows its status and reason instead of figures."""
    print(f"{'#':>3} {'arch':<8} {'configuration':<58} {label + ' MiB':>13} {'pred MiB':>10} {'error':>7}  "
          f"{'fwd':>6} {'bwd':>6} {'opt':>6}  worst term (pred - meas)")
    results = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    for i, r in enumerate(rows, 1):
        if r["status"] != "ok":
            print(f"{i:>3} {r['arch']:<8} {r['config'][:58]:<58} {'FAILED':>13} {r['status']}: {r['reason'][:160]}")
            continue
        pe = r["phase_errors"]
        w = r["worst_term"]
        wt = f"{w['term']} {w['diff'] / MiB:+.2f} MiB" if w else ""
        print(f"{i:>3} {r['arch']:<8} {r['config'][:58]:<58} {r['measured_peak'] / MiB:>13.1f} "
              f"{r['predicted_peak'] / MiB:>10.1f} {100 * r['error']:>+6.2f}%  "
              f"{100 * pe['forward_end']:>+5.1f}% {100 * pe['backward']:>+5.1f}% {100 * pe['optimizer_step']:>+5.1f}%  {wt}")
    errs = [abs(r["error"]) for r in results]
    print("\n" + error_summary(errs, len(failed), len(rows),
                               note="peak allocated; phases: forward end / backward / optimizer step"))
    if failed:
        print("failed rows:")
        for i, r in enumerate(rows, 1):
            if r["status"] != "ok":
                print(f"  #{i} {r['arch']} {r['config']}: {r['status']}: {r['reason']}")
    by_term: dict[str, list[float]] = {}
    for r in results:
        for t in r["terms"]:
            by_term.setdefault(t["term"], []).append(abs(t["predicted"] - t["measured"]) / max(r["measured_peak"], 1))
    if by_term:
        print("per term at the peak, |pred - meas| as a share of the peak:  " + ",  ".join(
            f"{k} median {100 * statistics.median(v):.2f}% max {100 * max(v):.2f}%" for k, v in sorted(by_term.items())))


def save(rows: list[dict[str, Any]], provenance: dict, path: Path) -> None:
    """Atomic write of the table, its failed rows (with the reasons) and its provenance."""
    results = [r for r in rows if r["status"] == "ok"]
    failed = [{"row": i, **r} for i, r in enumerate(rows, 1) if r["status"] != "ok"]
    errs = [abs(r["error"]) for r in results]
    doc = {"provenance": provenance, "rows": len(rows), "compared": len(results), "failed_count": len(failed),
           "median_abs_error": statistics.median(errs) if errs else None,
           "max_abs_error": max(errs) if errs else None,
           "summary": error_summary(errs, len(failed), len(rows)), "results": results, "failed": failed}
    atomic_write_text(path, json.dumps(doc, indent=1))


def run_grid(grid: list[tuple[str, str, dict]], measure: Callable[[str, dict], dict], gpu: str,
             label: str) -> list[dict[str, Any]]:
    """Measure and predict every row; a row that raises, does not say ``ok`` or has no measured peak
    is kept as a failed row with its reason (the grid goes on)."""
    rows: list[dict[str, Any]] = []
    for arch, model, kn in grid:
        try:
            m = measure(model, kn)
        except Exception as e:  # noqa: BLE001 - one broken row must not hide the others
            r = failed_row(arch, kn, "error", _exc(e))
        else:
            if m.get("status") != "ok":
                r = failed_row(arch, kn, str(m.get("status")), m.get("error") or "no error text")
            elif not m.get("peak_allocated_bytes") or not m.get("phase_peaks") or not m.get("peak_phase"):
                r = failed_row(arch, kn, "no measurement", "the run reported ok but no peak allocated bytes")
            else:
                try:
                    r = {"status": "ok", **compare_one(arch, model, kn, m, gpu)}
                except Exception as e:  # noqa: BLE001
                    r = failed_row(arch, kn, "error", f"comparison failed: {_exc(e)}")
        rows.append(r)
        shown = f"{100 * r['error']:+.2f}%" if r["status"] == "ok" else f"FAILED {r['status']}: {r['reason'][:80]}"
        print(f"   {len(rows):>3} {arch:<8} {r['config'][:60]:<60} {shown}", flush=True)
    return rows


def run_and_report(grid: Callable[[Path], list[tuple[str, str, dict]]], measure: Callable[[str, dict], dict],
                   label: str, device: str, script: str, out: str,
                   keep: Callable[[list], list] = lambda g: g) -> None:
    """Build the grid in a temporary folder, measure each row, print the table and its timing, and
    save it with the provenance of ``device`` and the command that ran it."""
    from ftplan.stack.env import provenance

    with tempfile.TemporaryDirectory() as tmp:
        grid_rows = keep(grid(Path(tmp)))
        t0 = time.perf_counter()
        rows = run_grid(grid_rows, measure, "cpu", label)
        took = time.perf_counter() - t0
        for r in rows:
            if r["status"] != "ok":
                r["reason"] = scrub(r["reason"], tmp)
    print()
    print_table(rows, label)
    print(f"({took:.0f} s)")
    prov = {**provenance(device, ["python", script, *sys.argv[1:]]), "cpu_count": os.cpu_count(),
            "run_s": round(took, 1)}
    save(rows, prov, Path(out))
