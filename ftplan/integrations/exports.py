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
from ..best import DEFAULT_LR, best_config, write_best
from ..errors import FtplanError
from ..planner.types import TrainConfig
from ..stack.build import TORCH_DTYPES
from .launchers import accelerate_config, deepspeed_config, is_fsdp, is_zero

HF_OPTIM = {"adamw": "adamw_torch_fused", "adamw_torch": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit",
            "paged_adamw_8bit": "paged_adamw_8bit", "paged_adamw_32bit": "paged_adamw_32bit", "sgd": "sgd",
            "adafactor": "adafactor"}
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


DS_FILE = "deepspeed.json"  # the DeepSpeed config of a ZeRO plan, beside the exports


def amp_flags(knobs: Mapping[str, Any]) -> dict[str, bool]:
    """HF ``TrainingArguments``' (and Axolotl's, LLaMA-Factory's, TRL's) mixed-precision flags:
    ``bf16=True``, or ``fp16=True`` (autocast + ``torch.amp.GradScaler``); neither without autocast."""
    on = bool(knobs["autocast"]) or is_zero(knobs)  # DeepSpeed's bf16/fp16 mode: HF passes the flag to its "auto"
    return {"bf16": on and knobs["compute_dtype"] == "bf16", "fp16": on and knobs["compute_dtype"] == "fp16"}


def load_dtype(knobs: Mapping[str, Any]) -> str:
    """The dtype ``from_pretrained`` loads the weights in: the base format of a 16/32-bit base, the compute
    dtype for the modules a 4/8-bit base leaves unquantized (embeddings, norms, lm_head)."""
    return knobs["compute_dtype"] if knobs["quant"] in ("nf4", "fp4", "int8") else knobs["quant"]


def require_buildable(doc: dict[str, Any], k: Mapping[str, Any], target: str) -> None:
    """FtplanError when ``target`` cannot build the plan: an older stack's loss or a kept model output (knobs
    that describe a run for estimate() only), or a chunked loss for a model Liger has no kernel for
    (``planner.handoff``); such a plan is re-planned with ``--for <target>`` (the standard loss)."""
    from ..planner.options import check_buildable

    check_buildable(k.get("loss_impl"), k.get("output_held"), target)
    if k["loss_impl"] != "chunked":
        return
    from ..planner.handoff import get_handoff
    from ..profiles.models import get_model

    spec = get_model(doc["model"])
    h = get_handoff(target)
    if not h.chunked_available(spec):
        raise FtplanError(f"{h.name} runs the chunked loss through Liger, which has no kernel for {spec.name} "
                          f"(family {spec.family}); this plan counted a chunked loss: re-plan with --for {h.key} "
                          "(or --loss standard) for a config it can run")


def assumed(k: Mapping[str, Any], target: str) -> str:
    """Comment lines for an export whose trainer does less k-bit upcasting than the plan counted (its memory
    is then at or below the plan's), or more (a plan made for another trainer: re-plan with ``--for``)."""
    from ..planner.handoff import get_handoff

    h = get_handoff(target)
    if k["quant"] not in ("nf4", "fp4", "int8") or bool(k["prepare_kbit"]) == h.prepare_kbit:
        return ""
    if k["prepare_kbit"]:
        return (f"# this plan counted peft's k-bit preparation (fp32 embeddings, norms, lm_head); {h.name} does\n"
                f"# less ({h.kbit_note}): memory at or below the plan's (plan with --for {h.key} to use the room)\n")
    return (f"# this plan counted no k-bit preparation; {h.name} does it ({h.kbit_note}): memory above the\n"
            f"# plan's. Re-plan with --for {h.key}\n")


