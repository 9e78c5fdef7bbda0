"""Time model: achievable rates, step time by operation, tokens/s.

FLOPs per token (``flops_per_token``; ``N`` linear weight elements a token touches, incl. lm_head; MoE
counts the ``top-k`` experts) is the model's work, MFU's numerator:
- forward: ``2N`` + causal attention ``2*s*a*d`` per layer (QK^T and AV at ``2*s*a*d`` each, halved
  by causality) + LoRA ``2*r*(in+out)`` per targeted module;
- backward: full fine-tuning ``4N`` (input and weight gradients); LoRA/QLoRA ``2N`` (frozen weights:
  input gradients only) + LoRA ``4*r*(in+out)``; attention backward twice its forward;
- gradient checkpointing recomputes the decoder layers' forward.

The time is not FLOPs over one efficiency: each operation of a micro-batch (GEMMs by shape, attention by
implementation, QLoRA dequantization, LoRA's small GEMMs, norms and other elementwise work, recompute,
logits and loss) takes its own compute-, memory- or launch-bound time (``planner.ops``). A step is
``grad_accum`` micro-batches + the gradient additions between them + the optimizer step (memory-bound)
+ the communication that does not overlap (``planner.comm``). Rates are achievable ones
(``profiles.rates``): measured where a public benchmark measured the card, else the datasheet times the
median measured/datasheet ratio, flagged.

Which rate the compute term uses (``compute_rate``; the estimate's first note says which, and
``ranking_basis`` what the throughput objective then ranks by):
1. the compute dtype (``compute_dtype``): fp32 for an fp32 model without autocast, else fp16 for an
   fp16 model or a GPU without bf16, else bf16;
2. bf16/fp16: the datasheet dense tensor rate of that dtype with fp32 accumulation (the catalog holds the
   fp32-accumulate figure: GeForce cards run fp16 with fp16 accumulation at twice that rate, which
   training does not use); where only the other 16-bit figure is known it is used and said (the two are
   equal with fp32 accumulation from Ampere on);
3. fp32: the fp32 CUDA-core rate (PyTorch keeps TF32 off for matmuls by default);
4. a GPU without tensor cores (the catalog's sourced ``no-tensor:`` tag): the fp32 CUDA-core rate, said;
5. no rate for the compute dtype (a tensor-core GPU whose dense figure no datasheet gave us): no
   estimate, and ``ranking_basis`` says the search ranked by device memory instead. A bandwidth-only
   figure ignores compute (a 3B model on an RTX 4070 Ti read 193,000 tokens/s, tens of times too fast)
   and the fp32 CUDA-core rate understates tensor cores several times: neither is shown as a speed;
6. no bandwidth (or the CPU): no estimate (the search then ranks by device memory).
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import FtplanError
from .arch import layer_linears, n_layers_of, resolve_targets
from .comm import NETWORK_GBS, NVLINK_GBS, PCIE_GBS, Traffic, comm_seconds, traffic
from .memory.params import numel, trainable_tensors
from .memory.precision import precision
from .memory.sharding import ranks
from .ops import MicroBatch, Rates, micro_batch_pieces, micro_batch_seconds
from .types import GPUSpec, ModelSpec, TimeEstimate, TrainConfig, spec_id


def linear_flop_params(spec: ModelSpec) -> int:
    """Weight elements a token multiplies through: active layer linears plus lm_head (``V*h``)."""
    n = 0
    for lin in layer_linears(spec):
        copies = spec.experts_per_token if lin.count > 1 else 1
        n += lin.weight_params * copies * n_layers_of(spec, lin)
    return n + spec.vocab * spec.hidden


def lora_flop_params(spec: ModelSpec, cfg: TrainConfig) -> int:
    if not cfg.is_lora:
        return 0
    n = 0
    for lin in resolve_targets(spec, cfg.lora_targets):
        copies = spec.experts_per_token if lin.count > 1 else 1
        n += cfg.lora_rank * (lin.in_features + lin.out_features) * copies * n_layers_of(spec, lin)
    return n


def flops_per_token(spec: ModelSpec, cfg: TrainConfig) -> float:
    """Training FLOPs per token (forward + backward + recompute), see module docstring."""
    N = linear_flop_params(spec)
    attn = 2.0 * cfg.seq_len * spec.heads * spec.head_dim * spec.layers
    lora = lora_flop_params(spec, cfg)
    fwd = 2.0 * N + attn + 2.0 * lora
    if cfg.method == "full":
        bwd = 4.0 * N + 2 * attn
    else:
        bwd = 2.0 * N + 2 * attn + 4.0 * lora
    recompute = (2.0 * (N - spec.vocab * spec.hidden) + attn + 2.0 * lora) if cfg.gradient_checkpointing else 0.0
    return fwd + bwd + recompute


def base_linear_weights(spec: ModelSpec) -> int:
    return sum(lin.weight_params * lin.count * n_layers_of(spec, lin) for lin in layer_linears(spec))


# Achievable / datasheet where a GPU carries no ratio of its own (a GPU built outside the catalog): a large
# 16-bit GEMM reaches about three quarters of the datasheet rate and a copy kernel about 85% of the memory
# bandwidth on the cards public benchmarks measured (profiles/data/gpu_rates.md); catalog cards carry the
# ratio measured on them, or the median of the measured cards (``GPUSpec.matmul_ratio``).
DEFAULT_MATMUL_RATIO = 0.75
DEFAULT_BANDWIDTH_RATIO = 0.85

# What a step time rests on (``compute_rate``'s third value; the estimate's first note says it in words).
BASIS_TENSOR = "tensor"  # the datasheet dense tensor rate of the compute dtype
BASIS_CUDA_CORE = "cuda-core"  # the fp32 CUDA-core rate (fp32 compute, or a GPU without tensor cores)
BASIS_BANDWIDTH = "bandwidth"  # no rate for the compute dtype: no speed estimate (bandwidth alone would be far too fast)
BASIS_NONE = "none"  # no estimate (no bandwidth in the catalog, or the CPU)
# The catalog's ``sources`` tag for a sourced "this GPU has no tensor cores" (GTX 16xx).
NO_TENSOR_TAG = "no-tensor:"
BANDWIDTH_BOUND_NOTE = "no tensor rate in the catalog: speed not estimated"


def compute_dtype(gpu: GPUSpec, cfg: TrainConfig) -> str:
    """The dtype the matmuls run in: ``fp32`` for an fp32 model without autocast; else ``fp16`` for an fp16
    model or a GPU without bf16; else ``bf16`` (autocast and the 4-bit/8-bit compute dtype)."""
    if cfg.quant == "fp32" and not cfg.autocast:
        return "fp32"
    if cfg.compute_dtype == "fp16" or cfg.quant == "fp16" or not gpu.bf16:
        return "fp16"
    return "bf16"


def has_tensor_cores(gpu: GPUSpec) -> bool:
    """False only where the catalog cites a source for "no tensor cores" (``no-tensor:`` in ``sources``)."""
    return NO_TENSOR_TAG not in gpu.sources


def compute_rate(gpu: GPUSpec, dtype: str) -> tuple[float | None, str, str]:
    """(datasheet dense TFLOPS for matmuls in ``dtype`` or None, what that figure is, the basis: one of
    ``BASIS_TENSOR``/``BASIS_CUDA_CORE``/``BASIS_BANDWIDTH``); the rules are in the module docstring."""
    if dtype == "fp32":
        if gpu.fp32_tflops:
            return gpu.fp32_tflops, "fp32 CUDA-core", BASIS_CUDA_CORE
        return None, "no fp32 rate in the catalog", BASIS_BANDWIDTH
    if not has_tensor_cores(gpu):
        if gpu.fp32_tflops:
            return (gpu.fp32_tflops, f"fp32 CUDA-core (no tensor cores: {dtype} matmuls run on the CUDA cores "
                    "with fp32 accumulation)", BASIS_CUDA_CORE)
        return None, "no tensor cores and no fp32 rate in the catalog", BASIS_BANDWIDTH
    bf16 = gpu.bf16_tflops if gpu.bf16 else None
    if dtype == "bf16":
        if bf16:
            return bf16, "bf16 tensor", BASIS_TENSOR
        if gpu.fp16_tflops:
            return (gpu.fp16_tflops, "fp16 tensor (no bf16 figure in the catalog; the two are equal with fp32 "
                    "accumulation from Ampere on)", BASIS_TENSOR)
    else:
        if gpu.fp16_tflops:
            return gpu.fp16_tflops, "fp16 tensor", BASIS_TENSOR
        if bf16:
            return (bf16, "bf16 tensor (no fp16 figure in the catalog; the two are equal with fp32 "
                    "accumulation from Ampere on)", BASIS_TENSOR)
    return None, f"no {dtype} tensor rate in the catalog", BASIS_BANDWIDTH


# key: (spec_id, method, quant, lora_rank, lora_targets, seq_len, gradient_checkpointing)
_WORK_CACHE: dict[tuple[int, str, str, int, tuple[str, ...], int, bool], tuple[float, float]] = {}


def work_per_token(spec: ModelSpec, cfg: TrainConfig) -> tuple[float, float]:
    """(model FLOPs per token, trainable elements), cached on the knobs they depend on."""
    key = (spec_id(spec), cfg.method, cfg.quant, cfg.lora_rank, cfg.lora_targets, cfg.seq_len,
           cfg.gradient_checkpointing)
    w = _WORK_CACHE.get(key)
    if w is None:
        if len(_WORK_CACHE) > 100_000:
            _WORK_CACHE.clear()
        w = _WORK_CACHE[key] = (flops_per_token(spec, cfg), float(numel(trainable_tensors(spec, cfg))))
    return w


class _Rate(NamedTuple):
    """What a step time needs from a GPU: its achievable matmul rate (None: not modelled) and bandwidth."""

    tflops: float | None  # achievable dense TFLOP/s for the compute dtype; None: no speed estimate
    source: str  # the datasheet figure the rate belongs to (or why there is none)
    basis: str  # BASIS_TENSOR, BASIS_CUDA_CORE or BASIS_BANDWIDTH
    dtype: str  # the compute dtype
    bandwidth_gbs: float  # achievable
    nvlink: bool
    peak_tflops: float | None  # the datasheet figure (MFU's denominator)
    rate_note: str  # what the achievable rates rest on (measured, or datasheet x ratio)


class _Step(NamedTuple):
    tokens: int  # per optimizer step, all GPUs
    seconds: float
    flops_per_token: float
    micro: MicroBatch | None  # None from the search's fast path (pieces=False)
    optimizer: float
    accumulate: float
    comm: float


def _step_parts(spec: ModelSpec, cfg: TrainConfig, rate: _Rate, opt_bytes: float, pieces: bool = True) -> _Step:
    """One optimizer step: ``grad_accum`` micro-batches (``ops.micro_batch_pieces``), the gradient additions
    between them, the optimizer step and the communication left after overlap; seconds."""
    bw = rate.bandwidth_gbs * 1e9
    assert rate.tflops is not None
    rates = Rates(rate.tflops * 1e12, bw)
    micro = micro_batch_pieces(spec, cfg, rates) if pieces else None
    micro_s = micro_batch_seconds(spec, cfg, rates)  # one sum for both paths: the search ranks what is shown
    fpt, n_train = work_per_token(spec, cfg)
    shard = ranks(cfg)
    host_optimizer = cfg.offload != "none" and cfg.num_gpus > 1
    optimizer = 0.0 if host_optimizer else opt_bytes / shard / bw
    # autograd adds each micro-batch's gradients into .grad after the first (read both, write one)
    accumulate = (cfg.grad_accum - 1) * 3 * precision(cfg).trainable * n_train / shard / bw if cfg.grad_accum > 1 else 0.0
    comm = 0.0
    if cfg.num_gpus > 1:
        comm = comm_seconds(_traffic(spec, cfg, n_train, opt_bytes), micro_s, cfg.grad_accum, rate.nvlink, cfg.nodes)
    step = cfg.grad_accum * micro_s + optimizer + accumulate + comm
    tokens_step = cfg.micro_batch * cfg.seq_len * cfg.grad_accum * cfg.num_gpus
    return _Step(tokens_step, step, fpt, micro, optimizer, accumulate, comm)


def _traffic(spec: ModelSpec, cfg: TrainConfig, n_train: float, opt_bytes: float) -> Traffic:
    """What ``comm.traffic`` needs, from the step's own figures: the parameters as gathered (4-bit packed,
    else 16-bit), the gradients as reduced (16-bit; fp32 LoRA adapters under DDP), the trainable parameters in
    16 bits, and the optimizer step's traffic (``opt_bytes``) as what a host step moves."""
    weights = base_linear_weights(spec)
    gathered = weights * (0.5 if cfg.quant in ("nf4", "fp4") else (1 if cfg.quant == "int8" else 2)) + 2 * n_train
    grads = n_train * (4 if (cfg.is_lora and cfg.sharding == "ddp") else 2)
    return traffic(cfg, gathered, grads, 2 * n_train, opt_bytes)


