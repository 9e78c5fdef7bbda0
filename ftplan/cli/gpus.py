"""``ftplan gpus``: the GPU catalog."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Optional

import typer

from ..profiles.gpus import list_gpus
from ..profiles.rates import tensor_peak
from ._common import echo_json, user_errors


def gpus_command(json_out: bool = typer.Option(False, "--json", help="one JSON document"),
                 gpu_file: Optional[str] = typer.Option(None, "--gpu-file", help="CSV/JSON adding or overriding GPUs and prices"),
                 rates: bool = typer.Option(False, "--rates", help="the achievable matmul and memory rates the speed "
                                            "model uses, and what each rests on (measured or datasheet x ratio)"),
                 prices: bool = typer.Option(False, "--prices", help="each price with its provider and date, and "
                                             "whether that provider sells spot (interruptible) GPUs")) -> None:
    """List the GPUs ftplan knows: usable memory, bandwidth, dense bf16 rate, price (unknown = '?')."""
    with user_errors():
        gpus = list_gpus(gpu_file)
    if json_out:
        echo_json(json.dumps([{**asdict(g), "aliases": list(g.aliases)} for g in gpus], indent=2))
        return
    if prices:
        typer.echo(f"{'key':<16}{'$/GPU-hour':>11}  {'provider':<34}{'date':<34}spot")
        for g in gpus:
            if g.price_per_hour is None:
                typer.echo(f"{g.key:<16}{'?':>11}  {'(no dated price: pass --price)':<34}")
                continue
            typer.echo(f"{g.key:<16}{g.price_per_hour:>11.4g}  {g.price_provider[:33]:<34}{g.price_date[:33]:<34}"
                       f"{g.spot or 'not known'}")
        seen: dict[str, str] = {}
        for g in gpus:
            if g.spot_note:
                seen.setdefault(g.spot_note.split(":")[0], g.spot_note)
        for note in seen.values():
            typer.echo(f"  {note}")
        typer.echo("Prices are on-demand list prices per GPU-hour. A spot figure (--spot-discount) is an estimate, "
                   "never a quote; where the provider sells no spot, the output says so.")
        return
    if rates:
        typer.echo(f"{'key':<16}{'datasheet TF':>13}{'achievable TF':>14}{'GB/s':>7}{'achievable':>11}  what they rest on")
        for g in gpus:
            peak = tensor_peak(g)
            ach = f"{peak * g.matmul_ratio:.0f}" if peak and g.matmul_ratio else "?"
            bw = f"{g.bandwidth_gbs * g.bandwidth_ratio:.0f}" if g.bandwidth_gbs and g.bandwidth_ratio else "?"
            typer.echo(f"{g.key:<16}{(f'{peak:g}' if peak else '?'):>13}{ach:>14}"
                       f"{(f'{g.bandwidth_gbs:g}' if g.bandwidth_gbs else '?'):>7}{bw:>11}  {g.rates_note}")
        typer.echo("Measured figures and their sources: ftplan/profiles/data/gpu_rates.csv and gpu_rates.md.")
        return
    typer.echo(f"{'key':<16}{'name':<44}{'usable GiB':>11}{'GB/s':>7}{'bf16 TF':>9}{'$/h':>8}  aliases")
    for g in gpus:
        tf = g.bf16_tflops if g.bf16 and g.bf16_tflops else None
        tf_s = f"{tf:g}" if tf else ("fp16 " + f"{g.fp16_tflops:g}" if g.fp16_tflops else "?")
        price = f"{g.price_per_hour:.2f}" if g.price_per_hour is not None else "?"
        bw = f"{g.bandwidth_gbs:g}" if g.bandwidth_gbs else "?"
        est = "*" if g.usable_source.startswith("estimated") else " "
        typer.echo(f"{g.key:<16}{g.name[:43]:<44}{g.usable_gib:>10.1f}{est}{bw:>7}{tf_s:>9}{price:>8}  {', '.join(g.aliases)}")
    typer.echo("* usable memory estimated from the marketing size; ? = unknown (no source read). "
               "Prices: on-demand $/GPU-hour with provider and date in --json.")
