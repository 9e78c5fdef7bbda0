"""The knobs of one configuration as command-line options, shared by ``profile`` and ``trace``
(the same names and values as ``ftplan.estimate``)."""

from __future__ import annotations

from typing import Any, Optional

import typer

MODEL = typer.Option(..., "--model", "-m", help="alias (8b, 1b; see `ftplan models`), HF id, or path to config.json / model folder")
METHOD = typer.Option(None, help="full | lora | qlora [default: qlora]")
QUANT = typer.Option(None, help="base weights: nf4 | fp4 | int8 | bf16 | fp16 | fp32")
DOUBLE_QUANT = typer.Option(None, "--double-quant/--no-double-quant", help="4-bit double quantization [default: on]")
RANK = typer.Option(None, "--rank", "-r", help="LoRA rank [default: 16]")
ALPHA = typer.Option(None, "--alpha", help="LoRA alpha [default: 2 x rank]")
TARGETS = typer.Option(None, "--targets", help="all-linear | attention | mlp | q_proj,v_proj,...")
DROPOUT = typer.Option(None, "--lora-dropout", help="LoRA dropout [default: 0]")
MICRO_BATCH = typer.Option(None, "--micro-batch", "-b", help="micro-batch [default: 1]")
SEQ_LEN = typer.Option(None, "--seq-len", "-s", help="tokens per sequence [default: 2048]")
GRAD_ACCUM = typer.Option(None, "--grad-accum", help="gradient accumulation steps [default: 1]")
GRAD_CKPT = typer.Option(None, "--grad-ckpt/--no-grad-ckpt", help="gradient checkpointing [default: on]")
OPTIMIZER = typer.Option(None, help="adamw | adamw_torch | adamw_8bit | paged_adamw_8bit | paged_adamw_32bit | sgd | adafactor")
ATTENTION = typer.Option(None, help="sdpa | eager | flash_attention_2")
LOSS = typer.Option(None, "--loss", help="standard (HF ForCausalLMLoss: full logits) | chunked (lm_head fused with the loss, chunk by chunk) [default: standard]")


def knobs(method: Optional[str], quant: Optional[str], double_quant: Optional[bool], rank: Optional[int],
          alpha: Optional[int], targets: Optional[str], lora_dropout: Optional[float], micro_batch: Optional[int],
          seq_len: Optional[int], grad_accum: Optional[int], grad_ckpt: Optional[bool], optimizer: Optional[str],
          attention: Optional[str], loss: Optional[str] = None) -> dict[str, Any]:
    """Options as ``estimate`` keywords; a run measures one micro-batch pass, so accumulation is 1
    unless given."""
    return dict(method=method, quant=quant, double_quant=double_quant, lora_rank=rank, lora_alpha=alpha,
                lora_targets=targets, lora_dropout=lora_dropout, micro_batch=micro_batch, seq_len=seq_len,
                grad_accum=grad_accum if grad_accum is not None else 1, gradient_checkpointing=grad_ckpt,
                optimizer=optimizer, attention=attention, loss_impl=loss)