def _rate(gpu: GPUSpec | None, cfg: TrainConfig) -> _Rate | None:
    """The rates a step time of ``cfg`` on ``gpu`` uses, or None when no estimate can be made (no GPU, the
    CPU, or no bandwidth in the catalog)."""
    if gpu is None or gpu.key == "cpu" or not gpu.bandwidth_gbs:
        return None
    dtype = compute_dtype(gpu, cfg)
    peak, src, basis = compute_rate(gpu, dtype)
    r_mm = gpu.matmul_ratio or DEFAULT_MATMUL_RATIO
    r_bw = gpu.bandwidth_ratio or DEFAULT_BANDWIDTH_RATIO
    note = gpu.rates_note or (f"matmul datasheet x {DEFAULT_MATMUL_RATIO}, bandwidth datasheet x "
                              f"{DEFAULT_BANDWIDTH_RATIO} (defaults: no measured ratio for this card)")
    return _Rate(None if peak is None else peak * r_mm, src, basis, dtype, gpu.bandwidth_gbs * r_bw, gpu.nvlink,
                 peak, note)


def speed_basis(gpu: GPUSpec | None, cfg: TrainConfig) -> str:
    """What a speed estimate of ``cfg`` on ``gpu`` rests on: ``BASIS_TENSOR``, ``BASIS_CUDA_CORE``,
    ``BASIS_BANDWIDTH`` or ``BASIS_NONE`` (no estimate)."""
    rate = _rate(gpu, cfg)
    return BASIS_NONE if rate is None else rate.basis


