"""Trials needed to find the fastest configuration: ftplan's planner-seeded search against plain Optuna
TPE (no planner) and against crash-and-retry batch-size finding (HF ``auto_find_batch_size`` style).

1. Measure: every configuration of one search space is run once as a real profiled trial (the same
   worker ``ftplan autotune`` uses), under a memory budget, so each has a measured tokens/s or an
   out-of-memory result. On the CPU the budget is a simulated cap; on a GPU it is the card.
2. Replay: each strategy searches that measured table (many sampler seeds); a trial costs one
   measured configuration. Counted: trials until one is within 3% of the best measured tokens/s, and
   out-of-memory trials.

    python benchmarks/autotune.py                 # CPU, small Llama-shaped model (about 2 minutes)
    python benchmarks/autotune.py --device cuda --model 1b --max-memory 12GiB  # on a GPU

Results go to benchmarks/results/autotune_<device>.json with provenance.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

WITHIN = 0.03
MAX_TRIALS = 40


def measure(model: str, device: str, budget: int, fixed: dict, steps: int, synthetic: bool) -> list[dict]:
    from ftplan.profiles.gpus import get_gpu
    from ftplan.profiles.models import get_model
    from ftplan.tune import space as S
    from ftplan.tune.pool import Pool
    from ftplan.tune.study import measured_bytes

    spec = get_model(model)
    gpu = get_gpu("cpu") if device == "cpu" else get_gpu("auto")
    cands = S.candidates(spec, gpu, fixed, budget, device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pool = Pool(Path(tmp))
        try:
            for i, c in enumerate(cands):
                req = {"trial": i, "model": model, "knobs": c.config.knobs(), "steps": steps, "device": device,
                       "synthetic_weights": synthetic, "max_memory_bytes": budget if device == "cpu" else None}
                out = pool.run(req, 900)
                res = out.result or {}
                used = measured_bytes(res, device)
                oom = out.kind != "result" or res.get("status") != "ok" or (used or 0) > budget
                rows.append({"key": c.key, "params": c.params, "planner_rank": i, "far_over": c.far_over,
                             "predicted_bytes": c.predicted_bytes, "measured_bytes": used, "oom": oom,
                             "tokens_per_s": None if oom else res.get("tokens_per_s"), "outcome": out.kind})
                speed = "OOM" if oom else f"{res.get('tokens_per_s'):8.0f} tok/s"
                print(f"  {i + 1:3}/{len(cands)} {c.key:110.110} {speed}", file=sys.stderr)
        finally:
            pool.close()
    return rows


def _target(rows: list[dict]) -> float:
    return max(r["tokens_per_s"] for r in rows if r["tokens_per_s"]) * (1 - WITHIN)


def replay_optuna(rows: list[dict], seed: int, planner: bool) -> dict:
    """TPE over the same categorical space; with ``planner``: the planner's top 3 first, its far-over
    configurations skipped without a trial, duplicates free (as ``ftplan autotune`` does)."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    by_key = {r["key"]: r for r in rows}
    space: dict[str, list] = {}
    for r in rows:
        for k, v in r["params"].items():
            if v not in space.setdefault(k, []):
                space[k].append(v)
    dists = {k: CategoricalDistribution(v) for k, v in space.items()}
    from ftplan.tune.space import key_of

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4))
    order = sorted(rows, key=lambda r: r["planner_rank"])
    if planner:
        for r in [r for r in order if not r["far_over"]][:3]:
            study.enqueue_trial(r["params"])
    target, trials, ooms, seen, idle = _target(rows), 0, 0, set(), 0
    while trials < MAX_TRIALS:
        if planner and idle >= 20:  # the sampler only re-proposes: take the planner's next unmeasured
            nxt = next((r for r in order if not r["far_over"] and r["key"] not in seen), None)
            if nxt is None:
                break
            study.enqueue_trial(nxt["params"])
            idle = 0
        t = study.ask(dists)
        r = by_key.get(key_of(t.params))
        if r is None or (planner and (r["far_over"] or r["key"] in seen)):
            study.tell(t, None, state=TrialState.PRUNED)
            idle += 1
            if not planner and r is None:
                trials += 1  # plain TPE pays for a configuration outside the space too
            continue
        idle = 0
        trials += 1
        seen.add(r["key"])
        if r["oom"]:
            ooms += 1
            study.tell(t, None, state=TrialState.FAIL)
            continue
        study.tell(t, r["tokens_per_s"])
        if r["tokens_per_s"] >= target:
            return {"trials": trials, "ooms": ooms, "reached": True}
    return {"trials": trials, "ooms": ooms, "reached": False}


