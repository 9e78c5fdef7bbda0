"""Core value types of the planner: pure data, frozen, stdlib only.

Every size is in bytes (int) unless a name says otherwise; rates are per second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

FSDP_SHARDINGS = ("fsdp", "fsdp_grad_op")  # FSDP2, resharded after forward or not
ZERO_SHARDINGS = ("zero1", "zero2", "zero3")  # DeepSpeed ZeRO stages

GiB = 1024**3
MiB = 1024**2


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts of a decoder-only transformer (what ``config.json`` says, no weights).

    ``head_dim`` is explicit because several families (Gemma, Qwen3, Mistral-Nemo) do not use
    ``hidden // heads``. MoE fields are zero for dense models.
    """

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_positions: int
    hf_id: str = ""
    family: str = "llama"
    aliases: tuple[str, ...] = ()
    tied_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    lm_head_bias: bool = False  # Phi-2
    mlp: str = "gated"  # "gated" (SwiGLU/GeGLU: gate, up, down) or "plain" (fc1, act, fc2)
    norm: str = "rmsnorm"  # or "layernorm" (has a bias)
    norms_per_layer: int = 2  # Gemma 2/3 and OLMo 2 use 4 ("sandwich"); parallel blocks 1
    qk_norm: bool = False  # Qwen3, Gemma 3, OLMo 2: RMSNorm over q and k
    parallel_block: bool = False  # Falcon, Phi-2: attention and MLP read the same normed input
    fused_qkv: bool = False  # Phi-3, Falcon: one qkv projection
    fused_gate_up: bool = False  # Phi-3: one gate_up projection
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate: int = 0
    shared_expert_intermediate: int = 0
    moe_layers: int = 0  # how many of the layers are MoE (0 with num_experts>0 means all)
    final_logit_softcap: bool = False  # Gemma 2: tanh softcap on the logits keeps one more b*s*V
    attn_logit_softcap: bool = False  # Gemma 2: eager attention only (SDPA cannot softcap)
    source: str = ""

    def __hash__(self) -> int:  # the generated hash walks 30 fields on every call; cache it
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(getattr(self, f) for f in self.__dataclass_fields__))
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def n_moe_layers(self) -> int:
        if not self.is_moe:
            return 0
        return self.moe_layers or self.layers


_SPEC_REGISTRY: dict[int, ModelSpec] = {}


def spec_id(spec: ModelSpec) -> int:
    """A cheap cache key for a model: its id, with the spec kept alive so the id is never reused."""
    i = id(spec)
    if _SPEC_REGISTRY.get(i) is not spec:
        _SPEC_REGISTRY[i] = spec
    return i


def spec_by_id(i: int) -> ModelSpec:
    """The model whose ``spec_id`` is ``i``."""
    return _SPEC_REGISTRY[i]


