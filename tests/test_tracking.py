"""``ftplan.tracking``: the options checked before anything heavy, MLflow URIs from paths, parameters and
metrics made loggable, W&B's mode; the CLI's answers to bad tracking options (exit 2, no traceback)."""

import math
import subprocess
import sys

import pytest

from ftplan import tracking
from ftplan.errors import FtplanError


def test_check_names_every_valid_backend():
    with pytest.raises(FtplanError) as e:
        tracking.check("comet")
    for b in tracking.BACKENDS:
        assert b in str(e.value)
    assert tracking.check(None) == tracking.TrackSpec()
    assert tracking.check(" MLflow ").backend == "mlflow" if tracking.importlib.util.find_spec("mlflow") else True


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FtplanError, match=r"needs the wandb package: pip install 'ftplan\[track\]'"):
        tracking.check("wandb")


@pytest.mark.parametrize("uri,experiment", [("", None), (None, "  "), ("a\x00b", None), (None, "x" * 300)])
def test_bad_uri_or_experiment(uri, experiment):
    with pytest.raises(FtplanError):
        tracking.check("tensorboard", uri, experiment)


def test_uri_without_a_backend_is_refused():
    with pytest.raises(FtplanError, match="need --report-to"):
        tracking.check("none", "runs.db")


def test_mlflow_uri_from_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.mlflow_uri(None, tmp_path / "runs") == f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').as_posix()}"
    assert (tmp_path / "runs").is_dir()  # made, so SQLite can create its file
    assert tracking.mlflow_uri(str(tmp_path / "x.db"), tmp_path) == f"sqlite:///{(tmp_path / 'x.db').as_posix()}"
    assert tracking.mlflow_uri(str(tmp_path / "folder"), tmp_path).endswith("/folder/mlflow.db")
    for uri in ("http://127.0.0.1:5000", "sqlite:///rel.db", "databricks", "postgresql://u@h/db"):
        assert tracking.mlflow_uri(uri, tmp_path) == uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking.mlflow_uri(None, tmp_path) == "http://tracking:5000"


def test_flat_parameters():
    out = tracking.flat({"knobs": {"lora_rank": 16, "lora_targets": ["q_proj", "v_proj"], "x": None}, "lr": 2e-4,
                         "name": "y" * 7000})
    assert out == {"knobs.lora_rank": "16", "knobs.lora_targets": '["q_proj", "v_proj"]', "lr": "0.0002",
                   "name": "y" * tracking.MAX_PARAM}


def test_finite_metrics_only():
    assert tracking.finite({"a": 1, "b": 2.5, "c": None, "d": math.nan, "e": math.inf, "f": "x", "g": True}) == \
        {"a": 1.0, "b": 2.5}


def test_wandb_offline_unless_logged_in(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    assert tracking.wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert tracking.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.wandb_mode() == "disabled"


class _Broken(tracking.Run):
    def _metrics(self, m, step):
        raise ConnectionError("server went away")

    def _finish(self, status):
        pass


def test_a_failing_store_never_stops_the_run(capsys):
    run = _Broken("mlflow", "r1", "somewhere")
    run.log_metrics({"loss": 1.0}, step=1)
    run.log_metrics({"loss": 0.9}, step=2)
    err = capsys.readouterr().err
    assert err.count("warning: mlflow tracking failed") == 1 and "server went away" in err
    run.finish("FAILED")
    assert run.closed


@pytest.mark.parametrize("cmd", [["train", "--config", "best.json", "--data", "d.jsonl", "--report-to", "neptune"],
                                 ["autotune", "--model", "8b", "--report-to", "neptune"],
                                 ["train", "--config", "best.json", "--data", "d.jsonl", "--experiment", "x"]])
def test_cli_bad_tracking_options_exit_2(cmd, tmp_path):
    (tmp_path / "best.json").write_text('{"format": "ftplan-best/1", "model": "1b", "knobs": {}}')
    (tmp_path / "d.jsonl").write_text('{"text": "hello"}\n')
    p = subprocess.run([sys.executable, "-m", "ftplan", *cmd], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert "--report-to" in p.stderr
