"""Tracked runs: ``ftplan train`` and ``ftplan autotune`` log to MLflow, TensorBoard or Weights & Biases
(``--report-to``), the plan as parameters and the predicted and measured figures as metrics.

- MLflow: a local SQLite store by default (``<folder>/mlflow.db``: ``./ftplan-runs`` for ``train``, the
  ``--runs-dir`` of ``autotune``; ``mlflow ui --backend-store-uri sqlite:///...`` shows it); ``--tracking-uri``
  takes any MLflow URI (``http://host:5000``, ``sqlite:///x.db``, ``databricks``) or a path (a ``.db``
  file, or a folder that gets ``mlflow.db``); ``MLFLOW_TRACKING_URI`` is honoured when no option is given.
  MLflow 3 refuses its old folder store, so a folder always gets a SQLite file.
- TensorBoard: event files under ``--tracking-uri`` (default: beside the run's outputs).
- W&B: offline (a local run folder, ``wandb sync`` uploads it) unless the user is logged in
  (``WANDB_API_KEY`` or a ``~/.netrc`` entry for api.wandb.ai) or sets ``WANDB_MODE``.

Every choice is checked before anything heavy is imported (exit 2 on the CLI, naming what is valid and the
extra to install). A tracking server that fails during a run never stops the run: the first failure is
said once on stderr and the run goes on untracked. The packages live in the ``track`` extra.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FtplanError

BACKENDS = ("none", "mlflow", "tensorboard", "wandb")
PACKAGE = {"mlflow": "mlflow", "tensorboard": "tensorboard", "wandb": "wandb"}  # backend -> module it needs
STATUSES = ("FINISHED", "FAILED", "KILLED")  # how a run ends (MLflow's names)
MAX_EXPERIMENT = 256
MAX_PARAM = 6000  # MLflow keeps at most 6,000 characters of a parameter's value
# an MLflow server that cannot be reached is said in seconds, not after MLflow's default 7 retries (about 4
# minutes, measured); the user's own settings of these variables win
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


@dataclass(frozen=True)
class TrackSpec:
    """Where runs go: ``backend`` (one of ``BACKENDS``), ``uri`` (MLflow URI or path; TensorBoard or W&B
    folder), ``experiment`` (MLflow experiment, W&B project; TensorBoard: a sub-folder)."""

    backend: str = "none"
    uri: str | None = None
    experiment: str | None = None

    @property
    def on(self) -> bool:
        return self.backend != "none"


def check(backend: str | None, uri: str | None = None, experiment: str | None = None) -> TrackSpec:
    """The options as a ``TrackSpec``, or an FtplanError naming the bad value and what is valid (the
    package a backend needs included); imports nothing heavy."""
    backend = (backend or "none").strip().lower()
    if backend not in BACKENDS:
        raise FtplanError(f"--report-to {backend!r} is not valid; use one of {', '.join(BACKENDS)}")
    if backend != "none" and importlib.util.find_spec(PACKAGE[backend]) is None:
        raise FtplanError(f"--report-to {backend} needs the {PACKAGE[backend]} package: pip install 'ftplan[track]'")
    for opt, v in (("--tracking-uri", uri), ("--experiment", experiment)):
        if v is not None and (not v.strip() or "\x00" in v or len(v) > 4096):
            raise FtplanError(f"{opt} {v!r} must be a non-empty name or path of at most 4,096 characters")
    if experiment is not None and len(experiment) > MAX_EXPERIMENT:
        raise FtplanError(f"--experiment is {len(experiment)} characters long; at most {MAX_EXPERIMENT}")
    if (uri is not None or experiment is not None) and backend == "none":
        raise FtplanError("--tracking-uri and --experiment need --report-to mlflow, tensorboard or wandb")
    return TrackSpec(backend, uri, experiment)


def mlflow_uri(uri: str | None, default_dir: Path) -> str:
    """The MLflow tracking URI: ``uri`` when it has a scheme; a path made a SQLite URI (a ``.db``/
    ``.sqlite`` file as it is, a folder with ``mlflow.db`` in it); without ``uri``, ``MLFLOW_TRACKING_URI``
    or ``<default_dir>/mlflow.db``. Paths are made absolute (the URI must work from any folder)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri is None:
        path = Path(default_dir) / "mlflow.db"
    elif "://" in uri or uri == "databricks" or uri.startswith("databricks"):
        return uri
    else:
        path = Path(uri).expanduser()
        if path.suffix not in (".db", ".sqlite", ".sqlite3"):
            path = path / "mlflow.db"
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.as_posix()}"


