"""Per-rank memory of data-parallel and sharded training: DDP, FSDP2 (full shard and grad-op shard), with
parameters offloaded to the host.

Each term is bytes on one rank. ``N`` is the number of ranks, ``L`` the bytes of one decoder layer's
parameters as FSDP gathers them, ``T`` the tail unit (final norm and lm_head, and the embedding when tied).

Sources (read in the library code; the figures measured with ``ftplan.measure.distributed`` on CPU ranks):
- accelerate ``utils.fsdp_utils.fsdp2_prepare_model`` (what HF Trainer, TRL and ``ftplan train`` run): with
  mixed precision every trainable parameter that is not fp32 is upcast to fp32 before ``fully_shard`` (FSDP2
  needs one original dtype per group; models with ``Params4bit`` are left alone), and
  ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=bf16)`` gathers in the compute dtype. Units: every
  decoder layer (``TRANSFORMER_BASED_WRAP``), the input embedding when untied, the final norm + lm_head as one
  tail unit with ``reshard_after_forward=False``, the root.
- torch ``distributed/fsdp/_fully_shard/_fsdp_param_group.py`` (2.13): ``wait_for_unshard`` in forward keeps
  the previous unit's all-gather output alive in ``comm_ctx.all_gather_state`` (and in a local variable until it
  returns) while the current unit's copy-out allocates its unsharded parameters: three layers at that moment;
  in backward the next unit is prefetched (``_backward_prefetch``), and ``post_backward`` keeps one
  reduce-scatter input alive (``reduce_scatter_max_input_buffers = 1``) until the next unit's reduce.
  ``_fsdp_param.free_storage`` resizes an unsharded parameter's storage to 0 after each reshard.
- DDP: ``torch.nn.parallel.DistributedDataParallel`` with ``gradient_as_bucket_view=False`` (the default)
  copies gradients into buckets that together hold every gradient once more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..arch import embedding_params, layer_linears, lm_head_params, n_layers_of, norm_params
from ..types import ZERO_SHARDINGS, ModelSpec, TrainConfig
from .precision import FORMAT_BYTES, Precision


def ranks(cfg: TrainConfig) -> int:
    """Ranks the model state is split over: ``num_gpus`` when the strategy shards anything, else 1."""
    return cfg.num_gpus if (cfg.num_gpus > 1 and cfg.sharding not in (None, "ddp")) else 1


def shard(x: int, n: int) -> int:
    """``ceil(x / n)``: one rank's part of ``x`` bytes split over ``n`` ranks. FSDP2 pads each parameter's
    dim 0 to a multiple of ``n``; for catalog models (dims multiples of 64) the padding is 0 up to 64 ranks."""
    return -(-x // n)


def fsdp_master_bytes(cfg: TrainConfig, prec: Precision) -> int:
    """Bytes per trainable parameter as FSDP2 stores its shard: 4 when mixed precision upcasts 16-bit trainable
    parameters to fp32 (accelerate ``fsdp2_prepare_model``; not for models holding 4-bit weights), else the
    trainable dtype. Gradients and the optimizer state follow the stored dtype."""
    if cfg.autocast and not prec.quantized:
        return 4
    return prec.trainable


def gather_bytes(cfg: TrainConfig, prec: Precision, stored: int) -> int:
    """Bytes per element of a gathered (unsharded) floating parameter: the compute dtype under
    ``MixedPrecisionPolicy(param_dtype=...)`` (mixed precision), else the stored dtype."""
    return FORMAT_BYTES[cfg.compute_dtype] if cfg.autocast else stored


def layer_param_counts(spec: ModelSpec) -> tuple[int, int]:
    """(linear weights + biases, norm weights) of the largest decoder layer (a unit of FSDP), parameters."""
    lin = 0
    for x in layer_linears(spec):
        if n_layers_of(spec, x) == spec.layers:
            lin += x.params * x.count
        else:  # MoE layers interleaved with dense ones: the MoE layer is the larger unit
            lin += x.params * x.count if "expert" in x.group or x.group == "moe" else 0
    norms = (norm_params(spec) - spec.hidden * (2 if spec.norm == "layernorm" else 1)) // max(spec.layers, 1)
    return lin, norms


def fsdp_layer_gathered_bytes(spec: ModelSpec, cfg: TrainConfig, prec: Precision, lora_params_per_layer: int) -> int:
    """``L``: one decoder layer's parameters unsharded, bytes. Dense linears and norms in the gather dtype;
    4-bit weights gather their packed bytes (stored in a float ``quant_storage`` dtype so FSDP can shard them:
    the same bytes); LoRA adapters in the gather dtype."""
    lin, norms = layer_param_counts(spec)
    g = gather_bytes(cfg, prec, prec.trainable if cfg.method == "full" else prec.base_bytes or prec.unquantized)
    if prec.quantized:
        from .weights import four_bit_packed_bytes

        base = four_bit_packed_bytes(lin) if cfg.quant in ("nf4", "fp4") else lin
        unq = gather_bytes(cfg, prec, prec.unquantized)
        return base + norms * unq + lora_params_per_layer * gather_bytes(cfg, prec, 4)
    lora = lora_params_per_layer * gather_bytes(cfg, prec, 4)
    return (lin + norms) * g + lora


def fsdp_tail_gathered_bytes(spec: ModelSpec, cfg: TrainConfig, prec: Precision) -> int:
    """``T``: the tail unit unsharded (final norm, lm_head; the embedding too when tied), bytes."""
    stored = prec.trainable if cfg.method == "full" else prec.unquantized
    g = gather_bytes(cfg, prec, stored)
    n = spec.hidden + (lm_head_params(spec) if not spec.tied_embeddings else embedding_params(spec))
    return n * g


def fsdp_embedding_gathered_bytes(spec: ModelSpec, cfg: TrainConfig, prec: Precision) -> int:
    """The input embedding's own unit unsharded (0 when tied: it is in the tail unit), bytes."""
    if spec.tied_embeddings:
        return 0
    stored = prec.trainable if cfg.method == "full" else prec.unquantized
    return embedding_params(spec) * gather_bytes(cfg, prec, stored)


