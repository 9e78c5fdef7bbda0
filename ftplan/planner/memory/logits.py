"""Logits and cross-entropy memory: several GB for 128k-256k vocabularies.

Standard path (transformers ``loss_utils.ForCausalLMLoss``, >= 4.46): ``logits.float()`` then
``cross_entropy`` = ``log_softmax`` (saves its fp32 output) + ``nll_loss``. With ``N = b*s*V`` and
``lb`` the logits' bytes (bf16 under autocast):
- forward, at ``log_softmax``: the model's logits (``lb*N``), their fp32 copy (``4N`` unless already
  fp32) and the log-probabilities (``4N``);
- saved for backward: the log-probabilities (``4N``); the bf16 logits leave with the model output
  when ``compute_loss`` returns, before ``backward`` (HF ``Trainer.training_step``);
- backward, at ``log_softmax_backward``: saved output, the ``nll_loss`` gradient and the new input
  gradient: ``12N``.
Gemma 2's final logit softcap (``tanh``) saves one more ``lb*N``.

Chunked path (fused linear cross-entropy, Liger-style): logits exist one chunk of
``next_pow2(ceil(E / ceil(V / h)))`` tokens at a time; the hidden-state gradient (``E*h``) is
computed in forward and kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..types import ModelSpec, TrainConfig
from .precision import Precision


@dataclass(frozen=True)
class LossMemory:
    forward_peak: int  # at the loss, end of forward
    saved: int  # kept for backward
    backward_peak: int  # at the start of backward


def logits_bytes_per_element(cfg: TrainConfig, prec: Precision) -> int:
    """bf16 under autocast (``lm_head`` runs as an autocast matmul); else the lm_head's dtype."""
    return prec.compute if cfg.autocast else prec.unquantized


def loss_memory(spec: ModelSpec, cfg: TrainConfig, prec: Precision) -> LossMemory:
    E = cfg.micro_batch * cfg.seq_len
    V = spec.vocab
    lb = logits_bytes_per_element(cfg, prec)
    if cfg.loss_impl == "chunked":
        chunk = 2 ** math.ceil(math.log2(max(1, math.ceil(E / math.ceil(V / spec.hidden)))))
        chunk = min(chunk, E)
        grad_hidden = E * spec.hidden * prec.hidden
        peak = chunk * V * (lb + 4 + 4) + grad_hidden
        return LossMemory(peak, grad_hidden, grad_hidden)
    N = E * V
    softcap = lb * N if spec.final_logit_softcap else 0
    fwd = lb * N + (4 * N if lb != 4 else 0) + 4 * N + softcap
    return LossMemory(fwd, 4 * N + softcap, 12 * N + softcap)
