"""``ftplan train --report-to``: the run's plan as parameters, every logged step as metrics, the
predicted figures of best.json beside the measured ones at the end.

The run's id is kept in ``<output>/tracking.json`` (atomically) so that ``--resume`` continues the same
run. ``memory_bytes`` is what ``ftplan train`` measures: ``torch.cuda.max_memory_allocated`` on CUDA
(comparable with the predicted allocated peak, so the ratio is logged), the process's peak resident
memory on the CPU (not comparable: no ratio).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from .. import tracking
from ..atomic import atomic_write_text

STATE_FILE = "tracking.json"
STEP_KEYS = ("loss", "lr", "tokens_per_s", "memory_bytes", "epoch", "loss_scale")


class TrainTracking:
    """Opens the store at once (an unreachable MLflow server is an FtplanError before the model is built);
    the run itself starts once the resume point is known. The default MLflow store is ``./ftplan-runs/
    mlflow.db`` (where ``ftplan autotune`` logs its trials by default); the experiment is the study that
    chose the configuration (best.json's ``study``), else ``ftplan``."""

    def __init__(self, spec: tracking.TrackSpec | None, out: Path, doc: dict[str, Any]) -> None:
        self.spec, self.out, self.doc = spec, Path(out), doc
        self.run: tracking.Run | None = None
        self.tps: list[float] = []
        self.peak = 0
        pred = doc.get("predicted")  # best.json's predictions (autotune); a hand-written document may have none
        self.predicted: dict[str, Any] = pred if isinstance(pred, dict) else {}
        self.dev = self.doc_device = None
        self.tracker = None
        if spec is not None and spec.on:
            self.tracker = tracking.open_tracker(spec, doc.get("study") or "ftplan",
                                                 Path("ftplan-runs") if spec.backend == "mlflow" else self.out)

    def start(self, knobs: dict[str, Any], opts, dev: str, world: int, start: int, total: int, model_name: str) -> None:
        if self.tracker is None or self.spec is None:
            return
        doc, tracker = self.doc, self.tracker
        state = self.out / STATE_FILE
        resume_id = None
        if start and state.exists():
            try:
                prev = json.loads(state.read_text())
            except (OSError, ValueError):  # unreadable: the resumed training gets a new run
                prev = {}
            if isinstance(prev, dict) and prev.get("backend") == self.spec.backend:
                resume_id = prev.get("run_id")
        params = {"model": model_name, "knobs": knobs, "lr": opts.lr, "seed": opts.seed, "packing": opts.packing,
                  "group_by_length": opts.group_by_length, "data": opts.data, "steps": total,
                  "warmup_steps": opts.warmup_steps, "device": dev, "processes": world, "gpu": doc.get("gpu"),
                  "study": doc.get("study"), "trial": doc.get("trial")}
        from .. import __version__

        tags = {"ftplan.command": "train", "ftplan.version": __version__, "ftplan.output": str(self.out.resolve()),
                "ftplan.memory_kind": "cuda max_memory_allocated" if dev == "cuda" else "cpu process peak RSS"}
        name = Path(model_name).name if "/" in model_name else model_name
        self.run = tracker.start(f"train {name}", params, tags, resume_id=resume_id, start_step=start + 1, subdir="train")
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(state, json.dumps({"backend": self.spec.backend, "run_id": self.run.run_id,
                                             "where": self.run.where}) + "\n")
        self.dev, self.doc_device = dev, doc.get("device")
        self.run.log_metrics({f"predicted_{k}": v for k, v in self.predicted.items()}, step=0)

    @property
    def where(self) -> str | None:
        return self.run.where if self.run is not None else None

    def step(self, rec: dict[str, Any]) -> None:
        if self.run is None:
            return
        self.run.log_metrics({k: rec.get(k) for k in STEP_KEYS}, step=rec["step"])
        if rec.get("tokens_per_s") and rec["step"] >= 2:  # step 1 builds the optimizer state
            self.tps.append(rec["tokens_per_s"])
        self.peak = max(self.peak, int(rec.get("memory_bytes") or 0))

    def end(self, total: int, eval_loss: float | None, status: str = "FINISHED") -> None:
        if self.run is None:
            return
        m: dict[str, Any] = {"eval_loss": eval_loss, "peak_memory_bytes": self.peak or None}
        if self.tps:
            m["median_tokens_per_s"] = statistics.median(self.tps)
            pred_tps = self.predicted.get("tokens_per_s")
            if pred_tps and self.doc_device == self.dev:  # the prediction was made for this kind of device
                m["tokens_per_s_ratio"] = m["median_tokens_per_s"] / pred_tps
        pred_alloc = self.predicted.get("peak_allocated_bytes")
        if self.dev == "cuda" and self.doc_device == "cuda" and pred_alloc and self.peak:
            m["memory_ratio"] = self.peak / pred_alloc
        self.run.log_metrics(m, step=total)
        self.run.finish(status)

    def fail(self, exc: BaseException) -> None:
        if self.run is not None and not self.run.closed:
            self.run.set_tags({"ftplan.error": f"{type(exc).__name__}: {exc}"[:500]})
            self.run.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
