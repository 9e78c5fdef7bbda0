"""``ftplan autotune`` end to end on the CPU: a small Llama-shaped model with random weights, generated
JSONL, real profiled trials in worker processes; faults injected on chosen trials (a worker crash, a
real out-of-memory under a simulated cap, a hang past the timeout, a killed study, a trial worker
that must not outlive its killed parent)."""

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.stack_fixtures import write_jsonl
from tests.tune.helpers import process_gone, wait_for

yaml = pytest.importorskip("yaml")
pytestmark = pytest.mark.slow  # every test here starts autotune processes that import the training stack


def _cli(args, cwd, fault="", **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FTPLAN_TUNE_FAULT": fault}
    return subprocess.Popen([sys.executable, "-m", "ftplan", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def _tune_args(model, data, trials, *extra):
    return ["autotune", "--model", model, "--device", "cpu", "--synthetic-weights", "--data", data,
            "--effective-batch", "4", "--trials", str(trials), "--optimizer", "adamw", "--seq-len", "32", *extra]


def test_autotune_then_train(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl")
    p = _cli([*_tune_args(tiny_llama, data, 4, "--max-memory", "40MiB", "--json")], tmp_path, fault="crash@1,oom@2")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    res = json.loads(out)
    trials = {t["number"]: t for t in res["trials"]}
    assert len(trials) == 4
    assert trials[1]["state"] == "FAIL" and "worker died" in trials[1]["reason"]
    assert trials[2]["state"] == "FAIL" and trials[2]["outcome"] == "oom" and "out of memory" in trials[2]["reason"]
    ok = [t for t in trials.values() if t["state"] == "COMPLETE"]
    assert len(ok) == 2
    # the planner skipped what it predicts far over the 40 MiB budget, and said why
    assert res["skipped"]["predicted over memory (never sampled)"] > 0
    for t in ok:
        assert t["predicted"]["peak_allocated_bytes"] <= 40 * 2**20 * 1.10
        assert t["measured"]["peak_allocated_bytes"] <= 40 * 2**20
    best = max(ok, key=lambda t: t["value"])
    assert res["best"]["number"] == best["number"]
    files = {k: tmp_path / v for k, v in res["files"].items()}  # relative to where the command ran
    doc = json.loads(files["best"].read_text())
    assert doc["knobs"]["micro_batch"] * doc["knobs"]["grad_accum"] == 4 and doc["trial"] == best["number"]
    ax = yaml.safe_load(open(files["axolotl"]))
    assert ax["micro_batch_size"] == doc["knobs"]["micro_batch"] and ax["sequence_len"] == 32
    lf = yaml.safe_load(open(files["llamafactory"]))
    assert lf["gradient_accumulation_steps"] == doc["knobs"]["grad_accum"]
    ast.parse(files["trl"].read_text())
    assert res["calibration"] and "allocated" in res["calibration"]["factors"]
    t = _cli(["train", "--config", res["files"]["best"], "--data", data, "--max-steps", "3", "-o", "trained", "-q"], tmp_path)
    out, err = t.communicate(timeout=300)
    assert t.returncode == 0, err
    assert (tmp_path / "trained" / "adapter").is_dir() or (tmp_path / "trained" / "model").is_dir()
    # --then-train, run twice: the study is done, and the second run resumes the training it finds (it used
    # to refuse the folder that the first one left, exit 2)
    for attempt in range(2):
        t = _cli([*_tune_args(tiny_llama, data, 4, "--then-train", "--train-steps", "2", "-o", "tt")], tmp_path)
        out, err = t.communicate(timeout=600)
        assert t.returncode == 0, err
        assert ("resuming it" in err) is (attempt == 1)
    assert (tmp_path / "tt" / "adapter").is_dir() or (tmp_path / "tt" / "model").is_dir()


def test_killed_study_resumes(tiny_llama, tmp_path):
    import optuna

    data = write_jsonl(tmp_path / "train.jsonl")
    args = _tune_args(tiny_llama, data, 3, "--study", "s", "--json")
    p = _cli(args, tmp_path, fault="hang@1")
    db = tmp_path / "ftplan-runs" / "ftplan.db"
    deadline = time.monotonic() + 300
    running = []
    while not running:
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.5)
        if db.exists():
            try:
                st = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
                # RUNNING with its worker's pid recorded: a trial killed between being asked for and recording
                # its pid is left to the heartbeat grace period (minutes), not failed at once on resume
                running = [t for t in st.get_trials() if t.state.name == "RUNNING" and t.number == 1
                           and "pid" in t.user_attrs]
            except Exception:  # noqa: BLE001 - the study may not exist yet
                pass
    os.killpg(p.pid, signal.SIGKILL)  # the study and its worker die mid-trial
    p.wait()
    first = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials[0]
    assert first.state.name == "COMPLETE"
    q = _cli(args, tmp_path)
    out, err = q.communicate(timeout=600)
    assert q.returncode == 0, err
    st = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    trials = st.get_trials()
    assert trials[0].state.name == "COMPLETE" and trials[0].value == first.value  # kept, not re-run
    assert trials[1].state.name == "FAIL" and "interrupted" in trials[1].user_attrs["reason"]
    res = json.loads(out)
    counted = [t for t in res["trials"] if "interrupted" not in t["reason"]]
    assert len(counted) == 3 and all(t["state"] == "COMPLETE" for t in counted)
    retried = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert retried and retried[0].params == trials[1].params and retried[0].state.name == "COMPLETE"


def test_hung_trial_times_out(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", 8)
    p = _cli(_tune_args(tiny_llama, data, 1, "--trial-timeout", "5", "--json"), tmp_path, fault="hang@0")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 1  # nothing finished: no winner
    (t,) = json.loads(out)["trials"]
    assert t["state"] == "FAIL" and "no result within 5 s" in t["reason"]


def test_bad_input_exit_2(tiny_llama, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a"}\n[]\n')
    for args, needle in [(_tune_args(tiny_llama, str(data), 2), f"{data}:2"),
                         (["autotune", "--model", tiny_llama, "--device", "cpu", "--trials", "0"], "--trials=0"),
                         (["autotune", "--model", tiny_llama, "--device", "cpu", "--time-budget", "soon"], "soon"),
                         (["autotune", "--model", tiny_llama, "--device", "cpu", "--storage", "nonsense"], "nonsense")]:
        p = _cli(args, tmp_path)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 2 and needle in err and "Traceback" not in err, (args, err)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker's state in /proc")
def test_worker_dies_with_its_parent(tiny_llama, data_file, tmp_path):
    """The trial worker runs in its own session (a terminal's Ctrl-C reaches the tuner, which stops it);
    when the tuner itself is killed outright it must not live on, holding memory and a device."""
    p = _cli(_tune_args(tiny_llama, data_file, 1, "--study", "orphan"), tmp_path, fault="hang@0")
    logs = tmp_path / "ftplan-runs" / "orphan"

    def hanging_worker():
        for log in logs.glob(f"worker-{p.pid}-*.log"):
            m = re.search(r"worker (\d+): FTPLAN_TUNE_FAULT hangs trial 0", log.read_text(errors="replace"))
            if m:
                return int(m.group(1))
        return None

    worker = wait_for("the worker to hang in trial 0", hanging_worker, proc=p)
    try:
        assert not process_gone(worker)
        os.kill(p.pid, signal.SIGKILL)  # the tuner only: no cleanup of its own can run
        p.communicate()
        deadline = time.monotonic() + 5
        while not process_gone(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process_gone(worker), f"trial worker {worker} outlived its killed parent {p.pid}"
    finally:
        if not process_gone(worker):
            os.kill(worker, signal.SIGKILL)


def test_best_json_trains_from_another_folder(tmp_path):
    """autotune ran with a model folder and data named relative to its folder: best.json stores both
    absolute, so ``ftplan train --config`` works from anywhere (it used to fail: unknown model './llama')."""
    from ftplan.measure.small_models import write_config

    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    model = write_config("llama", run)
    write_jsonl(run / "train.jsonl")
    p = _cli(_tune_args("./" + model.name, "train.jsonl", 1, "--json"), run)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    best = (run / json.loads(out)["files"]["best"]).resolve()
    doc = json.loads(best.read_text())
    assert doc["model"] == str(model.resolve())
    assert doc["data"]["path"] == str((run / "train.jsonl").resolve())
    t = _cli(["train", "--config", str(best), "--data", doc["data"]["path"], "--max-steps", "2", "-o", "out", "-q"],
             elsewhere)
    out, err = t.communicate(timeout=300)
    assert t.returncode == 0, err
    assert "trained 2 steps" in out


def test_worker_that_cannot_start_stops_the_study_and_records_nothing(tiny_llama, data_file, tmp_path):
    """A worker that dies before it is ready (here of an ImportError, as with a missing package) is a
    setup error: one line naming the exception and the worker's log, exit 2, no trial recorded; once
    the environment is fixed the same command starts clean and measures."""
    import optuna

    args = _tune_args(tiny_llama, data_file, 2, "--study", "setup")
    p = _cli(args, tmp_path, fault="startfail")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2, err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "ImportError: FTPLAN_TUNE_FAULT=startfail: a package the trial worker needs cannot be imported" in line
    log = re.search(r"see its log: (\S+?)\)", line).group(1)
    assert (tmp_path / log).is_file() and "startfail" in (tmp_path / log).read_text()
    st = optuna.load_study(study_name="setup", storage=f"sqlite:///{tmp_path / 'ftplan-runs' / 'ftplan.db'}")
    assert all(t.state.name == "WAITING" and not t.user_attrs.get("ran") for t in st.get_trials())
    q = _cli(args, tmp_path)
    out, err = q.communicate(timeout=600)
    assert q.returncode == 0, err
    assert "already measured" not in err and "nothing to export" not in out
    st = optuna.load_study(study_name="setup", storage=f"sqlite:///{tmp_path / 'ftplan-runs' / 'ftplan.db'}")
    assert sum(1 for t in st.get_trials() if t.state.name == "COMPLETE" and t.user_attrs.get("ran")) == 2


def test_flash_attention_missing_is_not_measured_under_its_name(tiny_llama, data_file, tmp_path):
    """On the CPU (and without flash-attn) flash_attention_2 would silently run as sdpa: asked for
    explicitly, autotune refuses with the reason instead of measuring sdpa under its name."""
    p = _cli(_tune_args(tiny_llama, data_file, 1, "--attention", "flash_attention_2", "--json"), tmp_path)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2, err
    assert "--attention flash_attention_2 cannot be measured here" in err and "sdpa" in err
    assert "Traceback" not in err and not (tmp_path / "ftplan-runs" / "ftplan.db").exists()
