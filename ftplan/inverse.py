"""The inverse questions: the longest sequence, or the largest micro-batch, that still fits a GPU.

Each answer is found by bisection with the same search the fit command runs (``plan_search``: the knobs
given are fixed, the others searched, the same margin and calibration), which is valid because the
memory model never falls when the sequence or the micro-batch grows (a property test holds it). So the
answer fits and one step beyond it does not (tests check both sides).

- ``max_seq_len``: the longest multiple of ``SEQ_STEP`` tokens at micro-batch 1, up to the model's own
  context limit (``ModelSpec.max_positions``; ``at_limit`` says when the limit, not the memory, stopped it);
- ``max_batch``: the largest micro-batch at the given length, up to ``MAX_BATCH``;
- ``context_table`` / ``batch_table``: one row per method (QLoRA, LoRA, full) with and without gradient
  checkpointing, as the tables users look up before buying a card.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .api import plan_search
from .errors import FtplanError
from .planner.search import DEFAULT_MARGIN
from .planner.types import GPUSpec, ModelSpec, Plan
from .profiles.models import get_model

SEQ_STEP = 128  # lengths are multiples of 128 tokens (the tile size attention kernels and GEMMs like)
MAX_BATCH = 4096
ROWS = (("qlora", True), ("qlora", False), ("lora", True), ("lora", False), ("full", True), ("full", False))


def seq_cap(max_positions: int) -> int:
    """The longest multiple of ``SEQ_STEP`` within a model's context limit (at least ``SEQ_STEP``)."""
    return max(SEQ_STEP, (max_positions // SEQ_STEP) * SEQ_STEP)


@dataclass(frozen=True)
class Limit:
    """One answer: the largest value that fits (None: not even the smallest), and the plan at it."""

    method: str | None
    gradient_checkpointing: bool | None
    value: int | None
    at_limit: bool  # the model's context limit (or MAX_BATCH), not memory, stopped the search
    plan: Plan | None

    def to_dict(self) -> dict[str, Any]:
        e = self.plan.estimate if self.plan else None
        c = self.plan.config if self.plan else None
        return {"method": self.method, "gradient_checkpointing": self.gradient_checkpointing, "value": self.value,
                "at_limit": self.at_limit,
                "config": c.to_dict() if c else None, "device_bytes": e.device_bytes if e else None,
                "usable_bytes": e.usable_bytes if e else None}


def _fits(model: str | ModelSpec, gpu: str | GPUSpec, knobs: dict[str, Any], margin: float, calibrate: bool,
          handoff: str | None, gpu_file: str | None) -> Plan | None:
    res = plan_search(model, gpu, margin=margin, top=1, calibrate=calibrate, handoff=handoff, gpu_file=gpu_file,
                      **knobs)
    return res.plans[0] if res.plans else None


def _bisect(lo: int, hi: int, step: int, probe) -> tuple[int | None, Any]:
    """The largest multiple of ``step`` in ``[lo, hi]`` for which ``probe`` returns a plan (monotone: once
    a value fails, every larger one fails), and that plan; (None, None) when ``lo`` fails."""
    best = probe(lo)
    if best is None:
        return None, None
    good = lo
    a, b = lo // step, hi // step  # in units of step; a fits
    top = probe(b * step)
    if top is not None:
        return b * step, top
    while b - a > 1:
        mid = (a + b) // 2
        p = probe(mid * step)
        if p is not None:
            a, good, best = mid, mid * step, p
        else:
            b = mid
    return good, best


def max_seq_len(model: str | ModelSpec, gpu: str | GPUSpec, *, margin: float = DEFAULT_MARGIN, calibrate: bool = True,
                handoff: str | None = None, gpu_file: str | None = None, **knobs: Any) -> Limit:
    """The longest sequence (a multiple of ``SEQ_STEP``) that fits ``gpu`` at micro-batch 1 with the knobs
    given fixed and the rest searched; see the module docstring."""
    if "seq_len" in knobs and knobs["seq_len"] is not None:
        raise FtplanError("max_seq_len searches the sequence length: do not give seq_len")
    spec = get_model(model)
    kn = {k: v for k, v in knobs.items() if v is not None}
    kn.setdefault("micro_batch", 1)
    cap = seq_cap(spec.max_positions)
    probe = lambda s: _fits(spec, gpu, {**kn, "seq_len": s}, margin, calibrate, handoff, gpu_file)  # noqa: E731
    value, plan = _bisect(SEQ_STEP, cap, SEQ_STEP, probe)
    return Limit(kn.get("method"), kn.get("gradient_checkpointing"), value, value == cap, plan)


def max_batch(model: str | ModelSpec, gpu: str | GPUSpec, *, margin: float = DEFAULT_MARGIN, calibrate: bool = True,
              handoff: str | None = None, gpu_file: str | None = None, **knobs: Any) -> Limit:
    """The largest micro-batch that fits ``gpu`` at the given (or default) sequence length, the knobs given
    fixed and the rest searched; see the module docstring."""
    if "micro_batch" in knobs and knobs["micro_batch"] is not None:
        raise FtplanError("max_batch searches the micro-batch: do not give micro_batch")
    spec = get_model(model)
    kn = {k: v for k, v in knobs.items() if v is not None}
    kn.pop("effective_batch", None)
    probe = lambda b: _fits(spec, gpu, {**kn, "micro_batch": b, "grad_accum": 1}, margin, calibrate, handoff,  # noqa: E731
                            gpu_file)
    value, plan = _bisect(1, MAX_BATCH, 1, probe)
    return Limit(kn.get("method"), kn.get("gradient_checkpointing"), value, value == MAX_BATCH, plan)


def context_table(model: str | ModelSpec, gpu: str | GPUSpec, **kwargs: Any) -> list[Limit]:
    """``max_seq_len`` for each method, with and without checkpointing (``ROWS``); a method or checkpointing
    setting the caller fixed keeps only its rows."""
    return [max_seq_len(model, gpu, **{**kwargs, "method": m, "gradient_checkpointing": gc})
            for m, gc in _rows(kwargs)]


def batch_table(model: str | ModelSpec, gpu: str | GPUSpec, **kwargs: Any) -> list[Limit]:
    """``max_batch`` for each method, with and without checkpointing (as ``context_table``)."""
    return [max_batch(model, gpu, **{**kwargs, "method": m, "gradient_checkpointing": gc})
            for m, gc in _rows(kwargs)]


def _rows(kwargs: dict[str, Any]) -> list[tuple[str, bool]]:
    m, gc = kwargs.pop("method", None), kwargs.pop("gradient_checkpointing", None)
    return [(a, b) for a, b in ROWS if (m is None or a == m) and (gc is None or b == gc)]
