"""The winner of a study as files: ``best.json`` (what ``ftplan train --config`` takes) and the same
configuration for Axolotl (YAML), LLaMA-Factory (YAML) and TRL/transformers (a Python snippet).

Every file is written atomically (temporary file + rename)."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from .._version import __version__
from .._io import atomic_write_text

HF_OPTIM = {"adamw": "adamw_torch_fused", "adamw_torch": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit",
            "paged_adamw_8bit": "paged_adamw_8bit", "paged_adamw_32bit": "paged_adamw_32bit", "sgd": "sgd",
            "adafactor": "adafactor"}
ATTN_AXOLOTL = {"sdpa": "sdp_attention", "flash_attention_2": "flash_attention", "eager": None}
ATTN_LLAMAFACTORY = {"sdpa": "sdpa", "flash_attention_2": "fa2", "eager": "disabled"}


def best_knobs(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A best.json document's configuration as ``ftplan.estimate`` keywords (``changes`` override)."""
    knobs = {k: v for k, v in doc["knobs"].items() if k != "effective_batch"}
    return {**knobs, **changes}


def best_config(doc: dict[str, Any], model: str | None = None, **changes: Any):
    """(ModelSpec, TrainConfig) of a best.json document, validated like any knobs; ``model`` overrides
    the document's model, ``changes`` its knobs."""
    from ..planner.options import make_config
    from ..profiles.models import get_model

    spec = get_model(model or doc["model"])
    return spec, make_config(spec, None, **best_knobs(doc, **changes)).config


def best_document(ts, trial, study: str, storage: str) -> dict[str, Any]:
    """What ``ftplan train`` needs to repeat the winner, and where it came from."""
    knobs = dict(trial.user_attrs["config"])
    return {
        "format": "ftplan-best/1",
        "ftplan_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": ts.model,
        "model_name": ts.spec.name,
        "hf_id": ts.spec.hf_id,
        "synthetic_weights": ts.synthetic_weights,
        "gpu": ts.gpu.key,
        "device": ts.device,
        "knobs": knobs,
        "effective_batch": knobs["micro_batch"] * knobs["grad_accum"],
        "predicted": trial.user_attrs.get("predicted"),
        "measured": trial.user_attrs.get("measured"),
        "objective": ts.objective,
        "value": trial.value,
        "study": study,
        "storage": storage,
        "trial": trial.number,
        "data": ts.data,
        "command": " ".join(ts.argv),
    }


def _yaml_scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid YAML scalar


def to_yaml(d: dict[str, Any]) -> str:
    """A flat-or-nested mapping of scalars and lists as YAML (no dependency needed)."""
    lines: list[str] = []

    def emit(obj: dict, indent: int) -> None:
        pad = "  " * indent
        for k, v in obj.items():
            if isinstance(v, dict):
                lines.append(f"{pad}{k}:")
                emit(v, indent + 1)
            elif isinstance(v, (list, tuple)):
                if not v:
                    lines.append(f"{pad}{k}: []")
                else:
                    lines.append(f"{pad}{k}:")
                    lines.extend(f"{pad}  - {_yaml_scalar(x)}" for x in v)
            else:
                lines.append(f"{pad}{k}: {_yaml_scalar(v)}")

    emit(d, 0)
    return "\n".join(lines) + "\n"


def _targets(knobs: dict) -> Any:
    t = knobs["lora_targets"]
    return "all-linear" if list(t) == ["all-linear"] else list(t)


def _precision(knobs: dict) -> dict[str, bool]:
    fp16 = knobs["quant"] == "fp16"
    return {"bf16": not fp16, "fp16": fp16}


