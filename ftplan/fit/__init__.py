"""The fit question end to end (what ``ftplan --model ... --gpu ...`` runs): search, then, when
nothing fits, the smallest GPU or GPU count that does. Pure library code; the CLI only formats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..api import plan_search, suggest
from ..planner.cost import DEFAULT_TOKENS
from ..planner.options import DEFAULTS
from ..planner.search import DEFAULT_MARGIN
from ..planner.types import GPUSpec, ModelSpec, Plan
from ..profiles.gpus import get_gpu
from ..profiles.models import get_model
from ..units import parse_count


@dataclass(frozen=True)
class FitResult:
    model: ModelSpec
    gpu: GPUSpec
    plans: list[Plan]
    candidates: int
    feasible: int
    objective: str
    tokens: float
    epochs: float
    margin: float
    fixed: dict[str, Any]
    defaults_used: dict[str, Any]
    warnings: tuple[str, ...] = ()
    suggestion: dict[str, Any] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return bool(self.plans)


def run_fit(model: str, gpu: str, *, objective: str = "throughput", tokens: float | str | None = None,
            epochs: float = 1.0, price: float | None = None, margin: float = DEFAULT_MARGIN, top: int = 6,
            gpu_file: str | None = None, spot_discount: float = 0.0, **knobs: Any) -> FitResult:
    spec = get_model(model)
    g = get_gpu(gpu, gpu_file)
    tok = parse_count(tokens) if tokens is not None else float(DEFAULT_TOKENS)
    fixed = {k: v for k, v in knobs.items() if v is not None}
    defaults_used = {k: DEFAULTS[k] for k in ("seq_len", "effective_batch", "lora_rank", "lora_targets")
                     if k not in fixed and not (k == "effective_batch" and "grad_accum" in fixed)}
    if tokens is None:
        defaults_used["tokens"] = DEFAULT_TOKENS
    res = plan_search(spec, g, objective=objective, tokens=tok, epochs=epochs, price=price, margin=margin,
                      top=top, gpu_file=gpu_file, spot_discount=spot_discount, diverse=True, **fixed)
    sugg: dict[str, Any] = {}
    if not res.plans:
        sugg = suggest(spec, g, margin=margin, gpu_file=gpu_file, **fixed)
    return FitResult(spec, g, res.plans, res.candidates, res.feasible, objective, tok, epochs, margin, fixed,
                     defaults_used, res.warnings, sugg)
