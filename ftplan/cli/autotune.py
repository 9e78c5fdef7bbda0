"""``ftplan autotune``: short profiled runs under Optuna check the planner's best candidates; the
winner is written as best.json for ``ftplan train`` (see ``ftplan.tune``).

Exit codes: 0 a winner was found, 1 no trial finished, 2 bad input (a trial worker that cannot start
because a package is missing or broken included), 3 an internal error (``crash``), a trial worker that
could not start for another reason included (its log says why). A worker that cannot start records no
trial: the same command runs clean once fixed.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Optional

import typer

from ..units import parse_bytes
from . import _knobs as K
from ._common import echo_json, user_errors


def _ranks(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    from ..errors import FtplanError

    try:
        ranks = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise FtplanError(f"--rank {text!r}: give one rank or a comma-separated list (8,16,32)") from None
    if not ranks or min(ranks) < 1:
        raise FtplanError(f"--rank {text!r}: ranks must be positive integers")
    return ranks


@contextmanager
def _setup_errors():
    """A trial worker that could not start for a reason other than the environment (those are
    ``FtplanError``, exit 2): its one-line message with the worker log's path, exit 3 (an internal error)."""
    from ..errors import FtplanError
    from ..tune.pool import WorkerStartError
    from .crash import INTERNAL_ERROR

    try:
        yield
    except WorkerStartError as e:
        if isinstance(e, FtplanError):
            raise
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(INTERNAL_ERROR) from None