def flat(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters as ``a.b`` keys with string values (lists and dicts as compact JSON), None
    left out, each value cut at ``MAX_PARAM`` characters."""
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        elif v is not None:
            s = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
            out[key] = s[:MAX_PARAM]
    return out


def finite(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics that are finite numbers (None, NaN, inf and non-numbers left out)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


def wandb_mode() -> str:
    """``WANDB_MODE`` when set; ``online`` when the user is logged in (``WANDB_API_KEY``, or a netrc
    entry for api.wandb.ai, which ``wandb login`` writes); ``offline`` otherwise."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import netrc

        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


class Run:
    """One tracked run. Logging failures are said once on stderr and never raised (the training goes on)."""

    def __init__(self, backend: str, run_id: str, where: str) -> None:
        self.backend, self.run_id, self.where = backend, run_id, where
        self._warned = False
        self.closed = False

    def _guard(self, what: str, fn, *args) -> None:
        if self.closed:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - a tracking server's failure must not stop a training run
            if not self._warned:
                sys.stderr.write(f"warning: {self.backend} tracking failed ({what}: {type(e).__name__}: "
                                 f"{str(e)[:200]}); the run goes on without it\n")
                self._warned = True

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        m = finite(metrics)
        if m:
            self._guard("metrics", self._metrics, m, int(step))

    def log_params(self, params: dict[str, Any]) -> None:
        p = flat(params)
        if p:
            self._guard("parameters", self._params, p)

    def set_tags(self, tags: dict[str, Any]) -> None:
        t = flat(tags)
        if t:
            self._guard("tags", self._tags, t)

    def finish(self, status: str = "FINISHED") -> None:
        assert status in STATUSES, status
        self._guard("finish", self._finish, status)
        self.closed = True

    def _metrics(self, m: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _params(self, p: dict[str, str]) -> None:
        raise NotImplementedError

    def _tags(self, t: dict[str, str]) -> None:
        raise NotImplementedError

    def _finish(self, status: str) -> None:
        raise NotImplementedError


class _MLflowRun(Run):
    def __init__(self, client, run_id: str, where: str) -> None:
        super().__init__("mlflow", run_id, where)
        self.client = client

    def _metrics(self, m: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in m.items()])

    def _params(self, p: dict[str, str]) -> None:
        from mlflow.entities import Param

        known = self.client.get_run(self.run_id).data.params  # a resumed run: MLflow refuses to change one
        new = [Param(k, v) for k, v in p.items() if k not in known]
        if new:
            self.client.log_batch(self.run_id, params=new)

    def _tags(self, t: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in t.items()])

    def _finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class _TensorBoardRun(Run):
    def __init__(self, writer, where: str) -> None:
        super().__init__("tensorboard", where, where)
        self.writer = writer
        self.params: dict[str, str] = {}
        self.last: dict[str, float] = {}

    def _metrics(self, m: dict[str, float], step: int) -> None:
        for k, v in m.items():
            self.writer.add_scalar(k, v, step)
        self.last.update(m)

    def _params(self, p: dict[str, str]) -> None:
        self.params.update(p)
        self.writer.add_text("ftplan/params", "\n".join(f"    {k} = {v}" for k, v in sorted(self.params.items())), 0)

    def _tags(self, t: dict[str, str]) -> None:
        self.writer.add_text("ftplan/tags", "\n".join(f"    {k} = {v}" for k, v in sorted(t.items())), 0)

    def _finish(self, status: str) -> None:
        self.writer.add_text("ftplan/status", status, 0)
        if self.params:  # the hparams view: the plan beside the last value of each metric
            self.writer.add_hparams(self.params, {f"final/{k}": v for k, v in self.last.items()}, run_name=".")
        self.writer.close()


