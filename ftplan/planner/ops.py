"""Step time by operation: each kind of GPU work of one micro-batch, with its FLOPs, its memory traffic
and the bound that sets its time.

Every operation takes ``max(FLOPs / rate, bytes / bandwidth, kernels x LAUNCH_S)``: a GEMM or attention
kernel is compute-bound, an elementwise kernel memory-bound, and a kernel too small for either still
costs its launch (eager PyTorch issues kernels one by one from Python). The operations of a pass run
one after another on one stream, so a micro-batch's time is their sum (``micro_batch_pieces``).

The pieces (``PIECES``) and where each formula comes from:
- ``linear``: the decoder layers' projections as GEMMs ``(M, N, K) = (tokens, out, in)``: forward
  ``2MNK``; backward the input gradient ``2MNK`` and, only for trainable weights (full fine-tuning), the
  weight gradient ``2MNK`` (autograd skips the weight gradient of a frozen parameter). Bytes: the two
  operands and the result in the compute dtype. A GEMM's achievable rate falls when one side is small
  (few tokens per micro-batch); ``gemm`` states how.
- ``attention``: SDPA/flash: ``4 b s^2 a d`` FLOPs forward (``QK^T`` and ``PV``), halved by causality;
  backward ``2.5x`` forward (five matmuls to the forward's two, FlashAttention-2, Dao 2023, sec. 3.1.2),
  at ``ATTN_EFFICIENCY`` of the GEMM rate. Eager: the full ``s x s`` products as batched GEMMs plus the
  scores' softmax traffic in fp32 (HF ``eager_attention_forward``: scale, mask add, fp32 softmax, cast).
- ``lora``: the adapters' GEMMs (``M x r x in`` and ``M x out x r``: skinny, so memory-bound) and their
  elementwise work (peft's input cast, dropout, scaling, the add into the base output).
- ``dequant``: QLoRA/8-bit bases are dequantized before every matmul, in forward, backward and recompute
  (bitsandbytes ``MatMul4Bit``): read the packed weight and constants, write the 16-bit copy.
- ``elementwise``: norms (HF ``LlamaRMSNorm`` runs six kernels through fp32), rotary embeddings, the
  activation and gate product, residual adds, the attention output's transpose copy, autocast casts of
  fp32 inputs; backward moves ``ELEMENTWISE_BWD`` times the forward bytes.
- ``recompute``: gradient checkpointing runs each layer's forward again in backward.
- ``loss``: ``lm_head`` (a GEMM; its weight gradient only when it trains) and the cross-entropy over the
  ``b s V`` logits (fp32 copy, log-softmax, NLL; backward through both). The chunked loss does the same
  GEMMs and passes over the same logits, a chunk at a time: the same time here (it saves memory, not work).
- ``embedding``: the token lookup and, for full fine-tuning, its sparse-to-dense gradient.

Constants (each with its source): ``LAUNCH_S``, ``GEMM_TAIL_S``, ``ATTN_EFFICIENCY``, ``ELEMENTWISE_BWD``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from .arch import layer_linears, n_layers_of, resolve_targets
from .memory.precision import Precision, precision
from .memory.weights import four_bit_constant_bytes, four_bit_packed_bytes
from .types import ModelSpec, TrainConfig, spec_by_id, spec_id

PIECES = ("linear", "attention", "lora", "dequant", "elementwise", "recompute", "loss", "embedding")

# Per-kernel floor of eager PyTorch: the Python dispatcher and the CUDA launch of one op take ~5-10 us of
# CPU time; when the GPU finishes a kernel faster, the stream waits for the next launch (PyTorch "CUDA
# Graphs" blog, 2021: launch overheads of a few microseconds per kernel that dominate small kernels;
# torch profiler traces of HF training show ~5-8 us between back-to-back small kernels).
LAUNCH_S = 6e-6
# A GEMM's fixed cost beside its FLOPs: its launch, the first wave's ramp and the last (partial) wave's
# tail. It makes a GEMM's achievable rate fall at small sizes, ``2MNK / (2MNK/P + GEMM_TAIL_S)``.
GEMM_TAIL_S = 8e-6
# FlashAttention-2 reaches 50-73% of the A100's peak forward and up to 63% backward at head dim 128
# (Dao 2023, sec. 4.1), where large GEMMs reach ~85% (cuBLAS): about 0.75 and 0.6 of the GEMM rate.
ATTN_EFFICIENCY = {"forward": 0.75, "backward": 0.60}
# An elementwise op's backward reads the incoming gradient and its saved inputs and writes one gradient per
# input: 3 passes for a unary op whose forward makes 2, 5 for a binary product whose forward makes 3;
# RMSNorm's backward recomputes its statistics. Twice the forward's bytes.
ELEMENTWISE_BWD = 2.0


class Work(NamedTuple):
    """One micro-batch's GPU work in a piece: seconds and the share of them each bound set."""

    seconds: float
    compute_s: float  # time of operations bound by the math rate
    memory_s: float  # bound by memory bandwidth
    launch_s: float  # bound by launches

    def __add__(self, other: Work) -> Work:  # type: ignore[override]
        return Work(self.seconds + other.seconds, self.compute_s + other.compute_s,
                    self.memory_s + other.memory_s, self.launch_s + other.launch_s)

    def times(self, k: float) -> Work:
        return Work(self.seconds * k, self.compute_s * k, self.memory_s * k, self.launch_s * k)

    @property
    def bound(self) -> str:
        parts = {"compute": self.compute_s, "memory": self.memory_s, "launch": self.launch_s}
        return max(parts, key=lambda k: parts[k])


