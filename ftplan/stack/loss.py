"""The chunked causal-LM cross-entropy (``loss_impl="chunked"``): ``lm_head`` and the loss fused, one
chunk of tokens at a time, so the full ``tokens x vocab`` fp32 logits never exist.

Liger-style (``LigerFusedLinearCrossEntropyFunction``): the forward computes, chunk by chunk, the
chunk's logits, its loss and at once its gradients (``softmax - onehot``, scaled by ``1/n``) w.r.t. the
hidden states (and w.r.t. ``lm_head``'s weight/bias when they train); only those gradients are kept for
backward, which multiplies them by the incoming gradient. The memory the analytical model counts
(``ftplan.planner.memory.logits``): one chunk's fp32 logits and log-probabilities (``chunk * V * 8``
bytes: the autocast-dtype logits are freed once copied to fp32, the probabilities overwrite the
log-probabilities in place), plus the hidden-state gradient ``E * h`` (and ``lm_head``'s weight gradient
when it trains).

Labels are shifted as transformers' ``ForCausalLMLoss`` shifts them (pad with ``ignore_index`` on the
right, drop the first), and the loss is the mean over non-ignored tokens (or the sum over
``num_items_in_batch`` when given), so it equals the standard loss to float tolerance.
"""

from __future__ import annotations

from typing import Any

from ..errors import FtplanError
from ..planner.memory.logits import chunk_tokens  # the rule the model counts (one definition)

IGNORE_INDEX = -100


def _function():
    import torch
    import torch.nn.functional as F

    class ChunkedLinearCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, bias, labels, n_items, softcap, scale):  # type: ignore[override]
            E, h = hidden.shape
            V = weight.shape[0]
            chunk = chunk_tokens(E, V, h)
            need_h, need_w, need_b = ctx.needs_input_grad[:3]
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros_like(weight) if need_w else None
            grad_b = torch.zeros_like(bias) if need_b else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            # the matmul dtype: autocast's (lm_head's autocast copy, made once here, not once per chunk)
            dev = hidden.device.type
            dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight.dtype
            w = weight.to(dt)
            bb = bias.to(dt) if bias is not None else None
            # 1/n as a 0-dim tensor (no host sync, and traceable under FakeTensorMode); nan when no token counts
            inv = torch.where(n_items > 0, 1.0 / n_items, torch.full_like(n_items, float("nan")))
            for s in range(0, E, chunk):
                x = hidden[s:s + chunk]
                y = labels[s:s + chunk]
                logits = F.linear(x.to(dt), w, bb)  # the autocast dtype, as lm_head's own matmul
                z = logits.float()  # the same tensor when the matmul ran in fp32
                del logits
                if scale != 1.0:
                    z.mul_(scale)
                t = None
                if softcap:
                    t = z.div_(softcap).tanh_()
                    z = t * softcap
                logp = torch.log_softmax(z, dim=-1)
                del z
                valid = y != IGNORE_INDEX
                safe = torch.where(valid, y, torch.zeros_like(y))
                total -= (logp.gather(1, safe[:, None]).squeeze(1) * valid).sum()
                # d loss / d z = (softmax(z) - onehot(y)) / n on valid rows; softmax in place of logp
                g = logp.exp_()
                del logp
                g.scatter_add_(1, safe[:, None], -torch.ones_like(g[:, :1]))
                g.mul_((valid.to(g.dtype) * inv)[:, None])
                if t is not None:
                    g.mul_(1 - t * t)
                    del t
                if scale != 1.0:
                    g.mul_(scale)
                g = g.to(dt)
                if need_h:
                    grad_h[s:s + chunk] = g @ w
                if need_w and grad_w.dtype == dt:
                    grad_w.addmm_(g.t(), x.to(dt))  # in place: no second V x h tensor
                elif need_w:
                    grad_w += g.t() @ x.to(dt)
                if need_b:
                    grad_b += g.sum(0).to(bias.dtype)
                del g
            ctx.save_for_backward(*(v for v in (grad_h, grad_w, grad_b) if v is not None))
            ctx.need = (need_h, need_w, need_b)
            return total * inv

        @staticmethod
        def backward(ctx, grad_out):  # type: ignore[override]
            saved = list(ctx.saved_tensors)
            out: list[Any] = []
            for need in ctx.need:
                if not need:
                    out.append(None)
                    continue
                # in place: the saved gradient is used once (a 0-dim multiply, no host sync)
                g = saved.pop(0)
                g = g.mul_(grad_out.to(g.dtype))
                out.append(g)
            return (*out, None, None, None, None)

    return ChunkedLinearCrossEntropy


