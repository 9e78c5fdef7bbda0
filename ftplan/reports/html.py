"""The report as one self-contained HTML page: plotly.js inlined once (no CDN, no network), the
tables as HTML, a print stylesheet. Words for readers who are not ML engineers: units written out."""

from __future__ import annotations

import html
import json
from typing import Any

from ..units import hours_text
from .data import MEMORY_GROUPS, Option, Report

GIB = 2**30
COLORS = ("#4c78a8", "#9ecae9", "#f58518", "#ffbf79", "#54a24b", "#88d27a", "#b79a20", "#e45756", "#bab0ac", "#79706e")
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;width:100%;font-size:.9em} th,td{border:1px solid #ddd;padding:.35em .5em;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} tr.nofit td{color:#999}
.callout{display:inline-block;border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:.3em .6em .3em 0;background:#fafafa}
.callout b{display:block;font-size:1.1em} .muted{color:#666;font-size:.9em} .chart{page-break-inside:avoid;margin:1em 0}
@media print{body{margin:0;max-width:none} h2{page-break-after:avoid} .chart,table{page-break-inside:avoid} a{color:inherit}}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def money(v: float | None) -> str:
    return "not known" if v is None else f"${v:,.2f}"


def hours(v: float | None) -> str:
    return "-" if v is None else hours_text(v)


def config_words(o: Option) -> str:
    if o.plan is None:
        return "no configuration fits"
    c = o.plan.config
    method = {"qlora": "QLoRA (4-bit base model + LoRA adapter)", "lora": "LoRA adapter", "full": "full fine-tuning"}[c.method]
    base = {"nf4": "4-bit NF4", "fp4": "4-bit FP4", "int8": "8-bit", "bf16": "16-bit", "fp16": "16-bit", "fp32": "32-bit"}[c.quant]
    parts = [f"{method}, {base} weights"]
    if c.is_lora:
        parts.append(f"rank {c.lora_rank}")
    parts.append(f"{c.micro_batch} sequence{'s' if c.micro_batch > 1 else ''} of {c.seq_len} tokens per step x {c.grad_accum} accumulated")
    parts.append("recomputes activations" if c.gradient_checkpointing else "keeps activations")
    parts.append(c.optimizer.replace("_", " "))
    if o.count > 1:
        parts.append(f"{c.sharding or 'ddp'} over {o.count} GPUs")
        if c.offload != "none":
            host = o.plan.estimate.host_bytes / 2**30 if o.plan is not None else 0
            parts.append(f"{c.offload} kept in host memory ({host:,.0f} GiB per server)")
    return "; ".join(parts)


def _figures(r: Report) -> list[tuple[str, str, Any]]:
    import plotly.graph_objects as go

    figs = []
    if r.data:
        hist = go.Figure()
        hist.add_bar(x=[f"{a:,}-{b:,}" for a, b, _ in r.data["bins"]], y=[c for _, _, c in r.data["bins"]],
                     name="samples")
        hist.update_layout(xaxis_title="Sample length (tokens)", yaxis_title="Samples", height=320, margin={"t": 30})
        figs.append(("data", f"The training data: {r.data['samples']:,} samples, {r.data['tokens']:,} tokens "
                             f"(sequence length {r.data['advice']['seq_len']:,})", hist))
    opts = [o for o in r.options if o.memory]
    labels = [o.label for o in opts]
    mem = go.Figure()
    names = [g for g, _ in MEMORY_GROUPS] + ["Other"]
    for i, g in enumerate(names):
        ys = [o.memory.get(g, 0) / GIB for o in opts]
        if any(ys):
            mem.add_bar(name=g, x=labels, y=ys, marker_color=COLORS[i % len(COLORS)])
    mem.add_scatter(name="Usable memory of the card", x=labels, y=[o.usable_bytes / GIB for o in opts], mode="markers",
                    marker={"symbol": "line-ew-open", "size": 40, "line": {"width": 3, "color": "black"}})
    mem.update_layout(barmode="stack", yaxis_title="Memory on each GPU (GiB, 1 GiB = 1,073,741,824 bytes)",
                      legend_title="What uses the memory", height=460, margin={"t": 30})
    figs.append(("memory", "Memory at the peak of a training step, per GPU option", mem))
    priced = [o for o in r.options if o.cost is not None]
    if priced:
        cost = go.Figure()
        cost.add_scatter(name="On-demand price", x=[o.hours for o in priced], y=[o.cost for o in priced], mode="markers+text",
                         text=[o.label for o in priced], textposition="top center", marker={"size": 12})
        spot = [o for o in priced if o.spot_cost is not None]
        cost.add_scatter(name="Spot (interruptible) price", x=[o.hours for o in spot], y=[o.spot_cost for o in spot],
                         mode="markers", marker={"size": 10, "symbol": "diamond"})
        cost.update_layout(xaxis_title="Wall-clock time for the whole job (hours)", yaxis_title="Cost of the job (US dollars)",
                           height=440, margin={"t": 30})
        figs.append(("cost", "Cost against time: lower left is better", cost))
    owned = [o for o in r.options if o.breakeven_weeks is not None]
    if owned:
        be = go.Figure()
        for o in owned:
            weeks = max(1.0, o.breakeven_weeks * 1.5)
            xs = [0, weeks]
            be.add_scatter(name=f"{o.label}: renting", x=xs, y=[0, o.price_per_gpu_hour * o.count * r.hours_per_week * weeks],
                           mode="lines")
            be.add_scatter(name=f"{o.label}: owning", x=xs, y=[o.purchase_per_gpu * o.count] * 2, mode="lines",
                           line={"dash": "dash"})
        be.update_layout(xaxis_title=f"Weeks of use at {r.hours_per_week:g} hours a week",
                         yaxis_title="Money spent (US dollars)", height=420, margin={"t": 30})
        figs.append(("breakeven", "Renting against buying: where the lines cross, owning becomes cheaper", be))
    measured = [t for t in r.trials if t.get("measured") and t.get("predicted")]
    if measured:
        key = "device_bytes" if any((t["measured"] or {}).get("device_bytes") for t in measured) else "peak_allocated_bytes"
        tr = go.Figure()
        xs = [f"trial {t['number']}" for t in measured]
        tr.add_bar(name="Predicted memory", x=xs, y=[(t["predicted"].get(key) or 0) / GIB for t in measured])
        tr.add_bar(name="Measured memory", x=xs, y=[(t["measured"].get(key) or 0) / GIB for t in measured])
        tr.update_layout(barmode="group", yaxis_title="GiB", height=380, margin={"t": 30})
        figs.append(("trials", "Measured against predicted memory in the tuning study", tr))
    return figs


def _table(r: Report) -> str:
    head = ("<tr><th class=l>GPU option</th><th>Fits?</th><th class=l>Configuration</th><th>Memory used / usable</th>"
            "<th>Training speed</th><th>Time</th><th>GPU-hours</th><th>Price per GPU-hour</th><th>Cost on demand</th>"
            "<th>Cost on spot</th><th>Cost per million training tokens</th></tr>")
    rows = []
    for o in r.options:
        used = f"{o.plan.estimate.device_bytes / GIB:.1f} / {o.usable_bytes / GIB:.1f} GiB" if o.plan else f"- / {o.usable_bytes / GIB:.1f} GiB"
        if o.plan and o.plan.estimate.device_bytes_range:
            used += _range(o.plan.estimate.device_bytes_range, lambda b: f"{b / GIB:.1f} GiB")
        tags = []
        if r.cheapest is o:
            tags.append("cheapest")
        if r.fastest is o:
            tags.append("fastest")
        label = _e(o.label) + (f" <b>({', '.join(tags)})</b>" if tags else "") + (f"<br><span class=muted>{_e(o.note)}</span>" if o.note else "")
        if o.pcie_only:
            label += f"<br><span class='muted nonvlink'>{_e(o.interconnect)}</span>"
        speed = f"{o.tokens_per_s:,.0f} tokens/second" if o.tokens_per_s else "-"
        rows.append(f"<tr class='{'fit' if o.fits else 'nofit'}' data-gpu='{_e(o.gpu)}' data-count='{o.count}' "
                    f"data-nvlink='{'yes' if o.nvlink else 'no'}'>"
                    f"<td class=l>{label}</td><td>{'yes' if o.fits else 'no'}</td><td class=l>{_e(config_words(o))}</td>"
                    f"<td>{used}</td><td>{speed}</td><td data-hours='{o.hours or ''}'>{hours(o.hours)}{_range(o.hours_range, hours)}</td>"
                    f"<td>{'-' if o.gpu_hours is None else f'{o.gpu_hours:,.1f}'}</td><td>{money(o.price_per_gpu_hour)}</td>"
                    f"<td data-cost='{o.cost or ''}'>{money(o.cost)}{_range(o.cost_range, money)}</td>"
                    f"<td>{money(o.spot_cost)}{'<br><span class=muted>' + _e(o.spot_label) + '</span>' if o.spot_label else ''}</td>"
                    f"<td>{money(o.per_million)}</td></tr>")
    return f"<table id=options>{head}{''.join(rows)}</table>"


def _range(rng: tuple[float, float] | None, fmt) -> str:
    """' (low to high)' under a figure, or '' where there is no range."""
    if not rng:
        return ""
    return f"<br><span class='muted range'>likely {fmt(rng[0])} to {fmt(rng[1])}</span>"


def _trials_table(r: Report) -> str:
    if not r.trials:
        return ""
    rows = []
    for t in r.trials:
        p, m = t.get("predicted") or {}, t.get("measured") or {}
        key = "device_bytes" if m.get("device_bytes") else "peak_allocated_bytes"
        pm, mm = p.get(key), m.get(key)
        err = f"{(pm - mm) / mm:+.1%}" if pm and mm else "-"
        rows.append(f"<tr><td>{t['number']}</td><td class=l>{_e(t['state'])}</td><td>{(pm or 0) / GIB:.2f}</td>"
                    f"<td>{(mm or 0) / GIB:.2f}</td><td>{err}</td><td>{p.get('tokens_per_s') or 0:,.0f}</td>"
                    f"<td>{m.get('tokens_per_s') or 0:,.0f}</td><td class=l>{_e(t.get('reason') or '')}</td></tr>")
    return ("<table id=trials><tr><th>Trial</th><th class=l>Result</th><th>Predicted memory (GiB)</th>"
            "<th>Measured memory (GiB)</th><th>Prediction error</th><th>Predicted tokens/second</th>"
            "<th>Measured tokens/second</th><th class=l>Note</th></tr>" + "".join(rows) + "</table>")


def page(r: Report) -> str:
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    charts = []
    for div_id, title, fig in _figures(r):
        body = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"chart-{div_id}",
                           config={"displaylogo": False, "responsive": True})
        charts.append(f"<div class=chart><h3>{_e(title)}</h3>{body}</div>")
    callouts = []
    if r.cheapest:
        callouts.append(f"<div class=callout>Cheapest<b>{_e(r.cheapest.label)}</b>{money(r.cheapest.cost)} on demand, "
                        f"{hours(r.cheapest.hours)}</div>")
    if r.fastest:
        link = (f"<br><span class='muted nonvlink'>{_e(r.fastest.interconnect)}</span>" if r.fastest.pcie_only else "")
        callouts.append(f"<div class=callout>Fastest<b>{_e(r.fastest.label)}</b>{hours(r.fastest.hours)}, "
                        f"{money(r.fastest.cost)} on demand{link}</div>")
    prices = "".join(f"<li>{_e(o.label)}: {money(o.price_per_gpu_hour)} per GPU-hour, source {_e(o.price_source or 'none')}"
                     f"{', dated ' + _e(o.price_date) if o.price_date else ''}"
                     f"{'; purchase ' + money(o.purchase_per_gpu) + ' per GPU' if o.purchase_per_gpu is not None else ''}</li>"
                     for o in r.options)
    owned = [o for o in r.options if o.breakeven_weeks is not None]
    be = "".join(f"<li>{_e(o.label)}: owning is cheaper than renting after {o.breakeven_weeks:,.0f} weeks at "
                 f"{r.hours_per_week:g} hours a week</li>" for o in owned)
    be_text = (f"<ul>{be}</ul>" if be else "<p class=muted>No purchase prices were given, so the break-even is not "
               "computed: add a purchase_price column to the price file (--prices).</p>")
    data = {"model": r.model_name, "tokens": r.tokens, "epochs": r.epochs,
            "options": [{"gpu": o.gpu, "count": o.count, "fits": o.fits, "nvlink": o.nvlink, "hours": o.hours, "cost": o.cost,
                         "spot_cost": o.spot_cost, "per_million": o.per_million, "tokens_per_s": o.tokens_per_s,
                         "device_bytes": o.plan.estimate.device_bytes if o.plan else None,
                         "device_bytes_range": list(o.plan.estimate.device_bytes_range)
                         if o.plan and o.plan.estimate.device_bytes_range else None} for o in r.options]}
    return f"""<!DOCTYPE html>
<html lang=en><head><meta charset=utf-8><title>Fine-tuning cost report: {_e(r.model_name)}</title>
<style>{CSS}</style><script>{get_plotlyjs()}</script></head><body>
<h1>Fine-tuning {_e(r.model_name)}: which GPU, how long, what it costs</h1>
<p class=muted>Training on {r.tokens:,.0f} tokens x {r.epochs:g} epoch{'s' if r.epochs != 1 else ''} ({r.tokens * r.epochs:,.0f} tokens in all).
Made by ftplan {_e(r.version)} on {_e(r.created)}.</p>
{''.join(callouts)}
<h2>The options</h2>
<p>Each row is the best configuration ftplan finds for that GPU (or number of GPUs): whether it fits in the card's memory,
how fast it trains, and what the whole job costs at the stated prices. A GPU-hour is one GPU rented for one hour.
Under each time and cost, "likely ... to ..." is the range that eight in ten comparable published training runs fell in
around ftplan's estimate; plan the budget on its upper end. Under the memory, the same for the peak memory that
published runs measured against ftplan's estimate: an option whose upper end passes the usable memory may not fit.</p>
{_table(r)}
<h2>Charts</h2>
{''.join(charts)}
<h2>Renting or buying</h2>
{be_text}
{'<h2>How far to trust the numbers: the tuning study ' + _e(r.study or '') + '</h2><p>Short real training runs measured against the predictions.</p>' + _trials_table(r) if r.trials else ''}
<h2>Assumptions and sources</h2>
<ul>{''.join(f'<li>{_e(a)}</li>' for a in r.assumptions)}</ul>
<h3>Prices</h3><ul>{prices}</ul>
<h2>Glossary</h2>
<ul><li><b>Token</b>: a piece of a word; training speed is counted in tokens per second.</li>
<li><b>LoRA</b>: trains a small add-on (an adapter) instead of the whole model; <b>QLoRA</b> also stores the base model in 4 bits to save memory.</li>
<li><b>Spot</b>: cheaper rented capacity that the provider may interrupt.</li>
<li><b>GiB</b>: gibibyte, 1,073,741,824 bytes.</li></ul>
<p class=muted>Command: {_e(r.command)}</p>
<script type="application/json" id="ftplan-data">{html.escape(json.dumps(data), quote=False)}</script>
</body></html>
"""