ZERO = Work(0.0, 0.0, 0.0, 0.0)


class Rates(NamedTuple):
    """What the op model needs from a GPU (per second): the achievable dense matmul rate of the compute
    dtype and the achievable memory bandwidth."""

    flops: float  # FLOP/s
    bytes: float  # B/s


def op(flops: float, nbytes: float, kernels: float, rates: Rates, rate_scale: float = 1.0) -> Work:
    """One operation: ``max(flops / rate, bytes / bandwidth, kernels x LAUNCH_S)``."""
    c = flops / (rates.flops * rate_scale) if flops else 0.0
    m = nbytes / rates.bytes
    launch = kernels * LAUNCH_S
    t = max(c, m, launch)
    if t == c:
        return Work(t, t, 0.0, 0.0)
    if t == m:
        return Work(t, 0.0, t, 0.0)
    return Work(t, 0.0, 0.0, t)


def gemm(m: float, n: float, k: float, elem: int, rates: Rates, count: float = 1.0) -> Work:
    """``count`` GEMMs of ``(m x k) @ (k x n)`` in ``elem``-byte operands: ``2mnk`` FLOPs at the matmul rate
    plus ``GEMM_TAIL_S``, or the operands' and result's bytes at the bandwidth, whichever is longer. Bound:
    memory when the bytes take longer, else compute, or launch when the fixed cost exceeds the math."""
    if m <= 0 or n <= 0 or k <= 0:
        return ZERO
    math_s = 2.0 * m * n * k / rates.flops
    c = math_s + GEMM_TAIL_S
    mem = elem * (m * k + k * n + m * n) / rates.bytes
    if mem > c:
        w = Work(mem, 0.0, mem, 0.0)
    elif math_s >= GEMM_TAIL_S:
        w = Work(c, c, 0.0, 0.0)
    else:  # the fixed cost outweighs the math: a launch-bound GEMM
        w = Work(c, 0.0, 0.0, c)
    return w.times(count)


def _rmsnorm_bytes(elem_in: int) -> float:
    """HF ``LlamaRMSNorm`` per element: cast to fp32 (``elem_in + 4`` unless already fp32), ``pow`` (8),
    ``mean`` (4), the scale multiply (8), cast back (``4 + elem_in``), the weight multiply (``2 elem_in``)."""
    cast = 0 if elem_in == 4 else (elem_in + 4)
    return cast + 8 + 4 + 8 + cast + 2 * elem_in


RMSNORM_KERNELS = 7
ROTARY_BYTES_PER_ELEM = 10  # q*cos, rotate_half's neg and cat, *sin, add: ten passes over q (and k)
ROTARY_KERNELS = 5


def _layer_norms(spec: ModelSpec, tokens: float, hb: int) -> tuple[float, float]:
    """(bytes, kernels) of one layer's norms in forward."""
    X = tokens * spec.hidden
    if spec.norm == "layernorm":  # one fused native_layer_norm kernel: read, write, fp32 statistics
        per, kern = 2.0 * hb, 1
    else:
        per, kern = _rmsnorm_bytes(hb), RMSNORM_KERNELS
    nbytes = spec.norms_per_layer * per * X
    kernels = spec.norms_per_layer * kern
    if spec.qk_norm:
        QK = tokens * (spec.heads + spec.kv_heads) * spec.head_dim
        nbytes += _rmsnorm_bytes(2) * QK
        kernels += 2 * RMSNORM_KERNELS
    return nbytes, kernels


