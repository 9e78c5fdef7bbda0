"""Line a prediction up with a measurement, term by term (pure; stdlib only).

The analytical model has finer terms than a tracker can tell apart (it cannot tell a recomputed
activation from a saved one), so both sides are folded into the same groups first:
``GROUP_OF`` maps every term name of either side to its group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

GROUP_OF = {
    "weights_quantized": "weights_quantized", "quant_constants": "quant_constants",
    "weights_dense": "weights_dense", "weights_unquantized": "weights_unquantized", "buffers": "weights_unquantized",
    "lora_weights": "lora_weights", "optimizer_state": "optimizer_state", "grad_scaler": "optimizer_state",
    "gradients": "gradients",
    "ddp_buckets": "gradients", "optimizer_temp": "optimizer_temp",
    "autocast_weight_copies": "autocast_weight_copies", "logits_loss": "logits_loss",
    "logits_held": "logits_loss",
    "dequant_transient": "dequant_transient", "activations": "activations", "recompute": "activations",
    "backward_transient": "activations", "forward_transient": "activations",
    "cuda_workspace": "other", "fsdp_gathered": "fsdp_buffers", "fsdp_reduce": "fsdp_buffers",
    "zero_buffers": "fsdp_buffers", "master_weights": "optimizer_state",
}
GROUPS = ("weights_quantized", "quant_constants", "weights_dense", "weights_unquantized", "lora_weights",
          "gradients", "optimizer_state", "optimizer_temp", "autocast_weight_copies", "dequant_transient",
          "logits_loss", "activations", "fsdp_buffers", "other")
PHASES = ("forward_end", "backward", "optimizer_step")


def grouped(breakdown: Mapping[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, v in breakdown.items():
        g = GROUP_OF.get(k, "other")
        out[g] = out.get(g, 0) + int(v)
    return out


@dataclass(frozen=True)
class TermRow:
    group: str
    predicted: int
    measured: int

    @property
    def diff(self) -> int:
        return self.predicted - self.measured


def term_rows(predicted: Mapping[str, int], measured: Mapping[str, int]) -> list[TermRow]:
    """One row per group present on either side, in ``GROUPS`` order."""
    p, m = grouped(predicted), grouped(measured)
    return [TermRow(g, p.get(g, 0), m.get(g, 0)) for g in GROUPS if p.get(g) or m.get(g)]


def rel_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured."""
    return (predicted - measured) / measured if measured else float("inf")


def phase_totals(phases: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    return {ph: sum(int(v) for v in phases.get(ph, {}).values()) for ph in PHASES}


def worst_term(rows: list[TermRow]) -> TermRow | None:
    """The group whose prediction is furthest from its measurement (in bytes)."""
    return max(rows, key=lambda r: abs(r.diff), default=None)
