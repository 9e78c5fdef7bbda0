"""Plain-text and JSON renderings of a fit result (the CLI prints these)."""

from __future__ import annotations

import json
from typing import Any

from .. import __version__
from ..planner.arch import resolve_targets, total_params
from ..planner.handoff import HANDOFFS
from ..planner.memory.overhead import FRAGMENTATION_PRIOR, NCCL_MIB_2_RANKS, NCCL_MIB_8_RANKS
from ..planner.timing import ranking_basis
from ..planner.types import Estimate, GiB, GPUSpec, Plan, TrainConfig
from . import FitResult

TERM_LABELS = {
    "weights_quantized": "base weights, quantized (packed)",
    "quant_constants": "quantization constants (absmax)",
    "weights_dense": "base weights, 16/32-bit",
    "weights_unquantized": "embeddings, lm_head, norms, biases",
    "lora_weights": "LoRA adapters",
    "optimizer_state": "optimizer state",
    "cuda_workspace": "cuBLAS workspace",
    "ddp_buckets": "DDP gradient buckets",
    "gradients": "gradients",
    "activations": "saved activations",
    "autocast_weight_copies": "autocast 16-bit weight copies",
    "logits_loss": "logits and loss buffers",
    "logits_held": "logits the loop's model output keeps",
    "forward_transient": "layer forward intermediates",
    "recompute": "recomputed layer (checkpointing)",
    "backward_transient": "backward gradient buffers",
    "dequant_transient": "dequantized weight (transient)",
    "optimizer_temp": "optimizer step temporaries",
    "grad_scaler": "fp16 loss scaler (GradScaler)",
    "fsdp_gathered": "FSDP gathered parameters and buffers",
    "zero_buffers": "ZeRO buffers and gathered parameters",
    "master_weights": "fp32 master weights (ZeRO partition)",
}
OVERHEAD_LABELS = {
    "allocator_overhead": "allocator overhead (reserved - allocated)",
    "cuda_context": "CUDA context",
    "paged_optimizer_state": "paged optimizer state (managed memory)",
    "nccl_buffers": "NCCL buffers (published prior)",
}
METHOD_LABELS = {"qlora": "QLoRA", "lora": "LoRA", "full": "full fine-tuning"}


def gib(x: float | None) -> str:
    return "?" if x is None else f"{x / GiB:.2f}"


def _fmt_tokens(t: float) -> str:
    for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if t >= div:
            return f"{t / div:g}{suf}"
    return f"{t:g}"


def describe_config(plan: Plan, spec) -> list[tuple[str, str]]:
    c = plan.config
    base = {"nf4": "4-bit NF4", "fp4": "4-bit FP4", "int8": "8-bit LLM.int8", "bf16": "bf16", "fp16": "fp16",
            "fp32": "fp32"}[c.quant]
    if c.quant in ("nf4", "fp4"):
        base += ", double quant" if c.double_quant else ", no double quant"
    rows = [("method", f"{METHOD_LABELS[c.method]} on a {base} base")]
    if c.is_lora:
        mods = sorted({lin.role for lin in resolve_targets(spec, c.lora_targets)})
        rows.append(("LoRA", f"rank {c.lora_rank}, alpha {c.lora_alpha}, targets {','.join(c.lora_targets)} "
                             f"({', '.join(mods)}), dropout {c.lora_dropout:g}"))
    off = f", {c.offload} offloaded to the host" if c.offload != "none" else ""
    gpus = f" x {c.num_gpus} GPUs ({c.sharding}{off})" if c.num_gpus > 1 else " x 1 GPU"
    rows += [("batch", f"micro-batch {c.micro_batch} x accumulation {c.grad_accum}{gpus} = {c.effective_batch} "
                       f"sequences of {c.seq_len} tokens"),
             ("checkpointing", "on" if c.gradient_checkpointing else "off"),
             ("precision", "fp16 autocast, dynamic loss scaling (GradScaler)" if c.compute_dtype == "fp16" and c.autocast
              else ("bf16 autocast" if c.autocast else f"{c.quant}, no autocast")),
             ("optimizer", c.optimizer), ("attention", c.attention),
             ("loss", "chunked/fused cross-entropy" if c.loss_impl == "chunked" else "standard (HF ForCausalLMLoss)")]
    return rows


