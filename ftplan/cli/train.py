"""``ftplan train``: the full run with a configuration from ``ftplan autotune`` (see ``ftplan.train``).

Exit codes: 0 trained, 1 the run failed (out of memory), 2 bad input (config, data, options), 3 internal
error (``crash``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import user_errors


class _Bar:
    def __init__(self, quiet: bool) -> None:
        self.bar = self.task = None
        self.quiet = quiet
        if quiet:
            return
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.description}"),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        except ImportError:
            pass

    def __call__(self, rec: dict) -> None:
        tps = rec.get("tokens_per_s") or 0
        desc = f"loss {rec['loss']:.4f}  {tps:,.0f} tokens/s  {rec['memory_bytes'] / 2**30:.2f} GiB"
        if self.bar is None:
            if not self.quiet:
                typer.echo(f"step {rec['step']}/{rec['total']}  {desc}", err=True)
            return
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(desc, total=rec["total"], completed=rec["step"] - 1)
        self.bar.update(self.task, completed=rec["step"], description=desc)

    def close(self) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.stop()


def run_train(config: str, data: Optional[str], output: Optional[str] = None, max_steps: Optional[int] = None,
              **kw) -> None:
    """Shared by ``ftplan train`` and ``ftplan autotune --then-train``."""
    from ..best import read_best
    from ..errors import FtplanError
    from ..train.loop import TrainOptions, train

    if data is None:
        raise FtplanError("--data is required to train (a JSONL file)")
    doc = read_best(config)
    out = Path(output) if output else Path(config).resolve().parent / "train"
    quiet = kw.pop("quiet", False)
    opts = TrainOptions(config=doc, data=data, output=out, max_steps=max_steps, **kw)
    bar = _Bar(quiet)  # train() checks every option before the training stack is imported
    try:
        res = train(opts, on_log=bar)
    finally:
        bar.close()
    if not res.files:  # a data-parallel process other than rank 0: rank 0 reports
        return
    first, last = (res.losses[0], res.losses[-1]) if res.losses else (None, None)
    msg = f"trained {res.steps} steps" + (f" (resumed at step {res.resumed_from})" if res.resumed_from else "")
    if first is not None:
        msg += f"; loss {first:.4f} -> {last:.4f}"
    if res.eval_loss is not None:
        msg += f"; eval loss {res.eval_loss:.4f}"
    typer.echo(msg)
    if res.tracked:
        typer.echo(f"  tracked: {res.tracked}")
    for k, v in res.files.items():
        typer.echo(f"  {k}: {v}")


def train_command(
    config: str = typer.Option(..., "--config", "-c", help="best.json from `ftplan autotune` (model + configuration)"),
    data: Optional[str] = typer.Option(None, "--data", help="training data, JSONL (text, prompt/completion, instruction/output, messages)"),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="evaluation data, same formats"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="output folder [default: beside the config, train/]"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="override the config's model (local folder or HF id)"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="optimizer steps (overrides --epochs)"),
    epochs: float = typer.Option(1.0, "--epochs", help="passes over the data"),
    lr: float = typer.Option(2e-4, "--lr", help="peak learning rate"),
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="linear warm-up steps"),
    save_every: int = typer.Option(50, "--save-every", help="checkpoint every N optimizer steps"),
    keep: int = typer.Option(2, "--keep", help="checkpoints kept"),
    resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint in --output"),
    packing: bool = typer.Option(False, "--packing", help="pack examples into full --seq-len blocks"),
    group_by_length: bool = typer.Option(False, "--group-by-length", help="micro-batches of similar lengths, the longest first (less padding; HF group_by_length)"),
    merge: bool = typer.Option(False, "--merge", help="also write merged 16-bit weights"),
    synthetic_weights: Optional[bool] = typer.Option(None, "--synthetic-weights/--real-weights", help="random weights from the config [default: as the config says]"),
    device: Optional[str] = typer.Option(None, help="cuda | cpu [default: as the config says, else cuda when present]"),
    seed: int = typer.Option(0, help="data order and synthetic weights"),
    gpus: int = typer.Option(1, "--gpus", help="GPUs: > 1 prints the accelerate launch command and writes its config"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    report_to: str = typer.Option("none", "--report-to", help="track the run: none | mlflow | tensorboard | wandb (pip install 'ftplan[track]')"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow URI or path [default: ./ftplan-runs/mlflow.db]; TensorBoard/W&B folder [default: --output]"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment / W&B project [default: the study that chose the config, else ftplan]"),
) -> None:
    """Train with a configuration from `ftplan autotune` (QLoRA, LoRA or full); resumable."""
    with user_errors():
        if gpus > 65_536:
            from ..errors import FtplanError

            raise FtplanError(f"--gpus={gpus} is beyond the largest accepted, 65,536")
        if gpus > 1:
            from ..train.launch import launch_plan

            typer.echo(launch_plan(config, gpus, output))
            return
        if gpus < 1:
            from ..errors import FtplanError

            raise FtplanError(f"--gpus={gpus} must be at least 1")
        run_train(config, data, output, max_steps, eval_data=eval_data, model=model, epochs=epochs, lr=lr,
                  warmup_steps=warmup_steps, save_every=save_every, keep=keep, resume=resume, packing=packing, group_by_length=group_by_length,
                  merge=merge, synthetic_weights=synthetic_weights, device=device, seed=seed, quiet=quiet,
                  report_to=report_to, tracking_uri=tracking_uri, experiment=experiment)
