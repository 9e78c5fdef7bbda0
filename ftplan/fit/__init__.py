"""The fit question end to end (what ``ftplan --model ... --gpu ...`` runs): search, then, when
nothing fits, the nearest ways out (a shorter sequence, a lighter method, a larger GPU, more GPUs),
each checked with the same search. Pure library code; the CLI only formats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..api import plan_search, suggest
from ..planner.cost import DEFAULT_TOKENS
from ..planner.handoff import DEFAULT_HANDOFF, get_handoff, handoff_knobs
from ..planner.options import DEFAULTS, choice
from ..planner.search import DEFAULT_MARGIN
from ..planner.types import GPUSpec, ModelSpec, Plan
from ..profiles.gpus import get_gpu
from ..profiles.models import get_model
from ..units import parse_count

DEFAULTED = ("seq_len", "effective_batch", "lora_rank", "lora_targets")  # defaults the fit header names
SEARCHED_BY = {"quality": ("lora_rank", "lora_targets")}  # knobs an objective searches (planner.search)
LORA_KNOBS = ("lora_rank", "lora_targets")


@dataclass(frozen=True)
class FitResult:
    """The fit question's answer: the plans (best first; empty when nothing fits), the search's counts,
    the defaults it used, and (when nothing fits) ``suggest``'s ways out."""

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
    handoff: str = DEFAULT_HANDOFF  # the trainer the plans are built for (planner.handoff)
    handoff_note: str = ""  # what was assumed of it

    @property
    def fits(self) -> bool:
        return bool(self.plans)


def run_fit(model: str, gpu: str, *, objective: str = "throughput", tokens: float | str | None = None,
            epochs: float = 1.0, price: float | None = None, margin: float = DEFAULT_MARGIN, top: int = 6,
            gpu_file: str | None = None, spot_discount: float = 0.0, calibrate: bool = True,
            handoff: str = DEFAULT_HANDOFF, host_ram: str | int | None = None, **knobs: Any) -> FitResult:
    """Search ``model`` on ``gpu`` with the knobs given fixed, for the trainer ``handoff`` (what it
    decides is fixed too: ``planner.handoff``); when nothing fits, ``suggest`` the ways out (each checked
    with this same search: objective, margin, calibration, fixed knobs, trainer)."""
    spec = get_model(model)
    g = get_gpu(gpu, gpu_file)
    target = get_handoff(handoff)
    tok = parse_count(tokens) if tokens is not None else float(DEFAULT_TOKENS)
    fixed = {k: v for k, v in knobs.items() if v is not None}
    searched, note = handoff_knobs(spec, target, fixed)
    defaults_used = defaults_in_use(fixed, objective)
    if tokens is None:
        defaults_used["tokens"] = DEFAULT_TOKENS
    res = plan_search(spec, g, objective=objective, tokens=tok, epochs=epochs, price=price, margin=margin,
                      top=top, gpu_file=gpu_file, spot_discount=spot_discount, diverse=True, calibrate=calibrate,
                      host_ram=host_ram, **searched)
    sugg: dict[str, Any] = {}
    if not res.plans:
        sugg = suggest(spec, g, objective=objective, margin=margin, gpu_file=gpu_file, calibrate=calibrate,
                       **searched)
    return FitResult(spec, g, res.plans, res.candidates, res.feasible, objective, tok, epochs, margin, fixed,
                     defaults_used, res.warnings, sugg, target.key, note)


def defaults_in_use(fixed: dict[str, Any], objective: str) -> dict[str, Any]:
    """The defaults the search holds every candidate to: the knobs of ``DEFAULTED`` that the caller did
    not fix, less the searched ones (rank and targets under ``quality``) and those that mean nothing
    for the method (LoRA knobs with ``method="full"``)."""
    searched = SEARCHED_BY.get(choice("objective", objective), ())
    full = "method" in fixed and choice("method", fixed["method"]) == "full"
    out = {}
    for k in DEFAULTED:
        if k in fixed or k in searched or (full and k in LORA_KNOBS):
            continue
        if k == "effective_batch" and "grad_accum" in fixed:
            continue
        out[k] = DEFAULTS[k]
    return out