def axolotl(doc: dict[str, Any], data_path: str = "train.jsonl") -> str:
    k = doc["knobs"]
    out: dict[str, Any] = {"base_model": doc["hf_id"] or doc["model"]}
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
               gradient_checkpointing=k["gradient_checkpointing"], optimizer=HF_OPTIM[k["optimizer"]], **_precision(k))
    attn = ATTN_AXOLOTL.get(k["attention"])
    if attn:
        out[attn] = True
    out["datasets"] = [data_path]
    text = to_yaml(out).replace(f'  - {json.dumps(data_path)}', f'  - path: {json.dumps(data_path)}\n    type: completion')
    return f"# Axolotl config from ftplan {doc['ftplan_version']} (study {doc['study']}, trial {doc['trial']})\n" + text


def llamafactory(doc: dict[str, Any], dataset: str = "my_dataset") -> str:
    k = doc["knobs"]
    out: dict[str, Any] = {"model_name_or_path": doc["hf_id"] or doc["model"], "stage": "sft", "do_train": True,
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
               flash_attn=ATTN_LLAMAFACTORY[k["attention"]], **_precision(k))
    if not k["gradient_checkpointing"]:
        out["disable_gradient_checkpointing"] = True
    return f"# LLaMA-Factory config from ftplan {doc['ftplan_version']} (study {doc['study']}, trial {doc['trial']})\n" + to_yaml(out)


def trl(doc: dict[str, Any]) -> str:
    """A TRL SFTTrainer script fragment with the winner's settings."""
    k = doc["knobs"]
    model_id = doc["hf_id"] or doc["model"]
    lines = [f"# TRL / transformers settings from ftplan {doc['ftplan_version']} (study {doc['study']}, trial {doc['trial']})",
             "import torch", "from peft import LoraConfig", "from transformers import AutoModelForCausalLM, BitsAndBytesConfig",
             "from trl import SFTConfig, SFTTrainer", ""]
    if k["quant"] in ("nf4", "fp4"):
        lines.append(f"bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type={k['quant']!r}, "
                     f"bnb_4bit_use_double_quant={k['double_quant']}, bnb_4bit_compute_dtype=torch.bfloat16)")
    elif k["quant"] == "int8":
        lines.append("bnb = BitsAndBytesConfig(load_in_8bit=True)")
    else:
        lines.append("bnb = None")
    attn = {"sdpa": "sdpa", "flash_attention_2": "flash_attention_2", "eager": "eager"}[k["attention"]]
    lines.append(f"model = AutoModelForCausalLM.from_pretrained({model_id!r}, quantization_config=bnb, "
                 f"dtype=torch.bfloat16, attn_implementation={attn!r})")
    if k["method"] != "full":
        lines.append(f"peft_config = LoraConfig(r={k['lora_rank']}, lora_alpha={k['lora_alpha']}, "
                     f"lora_dropout={k['lora_dropout']}, target_modules={_targets(k)!r}, task_type='CAUSAL_LM')")
    else:
        lines.append("peft_config = None")
    prec = _precision(k)
    lines.append(f"args = SFTConfig(output_dir='out', per_device_train_batch_size={k['micro_batch']}, "
                 f"gradient_accumulation_steps={k['grad_accum']}, gradient_checkpointing={k['gradient_checkpointing']}, "
                 f"optim={HF_OPTIM[k['optimizer']]!r}, bf16={prec['bf16']}, fp16={prec['fp16']}, "
                 f"max_length={k['seq_len']})")
    lines.append("trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, peft_config=peft_config)")
    lines.append("trainer.train()")
    return "\n".join(lines) + "\n"


def write_all(folder: Path, ts, trial, study: str, storage: str) -> dict[str, str]:
    doc = best_document(ts, trial, study, storage)
    data_path = (ts.data or {}).get("path") or "train.jsonl"
    files = {"best": folder / "best.json", "axolotl": folder / "axolotl.yaml",
             "llamafactory": folder / "llamafactory.yaml", "trl": folder / "trl_sft.py"}
    atomic_write_text(files["best"], json.dumps(doc, indent=2) + "\n")
    atomic_write_text(files["axolotl"], axolotl(doc, data_path))
    atomic_write_text(files["llamafactory"], llamafactory(doc))
    atomic_write_text(files["trl"], trl(doc))
    return {k: str(v) for k, v in files.items()}
