"""A trial worker that cannot start is a setup error, not a failed trial: the error names the exception
it died of (the last line of its traceback) and its log; an environment error is an ``FtplanError``;
a worker that fails to restart during a trial leaves that trial uncounted and its configuration queued."""

from types import SimpleNamespace

import pytest

from ftplan.errors import FtplanError
from ftplan.tune import pool as P
from ftplan.tune import space
from ftplan.tune import study as S

optuna = pytest.importorskip("optuna")

TRACEBACK = """some warning printed first
Traceback (most recent call last):
  File "/somewhere/a/very/long/path/to/ftplan/tune/worker.py", line 10, in serve
    import thing
ModuleNotFoundError: No module named 'thing'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/somewhere/else/worker.py", line 12, in serve
    raise ImportError("cannot import name 'x'")
ImportError: cannot import name 'x'
  second line of the message
"""


def test_last_exception_is_the_exception_line_of_the_last_traceback():
    assert P.last_exception(TRACEBACK) == "ImportError: cannot import name 'x'"
    assert P.last_exception("no traceback here\n") is None


@pytest.mark.parametrize("text,environment", [
    (TRACEBACK, True),
    ("Traceback (most recent call last):\n  File \"w.py\", line 1\nRuntimeError: boom\n", False),
    ("Traceback (most recent call last):\n  File \"w.py\", line 1\n"
     "ftplan.errors.FtplanError: this command needs torch\n", True),
    ("", False),
])
def test_start_error_names_the_exception_and_the_log(tmp_path, text, environment):
    log = tmp_path / "worker-1-1.log"
    log.write_text(text)
    err = P.start_error(log, 1, None)
    assert isinstance(err, P.WorkerStartError) and isinstance(err, FtplanError) == environment
    assert f"see its log: {log}" in str(err) and "\n" not in str(err)
    assert (err.exception or "exited with status 1") in str(err)


def test_pool_start_fails_with_the_workers_exception(tmp_path):
    pool = P.Pool(tmp_path, env={"FTPLAN_TUNE_FAULT": "startfail"})
    with pytest.raises(P.WorkerEnvironmentError) as info:
        pool.start()
    assert info.value.exception.startswith("ImportError: FTPLAN_TUNE_FAULT=startfail")
    assert info.value.log_path.is_file() and str(info.value.log_path) in str(info.value)
    assert pool.worker is None


class _NoStart:
    """A pool whose worker cannot start."""

    def run(self, *a, **k):
        raise P.WorkerEnvironmentError("the trial worker could not start: ImportError: x (see its log: w.log)",
                                       None, "ImportError: x")


def test_restart_failure_during_a_trial_leaves_it_uncounted_and_queued(tmp_path):
    from optuna.distributions import CategoricalDistribution

    st = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    params = {"micro_batch": 2}
    cand = SimpleNamespace(key=space.key_of(params), far_over=False, predicted={},
                           config=SimpleNamespace(knobs=lambda: params, attention="sdpa"))
    ts = SimpleNamespace(price=1.0, model="m", steps=2, device="cpu", synthetic_weights=True, max_memory_bytes=None,
                         argv=[], trial_timeout_s=10.0, objective="throughput")
    runner = S._Runner(ts, st, [cand], [cand], tmp_path, lambda *a, **k: None)
    runner.pool = _NoStart()
    trial = st.ask({"micro_batch": CategoricalDistribution([1, 2])})
    with pytest.raises(FtplanError, match="ImportError: x"):
        runner.run_trial(trial, cand)
    failed, queued = st.get_trials()
    assert failed.state.name == "FAIL" and failed.user_attrs["reason"].startswith("setup: ")
    assert not S._counts(failed) and not S._ran(failed)
    assert queued.state.name == "WAITING" and queued.system_attrs["fixed_params"] == failed.params


def test_a_study_poisoned_by_an_older_version_is_not_measured(tmp_path):
    """Older versions stored a worker that never started as a measured FAIL trial ("trial worker did not
    start: ..."), so every rerun found the study full: such a trial no longer counts."""
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    st = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    trial = st.ask({"micro_batch": CategoricalDistribution([1, 2])})
    trial.set_user_attr("ran", True)
    trial.set_user_attr("reason", "trial worker did not start: Traceback (most recent call last): | File \"/long/pa")
    st.tell(trial, None, state=TrialState.FAIL)
    (old,) = st.get_trials()
    assert S._ran(old) and not S._counts(old)