def breakdown_lines(est: Estimate) -> list[str]:
    lines = [f"Memory at the peak (phase: {est.peak_phase}){'GiB':>22}"]
    for k, v in sorted(est.breakdown.items(), key=lambda kv: -kv[1]):
        if v:
            lines.append(f"  {TERM_LABELS.get(k, k):<44}{gib(v):>10}")
    lines.append(f"  {'= allocated (torch max_memory_allocated)':<44}{gib(est.peak_allocated_bytes):>10}")
    for k, v in est.overheads.items():
        if v:
            lines.append(f"  {'+ ' + OVERHEAD_LABELS.get(k, k):<44}{gib(v):>10}")
    usable = ""
    if est.usable_bytes:
        usable = f"  of {gib(est.usable_bytes)} usable ({est.device_bytes / est.usable_bytes:.0%})"
    lines.append(f"  {'= device (nvidia-smi)':<44}{gib(est.device_bytes):>10}{usable}")
    if est.device_bytes_range:
        lo, hi = est.device_bytes_range
        lines.append(f"  range {gib(lo)}-{gib(hi)} GiB: {est.memory_basis}")
    else:
        lines.append(f"  basis: {est.memory_basis}")
    if est.config.num_gpus > 1:
        lines.append("  (per GPU: every rank holds this)")
    lines += host_lines(est)
    return lines


def host_lines(est: Estimate) -> list[str]:
    """The host memory a plan needs per node, and whether the node has it (said when it is not 0)."""
    if not est.host_bytes:
        return []
    parts = ", ".join(f"{k.replace('offloaded_', 'offloaded ').replace('_', ' ')} {gib(v)}"
                      for k, v in est.host_breakdown.items() if v)
    if est.host_ram_bytes is None:
        have = "host RAM unknown: give --host-ram to check it"
    else:
        have = f"{'fits' if est.host_fits else 'DOES NOT FIT'} the {gib(est.host_ram_bytes)} GiB given (--host-ram)"
    return [f"  Host memory per node: {gib(est.host_bytes)} GiB ({parts}; analytical; {have})"]


def speed_lines(est: Estimate, gpu: GPUSpec | None = None) -> list[str]:
    t, c = est.time, est.cost
    if t is None:
        if gpu is None or gpu.key == "cpu":
            return ["  Speed: not estimated (no GPU, or the CPU)"]
        return [f"  Speed: unknown; the throughput objective ranked by {ranking_basis(gpu, est.config)}"]
    lo, hi = t.tokens_per_s_range
    out = [f"  tokens/s     {t.tokens_per_s:,.0f} ({lo:,.0f}-{hi:,.0f})  ({t.bound}-bound; step {t.step_time_s:.2f} s; "
           f"{t.flops_per_token / 1e9:.1f} GFLOP/token; {t.notes[0]})"]
    if t.pieces:
        total = sum(sec for _, sec, _ in t.pieces) or 1.0
        top = sorted(t.pieces, key=lambda p: -p[1])[:6]
        out.append("  step time    " + ", ".join(f"{name} {sec / total:.0%} ({bound})" for name, sec, bound in top)
                   + f"; MFU {t.efficiency:.0%}")
    if c is not None:
        money = f"${c.dollars:,.2f}" if c.dollars is not None else "$ unknown"
        price = (f"at ${c.price_per_gpu_hour:.4g}/GPU-hour ({c.price_provider}, {c.price_date})"
                 if c.price_per_gpu_hour is not None else "; ".join(c.notes))
        if c.dollars is not None and c.dollars_range is not None:
            money += f" (${c.dollars_range[0]:,.2f}-${c.dollars_range[1]:,.2f})"
        out.append(f"  job          {_fmt_tokens(c.tokens)} tokens: {c.hours:,.2f} h ({c.hours_range[0]:,.2f}-"
                   f"{c.hours_range[1]:,.2f} h), {c.gpu_hours:,.2f} GPU-hours, {money} {price}")
    if t.range_basis:
        out.append(f"  ranges       {t.range_basis}")
    return out


