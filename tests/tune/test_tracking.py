"""``ftplan autotune --report-to mlflow --then-train``: three real CPU trials and the training of the winner
logged to a local MLflow store, read back through MLflow's client API: each trial a run with the plan as
parameters and the predicted and measured figures as metrics, the training run beside them."""

import json
import os
import subprocess
import sys

import pytest

from tests.stack_fixtures import write_jsonl

pytestmark = pytest.mark.slow


def test_three_trials_and_the_training_in_mlflow(tiny_llama, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    data = write_jsonl(tmp_path / "train.jsonl")
    args = ["autotune", "--model", tiny_llama, "--device", "cpu", "--synthetic-weights", "--data", data,
            "--effective-batch", "4", "--trials", "3", "--optimizer", "adamw", "--seq-len", "32", "--study", "tracked",
            "--report-to", "mlflow", "--then-train", "--train-steps", "2", "-o", "trained", "--json"]
    p = subprocess.run([sys.executable, "-m", "ftplan", *args], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.split("\ntrained ")[0])  # the JSON document, then the training's lines
    assert "MLflow experiment 'tracked'" in res["tracking"]
    client = mlflow.tracking.MlflowClient(f"sqlite:///{(tmp_path / 'ftplan-runs' / 'mlflow.db').as_posix()}")
    exp = client.get_experiment_by_name("tracked")
    runs = client.search_runs([exp.experiment_id])
    trials = {int(r.data.tags["ftplan.trial"]): r for r in runs if r.data.tags.get("ftplan.command") == "autotune"}
    assert sorted(trials) == sorted(t["number"] for t in res["trials"]) and len(trials) == 3
    for t in res["trials"]:
        r = trials[t["number"]]
        assert r.info.status == ("FINISHED" if t["state"] == "COMPLETE" else "FAILED")
        assert r.data.params["micro_batch"] == str(t["config"]["micro_batch"])
        assert r.data.params["format"] == t["params"]["format"] and r.data.params["study"] == "tracked"
        m = r.data.metrics
        assert m["predicted_peak_allocated_bytes"] == t["predicted"]["peak_allocated_bytes"]
        assert m["measured_peak_allocated_bytes"] == t["measured"]["peak_allocated_bytes"]
        assert m["measured_tokens_per_s"] == pytest.approx(t["measured"]["tokens_per_s"])
        assert m["ratio_peak_allocated_bytes"] == pytest.approx(
            t["measured"]["peak_allocated_bytes"] / t["predicted"]["peak_allocated_bytes"])
        assert len(client.get_metric_history(r.info.run_id, "step_tokens_per_s")) >= 2  # every measured step
    train_runs = [r for r in runs if r.data.tags.get("ftplan.command") == "train"]
    assert len(train_runs) == 1 and train_runs[0].info.status == "FINISHED"
    tr = train_runs[0]
    assert tr.data.params["trial"] == str(res["best"]["number"])
    assert [m.step for m in client.get_metric_history(tr.info.run_id, "loss")] == [1, 2]


def test_a_killed_trials_run_is_ended_as_killed(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from ftplan import tracking

    tracker = tracking.open_tracker(tracking.check("mlflow", str(tmp_path)), "exp", tmp_path)
    run = tracker.start("trial 0", {"lora_rank": 8}, {"ftplan.trial": 0})
    run.log_metrics({"step_tokens_per_s": 100.0}, step=1)  # then the process is killed: the run stays RUNNING
    client = mlflow.tracking.MlflowClient(tracker.uri)
    assert client.get_run(run.run_id).info.status == "RUNNING"
    tracking.open_tracker(tracking.check("mlflow", str(tmp_path)), "exp", tmp_path).close_dangling(run.run_id)
    assert client.get_run(run.run_id).info.status == "KILLED"