def ranking_basis(gpu: GPUSpec | None, cfg: TrainConfig) -> str:
    """What the search's throughput objective effectively ranks ``cfg`` by on ``gpu``, in words."""
    return _ranking(_rate(gpu, cfg))


def _ranking(rate: _Rate | None) -> str:
    if rate is None:
        return "least device memory (no speed estimate: no bandwidth for this GPU in the catalog)"
    if rate.tflops is None:
        return (f"least device memory (no speed estimate: {rate.source}; a bandwidth-only figure would ignore "
                "compute and read many times too fast)")
    return f"tokens/s from the {rate.source} rate"


def tokens_per_s(spec: ModelSpec, cfg: TrainConfig, gpu: GPUSpec | None, opt_bytes: float = 0.0) -> float | None:
    """``step_time(...).tokens_per_s`` without building the estimate object (the search's hot loop)."""
    rate = _rate(gpu, cfg)
    if rate is None or rate.tflops is None:
        return None
    st = _step_parts(spec, cfg, rate, opt_bytes, pieces=False)
    return st.tokens / st.seconds


def step_time(spec: ModelSpec, cfg: TrainConfig, gpu: GPUSpec | None, opt_bytes: float = 0.0) -> TimeEstimate | None:
    """One optimizer step (``grad_accum`` micro-batches on each of ``num_gpus`` GPUs). ``notes[0]`` says
    what the estimate rests on; a note starting ``throughput objective:`` says what the search ranks by;
    ``pieces`` holds each piece's seconds per step and its bound."""
    rate = _rate(gpu, cfg)
    if rate is None or rate.tflops is None:  # ranking_basis() says what the search ranks by instead
        return None
    st = _step_parts(spec, cfg, rate, opt_bytes)
    assert st.micro is not None
    if st.seconds <= 0:
        raise FtplanError("step time is zero: check the model and GPU figures")
    notes = [f"by operation from the {rate.source} rate; {rate.rate_note}"]
    notes.append(f"throughput objective: {_ranking(rate)}")
    if cfg.num_gpus > 1:
        link = NVLINK_GBS if rate.nvlink else PCIE_GBS
        where = f"{'NVLink' if rate.nvlink else 'PCIe'} at {link:.0f} GB/s"
        if cfg.nodes > 1:
            where += f" and the network between {cfg.nodes} servers at {NETWORK_GBS:.0f} GB/s per GPU (prior)"
        notes.append(f"{cfg.sharding} collectives over {where} (ring algorithms; overlap with compute assumed, "
                     "see planner.comm)")
        if cfg.offload != "none":
            notes.append("offload: host transfers over PCIe and the optimizer step on the host (prior rate)")
    k = cfg.grad_accum
    pieces = [(name, w.seconds * k, w.bound) for name, w in st.micro.pieces.items() if w.seconds > 0]
    if st.optimizer:
        pieces.append(("optimizer", st.optimizer, "memory"))
    if st.accumulate:
        pieces.append(("accumulation", st.accumulate, "memory"))
    if st.comm:
        pieces.append(("communication", st.comm, "communication"))
    compute = k * sum(w.compute_s for w in st.micro.pieces.values())
    memory = k * sum(w.memory_s for w in st.micro.pieces.values()) + st.optimizer + st.accumulate
    launch = k * sum(w.launch_s for w in st.micro.pieces.values())
    bounds = {"compute": compute, "memory": memory, "launch": launch, "communication": st.comm}
    bound = max(bounds, key=lambda b: bounds[b])
    tps = st.tokens / st.seconds
    mfu = st.flops_per_token * tps / cfg.num_gpus / (rate.peak_tflops * 1e12) if rate.peak_tflops else 0.0
    return TimeEstimate(tokens_per_s=tps, step_time_s=st.seconds, flops_per_token=st.flops_per_token,
                        compute_s=compute, memory_s=memory, overhead_s=launch + st.optimizer + st.comm, bound=bound,
                        achievable_tflops=rate.tflops, efficiency=mfu, notes=tuple(notes), pieces=tuple(pieces))
