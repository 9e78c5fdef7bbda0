"""Analytical model vs real CPU training steps, term by term.

Each configuration is a real run (``ftplan profile --device cpu``: transformers + peft +
bitsandbytes, synthetic weights, steps of forward/backward/optimizer) measured by the live-storage
tracker, and ``ftplan.estimate(..., gpu="cpu")``'s prediction of the same tensor-level peak. The
architectures are real families' configs scaled down (``ftplan.measure.small_models``). Prints a table (error of the
peak, of each phase, the term the model got most wrong) and writes ``results/accuracy_cpu.json``.

    python benchmarks/accuracy_cpu.py [--quick] [--out PATH]

Target (issue 3): median |error| <= 2%, max <= 5% on the peak allocated bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _accuracy import run_and_report  # noqa: E402

from ftplan.measure.small_models import write_config  # noqa: E402


def grid(folder: Path) -> list[tuple[str, str, dict]]:
    p = {a: str(write_config(a, folder)) for a in ("llama", "mistral", "qwen2", "gemma", "phi3", "mixtral")}
    q = dict(method="qlora", grad_accum=1)
    rows: list[tuple[str, dict]] = [
        # Llama: every knob in turn
        ("llama", dict(q, micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw")),
        ("llama", dict(q, micro_batch=2, seq_len=256, gradient_checkpointing=True, optimizer="adamw")),
        ("llama", dict(q, micro_batch=1, seq_len=512, gradient_checkpointing=True, optimizer="paged_adamw_8bit")),
        ("llama", dict(q, micro_batch=4, seq_len=128, gradient_checkpointing=False, optimizer="adamw_8bit")),
        ("llama", dict(q, quant="fp4", micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw")),
        ("llama", dict(q, double_quant=False, micro_batch=2, seq_len=256, gradient_checkpointing=True, optimizer="adamw")),
        ("llama", dict(q, lora_rank=64, micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw")),
        ("llama", dict(q, lora_rank=8, lora_targets="q_proj,v_proj", micro_batch=2, seq_len=256,
                       gradient_checkpointing=False, optimizer="adamw")),
        ("llama", dict(q, lora_dropout=0.1, micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw")),
        ("llama", dict(q, lora_dropout=0.1, micro_batch=2, seq_len=256, gradient_checkpointing=True, optimizer="adamw")),
        ("llama", dict(q, attention="eager", micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw")),
        ("llama", dict(q, attention="eager", micro_batch=1, seq_len=512, gradient_checkpointing=True, optimizer="adamw")),
        ("llama", dict(q, micro_batch=2, seq_len=256, grad_accum=4, gradient_checkpointing=False, optimizer="adamw")),
        ("llama", dict(q, micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw_torch")),
        ("llama", dict(q, micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="sgd")),
        ("llama", dict(q, micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adafactor")),
        ("llama", dict(q, micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="paged_adamw_32bit")),
        ("llama", dict(method="lora", quant="bf16", micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw", grad_accum=1)),
        ("llama", dict(method="lora", quant="bf16", micro_batch=2, seq_len=256, gradient_checkpointing=True, optimizer="adamw", grad_accum=1)),
        ("llama", dict(method="lora", quant="bf16", lora_dropout=0.05, micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw_torch", grad_accum=1)),
        ("llama", dict(method="full", quant="bf16", micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw", grad_accum=1)),
        ("llama", dict(method="full", quant="bf16", micro_batch=2, seq_len=256, gradient_checkpointing=True, optimizer="adamw_torch", grad_accum=1)),
        ("llama", dict(method="full", quant="bf16", micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw_8bit", grad_accum=1)),
        ("llama", dict(method="full", quant="fp32", micro_batch=1, seq_len=256, gradient_checkpointing=False, optimizer="adamw", grad_accum=1)),
        # Mistral
        ("mistral", dict(q, micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw")),
        ("mistral", dict(q, micro_batch=1, seq_len=512, gradient_checkpointing=True, optimizer="paged_adamw_8bit")),
        ("mistral", dict(method="lora", quant="bf16", micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw", grad_accum=1)),
        ("mistral", dict(q, attention="eager", micro_batch=2, seq_len=128, gradient_checkpointing=False, optimizer="adamw")),
        # Qwen2 (q/k/v biases, tied embeddings)
        ("qwen2", dict(q, micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw")),
        ("qwen2", dict(q, micro_batch=2, seq_len=256, gradient_checkpointing=True, optimizer="adamw_8bit")),
        ("qwen2", dict(method="lora", quant="bf16", micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw", grad_accum=1)),
        ("qwen2", dict(method="full", quant="bf16", micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw", grad_accum=1)),
        # Gemma (tied embeddings, MQA, GeGLU)
        ("gemma", dict(q, micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw")),
        ("gemma", dict(q, micro_batch=2, seq_len=256, gradient_checkpointing=True, optimizer="adamw")),
        ("gemma", dict(method="lora", quant="bf16", micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw", grad_accum=1)),
        ("gemma", dict(method="full", quant="bf16", micro_batch=1, seq_len=256, gradient_checkpointing=False, optimizer="adamw", grad_accum=1)),
        # Phi-3 (fused qkv / gate_up)
        ("phi3", dict(q, micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw")),
        ("phi3", dict(q, micro_batch=2, seq_len=256, gradient_checkpointing=True, optimizer="adamw")),
        ("phi3", dict(method="lora", quant="bf16", micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw", grad_accum=1)),
        ("phi3", dict(q, lora_targets="qkv_proj", micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw")),
        # Mixtral (MoE, top-2 of 4)
        ("mixtral", dict(q, micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw")),
        ("mixtral", dict(q, micro_batch=2, seq_len=256, gradient_checkpointing=True, optimizer="adamw")),
        ("mixtral", dict(method="lora", quant="bf16", micro_batch=2, seq_len=256, gradient_checkpointing=False, optimizer="adamw", grad_accum=1)),
    ]
    return [(a, p[a], kn) for a, kn in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="every fourth configuration")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "accuracy_cpu.json"))
    args = ap.parse_args()
    from ftplan.measure.profile import profile

    run_and_report(grid, lambda model, kn: profile(model, steps=2, device="cpu", synthetic_weights=True, **kn),
                   "measured", "cpu", "benchmarks/accuracy_cpu.py", args.out,
                   keep=(lambda g: g[::4]) if args.quick else (lambda g: g))
    return 0


if __name__ == "__main__":
    from ftplan.stack import quiet_stack

    with quiet_stack():
        rc = main()
    raise SystemExit(rc)
