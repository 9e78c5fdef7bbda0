"""The Optuna loop of ``ftplan autotune``.

1. The space is the planner's (``space.candidates``); candidates predicted far over the memory budget,
   and candidates whose attention kernel cannot run here (flash-attn missing, no CUDA: the build would
   measure SDPA under their name), are skipped and counted, never run. A trial whose model still ran
   another attention kernel than asked is failed with that reason.
2. The planner's best predictions are enqueued first; Optuna's sampler (TPE) explores after them, and
   when it only proposes configurations already measured the next unmeasured one in the planner's
   order is enqueued instead.
3. One trial = one short profiled run in a long-lived worker process (``pool``) with a timeout; an
   out-of-memory result, a crash or a timeout is a FAIL trial with its reason in the user attributes;
   a pruned run is PRUNED. The study goes on. A worker that cannot start (it never says it is ready)
   is a setup error instead: the tuner stops, naming the worker's exception and its log, and records no
   trial (the worker starts before a trial is asked for; if a restart fails during a trial, that trial
   is failed without counting and its configuration enqueued again).
4. Storage: SQLite under ``./ftplan-runs`` by default, any Optuna RDB URL otherwise. The same command
   resumes a killed study: finished trials are kept; a trial whose process is gone is failed and its
   configuration enqueued again. Several workers may share one study (PostgreSQL): each runs until the
   study holds the requested number of measured trials; a configuration measured or running under a
   lower trial number is never run twice.
5. Heartbeats: while a trial runs, a thread records its heartbeat in the storage every
   ``FTPLAN_HEARTBEAT_S`` seconds (default 60). On start and before each trial, a RUNNING trial whose
   heartbeat is older than ``FTPLAN_GRACE_S`` seconds (default three intervals, 180) is failed with a
   ``stale: ...`` reason and its configuration enqueued again: its worker died where no process id can
   be checked (another machine) or froze. Every worker of a shared study needs the same settings: a
   grace shorter than another worker's interval fails that worker's live trials.
"""

from __future__ import annotations

import math
import os
import random
import socket
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FtplanError
from ..planner.types import GPUSpec, ModelSpec
from . import space as S
from .procs import pid_alive

DEFAULT_RUNS = Path("ftplan-runs")
MAX_IDLE_ASKS = 20  # proposals in a row that need no run before the planner's order takes over
HEARTBEAT_S = 60.0  # default seconds between two heartbeats of a running trial
GRACE_HEARTBEATS = 3  # default grace period, in heartbeat intervals
RETRIED = ("interrupted:", "stale:")  # reasons of a trial failed because its worker vanished (then retried)
# the reason older versions gave a trial whose worker never started: a setup error, never a measurement
LEGACY_SETUP_FAILED = "trial worker did not start:"


@dataclass
class TuneSpec:
    model: str
    spec: ModelSpec
    gpu: GPUSpec
    device: str
    fixed: dict[str, Any]
    trials: int = 8
    time_budget_s: float | None = None
    objective: str = "throughput"
    study_name: str | None = None
    storage: str | None = None
    steps: int = 3
    trial_timeout_s: float = 600.0
    margin: float = 0.05
    max_memory_bytes: int | None = None
    ranks: tuple[int, ...] | None = None
    seed: int = 0
    runs_dir: Path = DEFAULT_RUNS
    synthetic_weights: bool = False
    planner_seeds: int = 3
    price: float | None = None
    data: dict[str, Any] | None = None  # what the data file says (path, examples, tokens)
    argv: list[str] = field(default_factory=list)
    track: Any = None  # a tracking.TrackSpec: each trial a tracked run (--report-to)


@dataclass
class TuneResult:
    study_name: str
    storage: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    skipped: dict[str, int]
    candidates: int
    runnable: int
    folder: Path
    files: dict[str, str]
    calibration: dict[str, Any] | None
    stopped: str
    device: str = "cuda"
    tracking: str | None = None  # where the trials' tracked runs are (--report-to)
    tracking_uri: str | None = None  # the MLflow store they went to


STUDY_NAME_CHARS = "letters, digits, '-', '_' and '.'"
MAX_STUDY_NAME = 128


