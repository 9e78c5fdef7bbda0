"""Hand-off targets: the trainer a plan is built for, and what that trainer really does.

A plan is only buildable if the trainer that runs it does what the plan counted. Two behaviours change
memory and differ between trainers (``docs/handoffs.md`` has the source of each row, read from the
trainers' code with versions):

- **k-bit preparation** (``TrainConfig.prepare_kbit``): peft's ``prepare_model_for_kbit_training`` casts
  every unquantized parameter of a 4/8-bit base (embeddings, norms, lm_head) to fp32, about 2 GiB more on
  an 8B model with a 128k vocabulary. ``ftplan train`` and a plain HF Trainer with
  ``ftplan.integrations.hf.peft_model`` call it (it is peft's documented QLoRA recipe); TRL's SFTTrainer
  (>= 0.26) does no k-bit preparation; Axolotl calls it but casts embeddings and norms back to the load
  dtype; LLaMA-Factory never calls it (``upcast_layernorm`` is off by default).
- **the chunked loss** (``TrainConfig.loss_impl="chunked"``): ``ftplan train`` runs its own
  (``ftplan.stack.loss``, any causal LM with a plain ``nn.Linear`` head); HF Trainer, TRL, Axolotl and
  LLaMA-Factory run it as Liger's fused linear cross-entropy, which exists only for the model types
  Liger patches (``LIGER_FAMILIES``). For a model Liger does not cover, the plan for those trainers is
  searched with the standard loss, and the answer says so.

Not modelled: TRL (>= 0.26) casts LoRA adapters of a quantized base to bf16 (their weights, gradients and
AdamW state take half the bytes the plan counts at fp32), so a TRL plan's adapter terms are an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import FtplanError, UnknownNameError
from .options import check_buildable
from .types import ModelSpec

# ModelSpec.family values whose model types Liger's fused linear cross-entropy patches (its
# ``MODEL_TYPE_TO_APPLY_LIGER_FN``: llama, mistral, mixtral, qwen2/3, gemma 1-3, phi3, granite, olmo2 among
# them). Liger has no kernel for Falcon, Phi-1/2 ("phi") or Qwen 1 ("qwen", remote code).
LIGER_FAMILIES = ("llama", "mixtral", "phi3")


@dataclass(frozen=True)
class Handoff:
    """One trainer a plan can be handed to, with the behaviour the planner assumes for it."""

    key: str
    name: str
    prepare_kbit: bool  # upcasts a k-bit base's unquantized parameters to fp32
    liger_loss: bool  # its chunked loss is Liger's fused linear cross-entropy (Liger's model types only)
    kbit_note: str  # what it does to a k-bit base's unquantized parameters, in words
    loss_switch: str  # how it is told to run the chunked loss
    source: str  # where the behaviour was read

    def chunked_available(self, spec: ModelSpec) -> bool:
        """Whether this trainer can run the chunked loss for ``spec``."""
        return not self.liger_loss or spec.family in LIGER_FAMILIES


HANDOFFS: dict[str, Handoff] = {h.key: h for h in (
    Handoff("ftplan", "ftplan train", True, False,
            "peft prepare_model_for_kbit_training: embeddings, norms and lm_head in fp32",
            "its own implementation (ftplan.stack.loss)", "ftplan/stack/build.py: prepare_for_training"),
    Handoff("hf", "HF Trainer with ftplan.integrations.hf", True, True,
            "peft prepare_model_for_kbit_training (hf.peft_model): embeddings, norms and lm_head in fp32",
            "TrainingArguments(use_liger_kernel=True), fused linear cross-entropy only",
            "ftplan/integrations/hf.py; transformers TrainingArguments.use_liger_kernel"),
    Handoff("trl", "TRL SFTTrainer (>= 0.26)", False, True,
            "no k-bit preparation: embeddings, norms and lm_head stay in the load dtype",
            "SFTConfig(use_liger_kernel=True), fused linear cross-entropy only",
            "trl/trainer/sft_trainer.py SFTTrainer.__init__ (docs/handoffs.md section 1)"),
    Handoff("axolotl", "Axolotl", False, True,
            "k-bit preparation, then embeddings and norms cast back to the load dtype",
            "plugins: LigerPlugin + liger_fused_linear_cross_entropy: true",
            "axolotl src/axolotl/loaders/model.py (docs/handoffs.md section 1)"),
    Handoff("llamafactory", "LLaMA-Factory", False, True,
            "no k-bit preparation (upcast_layernorm off): embeddings, norms and lm_head in the load dtype",
            "enable_liger_kernel: true",
            "LLaMA-Factory src/llamafactory/model/model_utils/checkpointing.py (docs/handoffs.md section 1)"),
)}
ALIASES = {"ftplan-train": "ftplan", "own": "ftplan", "transformers": "hf", "trainer": "hf",
           "llama-factory": "llamafactory", "llama_factory": "llamafactory", "sfttrainer": "trl"}
DEFAULT_HANDOFF = "ftplan"


def get_handoff(name: Any) -> Handoff:
    """The hand-off target called ``name`` (``ftplan``, ``hf``, ``trl``, ``axolotl``, ``llamafactory``)."""
    if isinstance(name, Handoff):
        return name
    key = str(name).strip().lower().replace(" ", "")
    key = ALIASES.get(key, key)
    if key not in HANDOFFS:
        raise UnknownNameError("hand-off target", name, tuple(HANDOFFS))
    return HANDOFFS[key]


def handoff_knobs(spec: ModelSpec, handoff: Any, knobs: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``knobs`` with what the target fixes (``prepare_kbit``; ``loss_impl="standard"`` where it cannot run
    the chunked loss for this model), and one line saying what was assumed. A knob the caller gave that
    the target cannot build is an FtplanError naming the target."""
    h = get_handoff(handoff)
    out = {k: v for k, v in knobs.items() if v is not None}
    check_buildable(out.get("loss_impl"), out.get("output_held"), h.name)
    pk = out.get("prepare_kbit")
    if pk is not None and bool(pk) != h.prepare_kbit:
        raise FtplanError(f"prepare_kbit={bool(pk)} is not what {h.name} does ({h.kbit_note}); "
                          f"drop it, or plan for another hand-off target (valid: {', '.join(HANDOFFS)})")
    out["prepare_kbit"] = h.prepare_kbit
    sharding = str(out.get("sharding") or "").lower().replace("-", "_").replace(" ", "_")
    offload = str(out.get("offload") or "").lower().replace("-", "_")
    if h.key == "ftplan" and offload in ("optimizer", "optimizer_state", "optim") and not sharding:
        raise FtplanError("--offload optimizer is DeepSpeed ZeRO's (only it moves the optimizer alone); ftplan train "
                          "runs DDP and FSDP: use --offload params (FSDP), or plan --for hf, trl, axolotl or "
                          "llamafactory")
    if h.key == "ftplan" and (sharding.startswith("zero") or "deepspeed" in sharding):
        raise FtplanError(f"--sharding {out['sharding']}: ftplan train runs DDP and FSDP, not DeepSpeed; plan a ZeRO "
                          "run --for hf, trl, axolotl or llamafactory (their exports carry the DeepSpeed config), or "
                          "use --sharding fsdp")
    loss = str(out.get("loss_impl", "")).lower()
    if h.key == "ftplan" and sharding.startswith("fsdp") and loss in ("chunked", "fused", "liger", "chunked_ce"):
        raise FtplanError(f"loss_impl={out['loss_impl']!r} with --sharding {out['sharding']}: ftplan train runs the "
                          "chunked loss on one process or under DDP; use loss_impl='standard' with FSDP")
    parts = [f"{h.name}: {h.kbit_note}"]
    if h.chunked_available(spec):
        parts.append(f"chunked loss via {h.loss_switch}")
    else:
        if loss in ("chunked", "fused", "liger", "chunked_ce"):
            raise FtplanError(f"loss_impl={out['loss_impl']!r}: {h.name} runs the chunked loss through Liger, which "
                              f"has no kernel for {spec.name} (family {spec.family}); use loss_impl='standard', "
                              "or --for ftplan (ftplan train runs its own)")
        out["loss_impl"] = "standard"
        parts.append(f"standard loss only (Liger has no fused cross-entropy for the {spec.family} family)")
    return out, "; ".join(parts)
