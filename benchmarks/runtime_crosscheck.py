"""The time model's operations against PyTorch's own op-by-op roofline, on full-size traced steps.

PyTorch ships a runtime estimator (``torch.distributed._tools.runtime_estimator.RuntimeEstimator``) that,
under FakeTensorMode, prices every aten op with a roofline: ``max(FLOPs / peak, bytes moved / bandwidth)``,
FLOPs from ``torch.utils.flop_counter``'s formulas and bytes from the op's inputs and outputs. Its roofline
mode reads the rates from the CUDA device, so it cannot run here; this script applies the same formulas
(the same ``flop_registry``; bytes counted as ``torch.utils._runtime_estimation.get_num_bytes`` counts them)
with the GPU's achievable rates that ftplan uses, to every op of a traced step (``ftplan.measure.trace``
with an extra dispatch mode), and compares:

- the step's matmul FLOPs (the registry's count) with ftplan's model FLOPs per token x tokens;
- the roofline time of the whole step with ftplan's step time (``ftplan.estimate``), and by kind of op:
  matmuls, attention, the rest (memory-bound: norms, casts, LoRA's elementwise, loss, dequantization,
  the optimizer).

Torch's roofline has no per-kernel fixed cost and counts attention without the causal half (ours halves
it, as FlashAttention does); both are said beside the table. A full-size 8B step takes about a minute to
trace on this machine.

    python benchmarks/runtime_crosscheck.py [--gpu h100] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS: list[tuple[str, dict]] = [
    ("1b", dict(method="lora", quant="bf16", micro_batch=2, seq_len=2048, gradient_checkpointing=False)),
    ("8b", dict(method="qlora", quant="nf4", micro_batch=2, seq_len=2048, gradient_checkpointing=True)),
    ("8b", dict(method="lora", quant="bf16", micro_batch=1, seq_len=4096, gradient_checkpointing=True)),
    ("3b", dict(method="full", quant="bf16", micro_batch=2, seq_len=2048, gradient_checkpointing=True,
                optimizer="adamw_torch")),
]


def roofline_mode(flops_rate: float, bytes_rate: float):
    """A dispatch mode that prices each aten op with torch's roofline formulas at the given rates (per second)
    and sums FLOPs, bytes and seconds by kind of op."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._runtime_estimation import get_num_bytes as nbytes
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    matmuls = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten._scaled_mm}
    views = {aten.view, aten._unsafe_view, aten.reshape, aten.t, aten.transpose, aten.expand, aten.permute,
             aten.slice, aten.select, aten.unsqueeze, aten.squeeze, aten.as_strided, aten.detach, aten.alias,
             aten.split, aten.split_with_sizes, aten.unbind, aten.chunk, aten.narrow}

    class Roofline(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.by_kind: dict[str, dict[str, float]] = {}

        def _add(self, kind: str, flops: float, moved: float, seconds: float) -> None:
            d = self.by_kind.setdefault(kind, {"flops": 0.0, "bytes": 0.0, "seconds": 0.0, "ops": 0})
            d["flops"] += flops
            d["bytes"] += moved
            d["seconds"] += seconds
            d["ops"] += 1

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            packet = func._overloadpacket
            if packet in views:
                return out
            flat_out = [a for a in torch.utils._pytree.tree_leaves(out) if isinstance(a, torch.Tensor)]
            if not flat_out or str(packet).startswith("prim."):  # metadata queries (prim.device, sizes) move nothing
                return out
            flat_in = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
            moved = float(sum(nbytes(t) for t in flat_in) + sum(nbytes(t) for t in flat_out))
            name = str(packet)
            flops = 0.0
            if packet in flop_registry:
                flops = float(flop_registry[packet](*args, **kwargs, out_val=out))
            elif "scaled_dot_product" in name and "for_cpu" in name:
                # the CPU kernel the trace runs in place of the GPU's flash kernel: the flash formulas
                q, k = args[0], args[1]
                if "backward" in name:  # (grad_out, q, k, v, ...)
                    q, k = args[1], args[2]
                b, h, s_q, d = q.shape
                fwd = 4.0 * b * h * s_q * k.shape[-2] * d
                flops = 2.5 * fwd if "backward" in name else fwd
            kind = ("matmul" if packet in matmuls else "attention" if "attention" in name else "memory-bound")
            seconds = max(flops / flops_rate if flops else 0.0, moved / bytes_rate)
            self._add(kind, flops, moved, seconds)
            return out

    return Roofline()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", default="h100")
    ap.add_argument("--quick", action="store_true", help="the first configuration only")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "runtime_crosscheck.json"))
    a = ap.parse_args()
    import ftplan
    from ftplan.atomic import atomic_write_text
    from ftplan.measure.trace import trace
    from ftplan.planner.timing import _rate
    from ftplan.profiles.gpus import get_gpu
    from ftplan.stack.env import versions

    gpu = get_gpu(a.gpu)
    rows = []
    for model, kn in CONFIGS[:1] if a.quick else CONFIGS:
        kn = {"grad_accum": 1, "optimizer": "adamw", "attention": "sdpa", **kn}
        est = ftplan.estimate(model, gpu, calibrate=False, **kn)
        rate = _rate(gpu, est.config)
        assert est.time is not None and rate is not None and rate.tflops is not None
        mode = roofline_mode(rate.tflops * 1e12, rate.bandwidth_gbs * 1e9)
        t0 = time.perf_counter()
        trace(model, steps=2, modes=[mode], **kn)
        kinds = {k: {kk: v / 2 for kk, v in d.items()} for k, d in mode.by_kind.items()}  # per step (2 traced)
        tokens = kn["micro_batch"] * kn["seq_len"]
        model_flops = est.time.flops_per_token * tokens
        torch_flops = sum(d["flops"] for d in kinds.values())
        roof = sum(d["seconds"] for d in kinds.values())
        rows.append({"model": model, "knobs": kn, "gpu": gpu.key, "kinds": kinds, "trace_s": time.perf_counter() - t0,
                     "torch_flops": torch_flops, "ftplan_flops": model_flops, "torch_roofline_s": roof,
                     "ftplan_step_s": est.time.step_time_s, "ftplan_pieces": [list(p) for p in est.time.pieces]})
        print(f"traced {model} {kn['method']} b{kn['micro_batch']}x{kn['seq_len']} in {rows[-1]['trace_s']:.0f} s", flush=True)
    print(f"\n{'configuration':<34}{'FLOPs torch':>12}{'ftplan':>9}{'ratio':>7}{'roofline s':>12}{'ftplan s':>10}"
          f"{'ratio':>7}   roofline by kind (s)")
    for r in rows:
        kn = r["knobs"]
        label = f"{r['model']} {kn['method']} b{kn['micro_batch']}x{kn['seq_len']}{' gc' if kn['gradient_checkpointing'] else ''}"
        by = ", ".join(f"{k} {d['seconds']:.3f}" for k, d in sorted(r["kinds"].items()))
        print(f"{label:<34}{r['torch_flops'] / 1e12:>11.1f}T{r['ftplan_flops'] / 1e12:>8.1f}T"
              f"{r['ftplan_flops'] / r['torch_flops']:>7.2f}{r['torch_roofline_s']:>12.3f}{r['ftplan_step_s']:>10.3f}"
              f"{r['ftplan_step_s'] / r['torch_roofline_s']:>7.2f}   {by}")
    print(f"\nrates: {gpu.key} achievable ({gpu.rates_note}). torch's roofline: no per-kernel fixed cost, attention "
          "FLOPs over the full square; ftplan: causal attention at FlashAttention-2's share of the GEMM rate, a "
          "launch floor and GEMM tail per kernel. ftplan's FLOPs are the model's (MFU's numerator): they leave out "
          "what the registry counts beyond the matmuls of the model (e.g. attention's masked half).")
    doc = {"rows": rows, "versions": versions(), "command": "python benchmarks/runtime_crosscheck.py",
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(Path(a.out), json.dumps(doc, indent=1, default=str))


if __name__ == "__main__":
    main()
