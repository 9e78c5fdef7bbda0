"""``estimate``: memory (per phase, peak, fit), time and cost for one fully specified configuration."""

from __future__ import annotations

from .bands import kind_of, memory_band, memory_range, uncalibrated, with_ranges
from .cost import job_cost
from .memory.phases import memory_model
from .memory.precision import autocast_assumption, precision
from .memory.sharding import host_memory
from .timing import step_time, work_per_token
from .types import Estimate, GPUSpec, ModelSpec, TrainConfig, spec_id

ASSUMPTIONS = (
    "HF Trainer + PEFT + bitsandbytes with bf16 autocast; steady state (step >= 2, optimizer state exists)",
    "QLoRA/8-bit: peft.prepare_model_for_kbit_training upcasts embeddings, lm_head, norms and biases to fp32",
    "LoRA adapters in fp32 (PEFT default); loss = transformers ForCausalLMLoss unless loss_impl=chunked",
    "SDPA/flash attention without padding masks (packed or equal-length batches)",
)


# what estimate() was told about a stack or loop ftplan does not build (``planner.memory.logits``)
LEGACY_LOSS_NOTES = {
    "legacy_shift": "loss as transformers 4.46-4.48 ran it: the fp32 logits shifted with one more copy in forward",
    "legacy_upcast": "loss as transformers <= 4.45 ran it: logits upcast to fp32 in the model, shifted with a copy, "
                     "returned in fp32",
}


def stack_assumptions(cfg: TrainConfig) -> tuple[str, ...]:
    """The assumption lines for an older transformers' loss and a loop that keeps the model's output."""
    notes = [LEGACY_LOSS_NOTES[cfg.loss_impl]] if cfg.loss_impl in LEGACY_LOSS_NOTES else []
    if cfg.output_held:
        notes.append("the loop keeps the model's output (its logits) through backward and the optimizer step")
    return tuple(notes)


def memory_basis(device_bytes: int, gpu: GPUSpec | None, num_gpus: int) -> tuple[tuple[int, int] | None, str]:
    """The device figure's range and basis: the published runs' band on a GPU (``bands.memory_band``); on the
    CPU the figure is the tensor-level live set, checked by CPU runs, with no published range."""
    if gpu is not None and gpu.key == "cpu":
        return None, ("analytical (the tensor-level live set on the CPU; CPU runs: benchmarks/accuracy_cpu.py, "
                      "benchmarks/accuracy_multi.py)")
    band = memory_band(kind_of(num_gpus))
    if band is None:
        return None, "analytical (no published memory band found)"
    return memory_range(device_bytes, band), band.basis


# key: (spec_id, method, quant, lora_rank, lora_targets, optimizer)
_TRAFFIC_CACHE: dict[tuple[int, str, str, int, tuple[str, ...], str], float] = {}


def optimizer_traffic_bytes(spec: ModelSpec, cfg: TrainConfig) -> float:
    """Bytes the optimizer step reads and writes: params r/w, grads r, two states r/w."""
    key = (spec_id(spec), cfg.method, cfg.quant, cfg.lora_rank, cfg.lora_targets, cfg.optimizer)
    hit = _TRAFFIC_CACHE.get(key)
    if hit is None:
        if len(_TRAFFIC_CACHE) > 100_000:
            _TRAFFIC_CACHE.clear()
        hit = _TRAFFIC_CACHE[key] = _optimizer_traffic(spec, cfg)
    return hit


def _optimizer_traffic(spec: ModelSpec, cfg: TrainConfig) -> float:
    n = work_per_token(spec, cfg)[1]
    p = precision(cfg).trainable
    state = {"adamw": 2 * p, "adamw_torch": 2 * p, "paged_adamw_32bit": 8, "adamw_8bit": 2,
             "paged_adamw_8bit": 2, "sgd": 0, "adafactor": 1}[cfg.optimizer]
    return n * (2 * p + p + 2 * state)


def host_breakdown(spec: ModelSpec, cfg: TrainConfig, host_per_rank: dict[str, int] | None) -> dict[str, int]:
    """Host memory per node by term (``memory.sharding.host_memory``): the weights' stored bytes are what
    loading the model holds (needed only where loading goes through the host: FSDP)."""
    weights = sum(memory_model_weights(spec, cfg).values()) if cfg.is_fsdp else 0
    return host_memory(host_per_rank or {}, spec, cfg, weights, cfg.num_gpus // max(cfg.nodes, 1))


def memory_model_weights(spec: ModelSpec, cfg: TrainConfig) -> dict[str, int]:
    """The model's weights as stored (one rank, nothing sharded), by term, bytes."""
    from dataclasses import replace

    one = replace(cfg, num_gpus=1, nodes=1, sharding=None, offload="none")
    mem = memory_model(spec, one, None)
    keep = ("weights_quantized", "quant_constants", "weights_dense", "weights_unquantized", "lora_weights")
    return {k: v for k, v in mem.phases["optimizer_step"].items() if k in keep}


def build_estimate(spec: ModelSpec, cfg: TrainConfig, gpu: GPUSpec | None, tokens: float | None = None,
                   epochs: float = 1.0, price: float | None = None, warnings: tuple[str, ...] = (),
                   spot_discount: float = 0.0, margin: float = 0.0, host_ram: int | None = None) -> Estimate:
    mem = memory_model(spec, cfg, gpu)
    host = host_breakdown(spec, cfg, mem.host)
    usable = gpu.usable_bytes if gpu is not None else None
    fits = None if usable is None else mem.device_bytes <= usable * (1.0 - margin)
    if fits and host_ram is not None and sum(host.values()) > host_ram:
        fits = False  # the node cannot hold what the plan keeps in host memory
    t = step_time(spec, cfg, gpu, optimizer_traffic_bytes(spec, cfg))
    cost = job_cost(t, gpu, cfg.num_gpus, tokens, epochs, price, spot_discount) if tokens else None
    t, cost = with_ranges(t, cost, uncalibrated(kind_of(cfg.num_gpus)))
    mem_range, basis = memory_basis(mem.device_bytes, gpu, cfg.num_gpus)
    return Estimate(model=spec.name, gpu=gpu.key if gpu else None, config=cfg,
                    peak_allocated_bytes=mem.peak_allocated, peak_reserved_bytes=mem.peak_reserved,
                    device_bytes=mem.device_bytes, breakdown=mem.breakdown, peak_phase=mem.peak_phase,
                    phases=mem.phases, overheads=mem.overheads, usable_bytes=usable, fits=fits,
                    trainable_params=mem.trainable_params, total_params=mem.total_params, time=t, cost=cost,
                    warnings=warnings, assumptions=(autocast_assumption(cfg), *ASSUMPTIONS[1:], *stack_assumptions(cfg)),
                    host_breakdown=host, host_ram_bytes=host_ram, device_bytes_range=mem_range, memory_basis=basis)
