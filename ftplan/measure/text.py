"""Text output of measured runs (``ftplan profile``) and traces, beside the analytical prediction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..planner.types import MiB
from .compare import PHASES, phase_totals, rel_error, term_rows


def _mib(b: float | None) -> str:
    return "?" if b is None else f"{b / MiB:,.1f}"


def comparison_table(predicted: Mapping[str, Mapping[str, int]], measured: Mapping[str, Mapping[str, int]],
                     phase: str, label: str = "measured") -> list[str]:
    lines = [f"  {'term':<24}{'predicted MiB':>15}{label + ' MiB':>15}{'diff MiB':>11}"]
    for r in term_rows(predicted.get(phase, {}), measured.get(phase, {})):
        lines.append(f"  {r.group:<24}{_mib(r.predicted):>15}{_mib(r.measured):>15}{r.diff / MiB:>+11.1f}")
    return lines


def profile_text(res: Mapping[str, Any]) -> str:
    cfg = res.get("config", {})
    head = (f"ftplan profile: {res.get('model')} on {res.get('device')} "
            f"({res.get('provenance', {}).get('device_name', '')}) — {cfg.get('method')} {cfg.get('quant')}, "
            f"rank {cfg.get('lora_rank')}, micro-batch {cfg.get('micro_batch')} x {cfg.get('seq_len')} tokens, "
            f"checkpointing {'on' if cfg.get('gradient_checkpointing') else 'off'}, {cfg.get('optimizer')}, "
            f"{cfg.get('attention')}")
    ran = res.get("attention_ran")
    if ran and ran != cfg.get("attention"):
        head += f" (the model ran {ran}: {cfg.get('attention')} is not available here)"
    out = [head]
    if res.get("status") != "ok":
        out.append(f"status: {res.get('status').upper()} — {res.get('error', '')}")
        return "\n".join(out)
    out.append(f"memory source: {res.get('memory_source')}; figures of step {res.get('measured_step')}")
    est = res.get("estimate")
    pred_tot = phase_totals(est["phases"]) if est else {}
    out.append(f"  {'phase':<16}{'peak allocated MiB':>20}{'reserved MiB':>14}{'device MiB':>12}{'predicted MiB':>15}{'error':>8}")
    for ph in PHASES:
        p = res["phase_peaks"].get(ph, {})
        m = p.get("peak_allocated_bytes")
        pr = pred_tot.get(ph)
        err = f"{100 * rel_error(pr, m):+.1f}%" if pr and m else ""
        out.append(f"  {ph:<16}{_mib(m):>20}{_mib(p.get('peak_reserved_bytes')):>14}"
                   f"{_mib(p.get('device_bytes')):>12}{_mib(pr):>15}{err:>8}")
    out.append(f"peak: {_mib(res.get('peak_allocated_bytes'))} MiB allocated in {res.get('peak_phase')}; "
               f"{res.get('tokens_per_s') or 0:,.0f} tokens/s ({res.get('step_time_s', 0):.3f} s per optimizer step of "
               f"{res.get('grad_accum', 1)} micro-batches: {res.get('micro_step_time_s', 0):.3f} s each + "
               f"{res.get('optimizer_time_s', 0):.3f} s optimizer)")
    pt = res.get("phase_times_s")
    if pt:
        slow = " (memory tracker on: every op slower; --no-breakdown to time)" if res.get("device") == "cpu" and \
            res.get("memory_source", "").startswith("live") and res.get("breakdown") else ""
        out.append(f"time per micro-batch: forward {pt['forward']:.3f} s, backward {pt['backward']:.3f} s; "
                   f"optimizer step {pt['optimizer_step']:.3f} s{slow}")
    if est and res.get("phases", {}).get(res["peak_phase"]):
        out.append(f"by term at the peak ({res['peak_phase']}):")
        out += comparison_table(est["phases"], res["phases"], res["peak_phase"])
    return "\n".join(out)


def trace_text(res: Mapping[str, Any], est: Mapping[str, Any] | None) -> str:
    out = [f"traced (FakeTensorMode, {res.get('trace_seconds', 0):.1f} s): peak {_mib(res.get('peak_allocated_bytes'))} MiB "
           f"in {res.get('peak_phase')}"]
    pred_tot = phase_totals(est["phases"]) if est else {}
    out.append(f"  {'phase':<16}{'traced MiB':>14}{'analytical MiB':>16}{'error':>8}")
    for ph in PHASES:
        m = res["phase_peaks"].get(ph, {}).get("peak_allocated_bytes")
        pr = pred_tot.get(ph)
        err = f"{100 * rel_error(pr, m):+.1f}%" if pr and m else ""
        out.append(f"  {ph:<16}{_mib(m):>14}{_mib(pr):>16}{err:>8}")
    if est:
        out.append(f"by term at the traced peak ({res['peak_phase']}):")
        out += comparison_table(est["phases"], res["phases"], res["peak_phase"], label="traced")
    return "\n".join(out)