@dataclass(frozen=True)
class GPUSpec:
    """One GPU model. ``None`` means the figure is unknown (never zero-filled)."""

    key: str
    name: str
    memory_gb: float  # marketing size
    usable_bytes: int  # what a process can budget from (see profiles.gpus.usable_bytes)
    usable_source: str  # "torch total_memory", "nvidia-smi total - 600 MiB", "estimated from marketing size"
    bandwidth_gbs: float | None
    bf16_tflops: float | None  # dense tensor rate, fp32 accumulate
    fp16_tflops: float | None
    fp32_tflops: float | None
    compute_capability: float | None
    bf16: bool
    flash_attention_2: bool
    price_per_hour: float | None
    price_provider: str = ""
    price_date: str = ""
    aliases: tuple[str, ...] = ()
    nvlink: bool = False
    tdp_w: float | None = None  # board power (the upper end where the datasheet gives a range)
    vendor: str = "NVIDIA"
    sources: str = ""
    notes: str = ""
    # achievable / datasheet for this card (profiles.rates): measured where a benchmark measured it, else the
    # median of the measured cards; None: planner.timing's documented defaults. ``rates_note`` says which.
    matmul_ratio: float | None = None
    bandwidth_ratio: float | None = None
    rates_note: str = ""
    # whether the price's provider sells spot GPUs (profiles.providers): "yes", "no", "list price is
    # preemptible", or "" (provider not known); and what that rests on
    spot: str = ""
    spot_note: str = ""

    @property
    def usable_gib(self) -> float:
        return self.usable_bytes / GiB


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of one fine-tuning configuration, normalised (see ``planner.options``)."""

    method: str = "qlora"  # full | lora | qlora
    quant: str = "nf4"  # nf4 | fp4 | int8 | bf16 | fp16 | fp32 (the base weights' format)
    double_quant: bool = True
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = ("all-linear",)
    lora_dropout: float = 0.0
    micro_batch: int = 1
    seq_len: int = 2048
    grad_accum: int = 16
    gradient_checkpointing: bool = True
    optimizer: str = "paged_adamw_8bit"
    attention: str = "sdpa"  # sdpa | eager | flash_attention_2
    num_gpus: int = 1
    sharding: str | None = None  # None | ddp | fsdp | fsdp_grad_op | zero1 | zero2 | zero3
    offload: str = "none"  # none | optimizer | params (what the strategy keeps in host memory)
    nodes: int = 1  # servers the GPUs are spread over (num_gpus / nodes per server)
    prepare_kbit: bool = True  # peft.prepare_model_for_kbit_training (fp32 upcast of unquantized params)
    autocast: bool = True  # HF Trainer bf16=True / fp16=True
    # standard (HF ForCausalLMLoss) | chunked (fused/chunked cross-entropy) | legacy_shift (transformers
    # 4.46-4.48) | legacy_upcast (<= 4.45); the legacy two describe older stacks for estimate() only
    loss_impl: str = "standard"
    compute_dtype: str = "bf16"  # bf16 | fp16: autocast and bitsandbytes compute dtype; fp16 adds loss scaling
    # the training loop keeps the model's output (its logits) through backward and the optimizer step, as a
    # custom loop that writes ``out = model(...); out.loss.backward()`` does; HF Trainer and every hand-off drop
    # it (estimate() only; absent from ``to_dict`` unless set, so plans and their fingerprints never carry it)
    output_held: bool = False

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.num_gpus

    @property
    def is_lora(self) -> bool:
        return self.method in ("lora", "qlora")

    @property
    def is_quantized(self) -> bool:
        return self.quant in ("nf4", "fp4", "int8")

    @property
    def is_fsdp(self) -> bool:
        """Several GPUs sharded by FSDP2 (``FSDP_SHARDINGS``)."""
        return self.num_gpus > 1 and self.sharding in FSDP_SHARDINGS

    @property
    def is_zero(self) -> bool:
        """Several GPUs under DeepSpeed ZeRO (``ZERO_SHARDINGS``)."""
        return self.num_gpus > 1 and self.sharding in ZERO_SHARDINGS

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.output_held:
            d.pop("output_held")
        d["lora_targets"] = list(self.lora_targets)
        d["effective_batch"] = self.effective_batch
        return d

    def knobs(self) -> dict[str, Any]:
        """The configuration as ``ftplan.estimate`` / ``ftplan.plan`` keywords (``grad_accum`` rather than
        ``effective_batch``): ``make_config(spec, gpu, **cfg.knobs())`` gives ``cfg`` back."""
        d = self.to_dict()
        d.pop("effective_batch")
        return d


@dataclass(frozen=True)
class Calibration:
    """Which measured/predicted ratios were applied to an estimate (filled by ``ftplan.calibration``).

    - ``factors``: the factors applied, {name: measured / predicted}; empty when the store holds
      factors for this GPU and library versions but none of them applies to this model.
    - ``applies_to``: {factor: the figure it changed, and where it was measured when that was another
      model size class}.
    - ``skipped``: {factor (size class): why it was not applied}.
    - ``device``: the kind of run the factors were measured on ("cuda" or "cpu").
    - ``size_class``: this model's size class, total parameters to an order of magnitude ("1e10":
      about 3.2B to 32B); size-dependent factors apply only within their own class.
    """

    gpu: str
    versions: str
    factors: Mapping[str, float]
    source: str = ""
    device: str = ""
    size_class: str = ""
    applies_to: Mapping[str, str] = field(default_factory=dict)
    skipped: Mapping[str, str] = field(default_factory=dict)
    note: str = ""
    # {factor: (lowest, highest) measured/predicted ratio of the study over the median applied}
    spread: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def applied(self) -> bool:
        """True when at least one factor changed the estimate."""
        return bool(self.factors)

    @property
    def summary(self) -> str:
        """One line for a human: the factors applied (or none), what they changed, what was skipped."""
        if self.factors:
            done = "; ".join(f"{k} x{v:.3f} on {self.applies_to.get(k, '?')}" for k, v in self.factors.items())
            head = f"{done}; from {self.source} ({self.device}, model size class {self.size_class})"
        else:
            head = f"none applied (factors are stored for {self.gpu}, but not for this model)"
        if self.skipped:
            by_reason: dict[str, list[str]] = {}
            for k, why in self.skipped.items():
                by_reason.setdefault(why, []).append(k)
            head += "; not applied: " + "; ".join(f"{', '.join(ks)} ({why})" for why, ks in by_reason.items())
        return head


@dataclass(frozen=True)
class TimeEstimate:
    tokens_per_s: float
    step_time_s: float  # one optimizer step (all micro-batches, all GPUs in parallel)
    flops_per_token: float
    compute_s: float  # per optimizer step
    memory_s: float  # per optimizer step: operations bound by memory bandwidth
    overhead_s: float  # kernel launches, optimizer step, communication left after overlap
    bound: str  # what most of the step waits on: "compute", "memory", "launch" or "communication"
    achievable_tflops: float  # the matmul rate the operations ran at
    efficiency: float  # model FLOPs utilisation against the datasheet rate
    calibrated: bool = False
    notes: tuple[str, ...] = ()
    # (piece, seconds per optimizer step, bound): the operations of planner.ops, the optimizer step, the
    # gradient additions between micro-batches and the communication left after overlap
    pieces: tuple[tuple[str, float, str], ...] = ()
    # where the measured tokens/s may fall (planner.bands), and what that range rests on
    tokens_per_s_range: tuple[float, float] = (0.0, 0.0)
    range_basis: str = ""


@dataclass(frozen=True)
class CostEstimate:
    tokens: float  # training tokens over all epochs
    hours: float  # wall-clock hours
    gpu_hours: float
    price_per_gpu_hour: float | None
    dollars: float | None
    price_provider: str = ""
    price_date: str = ""
    notes: tuple[str, ...] = ()
    # the same range as the speed's (planner.bands), inverted: hours and dollars are tokens over tokens/s
    hours_range: tuple[float, float] = (0.0, 0.0)
    gpu_hours_range: tuple[float, float] = (0.0, 0.0)
    dollars_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class Estimate:
    """What ``ftplan.estimate`` returns: memory per phase, the peak, fit, and optionally time and cost.

    - ``peak_allocated_bytes``: what ``torch.cuda.max_memory_allocated()`` would report.
    - ``peak_reserved_bytes``: what ``torch.cuda.max_memory_reserved()`` would report.
    - ``device_bytes``: what nvidia-smi would show for the process (reserved + CUDA context).
    - ``breakdown``: {term: bytes} of the live set at the peak phase (sums to allocated).
    """

    model: str
    gpu: str | None
    config: TrainConfig
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    device_bytes: int
    breakdown: Mapping[str, int]
    peak_phase: str
    phases: Mapping[str, Mapping[str, int]]
    overheads: Mapping[str, int]
    usable_bytes: int | None
    fits: bool | None
    trainable_params: int
    total_params: int
    time: TimeEstimate | None = None
    cost: CostEstimate | None = None
    calibration: Calibration | None = None
    warnings: tuple[str, ...] = ()
    assumptions: tuple[str, ...] = field(default=())
    host_breakdown: Mapping[str, int] = field(default_factory=dict)  # host memory per node by term
    host_ram_bytes: int | None = None  # what the user said a node has (None: unknown)
    # the device figure's range and what it rests on (``planner.bands.memory_band``; no range on the CPU or
    # once calibrated: the figure then rests on measurements of this machine)
    device_bytes_range: tuple[int, int] | None = None
    memory_basis: str = "analytical"

    @property
    def host_bytes(self) -> int:
        """Host memory the plan needs per node (offloaded state or loading the model; 0 when neither)."""
        return sum(self.host_breakdown.values())

    @property
    def host_fits(self) -> bool | None:
        """Whether ``host_bytes`` fits ``host_ram_bytes``; None when the host memory is unknown."""
        return None if self.host_ram_bytes is None else self.host_bytes <= self.host_ram_bytes

    @property
    def headroom_bytes(self) -> int | None:
        if self.usable_bytes is None:
            return None
        return self.usable_bytes - self.device_bytes

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model,
            "gpu": self.gpu,
            "config": self.config.to_dict(),
            "fits": self.fits,
            "peak_phase": self.peak_phase,
            "peak_allocated_bytes": self.peak_allocated_bytes,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "device_bytes": self.device_bytes,
            "usable_bytes": self.usable_bytes,
            "headroom_bytes": self.headroom_bytes,
            "breakdown": dict(self.breakdown),
            "overheads": dict(self.overheads),
            "phases": {k: dict(v) for k, v in self.phases.items()},
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "time": asdict(self.time) if self.time else None,
            "cost": asdict(self.cost) if self.cost else None,
            "calibration": asdict(self.calibration) if self.calibration else None,
            "host_bytes": self.host_bytes,
            "host_breakdown": dict(self.host_breakdown),
            "host_ram_bytes": self.host_ram_bytes,
            "host_fits": self.host_fits,
            "device_bytes_range": list(self.device_bytes_range) if self.device_bytes_range else None,
            "memory_basis": self.memory_basis,
            "warnings": list(self.warnings),
            "assumptions": list(self.assumptions),
        }
        if self.calibration:
            d["calibration"]["factors"] = dict(self.calibration.factors)
        return d


@dataclass(frozen=True)
class Plan:
    """One ranked candidate of ``ftplan.plan``: every knob and its full estimate."""

    config: TrainConfig
    estimate: Estimate
    score: float
    rank: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, "config": self.config.to_dict(),
                "estimate": self.estimate.to_dict()}
