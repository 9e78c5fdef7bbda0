"""A plan as transformers / peft / bitsandbytes objects, for people who keep their own trainer.

    plan = ftplan.plan("8b", "rtx4090")[0]
    model = AutoModelForCausalLM.from_pretrained(model_id, **hf.model_kwargs(plan))
    model = hf.peft_model(model, plan, "8b")  # k-bit preparation as the plan counted it, then LoRA
    args = hf.training_arguments(plan, output_dir="out")
    trainer = Trainer(model=model, args=args, ..., callbacks=[hf.MemoryCallback(plan)])

Each function takes a ``Plan``, an ``Estimate``, a ``TrainConfig`` or a ``best.json`` document.
Precision follows ``TrainConfig.compute_dtype``: bf16, or fp16 with loss scaling on GPUs without bf16
(the 16-bit weights, bitsandbytes' compute dtype and the Trainer's ``bf16``/``fp16`` flags all agree).
"""

from __future__ import annotations

from typing import Any

from ..best import best_config, best_knobs
from ..errors import FtplanError
from ..planner.options import require_buildable
from ..planner.types import Estimate, Plan, TrainConfig
from ..profiles.models import get_model
from .exports import HF_OPTIM, LIGER_FLCE_ONLY, amp_flags, load_dtype


def config_of(obj: Any) -> TrainConfig:
    """The TrainConfig inside a Plan, an Estimate, a best.json document or a TrainConfig; an FtplanError for
    one that describes a run these objects would not build (an older stack's loss, a kept model output)."""
    if isinstance(obj, (TrainConfig, Plan, Estimate)):
        cfg = obj if isinstance(obj, TrainConfig) else obj.config
        require_buildable(cfg, "ftplan.integrations.hf (HF Trainer on the installed transformers)")
        return cfg
    if isinstance(obj, dict) and isinstance(obj.get("knobs"), dict):
        return best_config(obj)[1]
    raise TypeError(f"expected a Plan, Estimate, TrainConfig or best.json dict, got {type(obj).__name__}")


def _estimate(obj: Any) -> Estimate | None:
    if isinstance(obj, Plan):
        return obj.estimate
    return obj if isinstance(obj, Estimate) else None


def bnb_config(obj: Any):
    """``transformers.BitsAndBytesConfig`` for 4-bit/8-bit bases (4-bit matmuls in the compute dtype); None
    for 16/32-bit ones."""
    import transformers

    from ..stack.build import torch_dtype

    cfg = config_of(obj)
    if cfg.quant in ("nf4", "fp4"):
        return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quant,
                                               bnb_4bit_use_double_quant=cfg.double_quant,
                                               bnb_4bit_compute_dtype=torch_dtype(cfg.compute_dtype))
    if cfg.quant == "int8":
        return transformers.BitsAndBytesConfig(load_in_8bit=True)
    return None


def model_kwargs(obj: Any) -> dict[str, Any]:
    """Keywords for ``AutoModelForCausalLM.from_pretrained``: quantization, dtype (the base format; the
    compute dtype for the unquantized modules of a 4/8-bit base), attention kernel."""
    from ..stack.build import torch_dtype

    cfg = config_of(obj)
    kw: dict[str, Any] = {"dtype": torch_dtype(load_dtype(cfg.knobs())), "attn_implementation": cfg.attention}
    q = bnb_config(cfg)
    if q is not None:
        kw["quantization_config"] = q
    return kw


def lora_config(obj: Any, model: Any = None):
    """``peft.LoraConfig`` with the plan's rank, alpha, dropout and target modules (named as the model's
    family names them; ``model`` is an alias, HF id, path or ModelSpec; without it ``all-linear``
    stays as PEFT's own keyword). None for full fine-tuning."""
    import peft

    from ..stack.build import lora_target_modules

    cfg = config_of(obj)
    if not cfg.is_lora:
        return None
    if model is None and isinstance(obj, dict):
        model = obj.get("model")
    targets: Any = "all-linear"
    if model is not None:
        targets = lora_target_modules(get_model(model), cfg.lora_targets)
    elif cfg.lora_targets != ("all-linear",):
        targets = list(cfg.lora_targets)
    return peft.LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                           target_modules=targets, bias="none", task_type="CAUSAL_LM")


def peft_model(model: Any, obj: Any, spec: Any = None):
    """``model`` made ready to train as the plan counted it: peft's ``prepare_model_for_kbit_training``
    on a 4/8-bit base when the plan's ``prepare_kbit`` is on (fp32 embeddings, norms, lm_head), gradient
    checkpointing (non-reentrant) when the plan has it, then ``get_peft_model`` with ``lora_config``; the
    model itself for full fine-tuning (with checkpointing set). ``spec``: the model's alias, HF id, path
    or ModelSpec (names the LoRA targets; default: the best.json's model, else ``model.name_or_path``)."""
    from ..stack.build import prepare_for_training

    cfg = config_of(obj)
    if spec is None and isinstance(obj, dict):
        spec = obj.get("model")
    if spec is None:
        spec = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    return prepare_for_training(model, get_model(spec), cfg)