def check_study_name(name: str) -> str:
    """``name`` when it is a plain name (it names a folder under ``--runs-dir`` that holds best.json and the
    exports): 1-128 of letters, digits, ``-``, ``_``, ``.``, not starting with ``.``; an FtplanError
    otherwise (a separator or ``..`` would write outside ``--runs-dir``)."""
    ok = (isinstance(name, str) and 0 < len(name) <= MAX_STUDY_NAME and not name.startswith(".")
          and all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in name))
    if not ok:
        raise FtplanError(f"--study {name!r} is not a plain name: use 1-{MAX_STUDY_NAME} of {STUDY_NAME_CHARS}, "
                          "not starting with '.'")
    return name


def default_study_name(spec: ModelSpec, gpu: GPUSpec, fixed: dict[str, Any]) -> str:
    seq = fixed.get("seq_len") or 2048
    eff = fixed.get("effective_batch") or 16
    raw = f"{spec.name}-{gpu.key}-s{seq}-e{eff}"
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in raw)


def storage_url(storage: str | None, runs_dir: Path) -> str:
    if storage:
        return storage
    runs_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(runs_dir / 'ftplan.db').as_posix()}"


def _seconds_from_env(name: str, default: float) -> float:
    """A positive number of seconds from the environment variable ``name``, ``default`` when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise FtplanError(f"{name}={raw!r} must be a positive number of seconds")
    return value


def heartbeat_settings() -> tuple[float, float]:
    """``(interval, grace)`` in seconds: ``FTPLAN_HEARTBEAT_S`` (default 60) and ``FTPLAN_GRACE_S``
    (default three intervals). The grace must span more than one interval, or a live trial would be
    failed between two of its heartbeats."""
    interval = _seconds_from_env("FTPLAN_HEARTBEAT_S", HEARTBEAT_S)
    grace = _seconds_from_env("FTPLAN_GRACE_S", GRACE_HEARTBEATS * interval)
    if grace <= interval:
        raise FtplanError(f"FTPLAN_GRACE_S={grace:g} must be longer than the heartbeat interval "
                          f"FTPLAN_HEARTBEAT_S={interval:g} (e.g. {GRACE_HEARTBEATS * interval:g})")
    return interval, grace


def open_storage(url: str):
    """The Optuna RDB storage at ``url``, with heartbeats configured (``heartbeat_settings``) so that a
    trial whose worker vanished can be told from a live one, even from another machine."""
    import optuna

    if "://" not in url:
        raise FtplanError(f"--storage {url!r} is not a database URL (e.g. sqlite:///runs.db, postgresql://user@host/db)")
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        if db.is_file() and db.stat().st_size == 0:
            import sys

            sys.stderr.write(f"note: the database {db} is empty: a new study database is made in it\n")
    interval, grace = heartbeat_settings()
    kwargs = {"heartbeat_interval": interval, "grace_period": grace,
              "engine_kwargs": {"pool_pre_ping": True} if not url.startswith("sqlite") else None}
    for attempt in range(6):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is "experimental": not the user's concern
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **kwargs)
        except ImportError:
            raise FtplanError(f"--storage {_redact(url)}: the database driver is not installed "
                              "(PostgreSQL: pip install 'ftplan[postgres]')") from None
        except Exception as e:  # noqa: BLE001 - a wrong URL or an unreachable server is the user's to fix
            # workers that start together on an empty database race to create the tables: the loser retries
            racing = type(e).__name__ in ("IntegrityError", "ProgrammingError") and attempt < 5
            if not racing:
                first = str(e).splitlines()[0] if str(e) else ""
                if type(e).__name__ == "DatabaseError" or "malformed" in first or "not a database" in first:
                    raise FtplanError(f"the database {_redact(url)} is damaged ({first[:200]}): move it away "
                                      "(a new one is made in its place) or give another --storage") from None
                raise FtplanError(f"cannot open --storage {_redact(url)}: {type(e).__name__}: {first}") from None
            time.sleep(0.5 + random.random() * (attempt + 1))
    raise AssertionError("unreachable")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':')[0]}:***@{host}" if ":" in cred else url
    return url


def _fail_and_retry(study, storage, trial_id: int, t, reason: str) -> bool:
    """Fail the RUNNING trial ``t`` (its worker is gone) with ``reason`` and enqueue its configuration
    again. False when another worker finished it first: that one enqueues the retry, so it runs once."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        storage.set_trial_user_attr(trial_id, "reason", reason)
        if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    if t.params:
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return True


