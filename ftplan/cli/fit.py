"""``ftplan --model M --gpu G [knobs]``: does it fit, the best configuration, memory, speed, cost.

Exit codes: 0 fits, 1 nothing fits, 2 bad input, 3 internal error (``crash``).
"""

from __future__ import annotations

from typing import Optional

import typer

from ..planner.search import DEFAULT_MARGIN
from ..units import parse_count
from ._common import echo_json, user_errors


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"ftplan {__version__}")
        raise typer.Exit(0)


def fit_callback(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="alias (8b, 70b, llama3.1-8b; see `ftplan models`), HF id, or path to config.json / model folder"),
    gpu: str = typer.Option("auto", "--gpu", "-g", help="GPU name or alias (rtx4090, 4090, h100; see `ftplan gpus`), or auto (NVML)"),
    method: Optional[str] = typer.Option(None, help="full | lora | qlora (searched: lora, qlora)"),
    quant: Optional[str] = typer.Option(None, help="base weights: nf4 | fp4 | int8 | bf16 | fp16 | fp32 (searched)"),
    double_quant: Optional[bool] = typer.Option(None, "--double-quant/--no-double-quant", help="4-bit double quantization (searched)"),
    rank: Optional[int] = typer.Option(None, "--rank", "-r", help="LoRA rank [default: 16; searched with --objective quality]"),
    alpha: Optional[int] = typer.Option(None, "--alpha", help="LoRA alpha [default: 2 x rank]"),
    targets: Optional[str] = typer.Option(None, "--targets", help="all-linear | attention | mlp | q_proj,v_proj,... [default: all-linear]"),
    lora_dropout: Optional[float] = typer.Option(None, "--lora-dropout", help="LoRA dropout [default: 0]"),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", "-b", help="per-GPU micro-batch (searched)"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", "-s", help="tokens per sequence [default: 2048]"),
    effective_batch: Optional[int] = typer.Option(None, "--effective-batch", help="sequences per optimizer step [default: 16]"),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="gradient accumulation steps (else from --effective-batch)"),
    grad_ckpt: Optional[bool] = typer.Option(None, "--grad-ckpt/--no-grad-ckpt", help="gradient checkpointing (searched)"),
    optimizer: Optional[str] = typer.Option(None, help="adamw | adamw_torch | adamw_8bit | paged_adamw_8bit | paged_adamw_32bit | sgd | adafactor (searched: AdamW family)"),
    attention: Optional[str] = typer.Option(None, help="sdpa | eager | flash_attention_2 (searched)"),
    loss: Optional[str] = typer.Option(None, "--loss", help="standard | chunked (lm_head fused with the cross-entropy, chunk by chunk) (searched where the trainer can run it)"),
    handoff: str = typer.Option("ftplan", "--for", help="the trainer the plan is built for: ftplan (ftplan train) | hf (HF Trainer + ftplan.integrations.hf) | trl | axolotl | llamafactory; sets what it decides (k-bit preparation, loss)"),
    gpus: int = typer.Option(1, "--gpus", help="number of GPUs"),
    sharding: Optional[str] = typer.Option(None, help="ddp | fsdp | fsdp_grad_op (with --gpus > 1) [default: ddp]"),
    nodes: Optional[int] = typer.Option(None, "--nodes", help="servers the GPUs are spread over: host memory is per server, collectives cross the network; more GPUs are suggested up to 8 per server [default: 1]"),
    offload: Optional[str] = typer.Option(None, "--offload", help="none | params (FSDP: parameters, gradients and optimizer step on the host) [default: none]"),
    host_ram: Optional[str] = typer.Option(None, "--host-ram", help="host memory of one node, e.g. 256GiB: a plan needing more does not fit [default: unknown; the need is stated]"),
    tokens: Optional[str] = typer.Option(None, help="training tokens per epoch, e.g. 50M [default: 10M]"),
    epochs: float = typer.Option(1.0, help="epochs over --tokens"),
    price: Optional[float] = typer.Option(None, help="override $ per GPU-hour"),
    spot_discount: float = typer.Option(0.0, "--spot-discount", help="fraction off the on-demand price, e.g. 0.6"),
    objective: str = typer.Option("throughput", help="throughput | cost | quality"),
    margin: float = typer.Option(DEFAULT_MARGIN, help="fraction of usable memory kept free"),
    top: int = typer.Option(6, help="how many configurations to show (recommendation + runner-ups)"),
    gpu_file: Optional[str] = typer.Option(None, "--gpu-file", help="CSV/JSON adding or overriding GPUs and prices"),
    calibration: bool = typer.Option(True, "--calibration/--no-calibration", help="apply the factors `ftplan autotune` measured for this GPU, library versions and model size (the output says which) [default: on]"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
    trace: bool = typer.Option(False, "--trace", help="also trace the recommended configuration at full size on the CPU (FakeTensorMode; needs torch, transformers, peft, bitsandbytes; seconds to a minute)"),
    max_seq_len: bool = typer.Option(False, "--max-seq-len", help="the longest sequence that fits, per method (QLoRA, LoRA, full) with and without checkpointing, at micro-batch 1"),
    max_batch: bool = typer.Option(False, "--max-batch", help="the largest micro-batch that fits at --seq-len, per method with and without checkpointing"),
    data: Optional[str] = typer.Option(None, "--data", help="training data (JSONL, the formats ftplan train reads): its token count sets --tokens, its lengths --seq-len (99th percentile), with the distribution, truncation and padding waste"),
    budget: Optional[float] = typer.Option(None, "--budget", help="with --gpu any: the most the job may cost, in dollars"),
    deadline: Optional[str] = typer.Option(None, "--deadline", help="with --gpu any: the longest the job may take: 12h, 90m, 2d"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
) -> None:
    """Will this fine-tune fit, how should it be configured, how long will it take, what will it cost?

    ftplan --model 8b --gpu rtx4090
    """
    from ..stack import quiet_stack

    ctx.with_resource(quiet_stack())  # the stack's notices stay out of every command's output
    if ctx.invoked_subcommand is not None:
        return
    if model is None:
        typer.echo(ctx.get_help())
        typer.echo("\nerror: --model is required (e.g. ftplan --model 8b --gpu rtx4090)", err=True)
        raise typer.Exit(2)
    from ..fit import run_fit
    from ..fit.text import dumps, fit_json, fit_text

    with user_errors():
        if top < 1:
            from ..errors import FtplanError

            raise FtplanError(f"--top={top} must be at least 1")
        data_doc = None
        if data is not None:
            from ..dataset import apply_data

            data_doc, tokens, seq_len = apply_data(model, data, tokens, seq_len, micro_batch)
        common = dict(margin=margin, gpu_file=gpu_file, calibrate=calibration, handoff=handoff)
        knobs = dict(method=method, quant=quant, double_quant=double_quant, lora_rank=rank, lora_alpha=alpha,
                     lora_targets=targets, lora_dropout=lora_dropout, micro_batch=micro_batch, seq_len=seq_len,
                     gradient_checkpointing=grad_ckpt, optimizer=optimizer, attention=attention, loss_impl=loss,
                     sharding=sharding, offload=offload, nodes=nodes)
        batch = dict(effective_batch=effective_batch, grad_accum=grad_accum)  # (the inverse questions set their own)
        if gpu.strip().lower() == "any":
            _any_gpu(model, json_out, top, tokens=parse_count(tokens, "--tokens") if tokens else None, epochs=epochs,
                     budget=budget, deadline=deadline, objective=objective, spot_discount=spot_discount, **common,
                     **knobs, **batch, num_gpus=gpus if gpus != 1 else None, max_gpus=8 * (nodes or 1))
        if budget is not None or deadline is not None:
            from ..errors import FtplanError

            raise FtplanError("--budget and --deadline choose among GPUs: use them with --gpu any")
        if max_seq_len or max_batch:
            _inverse(model, gpu, max_seq_len, json_out, **common, **knobs, num_gpus=gpus)
        result = run_fit(model, gpu, objective=objective, tokens=tokens, epochs=epochs, price=price, top=top,
                         spot_discount=spot_discount, host_ram=host_ram, **common, **knobs, **batch, num_gpus=gpus)
    traced = None
    if trace and result.plans:
        with user_errors():
            traced = _trace_plan(model, result.plans[0])
    if json_out:
        doc = fit_json(result)
        if traced is not None:
            doc["trace"] = traced
        if data_doc is not None:
            doc["data"] = data_doc
        echo_json(dumps(doc))
    else:
        if data_doc is not None:
            from ..fit.text import data_text

            typer.echo(data_text(data_doc))
        typer.echo(fit_text(result))
        if traced is not None:
            from ..measure.text import trace_text

            typer.echo("")
            c = result.plans[0].config
            import ftplan

            est = ftplan.estimate(result.model, result.gpu, **_traced_knobs(c)).to_dict()
            typer.echo(trace_text(traced, est))
    raise typer.Exit(0 if result.fits else 1)


def _any_gpu(model: str, json_out: bool, top: int, **kw) -> None:
    """``--gpu any``: every catalog GPU and count ranked, with the budget and deadline; exit 0 when one meets
    them, 1 when none does."""
    from ..anygpu import rank_gpus
    from ..fit.text import any_gpu_text, dumps

    res = rank_gpus(model, **kw)
    if json_out:
        echo_json(dumps({"question": "gpu_any", "model": model, "budget": res.budget, "deadline_hours": res.deadline_hours,
                         "objective": res.objective, "considered": res.considered, "no_price": res.no_price,
                         "no_speed": res.no_speed, "options": [o.to_dict() for o in res.options]}))
    else:
        typer.echo(any_gpu_text(model, res, max(top, 10)))
    raise typer.Exit(0 if any(o.meets for o in res.options) else 1)


def _inverse(model: str, gpu: str, seq: bool, json_out: bool, **kw) -> None:
    """``--max-seq-len`` / ``--max-batch``: the table, then exit 0 (1 when nothing fits at all)."""
    from .. import inverse
    from ..errors import FtplanError
    from ..fit.text import dumps, inverse_text
    from ..profiles.gpus import get_gpu

    what = "max_seq_len" if seq else "max_batch"
    if seq and kw.get("seq_len") is not None:
        raise FtplanError("--max-seq-len searches the sequence length: drop --seq-len")
    if not seq and kw.get("micro_batch") is not None:
        raise FtplanError("--max-batch searches the micro-batch: drop --micro-batch")
    g = get_gpu(gpu, kw.get("gpu_file"))
    rows = (inverse.context_table if seq else inverse.batch_table)(model, g, **kw)
    if json_out:
        echo_json(dumps({"question": what, "model": model, "gpu": g.key, "rows": [r.to_dict() for r in rows]}))
    else:
        typer.echo(inverse_text(model, g, what, rows, kw.get("seq_len")))
    raise typer.Exit(0 if any(r.value for r in rows) else 1)


def _trace_plan(model: str, plan) -> dict:
    """Trace the recommended configuration (one micro-batch pass, as the estimate's phases describe)."""
    from ..measure.trace import trace

    return trace(model, **_traced_knobs(plan.config))


def _traced_knobs(c) -> dict:
    """The plan's knobs as one device runs them (a trace models one device)."""
    return {**c.knobs(), "num_gpus": 1, "sharding": None}