def fit_text(r: FitResult) -> str:
    spec, g = r.model, r.gpu
    lines = [f"ftplan {__version__}: {spec.name} ({spec.hf_id or spec.source}, {total_params(spec) / 1e9:.2f}B params) "
             f"on {g.name} ({gib(g.usable_bytes)} GiB usable: {g.usable_source})"]
    job = f"Job: {_fmt_tokens(r.tokens)} tokens x {r.epochs:g} epoch(s); objective {r.objective}"
    if r.defaults_used:
        job += "; defaults: " + ", ".join(f"{k}={v}" for k, v in r.defaults_used.items())
    lines.append(job)
    if r.handoff_note:
        others = "|".join(k for k in HANDOFFS if k != r.handoff)
        lines.append(f"Hand-off: {r.handoff_note} (--for {others} plans for another trainer)")
    for w in r.warnings:
        lines.append(f"warning: {w}")
    lines.append("")
    if not r.plans:
        lines += _nothing_fits(r)
        return "\n".join(lines)
    best = r.plans[0]
    est = best.estimate
    lines.append(f"FITS. Recommended configuration ({r.feasible} of {r.candidates} candidates fit with a "
                 f"{r.margin:.0%} margin):")
    for k, v in describe_config(best, spec):
        lines.append(f"  {k:<15}{v}")
    lines.append("")
    lines += breakdown_lines(est)
    lines.append("")
    lines.append("Speed and cost")
    lines += speed_lines(est, r.gpu)
    if len(r.plans) > 1:
        lines.append("")
        lines.append("Runner-ups")
        lines.append(f"  {'#':<3}{'method':<7}{'base':<10}{'mb x acc':<10}{'ckpt':<6}{'optimizer':<19}{'attn':<19}"
                     f"{'loss':<10}{'GiB':>7}{'tok/s':>9}{'$':>10}")
        for p in r.plans[1:]:
            c, e = p.config, p.estimate
            base = c.quant + ("+dq" if c.double_quant and c.quant in ("nf4", "fp4") else "")
            dollars = f"{e.cost.dollars:,.2f}" if e.cost and e.cost.dollars is not None else "?"
            tps = f"{e.time.tokens_per_s:,.0f}" if e.time else "?"
            lines.append(f"  {p.rank:<3}{c.method:<7}{base:<10}{f'{c.micro_batch} x {c.grad_accum}':<10}"
                         f"{'on' if c.gradient_checkpointing else 'off':<6}{c.optimizer:<19}{c.attention:<19}"
                         f"{c.loss_impl:<10}{gib(e.device_bytes):>7}{tps:>9}{dollars:>10}")
    lines.append("")
    cal = r.plans[0].estimate.calibration if r.plans else None
    if cal is not None:
        lines.append(f"Calibration: {cal.summary}.")
        lines.append("--no-calibration (calibrate=False in the library) for the raw model. --json for every figure.")
    if cal is None or not cal.applied:
        nccl = ""
        if r.plans and r.plans[0].config.num_gpus > 1:
            nccl = (f"NCCL's own buffers a prior from published measurements ({NCCL_MIB_2_RANKS}-{NCCL_MIB_8_RANKS} MiB "
                    "per GPU by the job's GPUs), ")
        lines.append("Uncalibrated: time by operation at achievable rates (measured where published, else the datasheet "
                     f"x the measured ratio), {nccl}allocator fragmentation {FRAGMENTATION_PRIOR:.0%} of transient "
                     "memory. --json for every figure.")
    return "\n".join(lines)