@dataclass(frozen=True)
class Gathered:
    """What FSDP holds unsharded beside the resident shards, per moment of the step (bytes per rank)."""

    forward_copy_out: int  # unit i+1's copy-out: previous all-gather output + current output + its parameters
    forward_layer: int  # during a layer's forward: its all-gather output (kept for overlap) + its parameters
    loss: int  # the tail unit gathered during the loss (and its all-gather output)
    backward_start: int  # the loss's backward: the tail kept from forward (its pre-backward hook, which
    # prefetches the last layer, runs after the loss's gradients reach lm_head's output)
    backward_layer: int  # a layer, the next one prefetched, its unsharded gradients
    backward_end: int  # the embedding unit and the last reduce-scatter input
    held_reduce: int = 0  # the previous layer's reduce-scatter input, kept until this layer's reduce: it
    # exists from the second layer of the backward on, when one layer's saved activations are gone
    layer_grads: int = 0  # a layer's unsharded gradients as autograd makes them (in ``backward_layer``);
    # with accumulation they add into the gradients every unit holds (counted there)


def fsdp_gathered(L: int, T: int, E: int, R: int, G: int, grad_op: bool, layers: int) -> Gathered:
    """FSDP2's gathered memory by moment (see module docstring). ``R`` is one layer's reduce-scatter input
    (its gradients in the reduce dtype), ``G`` its unsharded gradients (param dtype). With ``grad_op``
    (``reshard_after_forward=False``) every unit stays gathered from its forward to its backward."""
    if grad_op:
        all_units = layers * L + E
        return Gathered(all_units + 2 * L, all_units + L, all_units + 2 * T, all_units + T,
                        (layers - 1) * L + L + G, E + R, R, G)
    return Gathered(3 * L, 2 * L, 2 * T, T, 2 * L + G, E + R, R, G)


def held_reduce_at_layer(g: Gathered, layer_activations: int) -> int:
    """The held reduce-scatter input as it adds to the backward's largest moment: it is there from the
    second layer on, when that layer's saved activations (``layer_activations``) are freed already."""
    return max(0, g.held_reduce - layer_activations)


def model_load_host_bytes(spec: ModelSpec, cfg: TrainConfig, weights_bytes: int) -> int:
    """Host memory to load the model, per node, bytes.

    FSDP through accelerate (``fsdp_cpu_ram_efficient_loading``, the setting ftplan's configs write): rank 0
    loads the full state dict on the host and ``fsdp2_load_full_state_dict`` broadcasts it, the other ranks
    build on ``meta``: the weights once (``weights_bytes``, their stored format). DDP and one GPU load each
    tensor from the memory-mapped checkpoint straight to the device (transformers >= 4.47 with
    ``low_cpu_mem_usage``; page cache, not process memory): 0 counted."""
    return weights_bytes if cfg.is_fsdp else 0


