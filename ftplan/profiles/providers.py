"""Which cloud providers sell spot (interruptible) GPUs: ``data/providers.csv``, one row per provider with
its source and the date it was checked. A catalog price names its provider (``price_provider``); the card
then carries ``GPUSpec.spot`` ("yes", "no", "list price is preemptible" or "" when the provider is not in
the file), so a spot figure is shown as a quote only where one exists, and labelled an estimate elsewhere."""

from __future__ import annotations

import csv
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from ..planner.types import GPUSpec

DATA = Path(__file__).parent / "data" / "providers.csv"


class Provider(NamedTuple):
    name: str
    match: str  # lower-case text a catalog price_provider starts with
    spot: str
    note: str
    source: str
    checked: str


@lru_cache(maxsize=1)
def providers() -> tuple[Provider, ...]:
    with DATA.open(newline="", encoding="utf-8") as f:
        return tuple(Provider(r["provider"], r["match"].lower(), r["spot"], r["spot_note"], r["source"], r["checked"])
                     for r in csv.DictReader(f))


def provider_of(price_provider: str) -> Provider | None:
    p = (price_provider or "").strip().lower()
    return next((x for x in providers() if p.startswith(x.match)), None)


def with_providers(catalog: dict[str, GPUSpec]) -> dict[str, GPUSpec]:
    out = {}
    for k, g in catalog.items():
        p = provider_of(g.price_provider)
        out[k] = replace(g, spot=p.spot, spot_note=f"{p.name}: {p.note} ({p.source}; checked {p.checked})") if p else g
    return out