def axolotl(doc: dict[str, Any], data_path: str = "train.jsonl") -> str:
    """An Axolotl config (v0.17+: ``attn_implementation``; FSDP 2 keys). Quantization settings Axolotl
    hard-codes for qlora (nf4, double quant, bf16 storage) are overridden through ``bnb_config_kwargs``
    when the plan differs."""
    k = _knobs(doc)
    require_buildable(doc, k, "axolotl")
    out: dict[str, Any] = {"base_model": _model_id(doc)}
    if k["method"] == "qlora":
        out.update(adapter="qlora", load_in_4bit=True)
        bnb: dict[str, Any] = {}
        if k["quant"] != "nf4":
            bnb["bnb_4bit_quant_type"] = k["quant"]
        if not k["double_quant"]:
            bnb["bnb_4bit_use_double_quant"] = False
        if load_dtype(k) != "bf16":  # FSDP needs the packed weights stored in the load dtype
            bnb["bnb_4bit_quant_storage"] = TORCH_DTYPES[load_dtype(k)]
        if bnb:
            out["bnb_config_kwargs"] = bnb
    elif k["method"] == "lora":
        out.update(adapter="lora", load_in_8bit=k["quant"] == "int8")
    if k["method"] != "full":
        out.update(lora_r=k["lora_rank"], lora_alpha=k["lora_alpha"], lora_dropout=k["lora_dropout"])
        if _targets(k) == "all-linear":
            out["lora_target_linear"] = True
        else:
            out["lora_target_modules"] = _targets(k)
    out.update(sequence_len=k["seq_len"], micro_batch_size=k["micro_batch"], gradient_accumulation_steps=k["grad_accum"],
               gradient_checkpointing=k["gradient_checkpointing"], optimizer=HF_OPTIM[k["optimizer"]], **amp_flags(k),
               attn_implementation=k["attention"])
    if k["gradient_checkpointing"]:
        out["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if k["loss_impl"] == "chunked":  # Axolotl's Liger plugin, fused linear cross-entropy only
        out.update(plugins=[AXOLOTL_LIGER_PLUGIN], liger_fused_linear_cross_entropy=True)
    if is_fsdp(k):
        out.update(fsdp_version=2, fsdp_config={"offload_params": k.get("offload") == "params",
                                                "cpu_ram_efficient_loading": True,
                                                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                                "reshard_after_forward": k.get("sharding") != "fsdp_grad_op",
                                                "state_dict_type": "FULL_STATE_DICT"})
    if is_zero(k):  # Axolotl reads a DeepSpeed JSON path; ftplan writes it beside this file (write_all)
        out["deepspeed"] = DS_FILE
    out.update(learning_rate=DEFAULT_LR, num_epochs=1, output_dir="./out")
    text = to_yaml({**out, "datasets": [{"path": data_path, "type": "completion"}]})
    note = assumed(k, "axolotl")
    if k["method"] == "full" and amp_flags(k)["fp16"]:
        note += ("# fp16 full fine-tuning needs fp32 master weights (this plan's base is fp32); Axolotl loads the\n"
                 "# weights in fp16 with fp16: true, which GradScaler refuses: prefer the TRL script or LLaMA-Factory\n")
    return f"# Axolotl config from {_origin(doc)}\n# learning_rate and num_epochs: ftplan train's defaults, not planned\n" + note + text


def llamafactory(doc: dict[str, Any], dataset: str = "my_dataset") -> str:
    k = _knobs(doc)
    require_buildable(doc, k, "llamafactory")
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
    out.update(template="default", learning_rate=DEFAULT_LR, num_train_epochs=1.0, output_dir="out", report_to="none")
    note = assumed(k, "llamafactory")
    if k["loss_impl"] == "chunked":
        out["enable_liger_kernel"] = True
        note += ("# enable_liger_kernel applies Liger's default kernels (RoPE, RMSNorm, SwiGLU besides the fused linear\n"
                "# cross-entropy this plan needs): memory at or below the plan's\n")
    head = (f"# LLaMA-Factory config from {_origin(doc)}\n# llamafactory-cli train llamafactory.yaml; {dataset!r} must be "
            "an entry of dataset_info.json in dataset_dir\n# (template, learning_rate, epochs: set them for your data; "
            "not planned: memory does not depend on them)\n")
    gpus = k.get("num_gpus", 1)
    if is_zero(k):
        out["deepspeed"] = DS_FILE
        head += (f"# DeepSpeed {k['sharding'].upper()} over {gpus} GPUs, as planned ({DS_FILE} beside this file): "
                 "FORCE_TORCHRUN=1 llamafactory-cli train llamafactory.yaml\n")
    elif is_fsdp(k):
        mixed = "fp16" if amp_flags(k)["fp16"] else "bf16"
        acc = to_yaml(accelerate_config(gpus, k["sharding"], mixed, k.get("offload") or "none", int(k.get("nodes") or 1)))
        head += (f"# FSDP over {gpus} GPUs, as planned: save the accelerate config below as fsdp.yaml and run\n"
                 "#   accelerate launch --config_file fsdp.yaml src/train.py llamafactory.yaml\n"
                 + "".join(f"#   {line}\n" for line in acc.splitlines()))
    elif gpus > 1:
        head += f"# DDP over {gpus} GPUs, as planned: FORCE_TORCHRUN=1 llamafactory-cli train llamafactory.yaml\n"
    return head + note + to_yaml(out)


def trl(doc: dict[str, Any], data_path: str = "train.jsonl") -> str:
    """A runnable TRL ``SFTTrainer`` script with the plan's settings (TRL >= 0.20: ``max_length``,
    ``loss_type``). ``python trl_sft.py --data train.jsonl``; under FSDP, ``accelerate launch --config_file
    <fsdp.yaml> trl_sft.py --data ...`` (``ftplan train --gpus N`` writes that config). ``--max-steps`` and
    ``--cpu`` (a smoke test without a GPU: ``use_cpu=True`` and no fp16 loss scaling, which needs CUDA) are
    for trying it out; the plan's figures are for the GPU run.

    Loss: ``loss_type="nll"`` for the standard loss (TRL >= 1.7 otherwise defaults to its own chunked
    loss, which the plan did not count), Liger's fused linear cross-entropy for the chunked one. FSDP with
    a 4-bit base stores the packed weights in the load dtype (``bnb_4bit_quant_storage``), as FSDP needs
    every parameter of a unit in one float dtype."""
    k = _knobs(doc)
    require_buildable(doc, k, "trl")
    model_id = _model_id(doc)
    compute = TORCH_DTYPES[k["compute_dtype"]]
    load = TORCH_DTYPES[load_dtype(k)]
    prec = amp_flags(k)
    fsdp = is_fsdp(k)
    if k["quant"] in ("nf4", "fp4"):
        storage = f", bnb_4bit_quant_storage=torch.{load}" if fsdp else ""
        bnb = (f"BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type={k['quant']!r}, "
               f"bnb_4bit_use_double_quant={k['double_quant']}, bnb_4bit_compute_dtype=torch.{compute}{storage})")
    elif k["quant"] == "int8":
        bnb = "BitsAndBytesConfig(load_in_8bit=True)"
    else:
        bnb = "None"
    if k["loss_impl"] == "chunked":  # Liger's fused linear cross-entropy (pip install liger-kernel), only it
        loss = f"use_liger_kernel=True, liger_kernel_config={LIGER_FLCE_ONLY!r}"
    else:
        loss = "loss_type='nll'"
    peft = (f"LoraConfig(r={k['lora_rank']}, lora_alpha={k['lora_alpha']}, lora_dropout={k['lora_dropout']}, "
            f"target_modules={_targets(k)!r}, task_type='CAUSAL_LM')" if k["method"] != "full" else "None")
    ckpt = k["gradient_checkpointing"]
    ckpt_kw = '{"use_reentrant": False}' if ckpt else "None"
    fp16 = "not a.cpu" if prec["fp16"] else "False"  # GradScaler's fp16 loss scaling needs CUDA
    note = assumed(k, "trl")
    ds = (f",\n                 deepspeed={deepspeed_config(k['sharding'], k.get('offload') or 'none')!r}"
          if is_zero(k) else "")
    if ds:
        note += (f"# DeepSpeed {k['sharding'].upper()} over {k['num_gpus']} GPUs, as planned: torchrun --nproc_per_node "
                 f"{k['num_gpus']} trl_sft.py --data ...\n")
    return f"""# TRL SFTTrainer script from {_origin(doc)}
{note}# python trl_sft.py --data {data_path}   (pip install trl datasets{' liger-kernel' if k['loss_impl'] == 'chunked' else ''})
# Each line of the data: {{"text": ...}}, {{"prompt": ..., "completion": ...}} or {{"messages": [...]}}.
import argparse

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from trl import SFTConfig, SFTTrainer

ap = argparse.ArgumentParser()
ap.add_argument("--model", default={model_id!r})
ap.add_argument("--data", default={data_path!r})
ap.add_argument("--output", default="out")
ap.add_argument("--max-steps", type=int, default=-1)
ap.add_argument("--cpu", action="store_true", help="smoke test without a GPU (fp16 loss scaling off)")
a = ap.parse_args()

dataset = load_dataset("json", data_files=a.data, split="train")
# the arguments first: under accelerate/FSDP they set up each process's device before the model loads
args = SFTConfig(output_dir=a.output, max_steps=a.max_steps, per_device_train_batch_size={k['micro_batch']},
                 gradient_accumulation_steps={k['grad_accum']}, gradient_checkpointing={ckpt},
                 gradient_checkpointing_kwargs={ckpt_kw},
                 optim={HF_OPTIM[k['optimizer']]!r}, bf16={prec['bf16']}, fp16={fp16},
                 max_length={k['seq_len']}, {loss}, use_cpu=a.cpu, report_to=[]{ds})
bnb = {bnb}
model = AutoModelForCausalLM.from_pretrained(a.model, quantization_config=bnb, dtype=torch.{load},
                                             attn_implementation={k['attention']!r})
peft_config = {peft}
trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, peft_config=peft_config,
                     processing_class=AutoTokenizer.from_pretrained(a.model))
trainer.train()
trainer.save_model(a.output)
"""


def to_yaml(d: dict[str, Any]) -> str:
    """``d`` as YAML, keys in the order given (``yaml.safe_dump``)."""
    return yaml.safe_dump(d, sort_keys=False, default_flow_style=False, allow_unicode=True)


def write_all(folder: Path, doc: dict[str, Any], data_path: str = "train.jsonl") -> dict[str, str]:
    """``best.json`` and the three trainers' configurations in ``folder`` (and the DeepSpeed config of a ZeRO
    plan); their paths by name. A trainer that cannot build the plan gets no file; ``<name>_not_written`` says
    why instead."""
    import json

    files = {"best": folder / "best.json", "axolotl": folder / "axolotl.yaml",
             "llamafactory": folder / "llamafactory.yaml", "trl": folder / "trl_sft.py"}
    write_best(files["best"], doc)
    out = {"best": str(files["best"])}
    k = _knobs(doc)
    if is_zero(k):
        atomic_write_text(folder / DS_FILE, json.dumps(deepspeed_config(k["sharding"], k.get("offload") or "none"),
                                                       indent=2) + "\n")
        out["deepspeed"] = str(folder / DS_FILE)
    makers = {"axolotl": lambda: axolotl(doc, data_path), "llamafactory": lambda: llamafactory(doc),
              "trl": lambda: trl(doc, data_path)}
    for name, make in makers.items():
        try:
            text = make()
        except FtplanError as e:
            out[f"{name}_not_written"] = str(e)
            continue
        atomic_write_text(files[name], text)
        out[name] = str(files[name])
    return out