_FN: Any = None


def chunked_cross_entropy(hidden, weight, labels, bias=None, num_items_in_batch=None, softcap: float | None = None,
                          scale: float = 1.0):
    """Causal-LM cross-entropy of ``lm_head(hidden)`` against ``labels`` (``[b, s]``, shifted here as
    ``ForCausalLMLoss`` shifts them), chunk by chunk over tokens. ``hidden``: ``[b, s, h]`` (the decoder's
    output, before ``lm_head``); ``weight``: ``[V, h]``. ``softcap``: Gemma 2's final logit softcap;
    ``scale``: a logit multiplier (Cohere's ``logit_scale``, ``1/logits_scaling`` for Granite)."""
    import torch
    import torch.nn.functional as F

    global _FN
    if _FN is None:
        _FN = _function()
    shift = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1).to(hidden.device)
    n = num_items_in_batch if num_items_in_batch is not None else (shift != IGNORE_INDEX).sum()
    n = torch.as_tensor(n, device=hidden.device).to(torch.float32)  # a tensor: no .item(), fake-traceable
    if not torch.is_grad_enabled():  # evaluation: no gradients to compute in forward
        hidden, weight = hidden.detach(), weight.detach()
        bias = bias.detach() if bias is not None else None
    return _FN.apply(hidden.reshape(-1, hidden.shape[-1]), weight, bias, shift, n, softcap, scale)


def split_causal_lm(model) -> tuple[Any, Any]:
    """(decoder, lm_head) of a transformers causal LM, bare or PEFT-wrapped: ``get_base_model()`` (PEFT)
    then ``get_decoder()`` and ``get_output_embeddings()``. The head must be a plain ``nn.Linear`` (PEFT's
    ``all-linear`` leaves ``lm_head`` out); anything else is an FtplanError."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    head = base.get_output_embeddings()
    if decoder is None or type(head) is not torch.nn.Linear:
        raise FtplanError(f"loss_impl='chunked' needs a causal LM with a decoder and a plain nn.Linear lm_head; "
                          f"{type(base).__name__} has lm_head {type(head).__name__}: use loss_impl='standard'")
    return decoder, head


def logit_transform(config) -> tuple[float | None, float]:
    """(softcap, scale) of the logits, as the model family's forward applies them after ``lm_head``."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = getattr(cfg, "final_logit_softcapping", None) or None
    scale = float(getattr(cfg, "logit_scale", None) or 1.0)
    div = getattr(cfg, "logits_scaling", None)
    if div:
        scale /= float(div)
    return softcap, scale


def _module_base():
    import torch

    return torch.nn.Module


class ChunkedLossLM:
    """A causal LM whose forward returns only the chunked loss: the decoder runs, then
    ``chunked_cross_entropy`` with ``lm_head``'s weight (the head module itself never runs: no full
    logits). An ``nn.Module`` holding the model, so DDP can wrap it and its parameters are the model's.
    ``on_hidden(h)`` (optional) sees the decoder output before the loss (the measured step tags memory
    with it). Made through ``__new__`` so that torch is imported only when one is made."""

    def __new__(cls, model, on_hidden=None):
        base = _module_base()

        class _Chunked(base):  # type: ignore[misc, valid-type]
            def __init__(self, model, on_hidden) -> None:
                super().__init__()
                self.lm = model
                self.decoder, self.head = split_causal_lm(model)
                self.softcap, self.scale = logit_transform(model.config)
                self.on_hidden = on_hidden

            def forward(self, input_ids=None, labels=None, num_items_in_batch=None, **kw):
                from types import SimpleNamespace

                out = self.decoder(input_ids=input_ids, **kw)
                hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
                if labels is None:
                    return SimpleNamespace(loss=None, last_hidden_state=hidden)
                if self.on_hidden is not None:
                    self.on_hidden(hidden)
                loss = chunked_cross_entropy(hidden, self.head.weight, labels, bias=self.head.bias,
                                             num_items_in_batch=num_items_in_batch, softcap=self.softcap,
                                             scale=self.scale)
                return SimpleNamespace(loss=loss)

        return _Chunked(model, on_hidden)


def for_loss(model, loss_impl: str, on_hidden=None):
    """The module a step calls: ``model`` itself for the standard loss, ``ChunkedLossLM(model)`` for
    ``loss_impl="chunked"``."""
    return ChunkedLossLM(model, on_hidden) if loss_impl == "chunked" else model
