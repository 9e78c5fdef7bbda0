"""The time model's structure on the CPU: how much slower or faster one configuration is than another,
predicted against measured, with the CPU's own rates measured once at the start of the run.

A CPU is not the GPU the model is for, so absolute seconds are not the point: the ratios are. If the
model says checkpointing costs +30% or a 4x micro-batch is 1.1x faster per token, a real run on any
device should show roughly the same. Here every configuration is a real ``ftplan profile`` run (no
memory tracker, which slows every op) of a small Llama built from a config with random weights, and
each prediction is ``ftplan.estimate`` on a "GPU" whose matmul rate and memory bandwidth are this CPU's,
measured by this script at the base configuration's sizes (a bf16 GEMM; elementwise ops), with no
ratio applied.

    python benchmarks/speed_cpu.py [--steps 3] [--out PATH]

Prints, per configuration: measured and predicted seconds per token, each as a ratio to the base
configuration, and the error of the predicted ratio; then the median and max |error|.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = {"model_type": "llama", "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4,
          "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 8192, "max_position_embeddings": 4096,
          "tie_word_embeddings": False, "rms_norm_eps": 1e-5}
BASE = dict(method="lora", quant="bf16", lora_rank=16, micro_batch=2, seq_len=256, grad_accum=1,
            gradient_checkpointing=False, optimizer="adamw_torch", attention="sdpa")
VARIANTS: list[tuple[str, dict]] = [
    ("base: LoRA r16, 2x256, no checkpointing", {}),
    ("micro-batch 1", dict(micro_batch=1)),
    ("micro-batch 4", dict(micro_batch=4)),
    ("sequence 512", dict(seq_len=512)),
    ("checkpointing", dict(gradient_checkpointing=True)),
    ("rank 64", dict(lora_rank=64)),
    ("accumulation 4", dict(grad_accum=4)),
    ("full fine-tuning", dict(method="full", lora_rank=16)),
    ("QLoRA nf4", dict(method="qlora", quant="nf4")),
]


def measure_rates(reps: int = 7) -> tuple[float, float]:
    """(bf16 GEMM FLOP/s, elementwise bytes/s) of this CPU at the sizes the base configuration works on,
    medians of ``reps``: a (tokens x hidden) @ (hidden x intermediate) GEMM, and an add, a multiply and an
    upcast of (tokens x intermediate) tensors counted as bytes read + written. At these sizes the tensors
    live in the CPU's caches, so a copy of a large buffer would understate the rate the ops see."""
    import torch

    tokens = BASE["micro_batch"] * BASE["seq_len"]
    h, f = CONFIG["hidden_size"], CONFIG["intermediate_size"]
    a = torch.randn(tokens, h, dtype=torch.bfloat16)
    w = torch.randn(h, f, dtype=torch.bfloat16)

    def timed(fn) -> float:
        fn()  # warm-up
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    gemm = 2 * tokens * h * f / timed(lambda: a @ w)
    x = torch.randn(tokens, f, dtype=torch.bfloat16)
    y = torch.randn(tokens, f, dtype=torch.bfloat16)
    n = x.numel()
    rates = [3 * 2 * n / timed(lambda: x + y), 3 * 2 * n / timed(lambda: x * y), (2 + 4) * n / timed(lambda: x.float())]
    return gemm, statistics.median(rates)


def cpu_as_gpu(flops: float, bw: float):
    from ftplan.planner.types import GPUSpec

    return GPUSpec(key="this-cpu", name="this CPU (measured rates)", memory_gb=1e3, usable_bytes=2**40,
                   usable_source="benchmark", bandwidth_gbs=bw / 1e9, bf16_tflops=flops / 1e12, fp16_tflops=flops / 1e12,
                   fp32_tflops=None, compute_capability=8.0, bf16=True, flash_attention_2=False, price_per_hour=None,
                   matmul_ratio=1.0, bandwidth_ratio=1.0, rates_note="this CPU, measured by the benchmark")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed_cpu.json"))
    a = ap.parse_args()
    import torch

    import ftplan
    from ftplan.atomic import atomic_write_text
    from ftplan.measure.profile import profile
    from ftplan.stack.env import versions

    torch.manual_seed(0)
    flops, bw = measure_rates()
    gpu = cpu_as_gpu(flops, bw)
    print(f"this CPU: bf16 GEMM {flops / 1e9:.1f} GFLOP/s, elementwise {bw / 1e9:.1f} GB/s "
          f"({torch.get_num_threads()} threads)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "llama-cpu"
        d.mkdir()
        (d / "config.json").write_text(json.dumps(CONFIG))
        for label, change in VARIANTS:
            kn = {**BASE, **change}
            res = profile(str(d), steps=a.steps, device="cpu", breakdown=False, **kn)
            est = ftplan.estimate(str(d), gpu, calibrate=False, **kn)
            assert est.time is not None
            m = 1.0 / res["tokens_per_s"]
            p = 1.0 / est.time.tokens_per_s
            rows.append({"config": label, "knobs": kn, "measured_s_per_token": m, "predicted_s_per_token": p,
                         "phase_times_s": res.get("phase_times_s"),
                         "pieces": [list(x) for x in est.time.pieces]})
            print(f"  ran {label}: measured {m * 1e3:.3f} ms/token, predicted {p * 1e3:.3f} ms/token", flush=True)
    base_m, base_p = rows[0]["measured_s_per_token"], rows[0]["predicted_s_per_token"]
    print(f"\n{'configuration':<42}{'measured':>10}{'predicted':>11}{'error':>9}   (time per token, relative to the base)")
    errs = []
    for r in rows:
        rm, rp = r["measured_s_per_token"] / base_m, r["predicted_s_per_token"] / base_p
        r["measured_ratio"], r["predicted_ratio"], r["ratio_error"] = rm, rp, rp / rm - 1
        if r is not rows[0]:
            errs.append(abs(r["ratio_error"]))
        print(f"{r['config']:<42}{rm:>10.2f}{rp:>11.2f}{r['ratio_error']:>+9.1%}")
    print(f"\n{len(errs)} ratios: median |error| {statistics.median(errs):.1%}, max {max(errs):.1%}; "
          f"absolute: base predicted {base_p / base_m:.2f}x the measured time per token")
    doc = {"cpu_rates": {"bf16_gemm_flops": flops, "elementwise_bytes_per_s": bw, "threads": torch.get_num_threads()},
           "rows": rows, "median_abs_ratio_error": statistics.median(errs), "max_abs_ratio_error": max(errs),
           "versions": versions(), "command": "python benchmarks/speed_cpu.py",
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(Path(a.out), json.dumps(doc, indent=1, default=str))
    print(f"saved {Path(a.out).relative_to(ROOT) if Path(a.out).is_relative_to(ROOT) else a.out}")


if __name__ == "__main__":
    main()
