"""The live set of each phase of a training step, and the peak.

A sum of all terms is wrong: the peak is the largest live set over the phases (DESIGN.md):
1. resident: weights by format, LoRA weights, optimizer state (steady state, step >= 2), workspaces,
   the loss scaler's state under fp16 compute (``grad_scaler``);
2. forward_end: + saved activations + the loss computation's logits buffers;
3. backward: the larger of its start (logits gradient buffers) and the top layer (recompute under
   checkpointing, gradient buffers, dequantized weights) and, without accumulation, its end (all
   gradients, no activations);
4. optimizer_step: + all gradients + the optimizer's temporaries (and the loss scaler's, under fp16).
With gradient accumulation > 1 the gradients of the previous micro-batch are live in every phase.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import NamedTuple

from ..arch import layer_linears, n_layers_of, norm_params, total_params
from ..types import GPUSpec, ModelSpec, TrainConfig, spec_by_id, spec_id
from .activations import activation_memory
from .logits import loss_memory
from .optimizer import (
    OptimizerMemory,
    grad_scaler_state_bytes,
    grad_scaler_step_bytes,
    gradient_bytes,
    optimizer_memory,
)
from .overhead import allocator_overhead_bytes, cublas_workspace_bytes, cuda_context_bytes, nccl_bytes
from .params import base_linear_terms, bias_params, lora_tensors, numel, trainable_tensors, unquantized_bytes
from .precision import Precision, loss_scaling, precision
from .sharding import (
    Gathered,
    fsdp_embedding_gathered_bytes,
    fsdp_gathered,
    fsdp_layer_gathered_bytes,
    fsdp_master_bytes,
    fsdp_tail_gathered_bytes,
    gather_bytes,
    held_reduce_at_layer,
    ranks,
    shard,
    zero_terms,
)

PHASES = ("forward_end", "backward", "optimizer_step")


@dataclass(frozen=True)
class MemoryResult:
    phases: dict[str, dict[str, int]]
    peak_phase: str
    peak_allocated: int
    peak_reserved: int
    device_bytes: int
    overheads: dict[str, int]
    trainable_params: int
    total_params: int
    host: dict[str, int] | None = None  # per rank: what the strategy keeps in host memory, by term

    @property
    def breakdown(self) -> dict[str, int]:
        return self.phases[self.peak_phase]


def dequant_transient_bytes(spec: ModelSpec, prec: Precision) -> int:
    """bitsandbytes ``MatMul4Bit`` dequantizes the whole weight to the compute dtype for each matmul
    in forward and backward (``dequantize_4bit(B, state).to(A.dtype)``): the largest layer linear,
    ``out * in * cb`` bytes, is live for a moment. 0 for unquantized bases."""
    if not prec.quantized:
        return 0
    return max(lin.weight_params for lin in layer_linears(spec)) * prec.compute


def autocast_copy_bytes(spec: ModelSpec, cfg: TrainConfig, prec: Precision) -> tuple[int, int]:
    """(lm_head copy, other weight copies) that autocast makes for its 16-bit (bf16 or fp16) matmuls.

    An fp32 ``lm_head`` (after the kbit upcast, or an fp32 model) is cast to the compute dtype for its
    matmul and the copy is saved for the input gradient until lm_head's backward: ``V*h*cb``. Trainable fp32 leaves
    (LoRA adapters, fp32 master weights) are cast once per forward and cached (torch autocast weight
    cache): ``2 B`` per linear weight element (PEFT's fused-expert LoRA excepted: see ``lora_tensors``).
    """
    if not cfg.autocast:
        return 0, 0
    cb = prec.compute
    head = spec.vocab * spec.hidden * cb if prec.unquantized != cb else 0
    if cfg.is_lora:
        # fused MoE expert stacks add their LoRA in a baddbmm with autocast off: no copies of those
        others = numel(lora_tensors(spec, cfg, fused_stacks=False)) * cb
    elif prec.trainable != cb:
        others = sum(lin.weight_params * lin.count * n_layers_of(spec, lin) for lin in layer_linears(spec)) * cb
    else:
        others = 0
    return head, others


def backward_copies(other_copies: int, cfg: TrainConfig, layers: int) -> tuple[int, int]:
    """(at the start of backward, at the top layer's backward) bytes of autocast copies of trainable
    weights still alive.

    Autocast caches its bf16 copies of fp32 leaves (LoRA adapters, fp32 weights) for the whole
    forward and drops the cache when the autocast region exits, before ``backward``. Without
    checkpointing autograd has saved every copy, so all survive into backward. Under (non-reentrant)
    checkpointing the layers saved nothing: no copy survives the forward, and the recompute of one
    layer inside backward makes that layer's copies again (``other / layers``). Traced: a 1B QLoRA
    step with checkpointing holds the LoRA copies at the end of forward and only lm_head's copy at
    the start of backward.
    """
    if not cfg.gradient_checkpointing:
        return other_copies, other_copies
    return 0, other_copies // max(layers, 1)


def tied_embedding_grad_bytes(spec: ModelSpec, cfg: TrainConfig, prec: Precision) -> int:
    """Full fine-tuning of tied embeddings: the embedding's backward (last in the step) produces a
    dense ``V x h`` gradient that autograd's ``AccumulateGrad`` adds to the gradient lm_head left on
    the same weight out of place: the old gradient, the new contribution and their sum are live at
    once, ``2 * V * h`` bytes beyond the gradients. Traced: Llama-3.2-1B full bf16, +1,002 MiB at the
    end of backward. 0 when the weight is frozen or untied."""
    if cfg.method != "full" or not spec.tied_embeddings:
        return 0
    return 2 * spec.vocab * spec.hidden * prec.trainable


class StaticKey(NamedTuple):
    """The knobs the batch-independent terms depend on (``TrainConfig`` field names)."""

    method: str
    quant: str
    double_quant: bool
    prepare_kbit: bool
    autocast: bool
    lora_rank: int
    lora_targets: tuple[str, ...]
    optimizer: str
    num_gpus: int
    sharding: str | None
    offload: str
    compute_dtype: str


class DynamicKey(NamedTuple):
    """The knobs the batch- and sequence-dependent terms depend on (``TrainConfig`` field names)."""

    method: str
    quant: str
    prepare_kbit: bool
    autocast: bool
    lora_rank: int
    lora_targets: tuple[str, ...]
    lora_dropout: float
    micro_batch: int
    seq_len: int
    gradient_checkpointing: bool
    attention: str
    loss_impl: str
    num_gpus: int  # with sharding: only FSDP changes the dtype flow (``precision.gathered_in_compute_dtype``)
    sharding: str | None


@dataclass(frozen=True)
class StaticTerms:
    """Terms that do not depend on batch or sequence (bytes)."""

    resident: dict[str, int]
    grads: int
    opt_temp: int
    opt_paged: int
    gathered: Gathered
    grads_accum: int  # gradients held between the micro-batches of an accumulation
    host: dict[str, int]  # per rank: state offloaded to host memory, by term (empty without offload)
    head_copy: int
    other_copies: int
    dequant: int
    n_train: int
    resident_total: int
    tied_grad: int


@dataclass(frozen=True)
class DynamicTerms:
    """Terms that depend on batch and sequence (bytes)."""

    act_layers: int
    act_model: int
    act_rest: int
    recompute: int
    last_layer: int
    backward_transient: int
    forward_transient: int
    loss_forward: int
    loss_backward: int
    dequant_moment: int = 0  # gradient buffers beside a dequantized 4-bit weight in backward
    loss_held: int = 0  # the logits the model's output carries (live after forward when the loop keeps it)


def static_key(cfg: TrainConfig) -> StaticKey:
    return StaticKey(cfg.method, cfg.quant, cfg.double_quant, cfg.prepare_kbit, cfg.autocast, cfg.lora_rank,
                     cfg.lora_targets, cfg.optimizer, cfg.num_gpus, cfg.sharding, cfg.offload, cfg.compute_dtype)


def dynamic_key(cfg: TrainConfig) -> DynamicKey:
    return DynamicKey(cfg.method, cfg.quant, cfg.prepare_kbit, cfg.autocast, cfg.lora_rank, cfg.lora_targets,
                      cfg.lora_dropout, cfg.micro_batch, cfg.seq_len, cfg.gradient_checkpointing, cfg.attention,
                      cfg.loss_impl, cfg.num_gpus if cfg.is_fsdp else 1, cfg.sharding if cfg.is_fsdp else None)


def static_terms(spec: ModelSpec, cfg: TrainConfig, device: str, cc: float | None) -> StaticTerms:
    """Terms that do not depend on batch or sequence; ``device`` is "cuda", "cpu" or "none"."""
    gpu_like = None if device == "none" else GPUSpec(device, "", 0, 0, "", None, None, None, None, cc, True, True, None)
    prec = precision(cfg)
    tensors = trainable_tensors(spec, cfg)
    n_train = numel(tensors)
    fsdp = cfg.is_fsdp
    ddp = cfg.sharding in (None, "ddp") and cfg.num_gpus > 1
    N = ranks(cfg)
    # FSDP2 stores trainable shards (their gradients and optimizer state) in fp32 under mixed precision
    master = fsdp_master_bytes(cfg, prec) if fsdp else prec.trainable
    up = master / prec.trainable
    resident: dict[str, int] = {}
    base = base_linear_terms(spec, cfg, prec)
    full = cfg.method == "full"
    for k, v in base.items():
        kept = k in ("quant_constants",)  # a 4-bit weight's quant_state is an attribute FSDP does not shard
        resident[k] = v if kept else shard(int(v * up) if full else v, N)
    resident["weights_unquantized"] = shard(int(unquantized_bytes(spec, prec) * (up if full else 1)), N)
    if cfg.is_lora:
        resident["lora_weights"] = shard(n_train * master, N)
    opt = optimizer_memory(cfg.optimizer, tensors, master)
    if device == "cpu":  # bitsandbytes falls back to plain tensors on the CPU
        opt = OptimizerMemory(opt.state + opt.state_paged, 0, opt.temp)
    resident["optimizer_state"] = shard(opt.state, N)
    resident["cuda_workspace"] = cublas_workspace_bytes(gpu_like)
    scaler_step = 0
    if loss_scaling(cfg):  # fp16: torch.amp.GradScaler's state, and its tensors during the step
        resident["grad_scaler"] = grad_scaler_state_bytes(device)
        scaler_step = grad_scaler_step_bytes(device)
    grads = shard(gradient_bytes(tensors, master), N)
    if ddp:
        resident["ddp_buckets"] = grads  # DDP reducer buckets (gradient_as_bucket_view=False)
    gathered = Gathered(0, 0, 0, 0, 0, 0, 0)
    if fsdp:
        lora_layer = n_train // spec.layers if cfg.is_lora else 0
        L = fsdp_layer_gathered_bytes(spec, cfg, prec, lora_layer)
        T = fsdp_tail_gathered_bytes(spec, cfg, prec)
        E = fsdp_embedding_gathered_bytes(spec, cfg, prec)
        g = gather_bytes(cfg, prec, master)
        R = G = (L if full else lora_layer * g)  # one layer's gradients in the reduce/param dtype
        gathered = fsdp_gathered(L, T, E, R, G, cfg.sharding == "fsdp_grad_op", spec.layers)
    if cfg.is_zero:
        small = (norm_params(spec) + bias_params(spec)) * prec.unquantized
        params16 = {k: v for k, v in base.items()}
        params16["weights_unquantized"] = unquantized_bytes(spec, prec)
        if cfg.is_lora:
            params16["lora_weights"] = n_train * prec.trainable
        opt32 = optimizer_memory(cfg.optimizer, tensors, 4)
        largest = max(lin.params for lin in layer_linears(spec))
        z = zero_terms(spec, cfg, params16, small, n_train, opt32.state + opt32.state_paged, opt32.temp, largest,
                       total_params(spec))
        resident = {**z.resident, "cuda_workspace": cublas_workspace_bytes(gpu_like)}
        if loss_scaling(cfg):
            resident["grad_scaler"] = grad_scaler_state_bytes(device)
        return StaticTerms(resident, z.grads, z.opt_temp, 0, z.gathered, z.grads_accum, z.host, 0, 0,
                           dequant_transient_bytes(spec, prec), n_train, sum(resident.values()), 0)
    head_copy, other_copies = autocast_copy_bytes(spec, cfg, prec)
    if fsdp and cfg.autocast:  # gathered in the compute dtype: autocast has nothing to copy
        head_copy = other_copies = 0
    tied = shard(tied_embedding_grad_bytes(spec, cfg, prec), N)
    host: dict[str, int] = {}
    if fsdp and cfg.offload == "params":  # CPUOffloadPolicy: shards, gradients and the optimizer step on the host
        for k in [k for k in resident if k not in ("quant_constants", "cuda_workspace", "grad_scaler")]:
            if resident[k]:
                host[k] = resident.pop(k)
        host["gradients"], host["optimizer_temp"] = grads, shard(opt.temp, N)
        shard_copy = shard(gathered.forward_layer // 2, N)  # a unit's shard copied to the device to gather
        g0 = gathered
        gathered = replace(g0, **{k: getattr(g0, k) + shard_copy for k in (
            "forward_copy_out", "forward_layer", "loss", "backward_start", "backward_layer", "backward_end")
            if getattr(g0, k)})
        grads = 0  # reduce-scatter output copied to the host at once
    # HF Trainer skips the reduction of all micro-batches but the last (accelerate ``no_sync``): under FSDP2
    # (``set_requires_gradient_sync(False)``) every unit keeps its unsharded gradients in the param dtype
    # until then (measured: full fine-tuning, 2 ranks, +n_train x 2 B per rank)
    accum_held = n_train * gather_bytes(cfg, prec, master) if fsdp else grads
    opt_temp = (0 if host else shard(opt.temp, N)) + scaler_step
    return StaticTerms(resident, grads, opt_temp, shard(opt.state_paged, N), gathered, accum_held, host,
                       head_copy, other_copies,
                       dequant_transient_bytes(spec, prec), n_train, sum(resident.values()), tied)


def dynamic_terms(spec: ModelSpec, cfg: TrainConfig, device: str = "cuda") -> DynamicTerms:
    """Terms that depend on batch and sequence; ``device`` is "cuda" or "cpu"."""
    prec = precision(cfg, device)
    act = activation_memory(spec, cfg, prec)
    loss = loss_memory(spec, cfg, prec)
    model_saved = sum(act.model_saved.values())
    rest = model_saved - act.model_saved["final_norm"] - act.model_saved.get("lm_head_input", 0)
    return DynamicTerms(act.layer_saved, model_saved, rest, act.layer_recompute, act.last_layer,
                        act.backward_transient, act.forward_transient, loss.forward_peak, loss.backward_peak,
                        act.dequant_moment, loss.held)


# The search evaluates thousands of configurations that share these terms. The caches are keyed on the
# model's id (``spec_id``) and the knobs each part depends on; the configuration is rebuilt from its key,
# so a term that read a knob outside its key would see the default, never another configuration's value.
CACHE_SIZE = 65_536


@lru_cache(maxsize=CACHE_SIZE)
def _static_cached(sid: int, key: StaticKey, device: str, cc: float | None) -> StaticTerms:
    return static_terms(spec_by_id(sid), TrainConfig(**key._asdict()), device, cc)


@lru_cache(maxsize=CACHE_SIZE)
def _dynamic_cached(sid: int, key: DynamicKey, device: str) -> DynamicTerms:
    return dynamic_terms(spec_by_id(sid), TrainConfig(**key._asdict()), device)


def clear_caches() -> None:
    """Empty the term caches (a benchmark of a cold search)."""
    _static_cached.cache_clear()
    _dynamic_cached.cache_clear()


def cached_terms(spec: ModelSpec, cfg: TrainConfig, gpu: GPUSpec | None) -> tuple[StaticTerms, DynamicTerms]:
    device = "none" if gpu is None else ("cpu" if gpu.key == "cpu" else "cuda")
    cc = gpu.compute_capability if gpu is not None else None
    sid = spec_id(spec)
    return (_static_cached(sid, static_key(cfg), device, cc),
            _dynamic_cached(sid, dynamic_key(cfg), "cpu" if device == "cpu" else "cuda"))


def _phases(s: StaticTerms, d: DynamicTerms, cfg: TrainConfig, layers: int) -> dict[str, dict[str, int]]:
    """The live set of each phase, term by term. ``device_bytes_fast`` restates these sums without the
    dicts; a property test holds the two equal: change both together."""
    accum = cfg.grad_accum > 1
    grads_live = s.grads_accum if accum else 0

    # a loop that keeps the model's output holds its logits from the loss to the end of the optimizer step
    held = d.loss_held if cfg.output_held else 0

    def phase(**terms: int) -> dict[str, int]:
        live = dict(s.resident)
        for k, v in terms.items():
            if v:
                live[k] = live.get(k, 0) + v
        return live

    # lm_head's autocast copy: saved for backward by the standard loss's matmul; the chunked loss makes it
    # for its forward (which computes the gradients too) and frees it on return, so it meets neither a
    # layer's forward transient nor backward (traced: ``ftplan trace --loss chunked``)
    chunked = cfg.loss_impl == "chunked"
    head_fwd = s.head_copy if chunked else 0
    head_kept = 0 if chunked else s.head_copy
    copies_start, copies_top = backward_copies(s.other_copies, cfg, layers)
    g = s.gathered
    gk = "zero_buffers" if cfg.is_zero else "fsdp_gathered"
    # the forward's largest moment: the loss (tail unit gathered), a layer's transient (two layers' worth
    # gathered under FSDP) or FSDP's copy-out of the next layer (three)
    # (the last copy-out comes before the last layer's forward: its saved activations are not there yet)
    last_layer_saved = d.act_layers // max(layers, 1)
    moments = {"loss": head_fwd + d.loss_forward + g.loss, "layer": d.forward_transient + g.forward_layer,
               "copy_out": g.forward_copy_out - last_layer_saved if g.forward_copy_out else 0}
    at = max(moments, key=lambda k: moments[k])
    forward_end = phase(
        gradients=grads_live, activations=d.act_layers + d.act_model - (last_layer_saved if at == "copy_out" else 0),
        autocast_weight_copies=head_kept + s.other_copies + (head_fwd if at == "loss" else 0),
        **{gk: {"loss": g.loss, "layer": g.forward_layer, "copy_out": g.forward_copy_out}[at]},
        logits_loss=d.loss_forward if at == "loss" else 0,
        forward_transient=d.forward_transient if at == "layer" else 0)
    bwd_start = phase(
        gradients=grads_live, activations=d.act_layers + d.act_model,
        autocast_weight_copies=head_kept + copies_start, logits_loss=d.loss_backward, logits_held=held,
        **{gk: g.backward_start})
    # a layer's backward: the product's gradients (no weight dequantized then) or a 4-bit weight's dequantized
    # copy beside the gradients of its projection's backward, whichever is larger
    deq = s.dequant and d.dequant_moment + s.dequant > d.backward_transient
    bt, dq = (d.dequant_moment, s.dequant) if deq else (d.backward_transient, 0)
    bwd_top = phase(
        gradients=max(s.grads, s.grads_accum) if accum else s.grads // max(layers, 1),
        activations=d.act_layers + d.act_rest,
        recompute=d.recompute, backward_transient=bt, dequant_transient=dq,
        autocast_weight_copies=copies_top, logits_held=held,
        **{gk: g.backward_layer - (g.layer_grads if accum else 0)
           + held_reduce_at_layer(g, d.act_layers // max(layers, 1))})
    bwd_end = phase(gradients=s.grads, backward_transient=bt, activations=d.last_layer,
                    dequant_transient=dq, logits_held=held, **{gk: g.backward_end})
    candidates = [bwd_start, bwd_top, bwd_end]
    if s.tied_grad:
        candidates.append(phase(gradients=s.grads, backward_transient=s.tied_grad, logits_held=held,
                                **{gk: g.backward_end}))
    backward = max(candidates, key=lambda live: sum(live.values()))
    step = phase(gradients=s.grads, optimizer_temp=s.opt_temp, logits_held=held)
    return {"forward_end": forward_end, "backward": backward, "optimizer_step": step}


def _overheads(s: StaticTerms, peak_alloc: int, gpu: GPUSpec | None, cfg: TrainConfig) -> dict[str, int]:
    static = sum(s.resident.values())
    return {"allocator_overhead": allocator_overhead_bytes(peak_alloc - static, gpu),
            "cuda_context": cuda_context_bytes(gpu), "paged_optimizer_state": s.opt_paged,
            "nccl_buffers": nccl_bytes(gpu, cfg.num_gpus)}


def memory_model(spec: ModelSpec, cfg: TrainConfig, gpu: GPUSpec | None) -> MemoryResult:
    s, d = cached_terms(spec, cfg, gpu)
    phases = _phases(s, d, cfg, spec.layers)
    totals = {k: sum(v.values()) for k, v in phases.items()}
    peak_phase = max(PHASES, key=lambda k: totals[k])
    peak_alloc = totals[peak_phase]
    overheads = _overheads(s, peak_alloc, gpu, cfg)
    reserved = peak_alloc + overheads["allocator_overhead"]
    device = reserved + overheads["cuda_context"] + overheads["paged_optimizer_state"] + overheads["nccl_buffers"]
    return MemoryResult(phases, peak_phase, peak_alloc, reserved, device, overheads, s.n_train, total_params(spec),
                        dict(s.host))


def device_bytes_fast(spec: ModelSpec, cfg: TrainConfig, gpu: GPUSpec | None) -> int:
    """``memory_model(...).device_bytes`` from the same components, without building the phase dicts
    (the search's feasibility filter, ~10x faster). It restates the sums of ``_phases`` term for term:
    ``tests/planner/test_properties.py::test_fast_path_equals_full_model`` holds the two equal on
    generated models and configurations; change both together."""
    s, d = cached_terms(spec, cfg, gpu)
    grads, layers = s.grads, spec.layers
    accum = cfg.grad_accum > 1
    grads_live = s.grads_accum if accum else 0
    copies_start, copies_top = backward_copies(s.other_copies, cfg, layers)
    saved = d.act_layers + d.act_model
    chunked = cfg.loss_impl == "chunked"
    head_fwd, head_kept = (s.head_copy, 0) if chunked else (0, s.head_copy)
    g = s.gathered
    last_layer_saved = d.act_layers // max(layers, 1)
    copy_out = g.forward_copy_out - last_layer_saved if g.forward_copy_out else 0
    fwd = (grads_live + saved + head_kept + s.other_copies
           + max(head_fwd + d.loss_forward + g.loss, d.forward_transient + g.forward_layer, copy_out))
    held = d.loss_held if cfg.output_held else 0
    start = grads_live + saved + head_kept + copies_start + g.backward_start + d.loss_backward + held
    bt = max(d.backward_transient, d.dequant_moment + s.dequant) if s.dequant else d.backward_transient
    top = ((max(grads, s.grads_accum) if accum else grads // max(layers, 1)) + d.act_layers + d.act_rest + d.recompute
           + bt + copies_top + g.backward_layer - (g.layer_grads if accum else 0)
           + held_reduce_at_layer(g, d.act_layers // max(layers, 1)) + held)
    end = grads + bt + d.last_layer + g.backward_end + held
    embed = grads + s.tied_grad + g.backward_end + held if s.tied_grad else 0
    step = grads + s.opt_temp + held
    peak = s.resident_total + max(fwd, start, top, end, embed, step)
    return (peak + allocator_overhead_bytes(peak - s.resident_total, gpu) + cuda_context_bytes(gpu) + s.opt_paged
            + nccl_bytes(gpu, cfg.num_gpus))