def training_arguments(obj: Any, output_dir: str, **overrides: Any):
    """``transformers.TrainingArguments`` with the plan's batch, accumulation, checkpointing, optimizer
    and precision (``bf16=True``, or ``fp16=True``: autocast with a GradScaler); ``overrides`` win (learning
    rate, steps, logging...)."""
    import transformers

    cfg = config_of(obj)
    # transformers 5.x renames gradient_checkpointing to activation_checkpointing (the old name warns)
    fields = getattr(transformers.TrainingArguments, "__dataclass_fields__", {})
    ckpt = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    kw: dict[str, Any] = dict(output_dir=output_dir, per_device_train_batch_size=cfg.micro_batch,
                              gradient_accumulation_steps=cfg.grad_accum, optim=HF_OPTIM[cfg.optimizer],
                              **amp_flags(cfg.knobs()), report_to=[])
    kw[ckpt] = cfg.gradient_checkpointing
    from .launchers import deepspeed_config, is_zero

    if is_zero(cfg.knobs()):  # a ZeRO plan: the DeepSpeed config HF Trainer fills ("auto") and runs under torchrun
        kw["deepspeed"] = deepspeed_config(cfg.sharding, cfg.offload)
    if cfg.gradient_checkpointing:
        kw[f"{ckpt}_kwargs"] = {"use_reentrant": False}
    if cfg.loss_impl == "chunked":
        require_liger()
        _require_liger_model(obj)
        # Trainer applies Liger to the model (transformers.integrations.liger.apply_liger_kernel); only its
        # fused linear cross-entropy: the other kernels would change the memory the plan counts
        kw.update(use_liger_kernel=True, liger_kernel_config=dict(LIGER_FLCE_ONLY))
    kw.update(overrides)
    if "use_cpu" not in overrides and not _cuda_available():
        # transformers refuses bf16/fp16 arguments on a machine without CUDA unless told it trains on the
        # CPU: the arguments are built for this machine (e.g. to inspect them, or a CPU smoke test)
        import warnings

        warnings.warn("no CUDA GPU here: TrainingArguments built with use_cpu=True (pass use_cpu=False on the "
                      "GPU machine, or build them there)", stacklevel=2)
        kw["use_cpu"] = True
    return transformers.TrainingArguments(**kw)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


LIGER_HINT = "pip install liger-kernel"


def require_liger() -> None:
    """FtplanError unless ``liger_kernel`` is importable: a plan with ``loss_impl="chunked"`` runs Liger's fused
    linear cross-entropy under HF Trainer (``TrainingArguments(use_liger_kernel=True)``)."""
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        raise FtplanError("this plan's loss is chunked (fused linear cross-entropy): under HF Trainer it needs "
                          f"liger-kernel ({LIGER_HINT}), or plan with loss_impl='standard'")


def _require_liger_model(obj: Any) -> None:
    """FtplanError when Liger has no fused cross-entropy for the plan's model (``planner.handoff``)."""
    from ..planner.handoff import get_handoff

    name = obj.get("model") if isinstance(obj, dict) else getattr(_estimate(obj), "model", None)
    try:
        spec = get_model(name) if name is not None else None
    except FtplanError:  # an estimate of a local config names it by its short name only
        spec = None
    if spec is None:
        return  # nothing to check against: Liger itself warns on a model type it does not patch
    if not get_handoff("hf").chunked_available(spec):
        raise FtplanError(f"this plan's loss is chunked, and Liger (HF Trainer's switch) has no kernel for {spec.name} "
                          f"(family {spec.family}): re-plan with handoff='hf' (the standard loss)")


def compute_loss_func(obj: Any):
    """What to pass as ``Trainer(compute_loss_func=...)``: None, always. The Trainer calls ``compute_loss_func``
    with the model's outputs, whose full logits already exist, so no loss function can give a chunked plan
    its memory; the chunked loss is handed off instead as ``training_arguments(plan)``'s
    ``use_liger_kernel=True`` (Liger patches the model's forward to fuse ``lm_head`` with the loss, and the
    Trainer's default loss path then runs it). For a chunked plan this checks that liger-kernel is
    installed (FtplanError otherwise), so that the Trainer it goes to can run the plan."""
    if config_of(obj).loss_impl == "chunked":
        require_liger()
    return None


def _trainer_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class MemoryCallback:
    """A ``TrainerCallback`` that records the measured peak memory per logging step beside the plan's
    prediction (``history``), adds both to the Trainer's logs, and keeps the worst ratio seen.

    Created through ``__new__`` so that transformers is imported only when the callback is made."""

    def __new__(cls, plan: Any):
        base = _trainer_callback_base()

        class _Memory(base):  # type: ignore[misc, valid-type]
            def __init__(self, plan: Any) -> None:
                est = _estimate(plan)
                if est is None:
                    import ftplan

                    est = ftplan.estimate(plan["model"], plan.get("gpu"), **best_knobs(plan))
                self.predicted_allocated = est.peak_allocated_bytes
                self.predicted_reserved = est.peak_reserved_bytes
                self.history: list[dict[str, Any]] = []
                self.max_ratio: float | None = None

            def _measure(self) -> dict[str, Any] | None:
                import torch

                if not torch.cuda.is_available():
                    return None
                return {"peak_allocated_bytes": int(torch.cuda.max_memory_allocated()),
                        "peak_reserved_bytes": int(torch.cuda.max_memory_reserved())}

            def on_step_end(self, args, state, control, **kwargs):
                m = self._measure()
                if m is not None:
                    ratio = m["peak_allocated_bytes"] / self.predicted_allocated
                    self.max_ratio = ratio if self.max_ratio is None else max(self.max_ratio, ratio)
                    self.history.append({"step": state.global_step, **m,
                                         "predicted_allocated_bytes": self.predicted_allocated, "ratio": ratio})
                return control

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs is not None and self.history:
                    h = self.history[-1]
                    logs["ftplan_peak_allocated_gib"] = round(h["peak_allocated_bytes"] / 2**30, 3)
                    logs["ftplan_predicted_allocated_gib"] = round(self.predicted_allocated / 2**30, 3)
                return control

        return _Memory(plan)


def knobs(obj: Any) -> dict[str, Any]:
    """The configuration as ``ftplan.estimate`` keywords."""
    return config_of(obj).knobs()