def recover_interrupted(study, storage) -> int:
    """Fail the RUNNING trials of this host whose process is gone and enqueue their configurations again."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    n = 0
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        # no pid yet: a worker on this host is between asking and recording it; heartbeats cover it
        if t.user_attrs.get("host") != host or pid is None or pid_alive(int(pid)):
            continue
        tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        n += _fail_and_retry(study, storage, tid, t, "interrupted: its process was killed; retried")
    return n


def _stale_trial_ids(storage, study_id: int) -> list[int]:
    """The RUNNING trials whose last heartbeat is older than the storage's grace period (measured on the
    database's clock, so the machines' clocks need not agree); trials that never beat are left out.
    Optuna 5 has this query under a private name only; its public ``fail_stale_trials`` runs the same
    query but fails the trials at once, leaving no moment to record why on them."""
    return list(storage._get_stale_trial_ids(study_id))


def fail_stale(study, storage, grace: float) -> int:
    """Fail the RUNNING trials of any host whose heartbeat stopped more than ``grace`` seconds ago and
    enqueue their configurations again; the number failed. ``recover_interrupted`` catches this host's
    dead processes at once; this catches the rest: workers on other machines, or frozen ones."""
    study_id = storage.get_study_id_from_name(study.study_name)
    n = 0
    for tid in _stale_trial_ids(storage, study_id):
        t = storage.get_trial(tid)
        who = f"host {t.user_attrs.get('host', 'unknown')}"
        if "pid" in t.user_attrs:
            who += f" (pid {t.user_attrs['pid']})"
        n += _fail_and_retry(study, storage, tid, t, f"stale: no heartbeat from {who} for more than {grace:g} s; retried")
    return n


@contextmanager
def heartbeat(storage, trial_id: int, interval: float):
    """Record the trial's heartbeat every ``interval`` seconds while the block runs (a daemon thread).
    ``study.ask``/``tell`` start none of their own (only ``study.optimize`` does), and a trial that never
    beats can never be found stale."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # noqa: BLE001 - a database blip: the grace period spans several beats
                pass
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"ftplan-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def _value(objective: str, tps: float, price: float | None) -> float:
    """throughput: tokens/s (maximised); cost: dollars per million tokens, or GPU-seconds per million
    tokens when no price is known (minimised)."""
    if objective == "throughput":
        return tps
    return (price / 3600.0 if price else 1.0) * 1e6 / tps


def measured_bytes(res: dict[str, Any], device: str) -> int | None:
    """The measured figure held against the memory budget: the tensor-level peak on the CPU, the
    process's device memory (NVML, else peak reserved) on CUDA."""
    if device == "cpu":
        return res.get("peak_allocated_bytes")
    return res.get("device_bytes") or res.get("peak_reserved_bytes")


def _ran(t) -> bool:
    return bool(t.user_attrs.get("ran"))


def _retried(t) -> bool:
    """A trial failed because its worker vanished (interrupted or stale); its configuration runs again."""
    return t.state.name == "FAIL" and str(t.user_attrs.get("reason", "")).startswith(RETRIED)


def _counts(t) -> bool:
    """A measured trial that counts towards ``--trials`` (an interrupted or stale one is retried instead;
    one an older version failed because its worker never started measured nothing)."""
    return _ran(t) and not _retried(t) and not str(t.user_attrs.get("reason", "")).startswith(LEGACY_SETUP_FAILED)


