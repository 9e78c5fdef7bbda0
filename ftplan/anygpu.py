"""Which GPU to rent: every catalog GPU and count, each with its best plan, ranked by the objective, with a
budget and a deadline as constraints (``--gpu any``, ``ftplan.plan(model, gpu="any")``).

For each GPU of the catalog with a dated price and a speed model, and each count of 1, 2, 4 and 8 (one
node; more with ``max_gpus``), the fit command's own search gives the best plan for the job (``tokens`` x
``epochs``); an option is offered when it fits, and it meets the constraints when its dollars are within
``budget`` and its hours within ``deadline_hours`` (point estimates; ``budget_safe``/``deadline_safe`` say
whether the upper end of the range meets them too). Ranked by hours (``throughput``) or by dollars
(``cost``; also ``quality``, whose search ranks by model capacity first). About 150 searches: 1-2 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .api import plan_search
from .errors import FtplanError
from .planner.cost import DEFAULT_TOKENS
from .planner.search import DEFAULT_MARGIN
from .planner.types import GPUSpec, ModelSpec, Plan
from .profiles.gpus import list_gpus
from .profiles.models import get_model
from .units import DURATION_UNITS, parse_quantity, real

COUNTS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Option:
    gpu: GPUSpec
    count: int
    plan: Plan
    hours: float
    hours_range: tuple[float, float]
    dollars: float
    dollars_range: tuple[float, float]
    meets_budget: bool
    meets_deadline: bool
    budget_safe: bool  # the range's upper end is within the budget too
    deadline_safe: bool

    @property
    def meets(self) -> bool:
        return self.meets_budget and self.meets_deadline

    def to_dict(self) -> dict[str, Any]:
        c = self.plan.estimate.cost
        return {"gpu": self.gpu.key, "gpu_name": self.gpu.name, "count": self.count,
                "config": self.plan.config.to_dict(), "tokens_per_s": self.plan.estimate.time.tokens_per_s
                if self.plan.estimate.time else None, "hours": self.hours, "hours_range": list(self.hours_range),
                "dollars": self.dollars, "dollars_range": list(self.dollars_range),
                "price_per_gpu_hour": c.price_per_gpu_hour if c else None, "price_provider": c.price_provider if c else "",
                "price_date": c.price_date if c else "", "meets_budget": self.meets_budget,
                "meets_deadline": self.meets_deadline, "budget_safe": self.budget_safe,
                "deadline_safe": self.deadline_safe}


@dataclass(frozen=True)
class AnyResult:
    options: list[Option]  # ranked; those meeting the constraints first
    budget: float | None
    deadline_hours: float | None
    objective: str
    considered: int  # GPU x count pairs searched
    no_price: list[str]  # GPUs skipped: no dated price (pass --gpu-file with prices)
    no_speed: list[str]  # GPUs whose plans have no speed model (no tensor rate in the catalog)


def deadline_hours(deadline: str | float | None) -> float | None:
    """``24h``, ``90m``, ``2d`` or hours as a number; None when not given."""
    if deadline is None:
        return None
    if isinstance(deadline, (int, float)) and not isinstance(deadline, bool):
        return real("--deadline", float(deadline), low=0, low_open=True, high=24 * 3650)
    seconds = parse_quantity(str(deadline), DURATION_UNITS, "--deadline", "12h, 90m, 2d")
    return real("--deadline", seconds / 3600.0, low=0, low_open=True, high=24 * 3650)


def rank_gpus(model: str | ModelSpec, *, tokens: float | None = None, epochs: float = 1.0, budget: float | None = None,
              deadline: str | float | None = None, objective: str = "throughput", max_gpus: int = 8,
              margin: float = DEFAULT_MARGIN, gpu_file: str | None = None, calibrate: bool = True,
              handoff: str | None = None, spot_discount: float = 0.0, **knobs: Any) -> AnyResult:
    """Every catalog GPU and count with its best plan for the job, ranked; see the module docstring."""
    if budget is not None:
        budget = real("--budget", budget, low=0, low_open=True, high=1e9)
    hours_cap = deadline_hours(deadline)
    if knobs.get("num_gpus") not in (None, 1):
        raise FtplanError("--gpu any searches the GPU count itself: drop --gpus")
    knobs = {k: v for k, v in knobs.items() if v is not None and k != "num_gpus"}
    spec = get_model(model)
    tokens = tokens or DEFAULT_TOKENS
    counts = [c for c in COUNTS if c <= max_gpus] + ([max_gpus] if max_gpus not in COUNTS and max_gpus > 1 else [])
    options: list[Option] = []
    no_price, no_speed = [], []
    considered = 0
    for g in list_gpus(gpu_file):
        if g.key == "cpu":
            continue
        if g.price_per_hour is None:
            no_price.append(g.key)
            continue
        speed = True
        for n in counts:
            considered += 1
            kn = dict(knobs, num_gpus=n) if n > 1 else knobs
            res = plan_search(spec, g, objective=objective, tokens=tokens, epochs=epochs, margin=margin, top=1,
                              gpu_file=gpu_file, calibrate=calibrate, handoff=handoff, spot_discount=spot_discount,
                              **kn)
            if not res.plans:
                continue
            p = res.plans[0]
            c = p.estimate.cost
            if p.estimate.time is None or c is None or c.dollars is None or c.dollars_range is None:
                speed = False
                continue
            ok_b = budget is None or c.dollars <= budget
            ok_d = hours_cap is None or c.hours <= hours_cap
            options.append(Option(g, n, p, c.hours, c.hours_range, c.dollars, c.dollars_range, ok_b, ok_d,
                                  budget is None or c.dollars_range[1] <= budget,
                                  hours_cap is None or c.hours_range[1] <= hours_cap))
        if not speed:
            no_speed.append(g.key)
    key = (lambda o: (not o.meets, o.dollars, o.hours)) if objective in ("cost", "quality") else \
        (lambda o: (not o.meets, o.hours, o.dollars))
    options.sort(key=key)
    return AnyResult(options, budget, hours_cap, objective, considered, no_price, no_speed)
