"""``ftplan trace``: a full-size training step under fake tensors (see ``ftplan.measure.trace``),
beside the analytical model. Exit codes: 0 traced, 2 bad input, 3 internal error (``crash``)."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from . import _knobs as K
from ._common import echo_json, user_errors


def trace_command(
    model: str = K.MODEL, method: Optional[str] = K.METHOD, quant: Optional[str] = K.QUANT,
    double_quant: Optional[bool] = K.DOUBLE_QUANT, rank: Optional[int] = K.RANK, alpha: Optional[int] = K.ALPHA,
    targets: Optional[str] = K.TARGETS, lora_dropout: Optional[float] = K.DROPOUT,
    micro_batch: Optional[int] = K.MICRO_BATCH, seq_len: Optional[int] = K.SEQ_LEN,
    grad_accum: Optional[int] = K.GRAD_ACCUM, grad_ckpt: Optional[bool] = K.GRAD_CKPT,
    optimizer: Optional[str] = K.OPTIMIZER, attention: Optional[str] = K.ATTENTION,
    loss: Optional[str] = K.LOSS,
    gpus: int = typer.Option(1, "--gpus", help="ranks: > 1 traces rank 0 of an FSDP job over a fake process group (with --sharding fsdp or fsdp_grad_op)"),
    sharding: Optional[str] = typer.Option(None, "--sharding", help="fsdp | fsdp_grad_op (with --gpus > 1)"),
    gpu: str = typer.Option("cpu", "--gpu", "-g", help="GPU whose analytical estimate is shown beside the trace (cpu = tensors only)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Trace a full-size training step on the CPU with no memory (FakeTensorMode) and compare it with
    the analytical model term by term."""
    with user_errors():
        kn = K.knobs(method, quant, double_quant, rank, alpha, targets, lora_dropout, micro_batch, seq_len,
                     grad_accum, grad_ckpt, optimizer, attention, loss)
        if gpus != 1 or sharding is not None:
            kn.update(num_gpus=gpus, sharding=sharding or ("fsdp" if gpus > 1 else None))
        import ftplan

        est = ftplan.estimate(model, gpu, **kn).to_dict()  # validates the knobs first
        from ..measure.trace import trace

        res = trace(model, argv=["ftplan", "trace", *sys.argv[2:]], **kn)
        res["estimate"] = est
    if json_out:
        echo_json(json.dumps(res))
        return
    from ..measure.text import trace_text

    typer.echo(trace_text(res, est))
