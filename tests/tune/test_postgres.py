"""Two autotune workers share one study through a real PostgreSQL server (``.ci/run`` starts one on
loopback and sets ``FTPLAN_TEST_POSTGRES``): every configuration is measured once, the study holds the
requested trials, and the winner both workers report is the best finished trial. A worker killed
mid-trial on what looks like another machine is found by its missing heartbeats and its trial retried."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.stack_fixtures import write_jsonl
from tests.tune.helpers import wait_for

URL = os.environ.get("FTPLAN_TEST_POSTGRES")
pytestmark = [pytest.mark.skipif(not URL, reason="no PostgreSQL server: .ci/run starts one and sets FTPLAN_TEST_POSTGRES"),
              pytest.mark.slow]


def test_two_workers_one_study(tiny_llama, tmp_path):
    import optuna

    data = write_jsonl(tmp_path / "train.jsonl", 16)
    study = f"pg-{os.getpid()}"
    procs = []
    for w in ("a", "b"):
        (tmp_path / w).mkdir()
        args = ["autotune", "--model", tiny_llama, "--device", "cpu", "--synthetic-weights", "--data", data,
                "--effective-batch", "4", "--trials", "5", "--optimizer", "adamw", "--seq-len", "32",
                "--study", study, "--storage", URL, "--seed", "1" if w == "a" else "2", "--json"]
        procs.append(subprocess.Popen([sys.executable, "-m", "ftplan", *args], cwd=tmp_path / w,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    st = optuna.load_study(study_name=study, storage=URL)
    trials = st.get_trials()
    measured = [t for t in trials if t.user_attrs.get("ran")]
    hosts_pids = {t.user_attrs.get("pid") for t in measured}
    assert len(hosts_pids) == 2, "both workers measured trials"
    keys = [tuple(sorted(t.params.items())) for t in measured]
    assert len(keys) == len(set(keys)), "a configuration was measured twice"
    assert 5 <= len(measured) <= 6  # the last two starts can race by one trial, never more
    assert len({t.number for t in trials}) == len(trials)
    assert all(t.state.name != "RUNNING" for t in trials)
    best = max((t for t in measured if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert st.best_trial.number == best.number
    for o in outs:  # each worker's winner is the best trial finished when it stopped
        done = [t for t in o["trials"] if t["state"] == "COMPLETE"]
        assert o["best"]["number"] == max(done, key=lambda t: t["value"])["number"]
    # the worker that stopped last saw every trial finished: it names the study's best
    assert best.number in {o["best"]["number"] for o in outs}


def test_worker_killed_on_another_host_is_failed_and_retried(tiny_llama, tmp_path):
    """Worker A dies mid-trial (SIGKILL) on what looks like another machine, so no process id can be
    checked: its trial stays RUNNING until its heartbeats stop for longer than the grace period. Worker B
    then fails it, measures its configuration again, and the study ends with the requested trials."""
    import optuna

    data = write_jsonl(tmp_path / "train.jsonl", 8)
    study = f"pg-stale-{os.getpid()}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FTPLAN_HEARTBEAT_S": "1", "FTPLAN_GRACE_S": "3"}
    args = ["autotune", "--model", tiny_llama, "--device", "cpu", "--synthetic-weights", "--data", data,
            "--effective-batch", "4", "--trials", "2", "--optimizer", "adamw", "--seq-len", "32", "--steps", "2",
            "--study", study, "--storage", URL, "--json"]
    for w in ("a", "b"):
        (tmp_path / w).mkdir()
    a = subprocess.Popen([sys.executable, "-m", "ftplan", *args], cwd=tmp_path / "a", stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env={**env, "FTPLAN_TUNE_FAULT": "hang@0"})
    storage = optuna.storages.RDBStorage(URL)
    try:
        def running_trial_0():
            st = optuna.load_study(study_name=study, storage=storage)
            t = st.trials[0]
            return t if t.state.name == "RUNNING" and t.user_attrs.get("ran") else None

        hung = wait_for("trial 0 to run", running_trial_0, proc=a)
        time.sleep(1.5)  # at least one heartbeat recorded
    finally:
        os.killpg(a.pid, signal.SIGKILL)  # worker A vanishes without a word (its trial process dies with it)
        a.communicate()
    # as if A ran on another machine: B cannot tell from a process id that it is gone
    tid = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study), hung.number)
    storage.set_trial_user_attr(tid, "host", "host-a.example")
    time.sleep(3.5)  # past the grace period
    b = subprocess.run([sys.executable, "-m", "ftplan", *args], cwd=tmp_path / "b", capture_output=True, text=True,
                       env=env, timeout=240)
    assert b.returncode == 0, b.stderr
    trials = optuna.load_study(study_name=study, storage=URL).get_trials()
    assert not [t.number for t in trials if t.state.name == "RUNNING"]
    first = trials[0]
    assert first.state.name == "FAIL"
    assert "stale: no heartbeat from host host-a.example" in first.user_attrs["reason"], first.user_attrs
    retried = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retried) == 1 and retried[0].params == first.params and retried[0].state.name == "COMPLETE"
    counted = [t for t in json.loads(b.stdout)["trials"] if "stale" not in t["reason"]]
    assert len(counted) == 2 and all(t["state"] == "COMPLETE" for t in counted)
