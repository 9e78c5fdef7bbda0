"""Heartbeats of running trials on a local SQLite study (no worker processes): a trial whose heartbeat
stops for longer than the grace period is failed with its reason and its configuration enqueued again;
a beating one is left alone; the settings come from the environment; opening a storage leaves the
user's warning filters as they were."""

import time
import warnings

import pytest

from ftplan.errors import FtplanError
from ftplan.tune import study as S

optuna = pytest.importorskip("optuna")


@pytest.fixture
def short_grace(monkeypatch):
    # SQLite's clock (CURRENT_TIMESTAMP) counts whole seconds: a grace of 1 s is stale after 2 s at most
    monkeypatch.setenv("FTPLAN_HEARTBEAT_S", "0.2")
    monkeypatch.setenv("FTPLAN_GRACE_S", "1")


def _running_trial(study, storage, host):
    from optuna.distributions import CategoricalDistribution

    trial = study.ask({"micro_batch": CategoricalDistribution([1, 2])})
    trial.set_user_attr("ran", True)
    trial.set_user_attr("host", host)
    trial.set_user_attr("pid", 12345)
    return trial, storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                                  trial.number)


def test_stale_trial_is_failed_and_retried_beating_one_is_not(tmp_path, short_grace):
    storage = S.open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    _, grace = S.heartbeat_settings()
    dead, dead_id = _running_trial(study, storage, "host-a.example")
    live, live_id = _running_trial(study, storage, "host-b.example")
    with S.heartbeat(storage, dead_id, 0.2):
        time.sleep(0.3)  # host-a beats, then vanishes
    assert S.fail_stale(study, storage, grace) == 0
    with S.heartbeat(storage, live_id, 0.2):
        time.sleep(2.6)  # host-a is past its grace; host-b keeps beating
        assert S.fail_stale(study, storage, grace) == 1
        assert S.fail_stale(study, storage, grace) == 0  # failed once, retried once
    trials = {t.number: t for t in study.get_trials()}
    assert trials[dead.number].state.name == "FAIL"
    assert trials[dead.number].user_attrs["reason"] == ("stale: no heartbeat from host host-a.example (pid 12345) "
                                                        "for more than 1 s; retried")
    assert trials[live.number].state.name == "RUNNING"
    (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == dead.number]
    assert retry.state.name == "WAITING" and retry.system_attrs["fixed_params"] == dead.params
    assert not S._counts(trials[dead.number]) and S._counts(trials[live.number])


def test_open_storage_leaves_warning_filters_alone(tmp_path):
    before = list(warnings.filters)
    S.open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert warnings.filters == before


@pytest.mark.parametrize("env,needle", [
    ({"FTPLAN_HEARTBEAT_S": "soon"}, "FTPLAN_HEARTBEAT_S='soon' must be a positive number of seconds"),
    ({"FTPLAN_GRACE_S": "-3"}, "FTPLAN_GRACE_S='-3' must be a positive number of seconds"),
    ({"FTPLAN_HEARTBEAT_S": "10", "FTPLAN_GRACE_S": "5"}, "FTPLAN_GRACE_S=5 must be longer than"),
])
def test_heartbeat_settings_from_the_environment(monkeypatch, env, needle):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(FtplanError, match=needle):
        S.heartbeat_settings()


def test_heartbeat_defaults(monkeypatch):
    monkeypatch.delenv("FTPLAN_HEARTBEAT_S", raising=False)
    monkeypatch.delenv("FTPLAN_GRACE_S", raising=False)
    assert S.heartbeat_settings() == (60.0, 180.0)
    monkeypatch.setenv("FTPLAN_HEARTBEAT_S", "5")
    assert S.heartbeat_settings() == (5.0, 15.0)  # three intervals unless told
