"""Speed of the fit path: cold wall time of `ftplan --model 8b --gpu rtx4090` (a new process each run)
and the time of a full plan() search, with the number of candidates it evaluated.

Targets (issue 2): cold fit command <= 0.3 s median on a 2-core machine; a search over >= 5,000
candidates <= 50 ms. Prints a table; medians over repeated runs in one invocation.

    python benchmarks/speed.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def cold_cli(runs: int) -> list[float]:
    exe = os.path.join(os.path.dirname(sys.executable), "ftplan")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "ftplan"]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd + ["--model", "8b", "--gpu", "rtx4090"], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return times


def search_times(runs: int, **kwargs) -> tuple[list[float], int, int]:
    import ftplan
    from ftplan.planner import estimate, ops, timing
    from ftplan.planner.memory import phases

    times = []
    res = None
    for _ in range(runs):
        phases.clear_caches()  # measure a cold search, not a cache hit
        timing._WORK_CACHE.clear()
        ops.clear_cache()
        estimate._TRAFFIC_CACHE.clear()
        t = time.perf_counter()
        res = ftplan.plan_search(**kwargs)
        times.append(time.perf_counter() - t)
    return times, res.candidates, res.feasible


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    rows = []
    t = cold_cli(args.runs)
    rows.append(("ftplan --model 8b --gpu rtx4090 (cold process)", "-", statistics.median(t), min(t), 0.3))
    for label, kw in [
        ("plan(8b, rtx4090) default search", dict(model="8b", gpu="rtx4090", top=6)),
        ("plan(8b, h100, objective=quality)", dict(model="8b", gpu="h100", objective="quality", top=6)),
        ("plan(70b, h100, objective=quality)", dict(model="70b", gpu="h100", objective="quality", top=6)),
        ("plan(70b, rtx4090, num_gpus=4) strategies", dict(model="70b", gpu="rtx4090", num_gpus=4, top=6)),
        ("plan(8b, h100, num_gpus=8) strategies", dict(model="8b", gpu="h100", num_gpus=8, top=6)),
    ]:
        ts, n, feasible = search_times(args.runs, **kw)
        # issue 13: the default search with multi-GPU strategies within 50 ms
        target = 0.05 if "strategies" in label else 0.05 * n / 5000
        rows.append((label, f"{n} ({feasible} fit)", statistics.median(ts), min(ts), target))
    print(f"{'what':<50}{'candidates':>18}{'median s':>11}{'min s':>9}{'target s':>10}")
    for label, n, med, mn, target in rows:
        print(f"{label:<50}{n:>18}{med:>11.3f}{mn:>9.3f}{target:>10.3f}")
    print(f"\n{args.runs} runs each; python {sys.version.split()[0]}, {os.cpu_count()} CPUs. "
          "Search target scales 50 ms per 5,000 candidates.")


if __name__ == "__main__":
    main()