def layer_elementwise(spec: ModelSpec, cfg: TrainConfig, tokens: float, prec: Precision | None = None) -> tuple[float, float]:
    """(bytes, kernels) of one layer's elementwise forward work outside the projections and attention."""
    prec = prec or precision(cfg)
    hb, cb = prec.hidden, prec.compute
    X = tokens * spec.hidden
    Q = tokens * spec.heads * spec.head_dim
    K = tokens * spec.kv_heads * spec.head_dim
    nbytes, kernels = _layer_norms(spec, tokens, hb)
    nbytes += ROTARY_BYTES_PER_ELEM * cb * (Q + K)  # rotary on q and k
    kernels += 2 * ROTARY_KERNELS
    nbytes += 2 * cb * Q  # the attention output's transpose(1, 2).contiguous()
    kernels += 1
    adds = 1 if spec.parallel_block else 2
    nbytes += adds * 3 * hb * X  # residual adds
    kernels += adds
    pb = hb if prec.quantized else cb  # a quantized projection returns the stream's dtype
    f = spec.intermediate if not spec.is_moe else spec.moe_intermediate * spec.experts_per_token
    F = tokens * f
    if spec.mlp == "gated":
        nbytes += 2 * pb * F + 3 * pb * F  # act(gate), act * up
        kernels += 2
    else:
        nbytes += 2 * pb * F
        kernels += 1
    if hb != cb and cfg.autocast:
        # autocast hands each linear a compute-dtype copy of its fp32 input (no cache for activations):
        # q, k, v (or qkv) read the normed stream, gate and up (or fc1) the second norm's output
        readers = (1 if spec.fused_qkv else 3) + (1 if (spec.fused_gate_up or spec.mlp != "gated") else 2)
        nbytes += readers * (hb + cb) * X
        kernels += readers
    return nbytes, kernels


def _linear_work(spec: ModelSpec, cfg: TrainConfig, tokens: float, rates: Rates,
                 prec: Precision) -> tuple[Work, Work, Work]:
    """(forward, backward, dequantization per pass) of one full model's decoder projections."""
    return _linear_cached(spec_id(spec), cfg.method == "full", cfg.quant, cfg.double_quant, prec.compute, tokens, rates)


@lru_cache(maxsize=4096)
def _linear_cached(sid: int, full: bool, quant: str, double_quant: bool, cb: int, tokens: float,
                   rates: Rates) -> tuple[Work, Work, Work]:
    spec = spec_by_id(sid)
    fwd = bwd = deq = ZERO
    quantized = quant in ("nf4", "fp4", "int8")
    for lin in layer_linears(spec):
        n_layers = n_layers_of(spec, lin)
        if lin.count > 1:  # routed experts: each gets ``tokens * top_k / experts`` tokens
            m, copies = tokens * spec.experts_per_token / lin.count, lin.count
        else:
            m, copies = tokens, 1
        one = gemm(m, lin.out_features, lin.in_features, cb, rates, copies * n_layers)
        fwd += one
        bwd += one.times(2.0 if full else 1.0)
        if quantized:
            w = lin.weight_params
            stored = (four_bit_packed_bytes(w) + four_bit_constant_bytes(w, double_quant)
                      if quant != "int8" else w + 4 * lin.out_features)  # packed weight and its constants
            deq += op(0.0, stored + cb * w, 1, rates).times(copies * n_layers)
    return fwd, bwd, deq


@lru_cache(maxsize=16_384)
def _one_adapter(fin: int, fout: int, r: int, m: float, cb: int, hb: int, recast: bool, dropout: bool, mask: int,
                 autocast: bool, quantized: bool, rates: Rates) -> tuple[Work, Work]:
    """(forward, backward) of one adapter on ``m`` tokens."""
    a = gemm(m, r, fin, cb, rates)
    b = gemm(m, fout, r, cb, rates)
    xin, xout = m * fin, m * fout
    in_bytes = (hb + 4) * xin if recast else 0.0  # peft casts x to the adapter dtype (fp32)
    kern = 1 if recast else 0
    xb = 4 if recast else hb
    if dropout:
        in_bytes += (2 * xb + mask) * xin
        kern += 1
    if xb != cb and autocast:
        in_bytes += (xb + cb) * xin  # autocast's copy for lora_A
        kern += 1
    out_bytes = (2 * cb + 3 * max(cb, hb if quantized else cb)) * xout  # scaling, add into the output
    ew = op(0.0, in_bytes + out_bytes, kern + 2, rates)
    # backward: input and weight gradients of both adapters; the elementwise backward
    return a + b + ew, a.times(2) + b.times(2) + ew.times(ELEMENTWISE_BWD)


