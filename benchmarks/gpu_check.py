"""One prepared GPU check: everything ftplan can only learn on a GPU, in one command of at most 8 minutes.

    python benchmarks/gpu_check.py [--out FOLDER] [--gpu auto|h100|...]
    python benchmarks/gpu_check.py --dry-run        # every stage on the CPU with the tiniest shapes (CI runs it)

Stages, each with its own time budget (``STAGES``; they add up to 480 s), each stopped with a message when
its budget runs out and each isolated (a failure in one is written down and the next one runs):

1. ``env``: provenance: GPU, driver, CUDA, library versions, date, command.
2. ``rates``: achievable bf16 matmul TFLOP/s (8192^3 and an M sweep at N = K = 4096: the GEMM efficiency
   curve behind ``planner.ops.GEMM_TAIL_S``), device-to-device copy and elementwise bandwidth.
3. ``accuracy``: the memory grid of ``benchmarks/accuracy_gpu.py`` in a quick form (synthetic Llama 1B/3B/8B:
   QLoRA nf4/fp4, LoRA, full; 70B QLoRA when the card has the memory), in this process (one import,
   the allocator emptied between runs): allocated, reserved and NVML per configuration beside
   ``ftplan.estimate``, and measured tokens/s beside the time model.
4. ``fsdp``: rank 0 of a 2-rank FSDP2 run over PyTorch's fake process group (real CUDA allocations, no
   communication) beside ``ftplan.estimate(..., num_gpus=2, sharding="fsdp")``: the CUDA allocator's
   reserved-over-allocated for sharded runs, which the CPU ranks cannot show.
5. ``autotune``: a real ``ftplan autotune`` of a synthetic 8B QLoRA (6 trials, one forced out-of-memory trial
   through the tuner's fault switch ``FTPLAN_TUNE_FAULT=oom@2``: a real OOM result from the profiler).
6. ``train``: ``ftplan train`` of the study's winner for 20 steps, timed.

Writes one folder (``--out``, default ``benchmarks/results/gpu_check-<gpu>-<date>``): one JSON per stage and
``summary.json`` (each stage's status with this process's host memory, VmRSS and VmHWM: the per-process
footprint with the CUDA libraries loaded, which ftplan's host-memory figure leaves out), and prints a summary table. The GPU machine needs bitsandbytes and optuna (and optuna's
needs); ``benchmarks/gpu_wheels.sh`` downloads them for it (about 50 MB).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# (stage, budget in seconds): 480 s = 8 minutes in all
STAGES: tuple[tuple[str, float], ...] = (("env", 10), ("rates", 30), ("accuracy", 185), ("fsdp", 60),
                                         ("autotune", 150), ("train", 45))
# seconds a configuration of the accuracy grid needs left before it starts (a 70B build quantizes 70B weights)
NEEDS_S = {"70b": 90.0, "8b": 20.0}
TOTAL_BUDGET_S = 480


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds, self.t0 = seconds, time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.t0)

    def spent(self) -> float:
        return time.monotonic() - self.t0


class Ctx:
    def __init__(self, dry: bool, out: Path, gpu_key: str) -> None:
        self.dry, self.out, self.gpu_key = dry, out, gpu_key
        self.device = "cpu" if dry else "cuda"
        self.results: dict[str, Any] = {}
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
        self.tiny = ""  # a tiny model folder (dry run)

    def model(self, name: str) -> str:
        """The model a stage runs: the catalog model on the GPU, the tiny config in a dry run."""
        return self.tiny if self.dry else name


def host_rss() -> dict[str, int | None]:
    """This process's host memory now and at its highest (Linux ``/proc/self/status`` VmRSS, VmHWM; bytes):
    the per-process footprint (Python, torch and the CUDA libraries) that ftplan's host-memory figure leaves
    out, recorded after each stage."""
    out: dict[str, int | None] = {"rss_bytes": None, "peak_rss_bytes": None}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_bytes" if key == "VmRSS" else "peak_rss_bytes"] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str, reps: int) -> float:
    fn()
    _sync(device)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


# --- stages -------------------------------------------------------------------------------------------

def stage_env(ctx: Ctx, budget: Budget) -> dict:
    from ftplan.stack.env import provenance

    prov = provenance(ctx.device, ["python", "benchmarks/gpu_check.py", *sys.argv[1:]])
    prov["cpu_count"] = os.cpu_count()
    try:
        import bitsandbytes as bnb  # noqa: F401

        prov["bitsandbytes_import"] = "ok"
    except Exception as e:  # noqa: BLE001 - recorded: the QLoRA stages need it
        prov["bitsandbytes_import"] = f"{type(e).__name__}: {e}"[:300]
    return prov


def stage_rates(ctx: Ctx, budget: Budget) -> dict:
    import torch

    dev = ctx.device
    dt16 = torch.bfloat16
    big, k_sweep = (256, 128) if ctx.dry else (8192, 4096)
    ms = (16, 64, 256) if ctx.dry else (256, 512, 1024, 2048, 4096, 8192, 16384)
    out: dict[str, Any] = {"matmul_bf16": [], "unit": "TFLOP/s"}
    a = torch.randn(big, big, device=dev, dtype=dt16)
    b = torch.randn(big, big, device=dev, dtype=dt16)
    t = _timed(lambda: a @ b, dev, 3 if ctx.dry else 10)
    out["matmul_bf16"].append({"m": big, "n": big, "k": big, "tflops": 2 * big**3 / t / 1e12, "seconds": t})
    w = torch.randn(k_sweep, k_sweep, device=dev, dtype=dt16)
    for m in ms:
        if budget.left() < 5:
            out["stopped"] = f"budget ran out at M={m}"
            break
        x = torch.randn(m, k_sweep, device=dev, dtype=dt16)
        t = _timed(lambda x=x: x @ w, dev, 3 if ctx.dry else 20)
        out["matmul_bf16"].append({"m": m, "n": k_sweep, "k": k_sweep, "tflops": 2 * m * k_sweep**2 / t / 1e12,
                                   "seconds": t})
    n = (1 << 20) if ctx.dry else (1 << 30)
    src = torch.empty(n, dtype=torch.uint8, device=dev).fill_(1)
    dst = torch.empty_like(src)
    t = _timed(lambda: dst.copy_(src), dev, 3 if ctx.dry else 10)
    out["copy_gbs"] = 2 * n / t / 1e9  # read + write
    x = torch.randn(n // 2, dtype=dt16, device=dev)
    y = torch.randn(n // 2, dtype=dt16, device=dev)
    t = _timed(lambda: x + y, dev, 3 if ctx.dry else 10)
    out["add_gbs"] = 3 * n / t / 1e9
    return out


def accuracy_grid(ctx: Ctx, total_gib: float) -> list[tuple[str, dict]]:
    if ctx.dry:
        return [("tiny", dict(method="qlora", quant="nf4", micro_batch=1, seq_len=64, gradient_checkpointing=True,
                              optimizer="adamw", grad_accum=1)),
                ("tiny", dict(method="lora", quant="bf16", micro_batch=2, seq_len=64, gradient_checkpointing=False,
                              optimizer="adamw_torch", grad_accum=1))]
    from accuracy_gpu import grid

    return grid(total_gib)


def _estimate_figures(est) -> dict:
    return {"peak_allocated_bytes": est.peak_allocated_bytes, "peak_reserved_bytes": est.peak_reserved_bytes,
            "device_bytes": est.device_bytes, "tokens_per_s": est.time.tokens_per_s if est.time else None,
            "tokens_per_s_range": list(est.time.tokens_per_s_range) if est.time else None,
            "phases": {k: dict(v) for k, v in est.phases.items()}}


def _free(dev: str) -> None:
    import gc

    gc.collect()
    if dev == "cuda":
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def stage_accuracy(ctx: Ctx, budget: Budget) -> dict:
    import torch

    import ftplan
    from ftplan.measure.profile import profile

    total = torch.cuda.get_device_properties(0).total_memory / 2**30 if ctx.device == "cuda" else 0.0
    gpu = "cpu" if ctx.dry else ctx.gpu_key
    rows, done = [], 0
    grid = accuracy_grid(ctx, total)
    for model, kn in grid:
        if budget.left() < NEEDS_S.get(model, 8.0):
            break
        m = ctx.model(model)
        rec: dict[str, Any] = {"model": model, "knobs": kn}
        try:
            est = ftplan.estimate(m, gpu, calibrate=False, **kn)
            rec["predicted"] = _estimate_figures(est)
            res = profile(m, steps=2, device=ctx.device, breakdown=False, **kn)
            rec["status"] = res.get("status", "error")
            rec["measured"] = {k: res.get(k) for k in ("peak_allocated_bytes", "peak_reserved_bytes", "device_bytes",
                                                       "tokens_per_s", "phase_times_s", "peak_phase", "phase_peaks")}
            if res.get("status") != "ok":
                rec["reason"] = str(res.get("error", ""))[:300]
        except Exception as e:  # noqa: BLE001 - one broken row must not hide the others
            rec["status"], rec["reason"] = "error", f"{type(e).__name__}: {e}"[:300]
        rows.append(rec)
        done += 1
        _free(ctx.device)
    out: dict[str, Any] = {"rows": rows, "configurations": len(grid), "ran": done}
    if done < len(grid):
        out["stopped"] = f"budget ran out after {done} of {len(grid)} configurations"
    ok = [r for r in rows if r.get("status") == "ok" and r["measured"]["peak_allocated_bytes"]]
    for key in ("peak_allocated_bytes", "peak_reserved_bytes", "device_bytes", "tokens_per_s"):
        errs = [r["predicted"][key] / r["measured"][key] - 1 for r in ok if r["measured"].get(key) and r["predicted"].get(key)]
        if errs:
            out[f"{key}_error"] = {"median_abs": statistics.median(abs(e) for e in errs),
                                   "max_abs": max(abs(e) for e in errs), "signed_median": statistics.median(errs),
                                   "runs": len(errs)}
    over = [r["measured"]["peak_reserved_bytes"] / r["measured"]["peak_allocated_bytes"] for r in ok
            if r["measured"].get("peak_reserved_bytes")]
    if over:
        out["reserved_over_allocated_median"] = statistics.median(over)
    return out


def stage_fsdp(ctx: Ctx, budget: Budget) -> dict:
    from torch.distributed.device_mesh import init_device_mesh

    import ftplan
    from ftplan.measure.distributed import _no_sync, fake_rank0, shard_fsdp2
    from ftplan.measure.profile import summarize
    from ftplan.measure.step import run_steps
    from ftplan.planner.options import make_config
    from ftplan.stack.build import build_model
    from ftplan.stack.optim import make_optimizer

    model = ctx.model("8b")
    kn = dict(method="lora", quant="bf16", micro_batch=1, seq_len=64 if ctx.dry else 2048,
              gradient_checkpointing=True, optimizer="adamw_torch", grad_accum=1, num_gpus=2, sharding="fsdp")
    spec = ftplan.get_model(model)
    cfg = make_config(spec, None, **kn).config
    est = ftplan.estimate(model, "cpu" if ctx.dry else ctx.gpu_key, calibrate=False, **kn)
    try:
        with fake_rank0():
            mesh = init_device_mesh(ctx.device, (2,))
            m = build_model(model, spec, cfg, ctx.device, synthetic=True)
            m = shard_fsdp2(m, cfg, reshard_after_forward=True, mesh=mesh)
            _free(ctx.device)
            opt = make_optimizer(cfg.optimizer, [p for p in m.parameters() if p.requires_grad], ctx.device)
            vocab = m.get_input_embeddings().weight.shape[0]

            def no_sync():
                return _no_sync(m, "fsdp")

            if ctx.device == "cpu":  # the CPU has no allocator counters: the live-storage tracker measures
                from ftplan.measure.step import classify_params
                from ftplan.measure.tracker import LiveStorageTracker

                tracker = LiveStorageTracker()
                for tag, ts in classify_params(m).items():
                    tracker.track(ts, tag, weight=tag != "buffers")
                with tracker, tracker.follow_fsdp2():
                    records = run_steps(m, cfg, vocab, ctx.device, 3, tracker, no_sync=no_sync, optimizer=opt)
            else:
                records = run_steps(m, cfg, vocab, ctx.device, 3, None, no_sync=no_sync, optimizer=opt)
            res = summarize(records)
    finally:
        _free(ctx.device)
    meas = {k: res.get(k) for k in ("peak_allocated_bytes", "peak_reserved_bytes", "device_bytes", "peak_phase",
                                    "phase_peaks", "tokens_per_s")}
    predicted = _estimate_figures(est)
    # no communicator exists over the fake process group: the device figure to compare leaves NCCL's out
    predicted["device_bytes_without_nccl"] = est.device_bytes - est.overheads.get("nccl_buffers", 0)
    out = {"model": model, "knobs": kn, "predicted": predicted, "measured": meas,
           "note": "rank 0 of 2 over the fake process group: real allocations, no communication (no NCCL buffers: "
                   "compare device_bytes with predicted device_bytes_without_nccl)"}
    if ctx.device == "cuda" and budget.left() > 25:
        try:  # FSDP1 (most published multi-GPU figures): its reserved pools, which only CUDA shows
            out["fsdp1"] = _fsdp1_rank(model, spec, cfg, ctx.device)
        except Exception as e:  # noqa: BLE001 - recorded; FSDP2's figures above stand
            out["fsdp1"] = {"error": f"{type(e).__name__}: {e}"[:500]}
    else:
        out["fsdp1"] = {"skipped": "on the CPU: benchmarks/fsdp1_cpu.py measures FSDP1's allocations; here the CUDA "
                                   "allocator's figures (reserved) are the point" if ctx.device != "cuda" else "budget"}
    return out


def _fsdp1_rank(model: str, spec, cfg, device: str) -> dict:
    """Rank 0 of a 2-rank FSDP1 run as HF Trainer wraps it (``ftplan.measure.distributed.shard_fsdp1``: a unit per
    decoder layer and per LoRA module, bf16 mixed precision, ``use_orig_params``, ``limit_all_gathers``), over the
    fake process group: allocated and reserved per phase."""
    from ftplan.measure.distributed import build_fsdp1, fake_rank0
    from ftplan.measure.profile import summarize
    from ftplan.measure.step import run_steps
    from ftplan.stack.optim import make_optimizer

    try:
        with fake_rank0():
            net, vocab = build_fsdp1(model, spec, cfg, device)
            _free(device)
            opt = make_optimizer(cfg.optimizer, [p for p in net.parameters() if p.requires_grad], device)
            records = run_steps(net, cfg, vocab, device, 3, None, optimizer=opt, no_sync=net.no_sync)
            res = summarize(records)
    finally:
        _free(device)
    return {k: res.get(k) for k in ("peak_allocated_bytes", "peak_reserved_bytes", "device_bytes", "peak_phase",
                                    "phase_peaks")}


def _ftplan(args: list[str], timeout: float, env: dict | None = None, cwd: Path | None = None) -> dict:
    t = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "ftplan", *args], capture_output=True, text=True,
                           timeout=max(1.0, timeout), env={**os.environ, **(env or {})}, cwd=cwd)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": time.perf_counter() - t, "error": f"no result within {timeout:.0f} s"}
    return {"status": "ok" if p.returncode == 0 else f"exit {p.returncode}", "seconds": time.perf_counter() - t,
            "stdout": p.stdout[-20000:], "stderr_tail": p.stderr[-3000:]}


def _write_data(path: Path, n: int) -> str:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Q: what is {i} plus {i}?", "completion": f" A: {2 * i}."}) + "\n")
    return str(path)


def stage_autotune(ctx: Ctx, budget: Budget) -> dict:
    data = _write_data(ctx.work / "train.jsonl", 64 if ctx.dry else 512)
    args = ["autotune", "--model", ctx.model("8b"), "--method", "qlora", "--synthetic-weights", "--data", data,
            "--trials", "3" if ctx.dry else "6", "--steps", "2", "--json", "--runs-dir", str(ctx.work / "runs"),
            "--study", "gpu-check", "--seq-len", "64" if ctx.dry else "2048",
            "--device", ctx.device, "--trial-timeout", "120" if ctx.dry else "90"]
    if not ctx.dry:  # stop starting trials in time for the study to finish and write its winner
        args += ["--gpu", ctx.gpu_key, "--max-memory", "60GiB", "--time-budget", f"{max(10, int(budget.left() - 45))}s"]
    r = _ftplan(args, budget.left() - 5, env={"FTPLAN_TUNE_FAULT": "oom@2"})
    out: dict[str, Any] = {"command": "ftplan " + " ".join(args), "fault": "FTPLAN_TUNE_FAULT=oom@2",
                           "status": r["status"], "seconds": r["seconds"]}
    if r.get("stderr_tail") and r["status"] != "ok":
        out["stderr_tail"] = r["stderr_tail"]
    lines = [ln for ln in (r.get("stdout") or "").splitlines() if ln.startswith("{")]
    if lines:
        doc = json.loads(lines[-1])
        out["trials"] = doc.get("trials")
        out["best"] = doc.get("best")
        out["files"] = doc.get("files")
        out["calibration"] = doc.get("calibration")
        ctx.results["_best_file"] = (doc.get("files") or {}).get("best")
        states = [t.get("state") for t in doc.get("trials") or []]
        out["oom_trials"] = sum(1 for t in doc.get("trials") or [] if "out of memory" in str(t.get("reason", "")).lower())
        out["complete_trials"] = states.count("COMPLETE")
    return out


def stage_train(ctx: Ctx, budget: Budget) -> dict:
    best = ctx.results.get("_best_file")
    if not best:
        return {"status": "skipped", "reason": "no winner from the autotune stage"}
    data = str(ctx.work / "train.jsonl")
    steps = "3" if ctx.dry else "20"
    args = ["train", "--config", best, "--data", data, "--max-steps", steps, "-o", str(ctx.work / "trained"), "-q"]
    r = _ftplan(args, budget.left() - 2)
    out = {"command": "ftplan " + " ".join(args), "status": r["status"], "seconds": r["seconds"], "steps": int(steps)}
    if r["status"] != "ok":
        out["stderr_tail"] = r.get("stderr_tail", "")
    return out


STAGE_FUNCS: dict[str, Callable[[Ctx, Budget], dict]] = {
    "env": stage_env, "rates": stage_rates, "accuracy": stage_accuracy, "fsdp": stage_fsdp,
    "autotune": stage_autotune, "train": stage_train}


def summary_lines(ctx: Ctx, status: dict[str, dict]) -> list[str]:
    r = ctx.results
    lines = [f"{'stage':<10}{'status':<12}{'seconds':>8}{'budget':>8}  result"]
    for name, budget in STAGES:
        s = status.get(name, {})
        res = r.get(name) or {}
        what = ""
        if name == "env" and res:
            what = f"{res.get('gpu') or res.get('device_name') or res.get('device', '')} {res.get('versions', {})}"[:100]
        elif name == "rates" and res.get("matmul_bf16"):
            top = max(x["tflops"] for x in res["matmul_bf16"])
            what = f"bf16 matmul max {top:.1f} TFLOP/s; copy {res.get('copy_gbs', 0):.0f} GB/s"
        elif name == "accuracy" and res:
            e = res.get("peak_reserved_bytes_error") or {}
            t = res.get("tokens_per_s_error") or {}
            what = (f"{res.get('ran')} of {res.get('configurations')} configurations; reserved median |error| "
                    f"{e.get('median_abs', float('nan')):.1%}, tokens/s median |error| {t.get('median_abs', float('nan')):.1%}")
        elif name == "fsdp" and res.get("measured"):
            m, p = res["measured"], res["predicted"]
            what = (f"rank 0 allocated {(m.get('peak_allocated_bytes') or 0) / 2**30:.3f} GiB (predicted "
                    f"{p['peak_allocated_bytes'] / 2**30:.3f}), reserved "
                    f"{(m.get('peak_reserved_bytes') or 0) / 2**30:.3f} GiB")
        elif name == "autotune" and res:
            what = f"{res.get('complete_trials')} complete, {res.get('oom_trials')} OOM; {res.get('status')}"
        elif name == "train" and res:
            what = f"{res.get('steps')} steps in {res.get('seconds', 0):.1f} s; {res.get('status')}"
        lines.append(f"{name:<10}{s.get('status', 'not run'):<12}{s.get('seconds', 0):>8.1f}{budget:>8.0f}  {what}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="every stage on the CPU with the tiniest shapes")
    ap.add_argument("--gpu", default="auto", help="catalog GPU for the estimates (default: detected)")
    ap.add_argument("--out", default=None, help="results folder")
    ap.add_argument("--only", default="", help="comma-separated stages to run (default: all)")
    a = ap.parse_args()
    assert sum(b for _, b in STAGES) <= TOTAL_BUDGET_S
    import torch

    if not a.dry_run and not torch.cuda.is_available():
        print("gpu_check.py needs a CUDA GPU (torch.cuda.is_available() is False); --dry-run walks the stages on "
              "the CPU", file=sys.stderr)
        return 2
    import ftplan

    gpu_key = "cpu" if a.dry_run else ftplan.get_gpu(a.gpu).key
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"gpu_check-{gpu_key}-{date}"
    out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(a.dry_run, out, gpu_key)
    if a.dry_run:
        from ftplan.measure.small_models import write_config

        ctx.tiny = str(write_config("llama", ctx.work))
    from ftplan.atomic import atomic_write_text

    only = {s for s in a.only.split(",") if s}
    status: dict[str, dict] = {}
    for name, seconds in STAGES:
        if only and name not in only:
            continue
        budget = Budget(seconds)
        print(f"== {name} (budget {seconds:.0f} s)", flush=True)
        try:
            res = STAGE_FUNCS[name](ctx, budget)
            st = "over budget" if budget.left() < 0 else ("partial" if res.get("stopped") else "ok")
        except Exception as e:  # noqa: BLE001 - a failed stage is a result; the next stage runs
            res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
            st = "failed"
            print(f"   {name} failed: {type(e).__name__}: {e}", flush=True)
        ctx.results[name] = res
        status[name] = {"status": st, "seconds": budget.spent(), "budget_s": seconds, "host": host_rss()}
        atomic_write_text(out / f"{name}.json", json.dumps(res, indent=1, default=str))
    lines = summary_lines(ctx, status)
    print("\n" + "\n".join(lines))
    doc = {"dry_run": a.dry_run, "gpu": gpu_key, "stages": status, "total_budget_s": TOTAL_BUDGET_S,
           "summary": lines, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(out / "summary.json", json.dumps(doc, indent=1, default=str))
    print(f"\nwrote {len(status) + 1} files to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0 if all(s["status"] != "failed" for s in status.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
