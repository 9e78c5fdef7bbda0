"""Knob spellings and validation: the same names and values on the CLI and in the library.

Every error names the value and what would be valid (``FtplanError``; the CLI exits 2 on it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import FtplanError, UnknownNameError
from ..units import real
from .arch import fused_experts, resolve_targets
from .memory.optimizer import OPTIMIZERS
from .types import FSDP_SHARDINGS, ZERO_SHARDINGS, GPUSpec, ModelSpec, TrainConfig

METHODS = ("full", "lora", "qlora")
QUANTS = ("nf4", "fp4", "int8", "bf16", "fp16", "fp32")
ATTENTIONS = ("sdpa", "eager", "flash_attention_2")
OBJECTIVES = ("throughput", "cost", "quality")
SHARDINGS = ("ddp", "fsdp", "fsdp_grad_op", "zero1", "zero2", "zero3")
OFFLOADS = ("none", "optimizer", "params")
LOSS_IMPLS = ("standard", "chunked", "legacy_shift", "legacy_upcast")
# losses of older transformers (``planner.memory.logits``): what a run on that stack held, for estimate() only;
# nothing ftplan builds runs them
LEGACY_LOSSES = ("legacy_shift", "legacy_upcast")
COMPUTE_DTYPES = ("bf16", "fp16")
BNB_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")

_ALIASES = {
    "method": {"full-finetune": "full", "full_finetune": "full", "ft": "full", "q-lora": "qlora"},
    "quant": {"4bit": "nf4", "4-bit": "nf4", "8bit": "int8", "8-bit": "int8", "llm.int8": "int8",
              "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "none": "bf16",
              "16bit": "bf16"},
    "optimizer": {"adamw_torch_fused": "adamw", "adam": "adamw", "adamw_fused": "adamw",
                  "adamw_hf": "adamw_torch", "adamw_foreach": "adamw_torch", "adamw_bnb_8bit": "adamw_8bit",
                  "adamw8bit": "adamw_8bit", "paged_adamw": "paged_adamw_32bit", "paged_adamw_8bit": "paged_adamw_8bit",
                  "paged_adamw32bit": "paged_adamw_32bit", "paged_adamw8bit": "paged_adamw_8bit"},
    "attention": {"flash": "flash_attention_2", "fa2": "flash_attention_2", "flash_attn": "flash_attention_2",
                  "flash-attention-2": "flash_attention_2", "math": "eager"},
    "objective": {"speed": "throughput", "tokens/s": "throughput", "price": "cost", "dollars": "cost"},
    "sharding": {"none": "ddp", "fsdp2": "fsdp", "full_shard": "fsdp", "fsdp_full_shard": "fsdp",
                 "shard_grad_op": "fsdp_grad_op", "fsdp_shard_grad_op": "fsdp_grad_op", "zero_1": "zero1",
                 "zero_2": "zero2", "zero_3": "zero3", "zero_stage_1": "zero1", "zero_stage_2": "zero2",
                 "zero_stage_3": "zero3", "deepspeed_zero1": "zero1", "deepspeed_zero2": "zero2",
                 "deepspeed_zero3": "zero3"},
    "offload": {"no": "none", "off": "none", "false": "none", "cpu": "params", "optimizer_state": "optimizer",
                "optim": "optimizer", "param": "params", "parameters": "params", "all": "params"},
    "loss_impl": {"hf": "standard", "fused": "chunked", "liger": "chunked", "chunked_ce": "chunked",
                  "shift": "legacy_shift", "upcast": "legacy_upcast"},
    "compute_dtype": {"bfloat16": "bf16", "float16": "fp16", "half": "fp16"},
}
_VALID = {"method": METHODS, "quant": QUANTS, "optimizer": OPTIMIZERS, "attention": ATTENTIONS,
          "objective": OBJECTIVES, "sharding": SHARDINGS, "offload": OFFLOADS, "loss_impl": LOSS_IMPLS, "compute_dtype": COMPUTE_DTYPES}

# which MoE expert layout the estimate assumes (planner.arch.fused_experts), said on every MoE estimate
MOE_FUSED = ("MoE: transformers >= 5 layout assumed: fused expert stacks that bitsandbytes does not quantize "
             "(fp32 after kbit preparation, so 4-bit saves little on experts) with PEFT's per-expert LoRA; "
             "FTPLAN_MOE_LAYOUT=per_expert for transformers 4.x")
MOE_PER_EXPERT = ("MoE: transformers 4.x layout assumed: one nn.Linear per expert, quantized like the others; "
                  "FTPLAN_MOE_LAYOUT=fused for transformers >= 5")

# the knobs estimate()/plan() take; effective_batch is turned into grad_accum
KNOBS = ("method", "quant", "double_quant", "lora_rank", "lora_alpha", "lora_targets", "lora_dropout",
         "micro_batch", "seq_len", "grad_accum", "effective_batch", "gradient_checkpointing", "optimizer",
         "attention", "num_gpus", "nodes", "sharding", "offload", "prepare_kbit", "autocast", "loss_impl", "compute_dtype", "output_held")

DEFAULTS: dict[str, Any] = {
    "method": "qlora", "quant": "nf4", "double_quant": True, "lora_rank": 16, "lora_targets": "all-linear",
    "lora_dropout": 0.0, "micro_batch": 1, "seq_len": 2048, "effective_batch": 16,
    "gradient_checkpointing": True, "optimizer": "paged_adamw_8bit", "attention": "sdpa", "num_gpus": 1,
    "prepare_kbit": True, "autocast": True, "loss_impl": "standard", "output_held": False,
}


def choice(kind: str, value: Any) -> str:
    """Normalise one categorical knob ('Flash' -> 'flash_attention_2'), or raise naming the valid ones."""
    v = str(value).strip().lower().replace(" ", "_")
    v = _ALIASES.get(kind, {}).get(v, v)
    v = v.replace("-", "_") if kind in ("optimizer", "attention", "sharding", "offload") else v
    v = _ALIASES.get(kind, {}).get(v, v)
    if v not in _VALID[kind]:
        raise UnknownNameError(kind.replace("_", " "), value, _VALID[kind])
    return v


# the largest value each whole-number knob takes: far beyond any real run, small enough that every loop and
# product over them stays quick and finite (a 2^70 effective batch is a typo, not a plan)
UPPER = {"micro_batch": 65_536, "seq_len": 16_777_216, "grad_accum": 1_048_576, "effective_batch": 16_777_216,
         "lora_rank": 65_536, "lora_alpha": 1_048_576, "num_gpus": 65_536, "nodes": 8_192}


def positive_int(name: str, value: Any) -> int:
    """``value`` as a whole number in ``1..UPPER[name]``; an FtplanError naming it otherwise (a bool, a
    fraction, NaN, inf, text that is not a number)."""
    try:
        if isinstance(value, bool) or isinstance(value, (list, tuple, dict, set)):
            raise ValueError
        if isinstance(value, int):
            v = value
        else:
            f = float(value)
            if not math.isfinite(f) or f != int(f):
                raise ValueError
            v = int(f)
    except (TypeError, ValueError, OverflowError):
        raise FtplanError(f"{name}={value!r} must be a whole number") from None
    if v <= 0:
        raise FtplanError(f"{name}={v} must be greater than 0")
    top = UPPER.get(name)
    if top is not None and v > top:
        raise FtplanError(f"{name}={v} is beyond the largest accepted, {top:,}")
    return v


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def flag(name: str, value: Any) -> bool:
    """A yes/no knob: a bool, 0/1, or true/false, yes/no, on/off as text; an FtplanError otherwise (the
    text 'false' is not True)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise FtplanError(f"{name}={value!r} must be true or false")