class _Progress:
    """trials done / total, the current trial, the best so far (rich when it is installed)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet, self.best, self.done = total, quiet, None, 0
        self.bar = self.task = None
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            if not quiet:
                self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TimeElapsedColumn(), transient=True, console=Console(stderr=True))
        except ImportError:
            pass

    def _print(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False)
        else:
            typer.echo(text, err=True)

    def __call__(self, event: str, **kw) -> None:
        from ..tune.table import describe

        if event == "begin":
            self.done = kw["done"]
            unavailable = "".join(f"; {n} {why}" for why, n in (kw.get("unavailable") or {}).items())
            self._print(f"study {kw['study']} ({kw['storage']}): {kw['runnable']} runnable of {kw['candidates']} "
                        f"configurations ({kw['skipped']} predicted over the {kw['budget'] / 2**30:.2f} GiB budget, "
                        f"never run{unavailable})"
                        + (f"; {kw['done']} trials already measured" if kw["done"] else "")
                        + (f"; {kw['recovered']} interrupted trials retried" if kw["recovered"] else ""))
            if kw.get("tracking"):
                self._print(f"tracking: {kw['tracking']}")
            if self.bar is not None:
                self.bar.start()
                self.task = self.bar.add_task("trials", total=self.total, completed=min(self.done, self.total))
        elif event == "start" and self.bar is not None:
            self.bar.update(self.task, description=f"trial {kw['trial']}: {describe(kw['candidate'].params)}"
                            + (f" | best {self.best:.0f}" if self.best else ""))
        elif event == "end":
            self.done += 1
            v = kw.get("value")
            if v is not None and (self.best is None or v > self.best):
                self.best = v
            outcome = f"{v:.1f}" if v is not None else f"{kw['state']}: {kw['reason'][:90]}"
            self._print(f"trial {kw['trial']}: {describe(kw['candidate'].params)} -> {outcome}")
            if self.bar is not None:
                self.bar.update(self.task, completed=min(self.done, self.total))
        elif event == "done":
            self.close()

    def close(self) -> None:
        """Stop the progress bar (idempotent): after the study, or when it stops on an error."""
        if self.bar is not None:
            if getattr(getattr(self.bar, "live", None), "is_started", True):  # a bar never started prints nothing
                self.bar.stop()
            self.bar = None


def autotune_command(
    model: str = K.MODEL,
    gpu: str = typer.Option("auto", "--gpu", "-g", help="GPU name (see `ftplan gpus`) or auto"),
    data: Optional[str] = typer.Option(None, "--data", help="training data (JSONL); validated, measured in tokens, sets --seq-len when not given"),
    seq_len: Optional[int] = K.SEQ_LEN,
    effective_batch: Optional[int] = typer.Option(None, "--effective-batch", "-e", help="sequences per optimizer step, kept exact [default: 16]"),
    trials: int = typer.Option(8, "--trials", "-n", help="measured trials (skipped and duplicate proposals do not count)"),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="stop starting trials after this long: 90s, 10m, 1h, 2d"),
    objective: str = typer.Option("throughput", help="throughput (tokens/s) | cost ($ per million tokens)"),
    study: Optional[str] = typer.Option(None, "--study", help="study name [default: model-gpu-seq-batch]"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL [default: sqlite:///ftplan-runs/ftplan.db]"),
    device: str = typer.Option("auto", help="cuda | cpu | auto (cuda when torch sees a GPU)"),
    then_train: bool = typer.Option(False, "--then-train", help="run `ftplan train` with the winner afterwards"),
    steps: int = typer.Option(3, help="measured steps per trial (>= 2)"),
    trial_timeout: float = typer.Option(600.0, "--trial-timeout", help="seconds before a trial is killed and failed"),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="memory budget, e.g. 20GiB [default: the GPU's usable memory less --margin]"),
    margin: float = typer.Option(0.05, help="share of usable memory kept free"),
    runs_dir: str = typer.Option("ftplan-runs", "--runs-dir", help="where the SQLite study and best.json go"),
    synthetic_weights: bool = typer.Option(False, "--synthetic-weights", help="random weights from the config (no download)"),
    method: Optional[str] = K.METHOD, quant: Optional[str] = K.QUANT,
    rank: Optional[str] = typer.Option(None, "--rank", "-r", help="LoRA rank, or a list to search: 8,16,32 [default: 16]"),
    targets: Optional[str] = K.TARGETS, optimizer: Optional[str] = K.OPTIMIZER,
    grad_ckpt: Optional[bool] = K.GRAD_CKPT, micro_batch: Optional[int] = K.MICRO_BATCH,
    attention: Optional[str] = K.ATTENTION, loss: Optional[str] = K.LOSS,
    handoff: str = typer.Option("ftplan", "--for", help="the trainer the winner is for: ftplan | hf | trl | axolotl | llamafactory (its k-bit preparation and loss)"),
    price: Optional[float] = typer.Option(None, "--price", help="$ per GPU-hour for --objective cost"),
    seed: int = typer.Option(0, help="sampler seed"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="with --then-train: the training output folder"),
    train_steps: Optional[int] = typer.Option(None, "--train-steps", help="with --then-train: optimizer steps"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
    report_to: str = typer.Option("none", "--report-to", help="each trial (and --then-train) a tracked run: none | mlflow | tensorboard | wandb (pip install 'ftplan[track]')"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow URI or path [default: <runs-dir>/mlflow.db]; TensorBoard/W&B folder [default: <runs-dir>/<study>]"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment / W&B project [default: the study's name]"),
) -> None:
    """Check the planner's best configurations with short real runs; write the winner as best.json."""
    with _setup_errors(), user_errors():  # user_errors first: an environment error is an FtplanError (exit 2)
        from ..tune.api import autotune

        ranks = _ranks(rank)
        if then_train:  # the training that follows: its options checked before the study runs
            from ..atomic import check_folder
            from ..errors import FtplanError

            if train_steps is not None and not 1 <= train_steps <= 10**9:
                raise FtplanError(f"--train-steps={train_steps} must be a whole number from 1 to 1,000,000,000")
            if output is not None:
                check_folder(output, "--output")
            if data is None:
                raise FtplanError("--then-train needs --data (the JSONL to train on)")
        knobs = dict(seq_len=seq_len, effective_batch=effective_batch, method=method, quant=quant,
                     lora_targets=targets, optimizer=optimizer, gradient_checkpointing=grad_ckpt,
                     micro_batch=micro_batch, attention=attention, loss_impl=loss)
        if ranks is not None and len(ranks) == 1:
            knobs["lora_rank"], ranks = ranks[0], None
        import ftplan

        if micro_batch is not None and effective_batch is None:
            knobs["grad_accum"] = 1
        # validate cheaply (the hand-off target too) before torch is imported
        ftplan.estimate(model, None, handoff=handoff, **{k: v for k, v in knobs.items() if v is not None})
        progress = _Progress(trials, quiet=json_out)
        try:
            res = autotune(model, gpu, data=data, device=None if device == "auto" else device, trials=trials,
                           time_budget=time_budget, objective=objective, study=study, storage=storage, steps=steps,
                           trial_timeout=trial_timeout, margin=margin, max_memory_bytes=parse_bytes(max_memory),
                           ranks=ranks, seed=seed, runs_dir=runs_dir, synthetic_weights=synthetic_weights,
                           price=price, handoff=handoff, report_to=report_to, tracking_uri=tracking_uri,
                           experiment=experiment, argv=["ftplan", "autotune", *sys.argv[2:]], emit=progress, **knobs)
        finally:
            progress.close()
    if json_out:
        echo_json(json.dumps({"study": res.study_name, "storage": res.storage, "stopped": res.stopped,
                              "candidates": res.candidates, "runnable": res.runnable, "skipped": res.skipped,
                              "trials": res.rows, "best": res.best, "files": res.files,
                              "calibration": res.calibration, "tracking": res.tracking}, default=str))
    else:
        from ..tune.table import study_table

        typer.echo(study_table(res, res.device))
        if res.tracking:
            typer.echo(f"tracked runs: {res.tracking}")
    if res.best is None:
        raise typer.Exit(1)
    if then_train:
        from pathlib import Path

        from ..train import checkpoint
        from .train import run_train

        out = Path(output) if output else Path(res.files["best"]).parent / "train"
        # a rerun after a kill (or after success) continues from the last checkpoint instead of refusing
        again = checkpoint.latest(out / "checkpoints") is not None
        if again:
            typer.echo(f"{out} holds a training run of this winner: resuming it", err=True)
        with user_errors():
            tracked = {} if report_to.strip().lower() == "none" else {  # the training's run beside the trials' runs
                "report_to": report_to, "experiment": experiment or res.study_name,
                "tracking_uri": tracking_uri if tracking_uri or report_to != "mlflow" else res.tracking_uri}
            run_train(config=res.files["best"], data=data, output=str(out), max_steps=train_steps, resume=again,
                      **tracked)