class _WandbRun(Run):
    def __init__(self, run, where: str) -> None:
        super().__init__("wandb", run.id, where)
        self.run = run

    def _metrics(self, m: dict[str, float], step: int) -> None:
        self.run.log(m, step=step)

    def _params(self, p: dict[str, str]) -> None:
        self.run.config.update(p, allow_val_change=True)

    def _tags(self, t: dict[str, str]) -> None:
        for k, v in t.items():
            self.run.summary[k] = v

    def _finish(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


class Tracker:
    """Runs of one backend in one place (one MLflow client, experiment and store for a whole study)."""

    def __init__(self, spec: TrackSpec, default_experiment: str, default_dir: Path) -> None:
        self.spec = spec
        self.experiment = spec.experiment or default_experiment
        self.dir = Path(default_dir)
        self.client = None
        self.experiment_id: str | None = None
        if spec.backend == "mlflow":
            self._open_mlflow()
        elif spec.backend == "tensorboard":
            self.where = str(Path(spec.uri).expanduser() if spec.uri else self.dir / "tensorboard")
        elif spec.backend == "wandb":
            self.mode = wandb_mode()
            self.where = f"W&B project {self.experiment} ({self.mode}, {Path(spec.uri or self.dir).expanduser()})"

    def _open_mlflow(self) -> None:
        import logging

        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." is not the user's concern
            logging.getLogger(name).setLevel(logging.WARNING)  # (after the import, which sets mlflow's level)

        self.uri = mlflow_uri(self.spec.uri, self.dir)
        if self.uri.startswith(("http://", "https://")):  # MLflow's defaults retry 7 times over ~4 minutes
            for var, value in HTTP_DEFAULTS.items():
                os.environ.setdefault(var, value)
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                art = None
                if self.uri.startswith("sqlite:///"):  # artifacts beside the database, not in ./mlruns
                    art = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
                self.experiment_id = self.client.create_experiment(self.experiment, artifact_location=art)
            else:
                self.experiment_id = exp.experiment_id
        except Exception as e:  # noqa: BLE001 - an unreachable server or a damaged store is the user's to fix
            raise FtplanError(f"--report-to mlflow: cannot open the tracking store {self.uri} "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
        self.where = f"MLflow experiment {self.experiment!r} in {self.uri}"

    def start(self, name: str, params: dict[str, Any], tags: dict[str, Any] | None = None,
              resume_id: str | None = None, start_step: int = 0, subdir: str | None = None) -> Run:
        """A new run (or ``resume_id`` continued) with ``params`` and ``tags`` logged. ``start_step``: the
        step a resumed run starts at (TensorBoard drops what it had logged after it); ``subdir``: the
        run's own folder under the TensorBoard or W&B place."""
        run: Run
        if self.spec.backend == "mlflow":
            run = self._start_mlflow(name, tags or {}, resume_id)
        elif self.spec.backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            logdir = Path(self.where) / (subdir or name)
            run = _TensorBoardRun(SummaryWriter(str(logdir), purge_step=start_step or None), str(logdir))
        else:
            import wandb

            folder = Path(self.spec.uri).expanduser() if self.spec.uri else self.dir
            folder.mkdir(parents=True, exist_ok=True)
            w = wandb.init(project=self.experiment, name=name, dir=str(folder), mode=self.mode,  # type: ignore[arg-type]
                           id=resume_id, resume="allow" if resume_id else None, reinit="create_new",
                           settings=wandb.Settings(silent=True, console="off"))
            run = _WandbRun(w, f"{self.where}, run {w.id}")
        run.log_params(params)
        if tags and run.backend != "mlflow":
            run.set_tags(tags)
        return run

    def _start_mlflow(self, name: str, tags: dict[str, Any], resume_id: str | None) -> Run:
        assert self.client is not None
        if resume_id:
            try:
                self.client.update_run(resume_id, status="RUNNING")
                return _MLflowRun(self.client, resume_id, f"{self.where}, run {resume_id}")
            except Exception:  # noqa: BLE001 - the run is gone (another store, deleted): a new one
                pass
        r = self.client.create_run(self.experiment_id, run_name=name, tags=flat(tags))
        return _MLflowRun(self.client, r.info.run_id, f"{self.where}, run {r.info.run_id}")

    def close_dangling(self, run_id: str) -> None:
        """End a run its process left open (killed): MLflow marks it KILLED; the others need nothing."""
        if self.client is None:
            return
        try:
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, "KILLED")
        except Exception:  # noqa: BLE001 - a run that is gone needs no closing
            pass


def open_tracker(spec: TrackSpec | None, default_experiment: str, default_dir: Path) -> Tracker | None:
    """A ``Tracker`` for ``spec``, None when nothing is tracked."""
    if spec is None or not spec.on:
        return None
    return Tracker(spec, default_experiment, default_dir)
