"""``ftplan.tune.autotune``: the library call behind ``ftplan autotune``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import FtplanError
from ..planner.handoff import handoff_knobs
from ..planner.options import choice
from ..profiles.gpus import get_gpu
from ..profiles.models import get_model
from ..units import parse_duration, real, whole
from .study import DEFAULT_RUNS, TuneResult, TuneSpec, check_study_name, run


def data_summary(path: str, model: str, seq_len: int | None, synthetic: bool, max_positions: int,
                 vocab: int, hf_id: str = "") -> dict[str, Any]:
    """Validate every line of the data file and measure it in tokens (the model's tokenizer)."""
    from ..train.data import read_jsonl, stats, suggest_seq_len, tokenize
    from ..train.tokenizer import load_tokenizer

    examples = read_jsonl(path)
    tok = load_tokenizer(model, vocab, synthetic, hf_id)
    rows = [tokenize(e, tok, max_positions) for e in examples]
    st = stats(rows)
    st["path"] = str(path)
    st["suggested_seq_len"] = suggest_seq_len(st["p95_len"], max_positions)
    st["seq_len"] = seq_len or st["suggested_seq_len"]
    return st


def autotune(model: str, gpu: str = "auto", *, data: str | None = None, device: str | None = None,
             trials: int = 8, time_budget: str | float | None = None, objective: str = "throughput",
             study: str | None = None, storage: str | None = None, steps: int = 3, trial_timeout: float = 600.0,
             margin: float = 0.05, max_memory_bytes: int | None = None, ranks: tuple[int, ...] | None = None,
             seed: int = 0, runs_dir: str | Path = DEFAULT_RUNS, synthetic_weights: bool = False,
             planner_seeds: int = 3, price: float | None = None, argv: list[str] | None = None,
             handoff: str = "ftplan", report_to: str = "none", tracking_uri: str | None = None,
             experiment: str | None = None, emit: Callable[..., None] = lambda *a, **k: None, **knobs: Any) -> TuneResult:
    """Measure the planner's best candidates with short profiled runs and return the study's table,
    the winner and the files written (``best.json`` and the exports). ``handoff``: the trainer the winner
    is for (``planner.handoff``): its k-bit preparation, and the standard loss where it has no chunked one.
    ``report_to``: each trial a tracked run (``ftplan.tracking``; MLflow's default store is
    ``<runs_dir>/mlflow.db``, the experiment the study's name unless ``experiment`` is given)."""
    from ..tracking import check as check_tracking

    track = check_tracking(report_to, tracking_uri, experiment)
    objective = choice("objective", objective)
    if objective not in ("throughput", "cost"):
        raise FtplanError(f"--objective {objective!r}: autotune measures throughput or cost")
    # every number checked before the training stack is imported (a bad one answers in a fraction of a second)
    for opt, v, lo, hi in (("--steps", steps, 2, 1000), ("--trials", trials, 1, 100_000),
                           ("--seed", seed, 0, 2**32 - 1), ("--planner-seeds", planner_seeds, 0, 1000)):
        whole(opt, v, lo, hi)
    real("--trial-timeout", trial_timeout, low=0, low_open=True, high=7 * 86400)
    real("--margin", margin, low=0, high=1, high_open=True)
    if price is not None:
        real("--price", price, low=0, high=1e6)
    if isinstance(time_budget, (int, float)) and not isinstance(time_budget, bool):
        real("--time-budget", time_budget, low=0, low_open=True, high=365 * 86400)
    budget_s = parse_duration(time_budget) if isinstance(time_budget, str) else time_budget
    spec = get_model(model)
    if study is not None:
        check_study_name(study)
    from ..atomic import check_folder
    from ..stack.env import check_device_name

    check_folder(runs_dir, "--runs-dir")  # type: ignore[arg-type]
    check_device_name(device)
    if gpu not in ("auto", "cpu"):
        get_gpu(gpu)  # a name that is not a GPU is an error even when the run is on the CPU
    if data is not None:
        from ..atomic import check_input

        check_input(data, "data file")
    if storage is not None:  # a wrong URL, an unreachable server or a damaged file: said before torch
        from .study import open_storage

        open_storage(storage)
    from ..stack.env import require_stack, resolve_device

    require_stack()
    dev = resolve_device(device)
    if dev == "cpu":
        g = get_gpu("cpu")
    else:
        g = get_gpu(gpu)
    fixed = handoff_knobs(spec, handoff, {k: v for k, v in knobs.items() if v is not None})[0]
    summary = None
    if data is not None:
        summary = data_summary(data, model, fixed.get("seq_len"), synthetic_weights, spec.max_positions, spec.vocab,
                               spec.hf_id)
        fixed["seq_len"] = summary["seq_len"]
    ts = TuneSpec(model=model, spec=spec, gpu=g, device=dev, fixed=fixed, trials=trials, time_budget_s=budget_s,
                  objective=objective, study_name=study, storage=storage, steps=steps, trial_timeout_s=trial_timeout,
                  margin=margin, max_memory_bytes=max_memory_bytes, ranks=ranks, seed=seed, runs_dir=Path(runs_dir),
                  synthetic_weights=synthetic_weights, planner_seeds=planner_seeds, price=price, data=summary,
                  argv=list(argv or []), track=track)
    return run(ts, emit)
