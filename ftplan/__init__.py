"""ftplan: a hardware-aware memory planner and autotuner for LLM fine-tuning (full, LoRA, QLoRA).

    import ftplan
    est = ftplan.estimate(model="8b", gpu="rtx4090", method="qlora")
    plans = ftplan.plan(model="8b", gpu="rtx4090", seq_len=2048, effective_batch=16)

Importing ftplan loads only the standard library: no torch, transformers, optuna, pandas or plotly.
"""

from __future__ import annotations

from ._version import __version__
from .api import estimate, get_gpu, get_model, plan, plan_search, suggest
from .errors import FtplanError, UnknownNameError
from .inverse import max_batch, max_seq_len
from .planner.types import Calibration, CostEstimate, Estimate, GiB, GPUSpec, MiB, ModelSpec, Plan, TimeEstimate, TrainConfig

__all__ = ["__version__", "estimate", "plan", "plan_search", "suggest", "max_seq_len", "max_batch", "get_gpu",
           "get_model", "FtplanError",
           "UnknownNameError", "Estimate", "Plan", "TrainConfig", "ModelSpec", "GPUSpec", "TimeEstimate",
           "CostEstimate", "Calibration", "GiB", "MiB"]
