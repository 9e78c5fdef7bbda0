"""Helpers shared by the full-size traces (``measure.trace``, ``measure.sharded_trace``)."""

from __future__ import annotations

from contextlib import contextmanager

from ..planner.memory.weights import FOUR_BIT_CODE_ENTRIES, NESTED_CODE_ENTRIES


@contextmanager
def unpacked_positions():
    """transformers checks ``position_ids`` for packed sequences by reading their values; a fake tensor
    has none, so it assumes packing and builds an explicit O(s^2) mask that a real run of the same
    batch (positions ``0..s-1``, one sequence per row) would not. Answer the check as the real run does."""
    try:
        from transformers import masking_utils
    except ImportError:  # transformers before 4.53 has no packed-sequence detection
        yield
        return
    if not hasattr(masking_utils, "find_packed_sequence_indices"):
        yield
        return
    orig = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = orig


def _stand_in_class():
    import bitsandbytes as bnb
    import torch

    class TracedLinear4bit(bnb.nn.Linear4bit):
        """A ``Linear4bit`` whose weight is a plain packed ``uint8`` tensor (fake tensors cannot be
        wrapped in ``Params4bit``), with a hand-built ``QuantState`` of the real sizes."""

        def forward(self, x):
            inp_dtype = x.dtype
            x = x.to(self.compute_dtype)
            bias = None if self.bias is None else self.bias.to(self.compute_dtype)
            return bnb.matmul_4bit(x, self.weight, bias=bias, quant_state=self.traced_state).to(inp_dtype)

    return TracedLinear4bit, bnb, torch


def quant_state(out_f: int, in_f: int, quant: str, double_quant: bool, device: str, blocksize: int = 64):
    """A ``QuantState`` with tensors of the sizes ``bitsandbytes.functional.quantize_4bit`` makes."""
    import bitsandbytes as bnb
    import torch

    n = out_f * in_f
    blocks = -(-n // blocksize)
    code = torch.empty(FOUR_BIT_CODE_ENTRIES, dtype=torch.float32, device=device)
    if not double_quant:
        return bnb.functional.QuantState(absmax=torch.empty(blocks, dtype=torch.float32, device=device),
                                         shape=torch.Size([out_f, in_f]), code=code, blocksize=blocksize,
                                         quant_type=quant, dtype=torch.bfloat16)
    state2 = bnb.functional.QuantState(absmax=torch.empty(-(-blocks // 256), dtype=torch.float32, device=device),
                                       code=torch.empty(NESTED_CODE_ENTRIES, dtype=torch.float32, device=device),
                                       blocksize=256, dtype=torch.float32)
    return bnb.functional.QuantState(absmax=torch.empty(blocks, dtype=torch.uint8, device=device),
                                     shape=torch.Size([out_f, in_f]), code=code, blocksize=blocksize,
                                     quant_type=quant, dtype=torch.bfloat16,
                                     offset=torch.empty((), dtype=torch.float32, device=device), state2=state2)


def _quantize_meta(model, cfg) -> None:
    """Swap the decoder layers' ``nn.Linear`` for 4-bit stand-ins (on meta)."""
    Traced, bnb, torch = _stand_in_class()
    from ..stack.build import decoder_linears, replace_module

    # under FSDP the packed bytes are stored in the compute dtype (bnb_4bit_quant_storage): the same bytes
    fsdp = cfg.is_fsdp
    storage = torch.bfloat16 if fsdp else torch.uint8
    for name, lin in decoder_linears(model):
        new = Traced(lin.in_features, lin.out_features, bias=lin.bias is not None, compute_dtype=torch.bfloat16,
                     compress_statistics=cfg.double_quant, quant_type=cfg.quant, quant_storage=storage,
                     device="meta")
        n = lin.in_features * lin.out_features
        rows = (n + 1) // 2 if not fsdp else -(-n // 4)
        w = bnb.nn.Params4bit(torch.empty((rows, 1), dtype=storage, device="meta"), requires_grad=False,
                              compress_statistics=cfg.double_quant, quant_type=cfg.quant, quant_storage=storage)
        w.bnb_quantized = True
        new.weight = w
        new.traced_state = quant_state(lin.out_features, lin.in_features, cfg.quant, cfg.double_quant, "meta")
        if lin.bias is not None:
            new.bias = torch.nn.Parameter(torch.empty_like(lin.bias), requires_grad=False)
        replace_module(model, name, new)
    model.is_loaded_in_4bit = True


def fake_quant_state(qs, fake) -> None:
    """Swap the tensors of a stand-in's ``QuantState`` (``qs``; None: nothing) for ``fake(t)``."""
    if qs is None:
        return
    for attr in ("absmax", "code", "offset"):
        if getattr(qs, attr, None) is not None:
            setattr(qs, attr, fake(getattr(qs, attr)))
    if qs.state2 is not None:
        qs.state2.absmax, qs.state2.code = fake(qs.state2.absmax), fake(qs.state2.code)


def traced_params(model) -> dict[str, list]:
    """``step.classify_params`` plus the 4-bit stand-ins' quantization constants (their ``traced_state``)."""
    from .step import classify_params, quant_state_tensors

    groups = classify_params(model)
    for mod in model.modules():
        qs = getattr(mod, "traced_state", None)
        if qs is not None:
            groups["quant_constants"] += [t for t in quant_state_tensors(qs) if t is not None]
    return groups