def parse_targets(value: Any) -> tuple[str, ...]:
    """'all-linear', 'q_proj,v_proj' or a list -> tuple of names."""
    if value is None:
        return ("all-linear",)
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value):
        items = list(value)
    else:
        raise FtplanError(f"lora_targets={value!r} must be all-linear, attention, mlp, or module names such as "
                          "'q_proj,v_proj' (text or a list of text)")
    out = tuple(t.strip() for t in items if t.strip())
    if not out:
        raise FtplanError("lora targets are empty; use all-linear or names such as q_proj,v_proj")
    return out


def method_quant(method: str | None, quant: str | None) -> tuple[str, str]:
    """Make method and quantization consistent: QLoRA is LoRA on a 4-bit base."""
    m = choice("method", method) if method is not None else None
    q = choice("quant", quant) if quant is not None else None
    if m is None:
        m = "qlora" if q in (None, "nf4", "fp4") else "lora"
    if m == "qlora":
        q = q or "nf4"
        if q not in ("nf4", "fp4"):
            raise FtplanError(f"--method qlora needs a 4-bit base (--quant nf4 or fp4), not --quant {q}; "
                              f"use --method lora --quant {q}")
    elif m == "lora":
        q = q or "bf16"
        if q in ("nf4", "fp4"):
            m = "qlora"  # LoRA on a 4-bit base is QLoRA
    else:
        q = q or "bf16"
        if q in ("nf4", "fp4", "int8"):
            raise FtplanError(f"--method full trains every weight and cannot use a quantized base (--quant {q}); "
                              "valid: bf16, fp16, fp32; or use --method qlora")
    return m, q