def host_memory(per_rank: dict[str, int], spec: ModelSpec, cfg: TrainConfig, weights_bytes: int,
                ranks_per_node: int | None = None) -> dict[str, int]:
    """Host memory per node by term, bytes: each rank's offloaded state times the ranks on the node, plus
    loading the model (``model_load_host_bytes``). Both count: with offload the shards are placed on the host
    while rank 0 still holds the full state dict it broadcasts. Not counted: each process's own footprint
    (Python, the CUDA and torch libraries), the data loader, pinned staging buffers."""
    n = ranks_per_node if ranks_per_node is not None else cfg.num_gpus
    out = {f"offloaded_{k}": v * n for k, v in per_rank.items() if v}
    load = model_load_host_bytes(spec, cfg, weights_bytes)
    if load:
        out["model_load"] = load
    return out


# DeepSpeed ZeRO as HF Trainer runs it: the "auto" values transformers' ``integrations/deepspeed.py``
# (``trainer_config_finalize``) fills from the model's hidden size, and DeepSpeed's own defaults
# (``deepspeed/runtime/zero/config.py``) for what "auto" does not touch.
def zero_reduce_bucket_elems(spec: ModelSpec) -> int:
    """``reduce_bucket_size`` "auto" = ``hidden * hidden`` elements (transformers); DeepSpeed's own default,
    5e8 elements (1 GB in bf16), applies only to a config that does not say "auto"."""
    return spec.hidden * spec.hidden


def zero3_prefetch_bucket_elems(spec: ModelSpec) -> int:
    """``stage3_prefetch_bucket_size`` "auto" = ``int(0.9 * hidden * hidden)`` elements (transformers)."""
    return int(0.9 * spec.hidden * spec.hidden)


def zero3_persistence_threshold(spec: ModelSpec) -> int:
    """``stage3_param_persistence_threshold`` "auto" = ``10 * hidden`` elements: smaller parameters (norms,
    biases) stay whole on every rank (``parameter_offload.py``)."""
    return 10 * spec.hidden


ZERO3_MAX_REUSE_DISTANCE = 1_000_000_000  # stage3_max_reuse_distance default (elements; not "auto")


@dataclass(frozen=True)
class ZeroTerms:
    """Per-rank terms of a ZeRO stage (bytes): what stays on the device, what the step adds, what the host holds."""

    resident: dict[str, int]
    grads: int  # gradients on the device at the end of backward
    grads_accum: int  # gradients kept between micro-batches of an accumulation
    opt_temp: int  # the step's transients on the device
    gathered: Gathered
    host: dict[str, int]