def _attention_work(spec: ModelSpec, cfg: TrainConfig, rates: Rates, prec: Precision) -> tuple[Work, Work]:
    """(forward, backward) of one micro-batch's attention over all layers."""
    b, s = cfg.micro_batch, cfg.seq_len
    a, kv, d = spec.heads, spec.kv_heads, spec.head_dim
    cb = prec.compute
    L = spec.layers
    if cfg.attention in ("sdpa", "flash_attention_2"):
        flops = 4.0 * b * s * s * a * d * 0.5  # causal: half the score matrix
        io = cb * b * s * d * (2 * a + 2 * kv)  # read q, k, v, write o
        fwd = op(flops, io, 1, rates, ATTN_EFFICIENCY["forward"])
        bwd = op(2.5 * flops, 2 * io, 1, rates, ATTN_EFFICIENCY["backward"])
        return fwd.times(L), bwd.times(L)
    # eager: QK^T and PV as batched GEMMs over the full square, the scores' softmax in fp32
    qk = gemm(s, s, d, cb, rates, b * a)
    pv = gemm(s, d, s, cb, rates, b * a)
    scores = b * a * s * s
    soft_bytes = (2 * cb + 3 * cb + (cb + 4) + (4 + cb)) * scores  # scale, mask add, softmax(fp32), cast
    soft = op(0.0, soft_bytes, 4, rates)
    kv_repeat = op(0.0, 2 * cb * 2 * b * s * a * d, 2, rates) if kv != a else ZERO  # repeat_kv copies
    fwd = qk + pv + soft + kv_repeat
    bwd = qk.times(2) + pv.times(2) + soft.times(ELEMENTWISE_BWD) + kv_repeat
    return fwd.times(L), bwd.times(L)


def _loss_work(spec: ModelSpec, cfg: TrainConfig, tokens: float, rates: Rates, prec: Precision) -> tuple[Work, Work]:
    """(forward, backward) of ``lm_head`` and the cross-entropy over ``tokens x V`` logits."""
    cb = prec.compute
    V = spec.vocab
    head = gemm(tokens, V, spec.hidden, cb, rates)
    N = tokens * V
    # fp32 copy of the logits, log_softmax (max and sum passes, write), nll; backward: the NLL gradient, the
    # log_softmax backward (read output and gradient, write) and the cast back
    ce_fwd = op(0.0, (cb + 4 + 4 + 4 + 4) * N, 4, rates)
    ce_bwd = op(0.0, (4 + 4 + 4 + 4 + 4 + cb) * N, 4, rates)
    fwd = head + ce_fwd
    bwd = head.times(2.0 if cfg.method == "full" else 1.0) + ce_bwd
    return fwd, bwd


class MicroBatch(NamedTuple):
    """One micro-batch's work by piece (``PIECES``)."""

    pieces: dict[str, Work]

    @property
    def seconds(self) -> float:
        return sum(w.seconds for w in self.pieces.values())


def micro_batch_pieces(spec: ModelSpec, cfg: TrainConfig, rates: Rates) -> MicroBatch:
    """A micro-batch's forward, backward and (under checkpointing) recompute, by piece."""
    p = _parts(spec_id(spec), _key(cfg), rates)
    lora_f, lora_b = _lora(spec, cfg, p, rates)
    gc = cfg.gradient_checkpointing
    return MicroBatch({
        "linear": p.lin_f + p.lin_b,
        "attention": p.att_f + p.att_b,
        "lora": lora_f + lora_b,
        "dequant": p.deq.times(3 if gc else 2),
        "elementwise": p.ew_f + p.ew_b,
        "recompute": (p.lin_f + p.att_f + lora_f + p.ew_f) if gc else ZERO,
        "loss": p.loss_f + p.loss_b,
        "embedding": p.emb,
    })


def micro_batch_seconds(spec: ModelSpec, cfg: TrainConfig, rates: Rates) -> float:
    """``micro_batch_pieces(...).seconds`` without building the pieces (the search's hot loop)."""
    lora = (cfg.lora_rank, cfg.lora_targets, cfg.lora_dropout > 0) if cfg.is_lora else None
    return _seconds(spec_id(spec), _key(cfg), lora, cfg.gradient_checkpointing, rates)


@lru_cache(maxsize=65_536)
def _seconds(sid: int, key: tuple[object, ...], lora: tuple[int, tuple[str, ...], bool] | None, gc: bool,
             rates: Rates) -> float:
    p = _parts(sid, key, rates)
    lora_f = lora_b = ZERO
    if lora is not None:
        lora_f, lora_b = _lora_cached(sid, lora[0], lora[1], p.tokens, p.prec, lora[2], bool(key[4]), rates)
    if gc:
        return p.base_s + lora_f.seconds + lora_b.seconds + 3 * p.deq.seconds + p.recompute_s + lora_f.seconds
    return p.base_s + lora_f.seconds + lora_b.seconds + 2 * p.deq.seconds


