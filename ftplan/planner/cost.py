"""Cost = GPU-hours x price per GPU-hour (on-demand unless a spot discount is given)."""

from __future__ import annotations

from ..errors import FtplanError
from .types import CostEstimate, GPUSpec, TimeEstimate

DEFAULT_TOKENS = 10_000_000  # training tokens per epoch when the user gives none (stated in the output)


def job_cost(time: TimeEstimate | None, gpu: GPUSpec | None, num_gpus: int, tokens: float, epochs: float = 1.0,
             price: float | None = None, spot_discount: float = 0.0) -> CostEstimate | None:
    """Hours for ``tokens * epochs`` at ``time.tokens_per_s`` and dollars at ``price`` (or the catalog's)."""
    if tokens <= 0:
        raise FtplanError(f"tokens={tokens:g} must be greater than 0")
    if epochs <= 0:
        raise FtplanError(f"epochs={epochs:g} must be greater than 0")
    if price is not None and price < 0:
        raise FtplanError(f"price={price:g} $/h must not be negative")
    if not 0.0 <= spot_discount < 1.0:
        raise FtplanError(f"spot_discount={spot_discount:g} must be in [0, 1)")
    if time is None or gpu is None:
        return None
    total = tokens * epochs
    hours = total / time.tokens_per_s / 3600.0
    gpu_hours = hours * num_gpus
    notes: list[str] = []
    if price is not None:
        p, provider, date = price, "user (--price)", "given"
    elif gpu.price_per_hour is not None:
        p, provider, date = gpu.price_per_hour, gpu.price_provider, gpu.price_date
    else:
        p, provider, date = None, "", ""
        notes.append(f"no dated price for {gpu.name} in the catalog: pass --price")
    if p is not None and spot_discount:
        p = p * (1.0 - spot_discount)
        notes.append(f"spot discount {spot_discount:.0%} applied")
    dollars = gpu_hours * p if p is not None else None
    return CostEstimate(tokens=total, hours=hours, gpu_hours=gpu_hours, price_per_gpu_hour=p, dollars=dollars,
                        price_provider=provider, price_date=date, notes=tuple(notes))