def zero_terms(spec: ModelSpec, cfg: TrainConfig, params16: dict[str, int], small_params: int, n_train: int,
               optimizer_state: int, optimizer_temp: int, largest_linear: int, total_params: int) -> ZeroTerms:
    """Per-rank memory of DeepSpeed ZeRO stage 1, 2 or 3 (``cfg.sharding``) with bf16/fp16 enabled.

    ``params16``: the model's weights by term, all 16-bit (the engine casts the module); ``small_params``: bytes
    of parameters under the stage-3 persistence threshold (norms, biases); ``n_train``: trainable parameters;
    ``optimizer_state``: the inner optimizer's state for fp32 master parameters (unsharded bytes).
    Read in DeepSpeed 0.19 (``runtime/zero/stage_1_and_2.py``, ``stage3.py``), measured on 2 CPU ranks:
    - stage 1/2: the 16-bit parameters whole (``bit16_groups_flat``), the fp32 master partition ``4 n / N``
      and the optimizer state ``/ N``; gradients whole (stage 1) or as the contiguous partition ``2 n / N``
      (stage 2), reduced through ``reduce_bucket_size`` buckets (one bucket and its flattened copy in
      backward; two buckets with ``overlap_comm``); the step makes the flat 16-bit gradient partition and its
      fp32 copy (``2 n / N + 4 n / N``).
    - stage 3: 16-bit partitions ``/ N`` (parameters under the persistence threshold whole), the gradient
      partition buffer ``2 n / N`` and the reduce bucket allocated at init and kept; gathered parameters: the
      module being run and the prefetch bucket, and at the turn from forward to backward every parameter
      reused within ``stage3_max_reuse_distance`` elements (the last layers, up to 1e9 elements).
    - offload of the optimizer: master, state and a persistent fp32 gradient partition ``4 n / N`` on the
      host (the step runs there; stage 1/2 keep a 16-bit copy-back buffer ``2 n / N`` on the device); of the
      parameters (stage 3): the 16-bit partitions on the host.
    """
    n = cfg.num_gpus
    stage = int(cfg.sharding[-1]) if cfg.sharding in ZERO_SHARDINGS else 0
    off_opt = cfg.offload in ("optimizer", "params")
    resident: dict[str, int] = {}
    host: dict[str, int] = {}
    bucket = 2 * zero_reduce_bucket_elems(spec)
    if stage == 3:
        sharded = {k: shard(v, n) for k, v in params16.items()}
        sharded["weights_unquantized"] = sharded.get("weights_unquantized", 0) + small_params - shard(small_params, n)
        (host if cfg.offload == "params" else resident).update(sharded)
        resident["zero_buffers"] = 2 * shard(n_train, n) * (0 if off_opt else 1) + bucket
        if off_opt:
            host["gradients"] = 2 * shard(n_train, n)
    else:
        resident.update(params16)
    master = 4 * shard(n_train, n)
    state = shard(optimizer_state, n)
    if off_opt:
        host["master_weights"], host["optimizer_state"] = master, state
        host["gradients"] = host.get("gradients", 0) + 4 * shard(n_train, n)  # the fp32 gradient partition
        host["optimizer_temp"] = shard(optimizer_temp, n)
        if stage in (1, 2):
            resident["zero_buffers"] = 2 * shard(n_train, n)  # param_buffer_of_bit16_for_cpu_offload
        opt_temp = 0
    # gradients at the end of backward: whole (stage 1), the contiguous partition (stage 2); stage 3's partition
    # buffer is resident (``zero_buffers``) or on the host
    grads = 2 * n_train if stage == 1 else (2 * shard(n_train, n) if stage == 2 else 0)
    accum = grads
    if not off_opt:
        resident["master_weights"], resident["optimizer_state"] = master, state
        # the step (``DeepSpeedZeroOptimizer.step``): the gradients of other ranks' partitions are freed, the own
        # partition is flattened (16-bit) and copied to fp32; the 16-bit copies are freed before the inner
        # optimizer's step makes its temporaries. The largest of these moments, less the gradients held at the start
        # (measured, 2 CPU ranks: 16-bit partition + flat copy + fp32 copy = fp32 copy + AdamW's foreach temporary)
        part16, fp32 = 2 * shard(n_train, n), 4 * shard(n_train, n)
        opt_temp = max(grads, part16 + part16 + fp32, fp32 + shard(optimizer_temp, n)) - grads
    # a bucket and its flattened copy (the concat in stage 3), and a layer's 16-bit gradients as autograd makes
    # them, before the hooks copy them into the bucket (measured: 2 CPU ranks, stage 2)
    lin, norms = layer_param_counts(spec)
    layer_trainable = n_train // max(spec.layers, 1) if cfg.is_lora else lin + norms
    reduce_buffers = 2 * bucket + 2 * layer_trainable if stage in (1, 2) else bucket  # stage 3: one gradient at a
    # time goes from autograd into the resident bucket (measured: 2 and 4 CPU ranks)
    gathered = Gathered(0, 0, 0, 0, 0, 0)
    if stage == 3:
        live = 2 * (largest_linear + zero3_prefetch_bucket_elems(spec))
        # a parameter is released after use only when its next use is more than ``stage3_max_reuse_distance``
        # elements of the trace away: at the turn from forward to backward (and at the top layer of backward)
        # the last 1e9 elements gathered are still there; a model under 1e9 parameters stays gathered whole
        # (measured: 2 and 4 CPU ranks)
        window = 2 * min(ZERO3_MAX_REUSE_DISTANCE, total_params + (n_train if cfg.is_lora else 0))
        gathered = Gathered(live, live, window, window, window, live)
    gathered = replace(gathered, backward_layer=gathered.backward_layer + reduce_buffers,
                       backward_end=gathered.backward_end + reduce_buffers)
    return ZeroTerms(resident, grads, accum, opt_temp, gathered, host)
