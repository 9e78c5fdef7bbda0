"""The study's table as text: each measured trial with its prediction, the winner, the planner's error."""

from __future__ import annotations

import statistics
from typing import Any

GIB = 2**30


def _gib(v: Any) -> str:
    return f"{v / GIB:6.2f}" if isinstance(v, (int, float)) and v else "     -"


def _tps(v: Any) -> str:
    return f"{v:8.0f}" if isinstance(v, (int, float)) and v else "       -"


def describe(params: dict[str, Any]) -> str:
    return (f"{params.get('format')} r{params.get('lora_rank')} mb{params.get('micro_batch')} "
            f"{'ckpt' if params.get('gradient_checkpointing') else 'nockpt'} {params.get('optimizer')} {params.get('attention')}")


def errors(rows: list[dict], figure: str) -> list[float]:
    out = []
    for r in rows:
        m, p = (r.get("measured") or {}).get(figure), (r.get("predicted") or {}).get(figure)
        if r["state"] == "COMPLETE" and m and p:
            out.append((p - m) / m)
    return out


def study_table(res, device: str) -> str:
    fig = "peak_allocated_bytes" if device == "cpu" else "device_bytes"
    lines = [f"study {res.study_name} ({res.storage}): {len(res.rows)} measured trials; stopped: {res.stopped}",
             f"space: {res.candidates} configurations, {res.runnable} runnable; skipped: "
             + (", ".join(f"{v} {k}" for k, v in res.skipped.items() if v) or "none"),
             "",
             f"{'#':>3} {'state':9} {'configuration':48} {'pred GiB':>8} {'meas GiB':>8} {'pred tok/s':>10} {'meas tok/s':>10}  note"]
    for r in sorted(res.rows, key=lambda r: r["number"]):
        p, m = r.get("predicted") or {}, r.get("measured") or {}
        note = r.get("reason") or ("planner seed" if r.get("seeded_by") == "planner" else "")
        lines.append(f"{r['number']:>3} {r['state']:9} {describe(r['params']):48} {_gib(p.get(fig)):>8} {_gib(m.get(fig)):>8} "
                     f"{_tps(p.get('tokens_per_s')):>10} {_tps(m.get('tokens_per_s')):>10}  {note[:70]}")
    mem = errors(res.rows, fig)
    spd = errors(res.rows, "tokens_per_s")
    lines.append("")
    if mem:
        lines.append(f"planner vs measured memory ({fig}): median error {statistics.median(mem):+.1%}, "
                     f"max |error| {max(abs(e) for e in mem):.1%} over {len(mem)} trials")
    if spd:
        lines.append(f"planner vs measured tokens/s: median error {statistics.median(spd):+.1%}, "
                     f"max |error| {max(abs(e) for e in spd):.1%}")
    if res.best:
        b = res.best
        lines.append(f"winner: trial {b['number']}: {describe(b['params'])}, "
                     f"{(b['measured'] or {}).get('tokens_per_s') or 0:.0f} tokens/s measured")
        for k, v in res.files.items():
            lines.append(f"  {k}: {v}")
    else:
        lines.append("no trial finished: nothing to export (see the reasons above)")
    if res.calibration:
        f = res.calibration["factors"]
        lines.append("calibration stored for " + res.calibration["gpu"] + ": "
                     + ", ".join(f"{k} x{v:.3f}" for k, v in f.items()))
    return "\n".join(lines)