def _nothing_fits(r: FitResult) -> list[str]:
    """The DOES NOT FIT answer: the budget checked, the leanest candidate, then the nearest ways out."""
    s, g = r.suggestion, r.gpu
    budget = s.get("budget_bytes", g.usable_bytes * (1 - r.margin))
    lines = [f"DOES NOT FIT: none of {r.candidates} configurations of {r.model.name} fits {g.name}.",
             f"  budget checked: {gib(budget)} GiB ({gib(g.usable_bytes)} GiB usable less the {r.margin:.0%} "
             "margin, --margin)"]
    if s.get("lean_bytes") is not None:
        over = s["lean_bytes"] - budget
        lines.append(f"  the leanest configuration searched needs {gib(s['lean_bytes'])} GiB on the device "
                     f"({gib(over)} GiB over): {_short_config(s['lean_config'])}")
    lines += ["", "Nearest ways out, each checked with the same search:"]
    for label, text in (("shorter sequences", _seq_text(s)), ("lighter method", _method_text(s)),
                        ("larger GPU", _gpu_text(r)), ("more GPUs", _count_text(r))):
        lines.append(f"  {label:<19}{text}")
    return lines


def _short_config(c: TrainConfig) -> str:
    """One line for a configuration: method, base, batch, checkpointing, optimizer, loss."""
    base = c.quant + ("+dq" if c.double_quant and c.quant in ("nf4", "fp4") else "")
    return (f"{c.method} {base}, micro-batch {c.micro_batch} x {c.grad_accum}, checkpointing "
            f"{'on' if c.gradient_checkpointing else 'off'}, {c.optimizer}, {c.loss_impl} loss, "
            f"{c.seq_len} tokens")


def _seq_text(s: dict[str, Any]) -> str:
    """The longest shorter sequence that fits, or why none is offered."""
    if s.get("seq_len_fixed"):
        return f"not searched: the length is fixed (--seq-len {s['seq_len_fixed']})"
    if s.get("seq_len"):
        return f"--seq-len {s['seq_len']} fits (the longest power of two below the default that does)"
    tried = ", ".join(str(n) for n in s.get("seq_len_tried", ()))
    return f"none fits (tried {tried}; nothing shorter is offered)" if tried else "none offered"


def _method_text(s: dict[str, Any]) -> str:
    """The next lighter method that fits, when the method was fixed."""
    if not s.get("method_fixed"):
        return "already searched (the search tries QLoRA 4-bit, the lightest)"
    if s.get("method"):
        m = s["method"]
        return f"--method {m['method']} --quant {m['quant']} fits (lighter than {s['method_fixed']})"
    tried = ", ".join(s.get("method_tried", ()))
    return (f"none lighter than {s['method_fixed']} fits (tried {tried})" if tried
            else f"none: {s['method_fixed']} is the lightest")


def _gpu_text(r: FitResult) -> str:
    """The smallest catalog GPU that fits (or that fits at the shortest length offered)."""
    s = r.suggestion
    n = int(r.fixed.get("num_gpus") or 1)
    each = f" (x {n}, as --gpus {n})" if n > 1 else ""
    if s.get("smallest_gpu"):
        return (f"smallest GPU that fits: {s['smallest_gpu']}{each} ({s.get('smallest_gpu_name')}, "
                f"{gib(s.get('smallest_gpu_usable_bytes'))} GiB usable)")
    if s.get("smallest_gpu_short"):
        short = s["smallest_gpu_short"]
        return (f"none in the catalog fits at this length; {short['gpu']}{each} fits with "
                f"--seq-len {short['seq_len']}")
    return "no single GPU in the catalog fits"


def _count_text(r: FitResult) -> str:
    """The least FSDP count of the GPU that fits (only when no single GPU does), with its link."""
    s, g = r.suggestion, r.gpu
    n = s.get("gpu_count")
    if not n:
        return s.get("gpu_count_note") or "none"
    link = "NVLink" if g.nvlink else f"PCIe (no NVLink on {g.name})"
    sh, off = s.get("sharding") or "fsdp", s.get("offload") or "none"
    flags = (f"--gpus {n}" + (f" --nodes {s['nodes']}" if (s.get("nodes") or 1) > 1 else "") + f" --sharding {sh}"
             + (f" --offload {off}" if off != "none" else ""))
    host = (f"; {gib(s['host_bytes'])} GiB host memory per server ({off} offloaded)" if off != "none" and s.get("host_bytes")
            else "")
    return f"{n} x {g.key} with {sh} ({flags}): no single GPU fits; collectives over {link}{host}"