class _Runner:
    def __init__(self, ts: TuneSpec, study, cands: list[S.Candidate], runnable: list[S.Candidate], folder: Path,
                 emit: Callable, unavailable: dict[str, str] | None = None, tracker=None) -> None:
        from .pool import Pool

        self.ts, self.study, self.folder, self.emit = ts, study, folder, emit
        self.tracker = tracker  # tracking.Tracker or None
        self.by_key = {c.key: c for c in cands}
        self.unavailable = unavailable or {}  # candidate key -> why its attention kernel cannot run here
        self.order = runnable  # the planner's order of what can run here
        self.pool = Pool(folder)
        self.price = ts.price if ts.price is not None else ts.gpu.price_per_hour

    def run_trial(self, trial, cand: S.Candidate) -> None:
        from optuna.trial import TrialState

        from .pool import WorkerStartError

        ts = self.ts
        trial.set_user_attr("ran", True)
        trial.set_user_attr("config", cand.config.knobs())
        trial.set_user_attr("predicted", cand.predicted)
        run = self.track_start(trial, cand)
        self.emit("start", trial=trial.number, candidate=cand)
        req = {"trial": trial.number, "model": ts.model, "knobs": cand.config.knobs(), "steps": ts.steps,
               "device": ts.device, "synthetic_weights": ts.synthetic_weights, "breakdown": None,
               "max_memory_bytes": ts.max_memory_bytes, "argv": ts.argv}

        def on_step(ev: dict) -> bool:
            tps = ev.get("tokens_per_s")
            if run is not None and tps:
                run.log_metrics({"step_tokens_per_s": tps}, step=ev["step"])
            if tps and ev["step"] >= 2:  # step 1 builds the optimizer state: not a speed
                trial.report(_value(ts.objective, tps, self.price), ev["step"])
                return trial.should_prune()
            return False

        try:
            out = self.pool.run(req, ts.trial_timeout_s, on_step)
        except WorkerStartError as e:
            self.setup_failed(trial, cand, e)
            if run is not None:
                run.set_tags({"ftplan.outcome": "setup", "ftplan.reason": f"setup: {e}"[:500]})
                run.finish("FAILED")
            raise
        state, value, reason, outcome = TrialState.FAIL, None, out.reason, out.kind
        if out.kind == "result" and out.result is not None:
            res = out.result
            asked, ran = cand.config.attention, res.get("attention_ran")
            trial.set_user_attr("attention_ran", ran)
            measured = {"peak_allocated_bytes": res.get("peak_allocated_bytes"),
                        "peak_reserved_bytes": res.get("peak_reserved_bytes"),
                        "device_bytes": res.get("device_bytes"), "tokens_per_s": res.get("tokens_per_s"),
                        "step_time_s": res.get("step_time_s"), "status": res["status"]}
            trial.set_user_attr("measured", measured)
            trial.set_user_attr("provenance", res.get("provenance"))
            used = measured_bytes(res, ts.device)
            outcome = "failed"
            if ran is not None and ran != asked:
                reason = (f"attention: the model ran {ran}, not the {asked} asked for (the build fell back); "
                          f"not a measurement of this configuration")
            elif res["status"] == "oom":
                reason, outcome = f"out of memory: {res.get('error', '')}", "oom"
            elif used is not None and used > cand.budget_bytes:
                reason = f"measured {used / 2**30:.2f} GiB over the budget {cand.budget_bytes / 2**30:.2f} GiB"
            elif res.get("tokens_per_s"):
                state, value, reason = TrialState.COMPLETE, _value(ts.objective, res["tokens_per_s"], self.price), ""
                outcome = "ok"
            else:
                reason = "no throughput measured"
        elif out.kind == "pruned":
            state = TrialState.PRUNED
        trial.set_user_attr("outcome", outcome)
        if reason:
            trial.set_user_attr("reason", reason[:500])
        if run is not None:
            track_end(run, cand, trial.user_attrs.get("measured"), ts.device, value, state.name, outcome, reason, ts.steps)
        self.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        self.emit("end", trial=trial.number, candidate=cand, state=state.name, value=value, reason=reason)

    def track_start(self, trial, cand: S.Candidate):
        """The trial's tracked run (None when nothing is tracked): the configuration and the study as
        parameters, the planner's predictions as metrics at step 0; its id kept on the trial."""
        if self.tracker is None:
            return None
        ts = self.ts
        params = {**cand.config.knobs(), "format": cand.params["format"], "model": ts.model, "gpu": ts.gpu.key,
                  "device": ts.device, "steps": ts.steps, "objective": ts.objective, "study": self.study.study_name,
                  "trial": trial.number, "budget_bytes": cand.budget_bytes, "compared": cand.compared}
        tags = {"ftplan.command": "autotune", "ftplan.study": self.study.study_name, "ftplan.trial": trial.number,
                "ftplan.seeded_by": trial.user_attrs.get("seeded_by")}
        run = self.tracker.start(f"trial {trial.number}", params, tags, subdir=f"trial-{trial.number}")
        trial.set_user_attr("tracking_run", run.run_id)
        run.log_metrics({f"predicted_{k}": v for k, v in cand.predicted.items()} | {"budget_bytes": cand.budget_bytes},
                        step=0)
        return run

    def setup_failed(self, trial, cand: S.Candidate, err: Exception) -> None:
        """The worker for ``trial`` could not start, so the trial measured nothing: fail it as not run
        (it neither counts nor shows as measured) and enqueue its configuration again for the next run."""
        from optuna.trial import TrialState

        trial.set_user_attr("ran", False)
        trial.set_user_attr("reason", f"setup: {err}"[:500])
        self.study.tell(trial, None, state=TrialState.FAIL)
        self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        self.emit("end", trial=trial.number, candidate=cand, state="FAIL", value=None, reason=f"setup: {err}")

    def attempt(self, trial, budget: int) -> bool:
        """Run the configuration Optuna proposed, or skip it (outside the planner's space, predicted far
        over the budget, an attention kernel that cannot run here, or measured already); True when it ran."""
        from optuna.exceptions import UpdateFinishedTrialError

        key = S.key_of(trial.params)
        cand = self.by_key.get(key)
        if cand is None:
            self.skip(trial, "not a configuration of the planner's space", "not-in-space")
        elif cand.far_over:
            self.skip(trial, f"predicted {cand.predicted_bytes / 2**30:.2f} GiB, more than "
                             f"{1 + S.FAR_OVER:.0%} of the budget {budget / 2**30:.2f} GiB", "predicted-over")
        elif key in self.unavailable:
            self.skip(trial, self.unavailable[key], "attention-unavailable")
        elif (dup := self.duplicate_of(trial, key)) is not None:
            self.skip(trial, f"same configuration as trial {dup.number}", "duplicate")
        else:
            try:
                self.run_trial(trial, cand)
            except UpdateFinishedTrialError:  # this process froze past the grace period: another worker failed it
                self.emit("end", trial=trial.number, candidate=cand, state="FAIL", value=None,
                          reason="failed by another worker: no heartbeat within the grace period; retried there")
            return True
        return False

    def skip(self, trial, why: str, kind: str) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("skipped", kind)
        trial.set_user_attr("reason", why)
        self.study.tell(trial, None, state=TrialState.PRUNED)

    def duplicate_of(self, trial, key: str):
        """The trial that measured, or is measuring, this configuration already; None when there is none.
        Of two workers that ask for the same configuration at once, the lower trial number runs it: a
        RUNNING lower trial counts from the moment it is asked (not only once it started to measure),
        else both could check before either starts and both would measure it."""
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False):
            if t.number == trial.number or not t.params or S.key_of(t.params) != key:
                continue
            if t.state == TrialState.RUNNING and t.number < trial.number and not t.user_attrs.get("skipped"):
                return t
            if t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED) and _counts(t):
                return t
        return None

    def next_unmeasured(self):
        done = {S.key_of(t.params) for t in self.study.get_trials(deepcopy=False) if t.params and _counts(t)}
        return next((c for c in self.order if c.key not in done), None)


