"""ftplan: a hardware-aware memory planner and autotuner for LLM fine-tuning (full, LoRA, QLoRA).

    import ftplan
    est = ftplan.estimate(model="8b", gpu="rtx4090", method="qlora")
    plans = ftplan.plan(model="8b", gpu="rtx4090", seq_len=2048, effective_batch=16)

Importing ftplan loads only the standard library: no torch, transformers, optuna, pandas or plotly.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .api import estimate, get_gpu, get_model, plan_search, suggest
from .api import plan as _plan
from .errors import FtplanError, UnknownNameError
from .inverse import max_batch, max_seq_len
from .planner.types import Calibration, CostEstimate, Estimate, GiB, GPUSpec, MiB, ModelSpec, Plan, TimeEstimate, TrainConfig


def plan(model: str | ModelSpec, gpu: str | GPUSpec, **kwargs: Any) -> list[Plan]:
    """Ranked configurations that fit ``gpu`` (best first); knobs given are fixed, the rest searched.
    An empty list means nothing fits (see ``suggest``). ``data``: a JSONL training file whose token count and
    99th-percentile length set ``tokens`` and ``seq_len`` unless given (``ftplan.dataset``). ``gpu="any"``: the best plan of every catalog GPU
    and count that fits and meets ``budget`` (dollars) and ``deadline`` ("24h", or hours), ranked by the
    objective (``ftplan.anygpu.rank_gpus`` lists the options that miss them too)."""
    if kwargs.get("data") is not None:  # the data's tokens and recommended length, unless given (ftplan.dataset)
        from .dataset import apply_data

        _, kwargs["tokens"], kwargs["seq_len"] = apply_data(model if isinstance(model, str) else model.name,
                                                            kwargs.pop("data"), kwargs.get("tokens"),
                                                            kwargs.get("seq_len"), kwargs.get("micro_batch"))
    kwargs.pop("data", None)
    if isinstance(gpu, str) and gpu.strip().lower() == "any":
        from .anygpu import rank_gpus

        kwargs.pop("top", None)
        return [o.plan for o in rank_gpus(model, **kwargs).options if o.meets]
    return _plan(model, gpu, **kwargs)


__all__ = ["__version__", "estimate", "plan", "plan_search", "suggest", "max_seq_len", "max_batch", "get_gpu",
           "get_model", "FtplanError",
           "UnknownNameError", "Estimate", "Plan", "TrainConfig", "ModelSpec", "GPUSpec", "TimeEstimate",
           "CostEstimate", "Calibration", "GiB", "MiB"]
