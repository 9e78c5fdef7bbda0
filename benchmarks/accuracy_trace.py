"""Analytical model vs traced full-size training steps (``ftplan trace``: the real HF model under
``FakeTensorMode``, two real steps, live storages counted), term by term.

Shapes: Llama 3.2 1B/3B and 3.1 8B/70B (128k vocabulary), Qwen2.5 14B, Gemma 2B (256k vocabulary);
QLoRA, LoRA and full fine-tuning; the standard and the chunked loss; sequence 512-8192; checkpointing on and off. Prints a table and
writes ``results/accuracy_trace.json``. No GPU and almost no RAM needed; about 10-40 s per 8B-70B
configuration on 2 cores.

    python benchmarks/accuracy_trace.py [--quick] [--out PATH]

Target (issue 3): median |error| <= 2%, max <= 5% on the peak allocated bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _accuracy import run_and_report  # noqa: E402

# google/gemma-2b config.json (the fields that shape memory): 256k vocabulary, MQA, head_dim 256
GEMMA_2B = {"model_type": "gemma", "hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
            "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 256000,
            "max_position_embeddings": 8192, "hidden_activation": "gelu_pytorch_tanh"}


def grid(folder: Path) -> list[tuple[str, str, dict]]:
    d = folder / "gemma-2b"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(GEMMA_2B))
    gemma = str(d)
    q = dict(method="qlora", grad_accum=1, optimizer="paged_adamw_8bit")
    lo = dict(method="lora", quant="bf16", grad_accum=1, optimizer="adamw")
    fu = dict(method="full", quant="bf16", grad_accum=1, optimizer="adamw")
    rows = [
        ("1b", "1b", dict(q, seq_len=512, micro_batch=1, gradient_checkpointing=False)),
        ("1b", "1b", dict(q, seq_len=2048, micro_batch=2, gradient_checkpointing=True)),
        ("1b", "1b", dict(lo, seq_len=1024, micro_batch=1, gradient_checkpointing=False)),
        ("1b", "1b", dict(fu, seq_len=1024, micro_batch=1, gradient_checkpointing=True)),
        ("1b", "1b", dict(fu, seq_len=512, micro_batch=2, gradient_checkpointing=False, optimizer="adamw_8bit")),
        ("1b", "1b", dict(q, seq_len=8192, micro_batch=1, gradient_checkpointing=True)),
        ("3b", "3b", dict(q, seq_len=2048, micro_batch=1, gradient_checkpointing=True)),
        ("3b", "3b", dict(q, seq_len=1024, micro_batch=2, gradient_checkpointing=False, optimizer="adamw")),
        ("3b", "3b", dict(lo, seq_len=2048, micro_batch=1, gradient_checkpointing=True)),
        ("3b", "3b", dict(q, seq_len=4096, micro_batch=1, gradient_checkpointing=True, lora_rank=64)),
        ("8b", "8b", dict(q, seq_len=2048, micro_batch=1, gradient_checkpointing=True)),
        ("8b", "8b", dict(q, seq_len=512, micro_batch=4, gradient_checkpointing=False)),
        ("8b", "8b", dict(q, seq_len=8192, micro_batch=1, gradient_checkpointing=True)),
        ("8b", "8b", dict(q, seq_len=2048, micro_batch=1, gradient_checkpointing=True, double_quant=False,
                          lora_targets="q_proj,v_proj", lora_rank=8)),
        ("8b", "8b", dict(lo, seq_len=2048, micro_batch=1, gradient_checkpointing=True)),
        ("8b", "8b", dict(lo, seq_len=1024, micro_batch=1, gradient_checkpointing=False, optimizer="adamw_8bit")),
        ("8b", "8b", dict(fu, seq_len=2048, micro_batch=1, gradient_checkpointing=True, optimizer="adamw_8bit")),
        ("8b", "8b", dict(q, seq_len=1024, micro_batch=1, gradient_checkpointing=False, attention="eager")),
        ("14b", "14b", dict(q, seq_len=2048, micro_batch=1, gradient_checkpointing=True)),
        ("14b", "14b", dict(q, seq_len=1024, micro_batch=2, gradient_checkpointing=False)),
        ("14b", "14b", dict(lo, seq_len=2048, micro_batch=1, gradient_checkpointing=True)),
        ("gemma2b", gemma, dict(q, seq_len=2048, micro_batch=1, gradient_checkpointing=True)),
        ("gemma2b", gemma, dict(q, seq_len=1024, micro_batch=2, gradient_checkpointing=False)),
        ("gemma2b", gemma, dict(fu, seq_len=1024, micro_batch=1, gradient_checkpointing=True)),
        ("70b", "70b", dict(q, seq_len=2048, micro_batch=1, gradient_checkpointing=True)),
        ("70b", "70b", dict(q, seq_len=4096, micro_batch=1, gradient_checkpointing=True, lora_rank=64)),
        ("70b", "70b", dict(q, seq_len=512, micro_batch=1, gradient_checkpointing=False)),
        # the chunked loss (lm_head fused with the cross-entropy, ftplan.stack.loss)
        ("1b", "1b", dict(q, seq_len=1024, micro_batch=1, gradient_checkpointing=True, loss_impl="chunked")),
        ("1b", "1b", dict(q, seq_len=16384, micro_batch=1, gradient_checkpointing=True, loss_impl="chunked")),
        ("1b", "1b", dict(fu, seq_len=2048, micro_batch=1, gradient_checkpointing=True, loss_impl="chunked")),
        ("8b", "8b", dict(q, seq_len=2048, micro_batch=1, gradient_checkpointing=True, loss_impl="chunked")),
        ("8b", "8b", dict(lo, seq_len=4096, micro_batch=1, gradient_checkpointing=True, loss_impl="chunked")),
        ("70b", "70b", dict(q, seq_len=2048, micro_batch=1, gradient_checkpointing=True, loss_impl="chunked")),
    ]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the 1B-8B rows only")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "accuracy_trace.json"))
    args = ap.parse_args()
    from ftplan.measure.trace import trace

    quick = (lambda g: [r for r in g if r[0] in ("1b", "3b", "8b")]) if args.quick else (lambda g: g)
    run_and_report(grid, lambda model, kn: trace(model, **kn), "traced", "fake", "benchmarks/accuracy_trace.py",
                   args.out, keep=quick)
    return 0


if __name__ == "__main__":
    from ftplan.stack import quiet_stack

    with quiet_stack():
        rc = main()
    raise SystemExit(rc)