def replay_batch_finder(rows: list[dict], default: dict) -> dict:
    """Fix every knob at its default, start from the largest micro-batch and halve after each OOM;
    the first that runs is the answer (the search stops there)."""
    cands = sorted((r for r in rows if all(r["params"][k] == v for k, v in default.items())),
                   key=lambda r: -r["params"]["micro_batch"])
    trials = ooms = 0
    for r in cands:
        trials += 1
        if r["oom"]:
            ooms += 1
            continue
        return {"trials": trials, "ooms": ooms, "reached": r["tokens_per_s"] >= _target(rows),
                "gap": 1 - r["tokens_per_s"] / (_target(rows) / (1 - WITHIN))}
    return {"trials": trials, "ooms": ooms, "reached": False, "gap": None}


def summarize(name: str, runs: list[dict]) -> dict:
    reached = [r["trials"] for r in runs if r["reached"]]
    censored = [r["trials"] if r["reached"] else MAX_TRIALS for r in runs]  # not reached: the cap
    return {"strategy": name, "runs": len(runs), "reached": len(reached),
            "median_trials_to_3pct": statistics.median(reached) if reached else None,
            "median_trials_censored": statistics.median(censored) if runs else None,
            "max_trials_to_3pct": max(reached) if reached else None,
            "median_ooms": statistics.median(r["ooms"] for r in runs), "max_ooms": max(r["ooms"] for r in runs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="alias, HF id or config folder [default: a small Llama config]")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--max-memory", default="64MiB", help="memory budget (a simulated cap on the CPU)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--effective-batch", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--from-json", help="replay a saved measurement instead of measuring")
    a = ap.parse_args()
    from ftplan.units import parse_bytes
    budget = parse_bytes(a.max_memory)
    tmp = None
    model = a.model
    if model is None:
        from ftplan.measure.small_models import write_config

        tmp = tempfile.mkdtemp()
        model = str(write_config("llama", tmp))
    fixed = {"seq_len": a.seq_len, "effective_batch": a.effective_batch, "optimizer": "adamw", "attention": "sdpa"}
    default = {"format": "qlora-nf4-dq", "gradient_checkpointing": True, "optimizer": "adamw", "attention": "sdpa"}
    if a.from_json:
        doc = json.loads(Path(a.from_json).read_text())
        rows, prov = doc["measurements"], doc["provenance"]
    else:
        from ftplan.stack.env import provenance

        t0 = time.perf_counter()
        rows = measure(model, a.device, budget, fixed, a.steps, synthetic=True)
        prov = {**provenance(a.device, ["python", "benchmarks/autotune.py", *sys.argv[1:]]),
                "measure_s": round(time.perf_counter() - t0, 1), "model": a.model or "llama (ftplan.measure.small_models, small)"}
    results = [summarize("ftplan (planner-seeded TPE)", [replay_optuna(rows, s, True) for s in range(a.seeds)]),
               summarize("plain Optuna TPE", [replay_optuna(rows, s, False) for s in range(a.seeds)])]
    bf = replay_batch_finder(rows, default)
    results.append({**summarize("crash-and-retry batch finder", [bf]), "gap_to_best": bf.get("gap")})
    ok = [r for r in rows if r["tokens_per_s"]]
    print(f"\n{len(rows)} configurations measured: {len(ok)} ran, {len(rows) - len(ok)} out of memory under "
          f"{budget / 2**20:.0f} MiB; planner skips {sum(r['far_over'] for r in rows)} as far over; "
          f"best {max(r['tokens_per_s'] for r in ok):.0f} tokens/s")
    print(f"trials: to reach within {WITHIN:.0%} of the best; 'all runs' counts a run that never reached it as {MAX_TRIALS}")
    print(f"{'strategy':32} {'reached 3%':>10} {'median (reached)':>16} {'median (all runs)':>17} {'max trials':>10} "
          f"{'median OOMs':>11} {'max OOMs':>8}")
    for r in results:
        med = r["median_trials_to_3pct"]
        print(f"{r['strategy']:32} {r['reached']:>4}/{r['runs']:<5} {med if med is not None else '-':>16} "
              f"{r['median_trials_censored']:>17} "
              f"{r['max_trials_to_3pct'] if r['max_trials_to_3pct'] is not None else '-':>10} {r['median_ooms']:>11} {r['max_ooms']:>8}")
    if bf.get("gap") is not None:
        print(f"crash-and-retry stops at {1 - bf['gap']:.1%} of the best throughput")
    out = ROOT / "results" / f"autotune_{a.device}.json"
    if a.from_json and Path(a.from_json).resolve() == out.resolve():
        doc["results"] = results  # same measurements, summary re-computed
        _save(out, doc)
        print(f"updated {out.relative_to(ROOT.parent)}")
    elif not a.from_json:
        _save(out, {"provenance": prov, "budget_bytes": budget, "within": WITHIN, "seeds": a.seeds,
                    "results": results, "measurements": rows})
        print(f"saved {out.relative_to(ROOT.parent)}")
    return 0


def _save(out: Path, doc: dict) -> None:
    from ftplan.atomic import atomic_write_text

    atomic_write_text(out, json.dumps(doc, indent=1))


if __name__ == "__main__":
    from ftplan.stack import quiet_stack

    with quiet_stack():
        rc = main()
    sys.exit(rc)
