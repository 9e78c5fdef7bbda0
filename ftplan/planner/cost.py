"""Cost = GPU-hours x price per GPU-hour (on-demand unless a spot discount is given)."""

from __future__ import annotations

from ..units import real
from .types import CostEstimate, GPUSpec, TimeEstimate

DEFAULT_TOKENS = 10_000_000  # training tokens per epoch when the user gives none (stated in the output)
# the largest accepted: beyond any real job (and far from float overflow in hours x price)
MAX_TOKENS, MAX_EPOCHS, MAX_PRICE = 1e16, 1e6, 1e6


def job_cost(time: TimeEstimate | None, gpu: GPUSpec | None, num_gpus: int, tokens: float, epochs: float = 1.0,
             price: float | None = None, spot_discount: float = 0.0) -> CostEstimate | None:
    """Hours for ``tokens * epochs`` at ``time.tokens_per_s`` and dollars at ``price`` (or the catalog's)."""
    tokens = real("tokens", tokens, low=0, low_open=True, high=MAX_TOKENS)
    epochs = real("epochs", epochs, low=0, low_open=True, high=MAX_EPOCHS)
    if price is not None:
        price = real("price", price, low=0, high=MAX_PRICE)  # $ per GPU-hour
    spot_discount = real("spot_discount", spot_discount, low=0, high=1, high_open=True)
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
        notes.append(spot_words(gpu, spot_discount) if price is None else
                     f"spot discount {spot_discount:.0%} applied to the given price (an estimate, not a quote)")
    dollars = gpu_hours * p if p is not None else None
    return CostEstimate(tokens=total, hours=hours, gpu_hours=gpu_hours, price_per_gpu_hour=p, dollars=dollars,
                        price_provider=provider, price_date=date, notes=tuple(notes))


def spot_clause(gpu: GPUSpec) -> str:
    """Whether the catalog price's provider sells spot GPUs (``GPUSpec.spot``), in words: the one wording the
    estimate's notes and the report use."""
    who = gpu.price_provider or "the provider"
    return {"no": f"{who} sells no spot instances",
            "list price is preemptible": f"{who}'s list price is already for preemptible capacity",
            "yes": f"{who} sells spot at prices that change with demand"}.get(
                gpu.spot, f"whether {who} sells spot is not known")


def spot_words(gpu: GPUSpec, discount: float) -> str:
    """What a spot discount on the catalog price means for this card's provider: always an estimate."""
    return f"spot discount {discount:.0%} applied: an estimate, not a quote ({spot_clause(gpu)})"
