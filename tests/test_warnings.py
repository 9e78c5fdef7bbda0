"""The library never changes the user's warning filters or log levels; the commands silence the stack's
notices inside ``quiet_stack()`` only, and restore everything after."""

import logging
import os
import warnings

import ftplan
from ftplan.stack import quiet_stack


def test_quiet_stack_restores_filters_levels_and_environment(monkeypatch):
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    monkeypatch.setattr(logging.getLogger("peft"), "level", logging.INFO)
    before = list(warnings.filters)
    with quiet_stack():
        assert logging.getLogger("peft").level == logging.ERROR
        assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
        assert warnings.filters != before
    assert warnings.filters == before
    assert logging.getLogger("peft").level == logging.INFO
    assert "TRANSFORMERS_VERBOSITY" not in os.environ


def test_quiet_stack_hides_warnings_inside_only():
    shown = []
    old_show = warnings.showwarning
    warnings.showwarning = lambda message, *a, **k: shown.append(str(message))
    try:
        with quiet_stack():
            warnings.warn_explicit("hidden", UserWarning, "x.py", 1)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *a, **k: shown.append(str(message))
            warnings.warn_explicit("shown", UserWarning, "x.py", 2)
    finally:
        warnings.showwarning = old_show
    assert shown == ["shown"]


def test_library_calls_leave_warning_filters_alone():
    before = list(warnings.filters)
    ftplan.plan("8b", "rtx4090")
    ftplan.estimate("70b", "h100", method="qlora")
    assert warnings.filters == before
