"""A best.json document as the configuration of other trainers: Axolotl (YAML), LLaMA-Factory (YAML) and
TRL/transformers (a Python snippet). Every file is written atomically (temporary file + rename).

Precision follows the configuration's ``compute_dtype`` (``amp_flags``, ``load_dtype``): ``bf16: true``, or
on GPUs without bf16 ``fp16: true`` (HF Trainer's autocast with a GradScaler), 4-bit matmuls in the same
dtype, 16-bit weights loaded in it. Each trainer derives its bitsandbytes compute dtype from these flags
(Axolotl ``resolve_dtype`` -> ``torch_dtype``; LLaMA-Factory ``compute_dtype``); the TRL script states it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..atomic import atomic_write_text
from ..best import best_config, write_best
from ..planner.types import TrainConfig
from ..stack.build import TORCH_DTYPES

HF_OPTIM = {"adamw": "adamw_torch_fused", "adamw_torch": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit",
            "paged_adamw_8bit": "paged_adamw_8bit", "paged_adamw_32bit": "paged_adamw_32bit", "sgd": "sgd",
            "adafactor": "adafactor"}
ATTN_AXOLOTL = {"sdpa": "sdp_attention", "flash_attention_2": "flash_attention", "eager": None}
_KNOB_FIELDS = tuple(TrainConfig().knobs())
ATTN_LLAMAFACTORY = {"sdpa": "sdpa", "flash_attention_2": "fa2", "eager": "disabled"}
# loss_impl="chunked" is Liger's fused linear cross-entropy in each trainer, and only it (Liger's other
# kernels, RoPE/RMSNorm/SwiGLU, change activation memory the plan does not count). Liger's
# ``_apply_liger_kernel_to_instance`` passes on only the keywords the model family's function takes.
LIGER_FLCE_ONLY = {"rope": False, "rms_norm": False, "swiglu": False, "geglu": False, "layer_norm": False,
                   "cross_entropy": False, "fused_linear_cross_entropy": True}
AXOLOTL_LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"


def _origin(doc: dict[str, Any]) -> str:
    """Where the configuration came from, for a file's first comment line (a hand-written best.json
    has only ``model`` and ``knobs``)."""
    if doc.get("study") is not None:
        return f"ftplan {doc.get('ftplan_version', '?')} (study {doc['study']}, trial {doc.get('trial', '?')})"
    return f"ftplan {doc.get('ftplan_version', '?')}"


def _model_id(doc: dict[str, Any]) -> str:
    return str(doc.get("hf_id") or doc["model"])


def _knobs(doc: dict[str, Any]) -> dict[str, Any]:
    """Every knob of the document; a hand-written one that names only some gets the rest resolved as
    ``ftplan.estimate`` would (``best_config``)."""
    knobs = doc["knobs"]
    if all(f in knobs for f in _KNOB_FIELDS):
        return knobs
    return best_config(doc)[1].knobs()


def _targets(knobs: dict) -> Any:
    t = knobs["lora_targets"]
    return "all-linear" if list(t) == ["all-linear"] else list(t)


def amp_flags(knobs: Mapping[str, Any]) -> dict[str, bool]:
    """HF ``TrainingArguments``' (and Axolotl's, LLaMA-Factory's, TRL's) mixed-precision flags:
    ``bf16=True``, or ``fp16=True`` (autocast + ``torch.amp.GradScaler``); neither without autocast."""
    on = bool(knobs["autocast"])
    return {"bf16": on and knobs["compute_dtype"] == "bf16", "fp16": on and knobs["compute_dtype"] == "fp16"}


def load_dtype(knobs: Mapping[str, Any]) -> str:
    """The dtype ``from_pretrained`` loads the weights in: the base format of a 16/32-bit base, the compute
    dtype for the modules a 4/8-bit base leaves unquantized (embeddings, norms, lm_head)."""
    return knobs["compute_dtype"] if knobs["quant"] in ("nf4", "fp4", "int8") else knobs["quant"]


def axolotl(doc: dict[str, Any], data_path: str = "train.jsonl") -> str:
    k = _knobs(doc)
    out: dict[str, Any] = {"base_model": _model_id(doc)}
    if k["method"] == "qlora":
        out.update(adapter="qlora", load_in_4bit=True)
    elif k["method"] == "lora":
        out.update(adapter="lora", load_in_8bit=k["quant"] == "int8")
    if k["method"] != "full":
        out.update(lora_r=k["lora_rank"], lora_alpha=k["lora_alpha"], lora_dropout=k["lora_dropout"])
        if _targets(k) == "all-linear":
            out["lora_target_linear"] = True
        else:
            out["lora_target_modules"] = _targets(k)
    out.update(sequence_len=k["seq_len"], micro_batch_size=k["micro_batch"], gradient_accumulation_steps=k["grad_accum"],
               gradient_checkpointing=k["gradient_checkpointing"], optimizer=HF_OPTIM[k["optimizer"]], **amp_flags(k))
    attn = ATTN_AXOLOTL.get(k["attention"])
    if attn:
        out[attn] = True
    if k["loss_impl"] == "chunked":  # Axolotl's Liger plugin, fused linear cross-entropy only
        out.update(plugins=[AXOLOTL_LIGER_PLUGIN], liger_fused_linear_cross_entropy=True)
    text = to_yaml({**out, "datasets": [{"path": data_path, "type": "completion"}]})
    note = ""
    if k["method"] == "full" and amp_flags(k)["fp16"]:
        note = ("# fp16 full fine-tuning needs fp32 master weights (this plan's base is fp32); Axolotl loads the\n"
                "# weights in fp16 with fp16: true, which GradScaler refuses: prefer the TRL script or LLaMA-Factory\n")
    return f"# Axolotl config from {_origin(doc)}\n" + note + text


def llamafactory(doc: dict[str, Any], dataset: str = "my_dataset") -> str:
    k = _knobs(doc)
    out: dict[str, Any] = {"model_name_or_path": _model_id(doc), "stage": "sft", "do_train": True,
                           "finetuning_type": "full" if k["method"] == "full" else "lora"}
    if k["method"] != "full":
        targets = _targets(k)
        out.update(lora_rank=k["lora_rank"], lora_alpha=k["lora_alpha"], lora_dropout=k["lora_dropout"],
                   lora_target="all" if targets == "all-linear" else ",".join(targets))
    if k["quant"] in ("nf4", "fp4"):
        out.update(quantization_bit=4, quantization_type=k["quant"], double_quantization=k["double_quant"])
    elif k["quant"] == "int8":
        out["quantization_bit"] = 8
    out.update(dataset=dataset, cutoff_len=k["seq_len"], per_device_train_batch_size=k["micro_batch"],
               gradient_accumulation_steps=k["grad_accum"], optim=HF_OPTIM[k["optimizer"]],
               flash_attn=ATTN_LLAMAFACTORY[k["attention"]], **amp_flags(k))
    if not k["gradient_checkpointing"]:
        out["disable_gradient_checkpointing"] = True
    note = ""
    if k["loss_impl"] == "chunked":
        out["enable_liger_kernel"] = True
        note = ("# enable_liger_kernel applies Liger's default kernels (RoPE, RMSNorm, SwiGLU besides the fused linear\n"
                "# cross-entropy this plan needs): memory at or below the plan's\n")
    return f"# LLaMA-Factory config from {_origin(doc)}\n" + note + to_yaml(out)


def trl(doc: dict[str, Any]) -> str:
    """A TRL SFTTrainer script fragment with the winner's settings."""
    k = _knobs(doc)
    model_id = _model_id(doc)
    lines = [f"# TRL / transformers settings from {_origin(doc)}",
             "import torch", "from peft import LoraConfig", "from transformers import AutoModelForCausalLM, BitsAndBytesConfig",
             "from trl import SFTConfig, SFTTrainer", ""]
    compute = TORCH_DTYPES[k["compute_dtype"]]
    if k["quant"] in ("nf4", "fp4"):
        lines.append(f"bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type={k['quant']!r}, "
                     f"bnb_4bit_use_double_quant={k['double_quant']}, bnb_4bit_compute_dtype=torch.{compute})")
    elif k["quant"] == "int8":
        lines.append("bnb = BitsAndBytesConfig(load_in_8bit=True)")
    else:
        lines.append("bnb = None")
    attn = {"sdpa": "sdpa", "flash_attention_2": "flash_attention_2", "eager": "eager"}[k["attention"]]
    lines.append(f"model = AutoModelForCausalLM.from_pretrained({model_id!r}, quantization_config=bnb, "
                 f"dtype=torch.{TORCH_DTYPES[load_dtype(k)]}, attn_implementation={attn!r})")
    if k["method"] != "full":
        lines.append(f"peft_config = LoraConfig(r={k['lora_rank']}, lora_alpha={k['lora_alpha']}, "
                     f"lora_dropout={k['lora_dropout']}, target_modules={_targets(k)!r}, task_type='CAUSAL_LM')")
    else:
        lines.append("peft_config = None")
    prec = amp_flags(k)
    # chunked loss: Liger's fused linear cross-entropy (pip install liger-kernel), as TrainingArguments takes it
    liger = f", use_liger_kernel=True, liger_kernel_config={LIGER_FLCE_ONLY!r}" if k["loss_impl"] == "chunked" else ""
    lines.append(f"args = SFTConfig(output_dir='out', per_device_train_batch_size={k['micro_batch']}, "
                 f"gradient_accumulation_steps={k['grad_accum']}, gradient_checkpointing={k['gradient_checkpointing']}, "
                 f"optim={HF_OPTIM[k['optimizer']]!r}, bf16={prec['bf16']}, fp16={prec['fp16']}, "
                 f"max_length={k['seq_len']}{liger})")
    lines.append("trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, peft_config=peft_config)")
    lines.append("trainer.train()")
    return "\n".join(lines) + "\n"


def to_yaml(d: dict[str, Any]) -> str:
    """``d`` as YAML, keys in the order given (``yaml.safe_dump``)."""
    return yaml.safe_dump(d, sort_keys=False, default_flow_style=False, allow_unicode=True)


def write_all(folder: Path, doc: dict[str, Any], data_path: str = "train.jsonl") -> dict[str, str]:
    """``best.json`` and the three trainers' configurations in ``folder``; their paths by name."""
    files = {"best": folder / "best.json", "axolotl": folder / "axolotl.yaml",
             "llamafactory": folder / "llamafactory.yaml", "trl": folder / "trl_sft.py"}
    write_best(files["best"], doc)
    atomic_write_text(files["axolotl"], axolotl(doc, data_path))
    atomic_write_text(files["llamafactory"], llamafactory(doc))
    atomic_write_text(files["trl"], trl(doc))
    return {k: str(v) for k, v in files.items()}
