"""``ftplan models``: the model catalog and its aliases."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer

from ..planner.arch import active_params, total_params
from ..profiles.models import list_models
from ._common import echo_json


def models_command(json_out: bool = typer.Option(False, "--json", help="one JSON document")) -> None:
    """List the catalog models (config facts, no weights) and what each alias means."""
    models = list_models()
    if json_out:
        echo_json(json.dumps([{**asdict(m), "aliases": list(m.aliases), "total_params": total_params(m)}
                              for m in models], indent=2))
        return
    typer.echo(f"{'name':<20}{'params':>9}{'layers':>7}{'hidden':>7}{'heads':>8}{'vocab':>8}  {'Hugging Face id':<38} aliases")
    for m in models:
        p = total_params(m) / 1e9
        size = f"{p:.2f}B" if not m.is_moe else f"{p:.1f}B/{active_params(m) / 1e9:.1f}A"
        heads = f"{m.heads}/{m.kv_heads}"
        aliases = ", ".join(a for a in m.aliases if "/" not in a)
        typer.echo(f"{m.name:<20}{size:>9}{m.layers:>7}{m.hidden:>7}{heads:>8}{m.vocab:>8}  {m.hf_id:<38} {aliases}")
    typer.echo("Any other Hugging Face id (from the local cache, or the Hub when online) or a path to config.json "
               "works too.")