def no_bf16(gpu: GPUSpec | None) -> bool:
    """A GPU without bf16 (compute capability < 8: T4, V100, GTX 16xx, RTX 20xx). The CPU computes bf16."""
    return gpu is not None and gpu.key != "cpu" and not gpu.bf16


def compute_dtype_for(quant: str, requested: Any, gpu: GPUSpec | None, warnings: list[str]) -> str:
    """The 16-bit compute dtype (``TrainConfig.compute_dtype``): the one asked for, else fp16 over an fp16
    base, else bf16. A GPU without bf16 always computes in fp16, with loss scaling (``memory.precision``)."""
    compute = choice("compute_dtype", requested) if requested is not None else ("fp16" if quant == "fp16" else "bf16")
    if gpu is not None and no_bf16(gpu):
        asked = " (compute_dtype=bf16 replaced)" if compute == "bf16" and requested is not None else ""
        warnings.append(f"{gpu.name} has no bf16: fp16 compute with dynamic loss scaling (torch.amp.GradScaler), "
                        f"16-bit weights in fp16{asked}")
        return "fp16"
    if compute == "bf16" and quant == "fp16":
        raise FtplanError("compute_dtype=bf16 over an fp16 base (--quant fp16) is not a configuration HF runs; "
                          "use --quant bf16, or compute_dtype=fp16")
    return compute


def base_format_for(method: str, quant: str, compute: str, autocast: bool, warnings: list[str]) -> str:
    """The base weights' format under ``compute``: a bf16 base becomes fp16 under fp16 compute, and full
    fine-tuning with fp16 autocast keeps fp32 master weights, because ``torch.amp.GradScaler`` refuses
    fp16 gradients (``_unscale_grads_``: "Attempting to unscale FP16 gradients"; HF Trainer with
    ``fp16=True`` on an fp16 model fails the same way)."""
    if quant == "bf16" and compute == "fp16":
        quant = "fp16"
    if method == "full" and quant == "fp16" and compute == "fp16" and autocast:
        warnings.append("full fine-tuning with fp16 autocast keeps fp32 master weights (GradScaler cannot unscale "
                        "fp16 gradients): base fp32")
        return "fp32"
    return quant


@dataclass(frozen=True)
class Resolved:
    config: TrainConfig
    warnings: tuple[str, ...]