def run(ts: TuneSpec, emit: Callable[..., None] = lambda *a, **k: None) -> TuneResult:
    """Run (or resume) the study; Optuna's per-trial log lines are quieted for the run only (the caller's
    Optuna verbosity is restored after)."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return _run(ts, emit)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _run(ts: TuneSpec, emit: Callable[..., None]) -> TuneResult:
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    if ts.trials < 1:
        raise FtplanError(f"--trials={ts.trials} must be at least 1")
    budget = S.budget_for(ts.gpu, ts.margin, ts.max_memory_bytes)
    cands = S.candidates(ts.spec, ts.gpu, ts.fixed, budget, ts.device, ts.ranks, ts.objective)
    if not cands:
        raise FtplanError("the fixed knobs leave no configuration to try")
    unavailable = unavailable_attention(cands, ts.device)
    runnable = [c for c in cands if not c.far_over and c.key not in unavailable]
    skipped_pred = sum(1 for c in cands if c.far_over)
    pre_skipped = {"predicted over memory (never sampled)": skipped_pred}
    for c in cands:
        if not c.far_over and c.key in unavailable:
            why = f"attention unavailable: {unavailable[c.key]} (never sampled)"
            pre_skipped[why] = pre_skipped.get(why, 0) + 1
    if not runnable and len(pre_skipped) > 1:
        kernels = sorted({c.config.attention for c in cands if c.key in unavailable})
        raise FtplanError(f"--attention {', '.join(kernels)} cannot be measured here: "
                          f"{'; '.join(sorted(set(unavailable.values())))}; the model build would run sdpa in its "
                          "place and every configuration left asks for it (use --attention sdpa or eager)")
    name = check_study_name(ts.study_name or default_study_name(ts.spec, ts.gpu, ts.fixed))
    url = storage_url(ts.storage, ts.runs_dir)
    storage = open_storage(url)
    direction = "maximize" if ts.objective == "throughput" else "minimize"
    sampler = optuna.samplers.TPESampler(seed=ts.seed, n_startup_trials=4)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)  # may stop after step 2 of 3
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
    except ValueError as e:
        raise FtplanError(f"study {name!r}: {e}") from None
    if study.direction.name.lower() != direction:
        raise FtplanError(f"study {name!r} was created to {study.direction.name.lower()}; "
                          f"--objective {ts.objective} needs another --study name")
    study.set_user_attr("model", ts.model)
    folder = ts.runs_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    interval, grace = heartbeat_settings()
    recovered = recover_interrupted(study, storage) + fail_stale(study, storage, grace)
    tracker = None
    if ts.track is not None and ts.track.on:
        from ..tracking import open_tracker

        tracker = open_tracker(ts.track, name, ts.runs_dir if ts.track.backend == "mlflow" else folder)
        for t in study.get_trials(deepcopy=False):  # runs of trials whose process was killed: ended as KILLED
            if t.user_attrs.get("tracking_run") and t.state != TrialState.RUNNING:
                tracker.close_dangling(t.user_attrs["tracking_run"])
    emit("begin", study=name, storage=_redact(url), candidates=len(cands), runnable=len(runnable),
         tracking=tracker.where if tracker is not None else None,
         skipped=skipped_pred, budget=budget, recovered=recovered,
         unavailable={k: v for k, v in pre_skipped.items() if k.startswith("attention")},
         done=sum(1 for t in study.get_trials(deepcopy=False) if _counts(t) and t.state != TrialState.RUNNING))
    for c in runnable[: max(0, min(ts.planner_seeds, ts.trials))]:
        study.enqueue_trial(c.params, user_attrs={"seeded_by": "planner"}, skip_if_exists=True)
    dists = {k: CategoricalDistribution(v) for k, v in S.choices(cands).items()}
    runner = _Runner(ts, study, cands, runnable, folder, emit, unavailable, tracker)
    study_id = storage.get_study_id_from_name(name)
    t0 = time.monotonic()
    idle, stopped = 0, "trials"
    host, pid = socket.gethostname(), os.getpid()
    try:
        while True:
            fail_stale(study, storage, grace)  # a worker that died meanwhile no longer holds a trial
            measured = sum(1 for t in study.get_trials(deepcopy=False) if _counts(t))
            if measured >= ts.trials:
                break
            if ts.time_budget_s is not None and time.monotonic() - t0 > ts.time_budget_s:
                stopped = "time budget"
                break
            if idle >= MAX_IDLE_ASKS:
                nxt = runner.next_unmeasured()
                if nxt is None:
                    stopped = "every runnable configuration measured"
                    break
                study.enqueue_trial(nxt.params, user_attrs={"seeded_by": "planner order"})
                idle = 0
            runner.pool.start()  # before asking: a worker that cannot start leaves no trial behind
            trial = study.ask(dists)
            with heartbeat(storage, storage.get_trial_id_from_study_id_trial_number(study_id, trial.number), interval):
                trial.set_user_attr("host", host)
                trial.set_user_attr("pid", pid)
                idle = 0 if runner.attempt(trial, budget) else idle + 1
    finally:
        runner.pool.close()
    res = _finish(ts, study, name, url, cands, runnable, pre_skipped, folder, stopped, emit)
    if tracker is not None:
        res.tracking, res.tracking_uri = tracker.where, getattr(tracker, "uri", None)
    return res


def track_end(run, cand: S.Candidate, measured: dict[str, Any] | None, device: str, value: float | None, state: str,
              outcome: str, reason: str, steps: int) -> None:
    """The trial's measured figures beside the predicted ones (and their ratios, where the two measure the
    same thing: the allocated peak; on CUDA the device figure too; tokens/s), its outcome, and its end:
    FINISHED (a complete trial), KILLED (pruned), FAILED (out of memory, crashed, over the budget)."""
    m: dict[str, Any] = {}
    if measured:
        m.update({f"measured_{k}": v for k, v in measured.items() if k != "status"})
        pred = cand.predicted
        for key in ("peak_allocated_bytes", "device_bytes", "tokens_per_s"):
            if device == "cpu" and key == "device_bytes":
                continue  # the CPU has no device figure; the prediction's is for a GPU
            if measured.get(key) and pred.get(key):
                m[f"ratio_{key}"] = measured[key] / pred[key]
        used = measured_bytes(measured, device)
        if used:
            m["measured_compared_bytes"] = used
    m["objective"] = value
    run.log_metrics(m, step=steps)
    run.set_tags({"ftplan.state": state, "ftplan.outcome": outcome, "ftplan.reason": reason[:500] if reason else None})
    run.finish("FINISHED" if state == "COMPLETE" else "KILLED" if state == "PRUNED" else "FAILED")


def unavailable_attention(cands: list[S.Candidate], device: str) -> dict[str, str]:
    """Candidate key -> why its attention kernel cannot run on ``device``, for the candidates that ask for
    one (``space.attention_unavailable``): measured, they would report another kernel's figures."""
    out = {}
    for c in cands:
        why = S.attention_unavailable(c.config.attention, device)
        if why is not None:
            out[c.key] = why
    return out


