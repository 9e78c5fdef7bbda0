"""The study loop's bookkeeping on a local SQLite study, without worker processes."""

from types import SimpleNamespace

import pytest

from ftplan.tune import space
from ftplan.tune import study as S

optuna = pytest.importorskip("optuna")


def test_same_configuration_asked_at_once_runs_under_the_lower_number(tmp_path):
    """Two workers ask for the same configuration before either starts to measure it (neither trial is
    marked ``ran`` yet): the higher trial number is the duplicate, the lower one is not."""
    from optuna.distributions import CategoricalDistribution

    st = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    params = {"micro_batch": 2}
    for _ in range(2):
        st.enqueue_trial(params)
    low, high = (st.ask({"micro_batch": CategoricalDistribution([1, 2])}) for _ in range(2))
    cand = SimpleNamespace(key=space.key_of(params), far_over=False)
    runner = S._Runner(SimpleNamespace(price=1.0), st, [cand], [cand], tmp_path, lambda *a, **k: None)
    dup = runner.duplicate_of(high, cand.key)
    assert dup is not None and dup.number == low.number
    assert runner.duplicate_of(low, cand.key) is None
    runner.skip(high, f"same configuration as trial {low.number}", "duplicate")
    assert runner.duplicate_of(low, cand.key) is None  # a skipped trial holds no configuration