def make_config(model: ModelSpec, gpu: GPUSpec | None = None, **knobs: Any) -> Resolved:
    """A validated ``TrainConfig`` from user knobs (``None`` = default), with warnings for adjustments."""
    unknown = set(knobs) - set(KNOBS)
    if unknown:
        raise FtplanError(f"unknown option(s) {sorted(unknown)}; valid: {', '.join(KNOBS)}")
    k = {n: v for n, v in knobs.items() if v is not None}
    warnings: list[str] = []
    method, quant = method_quant(k.get("method"), k.get("quant"))
    autocast = flag("autocast", k.get("autocast", True))
    n_gpus = positive_int("num_gpus", k.get("num_gpus", DEFAULTS["num_gpus"]))
    sharding = choice("sharding", k["sharding"]) if k.get("sharding") is not None else None
    if n_gpus > 1 and sharding is None:
        sharding = "ddp"
    if n_gpus == 1:
        sharding = None
    offload = choice("offload", k.get("offload", "none"))
    if n_gpus > 1 and k.get("sharding") is None and offload != "none":
        # the strategy that offloads what was asked: FSDP moves parameters (with gradients and the step),
        # only ZeRO moves the optimizer alone
        sharding = "fsdp" if offload == "params" else "zero2"
    check_offload(sharding, offload)
    nodes = positive_int("nodes", k.get("nodes", 1))
    if n_gpus == 1 and nodes > 1:  # one GPU runs on one server; --nodes then only bounds the GPU counts suggested
        nodes = 1
    if n_gpus % nodes:
        raise FtplanError(f"--nodes={nodes} does not divide --gpus={n_gpus}: every server runs the same number of GPUs")
    if sharding in ZERO_SHARDINGS:
        if quant in ("nf4", "fp4", "int8") and k.get("method") is None and k.get("quant") is None:
            method, quant = "lora", "bf16"  # the QLoRA default is not modelled under ZeRO: LoRA on a 16-bit base
            warnings.append(f"--sharding {sharding}: LoRA on a 16-bit base (QLoRA under DeepSpeed ZeRO is not "
                            "modelled yet)")
        if quant in ("nf4", "fp4", "int8"):
            raise FtplanError(f"--sharding {sharding} with a {quant} base is not modelled yet; use --sharding fsdp "
                              "for QLoRA on several GPUs, or --method lora/full with DeepSpeed")
        if autocast and k.get("autocast") is not None:
            warnings.append("DeepSpeed runs the model in its 16-bit dtype without autocast (HF Trainer + "
                            "DeepSpeed): autocast=False")
        autocast = False  # DeepSpeed's bf16/fp16 mode casts the module; accelerate leaves autocast off
    compute = compute_dtype_for(quant, k.get("compute_dtype"), gpu, warnings)
    quant = base_format_for(method, quant, compute, autocast, warnings)
    rank = positive_int("lora_rank", k.get("lora_rank", DEFAULTS["lora_rank"]))
    alpha = positive_int("lora_alpha", k.get("lora_alpha", 2 * rank))
    targets = parse_targets(k.get("lora_targets", DEFAULTS["lora_targets"]))
    dropout = real("lora_dropout", k.get("lora_dropout", DEFAULTS["lora_dropout"]), low=0, high=1, high_open=True)
    mb = positive_int("micro_batch", k.get("micro_batch", DEFAULTS["micro_batch"]))
    seq = positive_int("seq_len", k.get("seq_len", DEFAULTS["seq_len"]))
    if seq > model.max_positions:
        warnings.append(f"seq_len={seq} is beyond {model.name}'s max_position_embeddings={model.max_positions}")
    accum = _grad_accum(k, mb, n_gpus, warnings)
    optimizer = choice("optimizer", k.get("optimizer", DEFAULTS["optimizer"]))
    if sharding in FSDP_SHARDINGS and optimizer in BNB_OPTIMIZERS:
        if "optimizer" in k:
            raise FtplanError(f"--optimizer {optimizer} with --sharding {sharding}: bitsandbytes optimizers do not run "
                              "on FSDP2's sharded (DTensor) parameters; valid: adamw, adamw_torch, sgd, adafactor")
        optimizer = "adamw"  # the default 8-bit optimizer cannot step FSDP2's shards
        warnings.append("optimizer adamw: the default paged_adamw_8bit (bitsandbytes) cannot step FSDP2's sharded "
                        "parameters")
    attention = choice("attention", k.get("attention", DEFAULTS["attention"]))
    if gpu is not None and attention == "flash_attention_2" and not gpu.flash_attention_2:
        warnings.append(f"flash_attention_2 does not support {gpu.name}; HF would fail to load it (use sdpa)")
    loss_impl = choice("loss_impl", k.get("loss_impl", DEFAULTS["loss_impl"]))
    cfg = TrainConfig(method=method, quant=quant, double_quant=flag("double_quant", k.get("double_quant", True)),
                      lora_rank=rank, lora_alpha=alpha, lora_targets=targets, lora_dropout=dropout,
                      micro_batch=mb, seq_len=seq, grad_accum=accum,
                      gradient_checkpointing=flag("gradient_checkpointing", k.get("gradient_checkpointing", True)), optimizer=optimizer,
                      attention=attention, num_gpus=n_gpus, nodes=nodes, sharding=sharding, offload=offload,
                      prepare_kbit=flag("prepare_kbit", k.get("prepare_kbit", True)), autocast=autocast,
                      loss_impl=loss_impl, compute_dtype=compute,
                      output_held=flag("output_held", k.get("output_held", False)))
    if cfg.is_lora:
        resolve_targets(model, targets)  # raises on a name the model does not have
    if model.is_moe:
        warnings.append(MOE_FUSED if fused_experts() else MOE_PER_EXPERT)
    return Resolved(cfg, tuple(warnings))


