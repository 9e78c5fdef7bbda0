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

Older transformers (estimate only: describing a run on that stack; every hand-off runs the standard loss):
- ``legacy_shift`` (4.46-4.48, ``ForCausalLMLoss`` before huggingface/transformers#35646): the loss shifts the
  fp32 logits with ``logits[..., :-1, :].contiguous()``, one more ``4N`` beside the others in forward:
  ``lb*N + 4N + 4N + 4N`` (``lb*N + 8N`` for fp32 logits, whose ``.float()`` is the same tensor);
- ``legacy_upcast`` (<= 4.45, e.g. ``LlamaForCausalLM.forward``: ``logits = logits.float()`` in the model,
  then the same shifted copy): the autocast-dtype logits die at the upcast, so forward is ``4N + 4N + 4N``
  and the model's output carries the fp32 logits (``4N``) rather than ``lb*N``.
Both save the same ``4N`` and meet the same ``12N`` in backward (the shift's ``slice_backward`` makes a new
``4N`` beside the incoming ``4N``, after ``log_softmax``'s buffers are gone).

The model's output (``held``): HF Trainer's ``compute_loss`` returns the loss alone, so the logits the output
carries are gone before backward. A loop that keeps the output (``out = model(...); out.loss.backward()``,
``TrainConfig.output_held``) holds them through backward and the optimizer step: ``lb*N`` (``4N`` under
``legacy_upcast``; nothing under the chunked loss, which returns no logits).

Measured (CPU, ``LiveStorageTracker``, one-layer Llama, h=64, V=32,000, b=2, s=128, N = 8,192,000;
``benchmarks/loss_stacks_cpu.py`` under transformers 4.45.2, 4.48.3 and 5.24.0): every figure above to
within 2.1%, median 0.7% (the rest is the decoder's own activations and gradients), bf16 and fp32, output kept and
not.

Chunked path (fused linear cross-entropy, Liger-style; what ``ftplan.stack.loss`` runs for ``ftplan
train``/``profile`` and Liger runs for the HF hand-offs): logits exist one chunk of
``next_pow2(ceil(E / ceil(V / h)))`` tokens at a time; the hidden-state gradient (``E*h``) is
computed in forward and kept, and so is ``lm_head``'s weight gradient when the head trains (full
fine-tuning; the same tensor becomes the parameter's ``.grad`` in backward). Per chunk element, 8
bytes: the fp32 logits and their log-probabilities (the autocast-dtype logits are freed once copied,
the probabilities overwrite the log-probabilities in place); Gemma 2's softcap keeps its ``tanh``
(4 more). Measured (CPU profile, ``llama`` small arch, QLoRA, b=2, s=256, V=8192, h=256, no
checkpointing): the loss term at the forward-end peak is 1,577,108 B = grad_hidden 524,288 +
16 x 8192 x 8 (one chunk) + 20 B; the whole peak predicted within 1.7% (the rest is the activation
model's own gap, the same 1.04 MB under the standard loss).
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
    held: int = 0  # the logits the model's output carries (counted in backward only when the loop keeps it)


def chunk_tokens(tokens: int, vocab: int, hidden: int) -> int:
    """Tokens per chunk of the chunked loss: ``next_pow2(ceil(tokens / ceil(vocab / hidden)))``, at most
    ``tokens``. The one definition: ``ftplan.stack.loss`` runs it, this model counts it.

    Why this size: Liger's rule (``fused_linear_cross_entropy``: ``inc_factor = cdiv(V, H)``,
    ``chunk_size = next_power_of_2(cdiv(BT, inc_factor))``): a chunk's logits (``chunk * V``) are then about
    the size of the hidden states (``BT * H``) the step holds anyway, so the loss adds no term that grows
    faster than the activations, and chunks stay few (``~V/H``) so the matmuls stay large; the HF hand-off
    (Liger) runs the same rule."""
    inc = max(1, math.ceil(vocab / hidden))
    chunk = 1 << math.ceil(math.log2(max(1, math.ceil(tokens / inc))))  # the next power of two
    return max(1, min(chunk, tokens))


def logits_bytes_per_element(cfg: TrainConfig, prec: Precision) -> int:
    """bf16 under autocast (``lm_head`` runs as an autocast matmul); else the lm_head's dtype."""
    return prec.compute if cfg.autocast else prec.unquantized


def loss_memory(spec: ModelSpec, cfg: TrainConfig, prec: Precision) -> LossMemory:
    E = cfg.micro_batch * cfg.seq_len
    V = spec.vocab
    lb = logits_bytes_per_element(cfg, prec)
    if cfg.loss_impl == "chunked":
        chunk = chunk_tokens(E, V, spec.hidden)
        kept = E * spec.hidden * prec.hidden
        step = 0
        if cfg.method == "full":  # the head's weight gradient, computed in forward
            kept += spec.vocab * spec.hidden * prec.trainable
            step = spec.vocab * spec.hidden * lb if prec.trainable != lb else 0  # a chunk's product, then +=
        per_element = 8 + (4 if spec.final_logit_softcap else 0)
        return LossMemory(chunk * V * per_element + kept + step, kept, kept)
    N = E * V
    softcap = lb * N if spec.final_logit_softcap else 0
    upcast = 4 * N if lb != 4 else 0  # logits.float(): the same tensor when already fp32
    if cfg.loss_impl == "legacy_upcast":  # the model upcasts; its lb*N logits die there
        return LossMemory(4 * N + 4 * N + 4 * N + softcap, 4 * N + softcap, 12 * N + softcap, held=4 * N)
    shift = 4 * N if cfg.loss_impl == "legacy_shift" else 0  # the shifted .contiguous() copy
    fwd = lb * N + upcast + shift + 4 * N + softcap
    return LossMemory(fwd, 4 * N + softcap, 12 * N + softcap, held=lb * N)