def fit_json(r: FitResult) -> dict[str, Any]:
    sugg = dict(r.suggestion)
    if sugg.get("lean_config") is not None:
        sugg["lean_config"] = sugg["lean_config"].to_dict()
    return {
        "ftplan_version": __version__,
        "model": {"name": r.model.name, "hf_id": r.model.hf_id, "total_params": total_params(r.model)},
        "gpu": {"key": r.gpu.key, "name": r.gpu.name, "usable_bytes": r.gpu.usable_bytes,
                "usable_source": r.gpu.usable_source},
        "fits": r.fits,
        "objective": r.objective,
        "tokens": r.tokens,
        "epochs": r.epochs,
        "margin": r.margin,
        "defaults_used": r.defaults_used,
        "fixed": {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.fixed.items()},
        "candidates": r.candidates,
        "feasible": r.feasible,
        "recommendation": r.plans[0].to_dict() if r.plans else None,
        "ranked_by": ranking_basis(r.gpu, r.plans[0].config) if r.plans else None,
        "runner_ups": [p.to_dict() for p in r.plans[1:]],
        "suggestion": sugg or None,
        "warnings": list(r.warnings),
        "handoff": {"target": r.handoff, "assumed": r.handoff_note},
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=str)


def inverse_text(model: str, gpu: GPUSpec, what: str, rows: list, seq_len: int | None) -> str:
    """The ``--max-seq-len`` / ``--max-batch`` table: one row per method and checkpointing setting."""
    from ..inverse import SEQ_STEP
    from ..planner.options import DEFAULTS

    seq = what == "max_seq_len"
    head = (f"The longest sequence that fits {gpu.name} ({gpu.usable_gib:.2f} GiB usable), micro-batch 1, "
            f"in steps of {SEQ_STEP} tokens:" if seq else
            f"The largest micro-batch that fits {gpu.name} ({gpu.usable_gib:.2f} GiB usable) at "
            f"{seq_len or DEFAULTS['seq_len']} tokens:")
    out = [f"{model}: {head}", "",
           f"  {'method':<8}{'checkpointing':<15}{'longest' if seq else 'largest':>10}  {'GiB':>7}  configuration"]
    for r in rows:
        gc = "on" if r.gradient_checkpointing else "off"
        if r.value is None:
            out.append(f"  {r.method:<8}{gc:<15}{'-':>10}  {'':>7}  does not fit even at "
                       f"{SEQ_STEP if seq else 1} {'tokens' if seq else 'sequence'}")
            continue
        c, e = r.plan.config, r.plan.estimate
        val = f"{r.value:,}" + ("+" if r.at_limit else "")
        conf = f"{c.quant}{'+dq' if c.double_quant and c.quant in ('nf4', 'fp4') else ''}, {c.optimizer}, {c.loss_impl} loss"
        if not seq:
            conf = f"{conf}, {c.attention}"
        out.append(f"  {r.method:<8}{gc:<15}{val:>10}  {gib(e.device_bytes):>7}  {conf}")
    limit = any(r.at_limit for r in rows)
    out.append("")
    if limit:
        out.append("+ the model's own context limit (max_position_embeddings) or the search's cap, not memory, stopped it.")
    out.append("Each answer fits with the safety margin and one step more does not (the same search as the fit "
               "command; other knobs searched). Memory figures are analytical (see the fit command's breakdown).")
    return "\n".join(out)


