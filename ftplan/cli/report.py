"""``ftplan report``: a self-contained HTML cost and memory report (see ``ftplan.reports``).

Exit codes: 0 written, 2 bad input (nothing written), 3 internal error (``crash``).
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Optional

import typer

from ._common import user_errors


def report_command(
    model: str = typer.Option(..., "--model", "-m", help="alias (8b, 70b; see `ftplan models`), HF id or config path"),
    gpus: str = typer.Option(..., "--gpus", "-g", help="GPU options, comma-separated: rtx4090,l40s,2xh100,a100-80gb:4"),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="training tokens per epoch: 50M, 1.2B (or --data)"),
    data: Optional[str] = typer.Option(None, "--data", help="training data (JSONL): its tokens and 99th-percentile length set --tokens and --seq-len unless given; its length distribution is charted"),
    epochs: float = typer.Option(1.0, "--epochs"),
    output: str = typer.Option("ftplan-report.html", "--output", "-o", help="the HTML file"),
    prices: Optional[str] = typer.Option(None, "--prices", help="CSV: gpu,price_per_hour[,spot_price_per_hour][,purchase_price][,source][,date]"),
    spot_discount: float = typer.Option(0.6, "--spot-discount", help="spot price = on-demand x (1 - this)"),
    hours_per_week: float = typer.Option(40.0, "--utilization-hours-per-week", help="hours a week an owned GPU would train"),
    study: Optional[str] = typer.Option(None, "--study", help="an `ftplan autotune` study: its measured trials beside the predictions (needs optuna: ftplan[tune])"),
    storage: Optional[str] = typer.Option(None, "--storage", help="the study's storage [default: sqlite:///ftplan-runs/ftplan.db]"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", "-s"),
    effective_batch: Optional[int] = typer.Option(None, "--effective-batch", "-e"),
    method: Optional[str] = typer.Option(None, "--method"),
    csv: Optional[str] = typer.Option(None, "--csv", help="also write the options table as CSV"),
    json_path: Optional[str] = typer.Option(None, "--json", help="also write the options table as JSON"),
    pdf: Optional[str] = typer.Option(None, "--pdf", help="also write a PDF (needs Chromium)"),
) -> None:
    """Write an HTML report of fit, time and cost for several GPUs, for people who approve the spend."""
    with user_errors():
        _check_outputs(output=output, csv=csv, json=json_path, pdf=pdf)  # before plotly/pandas are imported
        from .. import reports

        r = reports.build(model, gpus, tokens, epochs=epochs, prices=prices, spot_discount=spot_discount,
                          hours_per_week=hours_per_week, study=study, storage=storage,
                          command=shlex.join(["ftplan", "report", *sys.argv[2:]]), seq_len=seq_len,
                          effective_batch=effective_batch, method=method, data=data)
        if pdf:
            reports.require_browser()  # before anything is written
        outputs = [p for p in (output, csv, json_path, pdf) if p]
        existed = {p for p in outputs if os.path.exists(p)}
        try:
            path = reports.write_html(r, output)
            written = [path, *reports.write_tables(r, csv, json_path)]
            if pdf:
                written.append(reports.write_pdf(path, pdf))
        except BaseException:  # a run that fails leaves no new file (a file it replaced keeps the new content)
            for p in outputs:
                if p not in existed and os.path.isfile(p):
                    os.unlink(p)
            raise
    from ..units import hours_text

    for p in written:
        typer.echo(f"wrote {p}")
    if r.cheapest:
        typer.echo(f"cheapest: {r.cheapest.label} (${r.cheapest.cost:,.2f}, {hours_text(r.cheapest.hours)})")
    if r.fastest:
        typer.echo(f"fastest: {r.fastest.label} ({hours_text(r.fastest.hours)}, "
                   + (f"${r.fastest.cost:,.2f})" if r.fastest.cost is not None else "price not known)"))


def _check_outputs(**paths: Optional[str]) -> None:
    """Each output a distinct path of a regular file (or of nothing yet): never a directory, a device, an
    empty name, or the same file twice."""
    import os

    from ..atomic import check_target
    from ..errors import FtplanError

    seen: dict[str, str] = {}
    for opt, p in paths.items():
        if p is None:
            continue
        if not p.strip():
            raise FtplanError(f"--{opt} is empty; give the path of a file")
        check_target(p)  # type: ignore[arg-type]
        real = os.path.realpath(p)
        if real in seen:
            raise FtplanError(f"--{opt} and --{seen[real]} name the same file {p}; give each its own path")
        seen[real] = opt
