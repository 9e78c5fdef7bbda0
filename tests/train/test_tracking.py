"""``ftplan train --report-to``: real CPU runs of a small Llama logged to a local MLflow store (read back
with MLflow's client API; a resumed run continues the same MLflow run), to TensorBoard event files (read
back with TensorBoard's event reader) and to an offline W&B run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack_fixtures import best_doc


def _train(doc, data, out, **kw):
    from ftplan.train.loop import TrainOptions, train

    return train(TrainOptions(config=doc, data=data, output=Path(out), **kw))


def test_mlflow_run_read_back_and_resumed(tiny_llama, data_file, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    store = tmp_path / "store"
    doc = {**best_doc(tiny_llama), "study": "my-study", "gpu": "cpu",
           "predicted": {"peak_allocated_bytes": 30_000_000, "tokens_per_s": 500.0}}
    res = _train(doc, data_file, tmp_path / "out", max_steps=2, save_every=1, report_to="mlflow",
                 tracking_uri=str(store))
    assert res.tracked and "my-study" in res.tracked
    client = mlflow.tracking.MlflowClient(f"sqlite:///{(store / 'mlflow.db').as_posix()}")
    exp = client.get_experiment_by_name("my-study")  # the study that chose the configuration
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["knobs.method"] == "qlora" and p["knobs.lora_rank"] == "8" and p["knobs.micro_batch"] == "2"
    assert p["steps"] == "2" and p["device"] == "cpu" and p["study"] == "my-study"
    assert run.data.tags["ftplan.memory_kind"] == "cpu process peak RSS"
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in loss] == [1, 2]
    assert [m.value for m in loss] == pytest.approx(res.losses)
    assert run.data.metrics["predicted_peak_allocated_bytes"] == 30_000_000
    assert run.data.metrics["predicted_tokens_per_s"] == 500.0
    tps = [json.loads(x)["tokens_per_s"] for x in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert run.data.metrics["median_tokens_per_s"] == pytest.approx(tps[1])  # step 1 (optimizer state) left out
    assert run.data.metrics["tokens_per_s_ratio"] == pytest.approx(tps[1] / 500.0)  # same kind of device
    assert "memory_ratio" not in run.data.metrics  # RSS is not the allocated peak: no ratio on the CPU
    # a resume continues the same run
    _train(doc, data_file, tmp_path / "out", max_steps=4, save_every=1, resume=True, report_to="mlflow",
           tracking_uri=str(store))
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]


def test_mlflow_run_of_a_failed_training_is_failed(tiny_llama, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from tests.stack_fixtures import write_jsonl

    data = write_jsonl(tmp_path / "d.jsonl", n=8)
    doc = best_doc(tiny_llama)
    import ftplan.train.loop as L

    real = L._finish

    def boom(*a, **k):
        raise RuntimeError("disk gone")

    L._finish = boom
    try:
        with pytest.raises(RuntimeError):
            _train(doc, data, tmp_path / "out", max_steps=1, report_to="mlflow", tracking_uri=str(tmp_path / "s.db"))
    finally:
        L._finish = real
    client = mlflow.tracking.MlflowClient(f"sqlite:///{(tmp_path / 's.db').as_posix()}")
    run = client.search_runs([client.get_experiment_by_name("ftplan").experiment_id])[0]
    assert run.info.status == "FAILED" and "disk gone" in run.data.tags["ftplan.error"]


def test_tensorboard_events_read_back(tiny_llama, data_file, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = _train(best_doc(tiny_llama), data_file, tmp_path / "out", max_steps=3, report_to="tensorboard")
    logdir = tmp_path / "out" / "tensorboard" / "train"
    assert res.tracked == str(logdir)
    ea = EventAccumulator(str(logdir))
    ea.Reload()
    assert [e.step for e in ea.Scalars("loss")] == [1, 2, 3]
    assert [e.value for e in ea.Scalars("loss")] == pytest.approx(res.losses, rel=1e-6)
    assert len(ea.Scalars("tokens_per_s")) == 3
    params = ea.Tensors("ftplan/params/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "knobs.lora_rank = 8" in params


def test_wandb_offline_run_without_login(tiny_llama, data_file, tmp_path):
    pytest.importorskip("wandb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), PYTHONUNBUFFERED="1")  # no netrc: not logged in
    (tmp_path / "best.json").write_text(json.dumps(best_doc(tiny_llama)))
    p = subprocess.run([sys.executable, "-m", "ftplan", "train", "--config", "best.json", "--data", data_file,
                        "--max-steps", "2", "-o", "out", "-q", "--report-to", "wandb", "--experiment", "proj"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "W&B project proj (offline" in p.stdout
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    blob = runs[0].read_bytes()  # the run's records (protobuf): the plan and the step metrics are in it
    for key in (b"tokens_per_s", b"memory_bytes", b"knobs.lora_rank", b"median_tokens_per_s"):
        assert key in blob


def test_unreachable_mlflow_server_is_exit_2_in_seconds(tiny_llama, data_file, tmp_path):
    """No server listens on the discard port: one line, exit 2, before any weights are built (MLflow's own
    retries would take about 4 minutes; ``tracking.HTTP_DEFAULTS`` shortens them)."""
    import time

    pytest.importorskip("mlflow")
    (tmp_path / "best.json").write_text(json.dumps(best_doc(tiny_llama)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "ftplan", "train", "--config", "best.json", "--data", data_file,
                        "--max-steps", "1", "-o", "out", "-q", "--report-to", "mlflow", "--tracking-uri",
                        "http://127.0.0.1:9"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "cannot open the tracking store http://127.0.0.1:9" in p.stderr and "Traceback" not in p.stderr
    assert time.monotonic() - t0 < 90
    assert not (tmp_path / "out" / "checkpoints").exists()
