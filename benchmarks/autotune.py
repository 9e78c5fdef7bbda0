"""Trials needed to find the fastest configuration: ftplan's planner-seeded search against plain Optuna
TPE (no planner) and against crash-and-retry batch-size finding (HF ``auto_find_batch_size`` style).

1. Measure: every configuration of one search space is run once as a real profiled trial (the same
   worker ``ftplan autotune`` uses), under a memory budget, so each has a measured tokens/s or an
   out-of-memory result. On the CPU the budget is a simulated cap; on a GPU it is the card.
2. Replay: each strategy searches that measured table (many sampler seeds). Counted: trials until one
   is within 3% of the best measured tokens/s, and out-of-memory trials.

Cost rule, the same for every strategy (``--repeats``):
- ``free`` (default): a trial costs one when it runs a configuration not yet measured in that run. A
  configuration already measured in that run costs nothing (its result is known: no run), for ftplan
  and plain TPE alike; so does a proposal that is no configuration of the table (nothing to run).
- ``charged``: a configuration already measured in that run costs one trial again, for every strategy.
Either way the repeat is told to the sampler as PRUNED (as ``ftplan autotune`` does) and counts as a
proposal that needed no run; after ``MAX_IDLE_ASKS`` such proposals in a row, the next configuration
not yet measured is enqueued: the planner's next in its order for ftplan, a random one (seeded by the
run) for plain TPE, which has no order. What only ftplan has is the planner: its top 3 are enqueued
first and the configurations it predicts far over the budget are never run (skipped at no cost).

    python benchmarks/autotune.py                 # CPU, small Llama-shaped model (under a minute when idle)
    python benchmarks/autotune.py --from-json benchmarks/results/autotune_cpu.json  # replay again
    python benchmarks/autotune.py --device cuda --model 1b --max-memory 12GiB  # on a GPU

Results go to benchmarks/results/autotune_<device>.json with provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

WITHIN = 0.03
MAX_TRIALS = 40


def measure(model: str, device: str, budget: int, fixed: dict, steps: int, synthetic: bool,
            loads: list[float] | None = None) -> list[dict]:
    """Every candidate as one profiled trial; ``loads`` gets the 1-minute load average after each."""
    from ftplan.profiles.gpus import get_gpu
    from ftplan.profiles.models import get_model
    from ftplan.tune import space as S
    from ftplan.tune.pool import Pool
    from ftplan.tune.study import measured_bytes

    sys.path.insert(0, str(ROOT))
    from _accuracy import scrub  # the reasons are saved: without this machine's paths

    spec = get_model(model)
    gpu = get_gpu("cpu") if device == "cpu" else get_gpu("auto")
    # a kernel that is not installed would run as another one: not measured under its name (as autotune)
    cands = [c for c in S.candidates(spec, gpu, fixed, budget, device)
             if S.attention_unavailable(c.config.attention, device) is None]
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
                if out.kind == "result" and (res.get("status") == "oom" or (used or 0) > budget):
                    status, reason = "oom", res.get("error") or f"measured {used} bytes over the budget {budget}"
                elif out.kind != "result" or res.get("status") != "ok" or not res.get("tokens_per_s"):
                    status = "failed"  # a crash, a timeout, an error or no throughput: a failed trial, not an OOM
                    reason = out.reason or res.get("error") or f"status {res.get('status')}, no throughput measured"
                else:
                    status, reason = "ok", ""
                oom = status != "ok"  # the replay: any trial that did not run is a failed trial
                rows.append({"key": c.key, "params": c.params, "planner_rank": i, "far_over": c.far_over,
                             "predicted_bytes": c.predicted_bytes, "measured_bytes": used, "oom": oom,
                             "status": status, "reason": scrub(" ".join(str(reason).split())[:300], tmp,
                                                                *([model] if os.path.isabs(model) else [])),
                             "tokens_per_s": None if oom else res.get("tokens_per_s"), "outcome": out.kind})
                speed = f"{res['tokens_per_s']:8.0f} tok/s" if status == "ok" else f"{status.upper()} {reason[:80]}"
                print(f"  {i + 1:3}/{len(cands)} {c.key:110.110} {speed}", file=sys.stderr)
                if loads is not None:
                    loads.append(os.getloadavg()[0])
        finally:
            pool.close()
    return rows


def _target(rows: list[dict]) -> float:
    return max(r["tokens_per_s"] for r in rows if r["tokens_per_s"]) * (1 - WITHIN)


REPEAT_RULES = {
    "free": "a configuration already measured in that run costs nothing, for every strategy",
    "charged": "a configuration already measured in that run costs one trial again, for every strategy",
}


def replay_optuna(rows: list[dict], seed: int, planner: bool, repeats: str = "free") -> dict:
    """TPE over the same categorical space, under the cost rule ``repeats`` (module docstring). With
    ``planner``: the planner's top 3 first, its far-over configurations skipped without a trial, and its
    order as the fallback when the sampler only re-proposes (as ``ftplan autotune`` does)."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    from ftplan.tune.space import key_of
    from ftplan.tune.study import MAX_IDLE_ASKS

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    by_key = {r["key"]: r for r in rows}
    space: dict[str, list] = {}
    for r in rows:
        for k, v in r["params"].items():
            if v not in space.setdefault(k, []):
                space[k].append(v)
    dists = {k: CategoricalDistribution(v) for k, v in space.items()}

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4))
    order = sorted(rows, key=lambda r: r["planner_rank"])
    if planner:
        order = [r for r in order if not r["far_over"]]
        for r in order[:3]:
            study.enqueue_trial(r["params"])
    else:
        random.Random(seed).shuffle(order)  # plain TPE's fallback: a random configuration not yet measured
    target = _target(rows)
    trials = ooms = idle = repeated = fallbacks = 0
    seen: set[str] = set()
    while trials < MAX_TRIALS:
        if idle >= MAX_IDLE_ASKS:  # the sampler only re-proposes: take the next unmeasured configuration
            nxt = next((r for r in order if r["key"] not in seen), None)
            if nxt is None:
                break
            study.enqueue_trial(nxt["params"])
            idle, fallbacks = 0, fallbacks + 1
        t = study.ask(dists)
        r = by_key.get(key_of(t.params))
        if r is None or (planner and r["far_over"]) or r["key"] in seen:
            study.tell(t, None, state=TrialState.PRUNED)
            idle += 1
            if r is not None and r["key"] in seen:
                repeated += 1
                if repeats == "charged":
                    trials += 1
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
            return {"trials": trials, "ooms": ooms, "reached": True, "repeats": repeated, "fallbacks": fallbacks}
    return {"trials": trials, "ooms": ooms, "reached": False, "repeats": repeated, "fallbacks": fallbacks}


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
            "median_ooms": statistics.median(r["ooms"] for r in runs), "max_ooms": max(r["ooms"] for r in runs),
            "median_repeats": statistics.median(r.get("repeats", 0) for r in runs),
            "median_fallbacks": statistics.median(r.get("fallbacks", 0) for r in runs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="alias, HF id or config folder [default: a small Llama config]")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--max-memory", default="64MiB", help="memory budget (a simulated cap on the CPU)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--effective-batch", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", default="free", choices=sorted(REPEAT_RULES),
                    help="cost of a configuration already measured in the run, the same for every strategy "
                         "[default: free]")
    ap.add_argument("--from-json", help="replay a saved measurement instead of measuring (no new file unless it "
                                        "is this device's results file, whose summary is then re-computed)")
    a = ap.parse_args()
    from ftplan.stack.env import provenance
    from ftplan.units import parse_bytes

    command = ["python", "benchmarks/autotune.py", *sys.argv[1:]]
    default = {"format": "qlora-nf4-dq", "gradient_checkpointing": True, "optimizer": "adamw", "attention": "sdpa"}
    if a.from_json:
        doc = json.loads(Path(a.from_json).read_text())
        rows, budget = doc["measurements"], doc["budget_bytes"]
    else:
        budget = parse_bytes(a.max_memory)
        fixed = {"seq_len": a.seq_len, "effective_batch": a.effective_batch, "optimizer": "adamw", "attention": "sdpa"}
        with tempfile.TemporaryDirectory() as tmp:
            model = a.model
            if model is None:
                from ftplan.measure.small_models import write_config

                model = str(write_config("llama", tmp))
            t0, loads = time.perf_counter(), [os.getloadavg()[0]]
            rows = measure(model, a.device, budget, fixed, a.steps, synthetic=True, loads=loads)
        # tokens/s is only comparable when nothing else ran: the 1-minute load average, before and after each trial
        prov = {**provenance(a.device, command), "cpu_count": os.cpu_count(),
                "measure_s": round(time.perf_counter() - t0, 1),
                "load_average_1min": {"start": round(loads[0], 2), "max": round(max(loads), 2),
                                      "median": round(statistics.median(loads), 2)},
                "model": a.model or "llama (ftplan.measure.small_models, small)"}
    rule = REPEAT_RULES[a.repeats]
    results = [summarize("ftplan (planner-seeded TPE)", [replay_optuna(rows, s, True, a.repeats) for s in range(a.seeds)]),
               summarize("plain Optuna TPE", [replay_optuna(rows, s, False, a.repeats) for s in range(a.seeds)])]
    bf = replay_batch_finder(rows, default)
    results.append({**summarize("crash-and-retry batch finder", [bf]), "gap_to_best": bf.get("gap")})
    ok = [r for r in rows if r["tokens_per_s"]]
    failed = [r for r in rows if r.get("status") == "failed"]
    print(f"\n{len(rows)} configurations measured: {len(ok)} ran, {len(rows) - len(ok) - len(failed)} out of memory "
          f"under {budget / 2**20:.0f} MiB, {len(failed)} failed otherwise (crash, timeout, no throughput: "
          f"replayed as failed trials and counted with the OOMs); planner skips {sum(r['far_over'] for r in rows)} "
          f"as far over; best {max(r['tokens_per_s'] for r in ok):.0f} tokens/s")
    for r in failed:
        print(f"  failed: {r['key']}: {r['reason']}")
    print(f"trials: to reach within {WITHIN:.0%} of the best, {a.seeds} sampler seeds; 'all runs' counts a run that "
          f"never reached it as {MAX_TRIALS}")
    print(f"cost rule (--repeats {a.repeats}): {rule}; a proposal outside the table costs nothing; "
          f"'repeats': proposals of a configuration already measured")
    print(f"{'strategy':32} {'reached 3%':>10} {'median (reached)':>16} {'median (all runs)':>17} {'max trials':>10} "
          f"{'median OOMs':>11} {'max OOMs':>8} {'median repeats':>14}")
    for r in results:
        med = r["median_trials_to_3pct"]
        print(f"{r['strategy']:32} {r['reached']:>4}/{r['runs']:<5} {med if med is not None else '-':>16} "
              f"{r['median_trials_censored']:>17} "
              f"{r['max_trials_to_3pct'] if r['max_trials_to_3pct'] is not None else '-':>10} {r['median_ooms']:>11} "
              f"{r['max_ooms']:>8} {r['median_repeats']:>14}")
    if bf.get("gap") is not None:
        print(f"crash-and-retry stops at {1 - bf['gap']:.1%} of the best throughput")
    replay = {"repeats": a.repeats, "cost_rule": rule, "max_trials": MAX_TRIALS, "seeds": a.seeds}
    out = ROOT / "results" / f"autotune_{a.device}.json"
    if a.from_json and Path(a.from_json).resolve() == out.resolve():
        doc.update(results=results, replay={**replay, "command": shlex.join(command), "cpu_count": os.cpu_count()})
        doc["seeds"] = a.seeds
        _save(out, doc)  # same measurements, summary re-computed
        print(f"updated {out.relative_to(ROOT.parent)}")
    elif not a.from_json:
        _save(out, {"provenance": prov, "budget_bytes": budget, "within": WITHIN, "seeds": a.seeds, "replay": replay,
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