def _lora(spec: ModelSpec, cfg: TrainConfig, p: _Parts, rates: Rates) -> tuple[Work, Work]:
    if not cfg.is_lora:
        return ZERO, ZERO
    return _lora_cached(spec_id(spec), cfg.lora_rank, cfg.lora_targets, p.tokens, p.prec, cfg.lora_dropout > 0,
                        cfg.autocast, rates)


class _Parts(NamedTuple):
    """A micro-batch's work apart from the adapters (which depend on rank and targets: ``_lora_cached``)."""

    tokens: float
    prec: Precision
    lin_f: Work
    lin_b: Work
    deq: Work  # one pass
    att_f: Work
    att_b: Work
    ew_f: Work
    ew_b: Work
    loss_f: Work
    loss_b: Work
    emb: Work
    base_s: float  # every piece's seconds but the adapters', dequantization's and the recompute
    recompute_s: float  # the recompute without the adapters'


# the knobs these parts depend on (rank, targets and dropout only change the adapters' work; gradient
# checkpointing only how the parts add up)
_KEY_FIELDS = ("method", "quant", "double_quant", "prepare_kbit", "autocast", "micro_batch", "seq_len", "attention",
               "loss_impl", "compute_dtype", "sharding", "num_gpus")


def _key(cfg: TrainConfig) -> tuple[object, ...]:
    sharded = cfg.is_fsdp or cfg.is_zero
    return (cfg.method, cfg.quant, cfg.double_quant, cfg.prepare_kbit, cfg.autocast, cfg.micro_batch, cfg.seq_len,
            cfg.attention, cfg.loss_impl, cfg.compute_dtype, cfg.sharding if sharded else None,
            cfg.num_gpus if sharded else 1)


@lru_cache(maxsize=32_768)
def _parts(sid: int, key: tuple[object, ...], rates: Rates) -> _Parts:
    cfg = TrainConfig(**dict(zip(_KEY_FIELDS, key, strict=True)))  # type: ignore[arg-type]
    spec = spec_by_id(sid)
    tokens = float(cfg.micro_batch * cfg.seq_len)
    prec = precision(cfg)
    lin_f, lin_b, deq = _linear_work(spec, cfg, tokens, rates, prec)
    att_f, att_b = _attention_work(spec, cfg, rates, prec)
    ew_bytes, ew_kernels = layer_elementwise(spec, cfg, tokens, prec)
    ew_f = op(0.0, ew_bytes, ew_kernels, rates).times(spec.layers)
    ew_b = op(0.0, ELEMENTWISE_BWD * ew_bytes, 2 * ew_kernels, rates).times(spec.layers)
    loss_f, loss_b = _loss_work(spec, cfg, tokens, rates, prec)
    hb = prec.hidden
    emb = op(0.0, 2 * hb * tokens * spec.hidden, 1, rates)
    if cfg.method == "full":  # the embedding's gradient: scattered into a dense table
        emb += op(0.0, 4 * spec.vocab * spec.hidden + 2 * hb * tokens * spec.hidden, 2, rates)
    base = sum(w.seconds for w in (lin_f, lin_b, att_f, att_b, ew_f, ew_b, loss_f, loss_b, emb))
    recompute = lin_f.seconds + att_f.seconds + ew_f.seconds
    return _Parts(tokens, prec, lin_f, lin_b, deq, att_f, att_b, ew_f, ew_b, loss_f, loss_b, emb, base, recompute)


@lru_cache(maxsize=16_384)
def _lora_cached(sid: int, rank: int, targets: tuple[str, ...], tokens: float, prec: Precision, dropout: bool,
                 autocast: bool, rates: Rates) -> tuple[Work, Work]:
    spec = spec_by_id(sid)
    fwd = bwd = ZERO
    for lin in resolve_targets(spec, targets):
        n = n_layers_of(spec, lin) * (lin.count if lin.count > 1 else 1)
        m = tokens * spec.experts_per_token / lin.count if lin.count > 1 else tokens
        f, b = _one_adapter(lin.in_features, lin.out_features, rank, m, prec.compute, prec.hidden, prec.lora_recast,
                            dropout, prec.dropout_mask, autocast, prec.quantized, rates)
        fwd += f.times(n)
        bwd += b.times(n)
    return fwd, bwd


def clear_cache() -> None:
    for f in (_seconds, _parts, _linear_cached, _lora_cached, _one_adapter):
        f.cache_clear()