def _finish(ts, study, name, url, cands, runnable, pre_skipped, folder, stopped, emit) -> TuneResult:
    from optuna.trial import TrialState

    from .. import calibration
    from ..integrations.exports import write_all
    from ..planner.arch import total_params

    rows = [trial_row(t) for t in study.get_trials(deepcopy=False) if _ran(t)]
    skipped: dict[str, int] = dict(pre_skipped)
    for t in study.get_trials(deepcopy=False):
        kind = t.user_attrs.get("skipped")
        if kind:
            skipped[kind] = skipped.get(kind, 0) + 1
    best = None
    try:
        bt = study.best_trial
    except ValueError:
        bt = None
    files: dict[str, str] = {}
    cal = None
    if bt is not None:
        best = trial_row(bt)
        doc = best_document(ts, bt, name, _redact(url))
        files = write_all(folder, doc, (doc.get("data") or {}).get("path") or "train.jsonl")
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _ran(t)]
        # by term, with the device kind and the model's size class (where the factors may be applied)
        cal = calibration.record_trials(ts.gpu, ts.device, total_params(ts.spec),
                                        [(t.user_attrs["measured"], t.user_attrs["predicted"]) for t in done],
                                        source=f"ftplan autotune study {name!r}, {len(done)} trials")
    res = TuneResult(name, _redact(url), rows, best, skipped, len(cands), len(runnable), folder, files, cal, stopped, ts.device)
    emit("done", result=res)
    return res