def any_gpu_text(model: str, res, top: int) -> str:
    """The ``--gpu any`` table: the options ranked (those meeting the budget and deadline first)."""
    want = []
    if res.budget is not None:
        want.append(f"at most ${res.budget:,.2f}")
    if res.deadline_hours is not None:
        want.append(f"within {res.deadline_hours:,.1f} h")
    rank = "least cost" if res.objective in ("cost", "quality") else "least time"
    meet = [o for o in res.options if o.meets]
    out = [f"{model}: which GPU to rent ({', '.join(want) or 'no budget or deadline given'}); ranked by {rank}. "
           f"{res.considered} GPU x count options searched, {len(res.options)} fit, {len(meet)} meet the constraints.",
           "",
           f"  {'#':>2} {'GPU':<34}{'method':<7}{'time (likely)':>22}{'dollars (likely)':>30}  price, provider, date"]
    for i, o in enumerate(res.options[:top], 1):
        c = o.plan.estimate.cost
        label = (f"{o.count} x " if o.count > 1 else "") + o.gpu.name
        flag = "" if o.meets else ("  over budget" if not o.meets_budget else "  misses deadline")
        risk = "" if not o.meets or (o.budget_safe and o.deadline_safe) else "  (its range crosses a limit)"
        hours = f"{_dur(o.hours)} ({_dur(o.hours_range[0])}-{_dur(o.hours_range[1])})"
        dollars = f"${o.dollars:,.2f} (${o.dollars_range[0]:,.2f}-${o.dollars_range[1]:,.2f})"
        price = f"${c.price_per_gpu_hour:.4g}/GPU-h, {c.price_provider}, {c.price_date}" if c else ""
        out.append(f"  {i:>2} {label[:33]:<34}{o.plan.config.method:<7}{hours:>22}{dollars:>30}  {price}{flag}{risk}")
    out.append("")
    if res.no_price:
        out.append(f"No dated price (not ranked; give prices with --gpu-file): {', '.join(res.no_price)}.")
    if res.no_speed:
        out.append(f"No speed model (no tensor rate in the catalog): {', '.join(res.no_speed)}.")
    out.append("Hours and dollars are estimates with the range eight in ten published runs of the kind fell in; the "
               "constraints are checked on the estimate, and a note marks options whose range crosses them.")
    return "\n".join(out)


def _dur(h: float) -> str:
    """Hours as ``12.3h`` or, under an hour, ``42m``."""
    return f"{h:,.1f}h" if h >= 1 else f"{max(1, round(h * 60))}m"


def data_text(d: dict) -> str:
    """The ``--data`` section: counts, distribution, histogram and the advice, each with its figures."""
    a = d["advice"]
    out = [f"Data {d['path']}: {d['samples']:,} samples, {d['tokens']:,} tokens (counted with {d['counted_with']})",
           f"  lengths: min {d['min']:,}, median {d['median']:,}, p90 {d['p90']:,}, p99 {d['p99']:,}, max {d['max']:,} tokens"]
    out += ["  " + line for line in d["histogram"]]
    seq = f"  sequence length {a['seq_len']:,}" + (" (given)" if d["seq_len_given"] else f" (covers {a['covers']})")
    out.append(f"{seq}: {a['truncated']:,} samples truncated; the plan's memory is for its longest batch: "
               f"{a['seq_len']:,} tokens x micro-batch")
    b = a["micro_batch_for_waste"]
    grouped = f"group batches by length ({a['grouped_padding_waste']:.0%} wasted; ftplan train --group-by-length, HF group_by_length=True)"
    pack = (f"pack the samples into full sequences (ftplan train --packing; TRL packing=True), or {grouped}"
            if a["packing"] else "pad each batch to its longest sample")
    out.append(f"  padding would waste {a['padding_waste']:.0%} of the tokens at micro-batch {b}"
               + (f" ({a['grouped_padding_waste']:.0%} grouped by length: ftplan train --group-by-length)"
                  if not a["packing"] else "")
               + f": {pack}")
    how = "given" if d["tokens_given"] else (f"{d['tokens_processed']:,.0f} tokens per epoch "
                                               f"({'packed' if a['packing'] else 'padded tokens included'})")
    out.append(f"  time and cost use {how}")
    out.append("")
    return "\n".join(out)
