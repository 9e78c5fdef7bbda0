"""``ftplan profile``: a short real training run, measured (see ``ftplan.measure.profile``).

Exit codes: 0 measured, 1 out of memory or the run failed (the JSON says which), 2 bad input, 3 internal
error (``crash``).
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from ..units import parse_bytes
from . import _knobs as K
from ._common import echo_json, user_errors


def profile_command(
    model: str = K.MODEL, method: Optional[str] = K.METHOD, quant: Optional[str] = K.QUANT,
    double_quant: Optional[bool] = K.DOUBLE_QUANT, rank: Optional[int] = K.RANK, alpha: Optional[int] = K.ALPHA,
    targets: Optional[str] = K.TARGETS, lora_dropout: Optional[float] = K.DROPOUT,
    micro_batch: Optional[int] = K.MICRO_BATCH, seq_len: Optional[int] = K.SEQ_LEN,
    grad_accum: Optional[int] = K.GRAD_ACCUM, grad_ckpt: Optional[bool] = K.GRAD_CKPT,
    optimizer: Optional[str] = K.OPTIMIZER, attention: Optional[str] = K.ATTENTION,
    loss: Optional[str] = K.LOSS,
    steps: int = typer.Option(3, help="optimizer steps to run (>= 2; the last one is reported)"),
    device: str = typer.Option("auto", help="cuda | cpu | auto (cuda when torch sees a GPU)"),
    synthetic_weights: bool = typer.Option(False, "--synthetic-weights", help="random weights from the config (no download); 4-bit quantized on the fly"),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="memory cap, e.g. 8GiB: exceeding it is an OOM (simulated on the CPU)"),
    breakdown: Optional[bool] = typer.Option(None, "--breakdown/--no-breakdown", help="per-term breakdown with the tensor tracker [default: on for cpu, off for cuda]"),
    compare: bool = typer.Option(True, "--compare/--no-compare", help="put ftplan.estimate's prediction beside the measurement"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Run a few real training steps and measure memory per phase and tokens/s."""
    from ..errors import FtplanError

    with user_errors():
        cap = parse_bytes(max_memory)
        kn = K.knobs(method, quant, double_quant, rank, alpha, targets, lora_dropout, micro_batch, seq_len,
                     grad_accum, grad_ckpt, optimizer, attention, loss)
        import ftplan

        ftplan.estimate(model, None, **kn)  # validates every knob before anything heavy is imported
        from ..measure.profile import profile

        dev = None if device == "auto" else device
        res = profile(model, steps=steps, device=dev, synthetic_weights=synthetic_weights, max_memory_bytes=cap,
                      breakdown=breakdown, argv=["ftplan", "profile", *sys.argv[2:]], **kn)
        if compare:
            gpu = "cpu" if res["device"] == "cpu" else "auto"
            try:
                res["estimate"] = ftplan.estimate(model, gpu, **kn).to_dict()
            except FtplanError as e:
                res["estimate_error"] = str(e)
    if json_out:
        echo_json(json.dumps(res))
    else:
        from ..measure.text import profile_text

        typer.echo(profile_text(res))
    raise typer.Exit(0 if res["status"] == "ok" else 1)