def trial_row(t) -> dict[str, Any]:
    """One trial as a table row: its configuration, predicted and measured figures, the outcome."""
    return {"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
            "config": t.user_attrs.get("config"), "predicted": t.user_attrs.get("predicted"),
            "measured": t.user_attrs.get("measured"), "outcome": t.user_attrs.get("outcome"),
            "reason": t.user_attrs.get("reason", ""), "seeded_by": t.user_attrs.get("seeded_by"),
            "attention_ran": t.user_attrs.get("attention_ran"),
            "host": t.user_attrs.get("host"), "pid": t.user_attrs.get("pid")}


def best_document(ts: TuneSpec, trial, study: str, storage: str) -> dict[str, Any]:
    """The winner as a best.json document: what ``ftplan train`` needs to repeat it, and where it came from."""
    from ..best import document

    return document(model=stored_model(ts.model, ts.spec), model_name=ts.spec.name, hf_id=ts.spec.hf_id,
                    knobs=trial.user_attrs["config"], synthetic_weights=ts.synthetic_weights, gpu=ts.gpu.key,
                    device=ts.device, predicted=trial.user_attrs.get("predicted"), measured=trial.user_attrs.get("measured"),
                    objective=ts.objective, value=trial.value, study=study, storage=storage, trial=trial.number,
                    data=ts.data, command=" ".join(ts.argv))


def stored_model(model: str, spec: ModelSpec) -> str:
    """``--model`` as best.json stores it: a local folder or config file as an absolute path (the
    document must work from any folder), a catalog alias or a Hugging Face id as given. A name that
    resolved to the catalog stays a name even when a folder of that name happens to exist here."""
    from ..best import local_path
    from ..profiles.models import load_catalog

    if load_catalog().get(spec.name) is spec:
        return model
    return local_path(model) or model