def require_buildable(cfg: TrainConfig, what: str) -> None:
    """Raise when ``cfg`` holds a knob that only describes another stack or loop (``LEGACY_LOSSES``,
    ``output_held``): ``what`` (a plan, a trace, a run) would build something else."""
    check_buildable(cfg.loss_impl, cfg.output_held, what)


def check_buildable(loss_impl: Any, output_held: Any, what: str) -> None:
    """``require_buildable`` on the knobs as given (``None``: not given); ``loss_impl`` may be an alias."""
    if loss_impl is not None and choice("loss_impl", loss_impl) in LEGACY_LOSSES:
        raise FtplanError(f"loss_impl={loss_impl!r} describes an older transformers' loss for estimate() only; "
                          f"{what} runs the installed transformers' loss; valid: standard, chunked")
    if output_held is not None and flag("output_held", output_held):
        raise FtplanError(f"output_held=True describes a custom loop for estimate() only; {what} drops the model's "
                          "output before backward, as HF Trainer does; valid: output_held=False")


# what each strategy can move to the host: FSDP's CPUOffloadPolicy / CPUOffload(offload_params=True) moves
# parameters, gradients and the optimizer step together; DeepSpeed ZeRO offloads the optimizer (stages 1-3:
# ``offload_optimizer``) and the parameters (stage 3 only: ``offload_param``, which implies the optimizer here, as
# DeepSpeed's estimator and the HF guides pair them); DDP offloads nothing
OFFLOAD_FOR = {None: ("none",), "ddp": ("none",), "fsdp": ("none", "params"), "fsdp_grad_op": ("none", "params"),
               "zero1": ("none", "optimizer"), "zero2": ("none", "optimizer"),
               "zero3": ("none", "optimizer", "params")}


def check_offload(sharding: str | None, offload: str) -> None:
    """Raise when ``sharding`` cannot offload ``offload`` (see ``OFFLOAD_FOR``)."""
    ok = OFFLOAD_FOR[sharding]
    if offload not in ok:
        what = f"--sharding {sharding}" if sharding else "one GPU (offload needs --gpus 2 or more and a sharding)"
        raise FtplanError(f"--offload={offload} is not possible with {what}; valid: {', '.join(ok)}"
                          + (" (FSDP moves parameters, gradients and the optimizer step together: --offload params)"
                             if sharding in FSDP_SHARDINGS else ""))


def _grad_accum(k: dict[str, Any], mb: int, n_gpus: int, warnings: list[str]) -> int:
    per_step = mb * n_gpus
    if "grad_accum" in k:
        accum = positive_int("grad_accum", k["grad_accum"])
        if "effective_batch" in k and positive_int("effective_batch", k["effective_batch"]) != accum * per_step:
            raise FtplanError(f"effective_batch={k['effective_batch']} != micro_batch {mb} x grad_accum {accum} x "
                              f"gpus {n_gpus}; give one of effective_batch or grad_accum")
        return accum
    eff = positive_int("effective_batch", k.get("effective_batch", DEFAULTS["effective_batch"]))
    accum = max(1, math.ceil(eff / per_step))
    if accum * per_step != eff:
        warnings.append(f"effective_batch={eff} is not a multiple of micro_batch x gpus = {per_step}; "
                        f"using grad_accum={accum} (effective batch {accum * per_step})")
    return accum
