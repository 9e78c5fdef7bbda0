"""Generated hostile input, bounded to a few seconds (issue 12; ``benchmarks/fuzz.py`` is the long run).

The library: ``estimate()`` and ``plan()`` with arbitrary types and values for every knob either answer
(with finite figures only) or raise the project's own ``FtplanError``, nothing else. The CLI (in process,
the fit, ``gpus`` and ``models`` commands): exit code 0, 1 or 2, never a traceback, no file left behind."""

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import ftplan
from ftplan.cli import app
from ftplan.errors import FtplanError
from ftplan.planner.options import KNOBS

ODD = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["false", "true", "nan", "inf", "-1", "0", "1e999", "2147483648", "all-linear", "q_proj,v_proj",
                     "fsdp", "chunked", "fp16", "nf4", "qlora", "flash", "adamw_8bit"]),
    st.lists(st.integers(min_value=-3, max_value=5), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
EXTRA = {"tokens": ODD, "epochs": ODD, "price": ODD, "spot_discount": ODD, "handoff": ODD, "calibrate": st.just(False)}
MODELS = st.one_of(st.sampled_from(["8b", "1b", "70b", "phi-2", "mixtral-8x7b", "qwen3-30b-a3b"]), st.text(max_size=10))
GPUS = st.one_of(st.sampled_from(["rtx4090", "t4", "gtx1650", "h100", "cpu", None]), st.text(max_size=8))


def _finite(obj):
    if isinstance(obj, float):
        assert math.isfinite(obj), obj
    elif isinstance(obj, dict):
        for v in obj.values():
            _finite(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _finite(v)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=MODELS, gpu=GPUS, knobs=st.dictionaries(st.sampled_from(KNOBS), ODD, max_size=5),
       extra=st.fixed_dictionaries({}, optional=EXTRA))
def test_estimate_answers_or_raises_its_own_error(model, gpu, knobs, extra):
    try:
        est = ftplan.estimate(model, gpu, **knobs, **extra)
    except FtplanError:
        return
    _finite(est.to_dict())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=MODELS, gpu=GPUS, knobs=st.dictionaries(st.sampled_from(KNOBS), ODD, max_size=3),
       top=st.one_of(st.none(), ODD), objective=st.one_of(st.sampled_from(["throughput", "cost", "quality"]), ODD),
       margin=st.one_of(st.just(0.05), ODD))
def test_plan_answers_or_raises_its_own_error(model, gpu, knobs, top, objective, margin):
    try:
        plans = ftplan.plan(model, gpu if gpu is not None else "rtx4090", top=top, objective=objective,
                            margin=margin, calibrate=False, **knobs)
    except FtplanError:
        return
    if top is not None:
        assert len(plans) <= int(top)
    for p in plans[:2]:
        _finite(p.to_dict())


OPTIONS = ["--method", "--quant", "--rank", "--alpha", "--targets", "--lora-dropout", "--micro-batch", "--seq-len",
           "--effective-batch", "--grad-accum", "--optimizer", "--attention", "--loss", "--for", "--gpus", "--sharding",
           "--tokens", "--epochs", "--price", "--spot-discount", "--objective", "--margin", "--top", "--gpu-file"]
VALUES = st.one_of(st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e999", "99999999999999999999999", "1.5", "",
                                    "qlora", "nf4", "chunked", "trl", "fsdp", "8", "4096", "/", "..", "~root", "a b",
                                    "/dev/null", "/proc/self/status", "x" * 300]),
                   st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(model=st.one_of(st.sampled_from(["8b", "1b", "phi-2"]), VALUES), gpu=st.one_of(st.sampled_from(["rtx4090", "t4"]), VALUES),
       opts=st.lists(st.tuples(st.sampled_from(OPTIONS), VALUES), max_size=3))
def test_the_fit_command_never_prints_a_traceback(tmp_path, model, gpu, opts):
    args = ["--model", model, "--gpu", gpu, "--no-calibration"]
    for o, v in opts:
        args += [o, v]
    before = set(os.listdir(tmp_path))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        r = CliRunner().invoke(app, args)
    finally:
        os.chdir(cwd)
    assert r.exit_code in (0, 1, 2), (args, r.output)
    assert r.exception is None or isinstance(r.exception, SystemExit), (args, repr(r.exception))
    assert "Traceback" not in r.output
    assert set(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("args", [["gpus", "--json"], ["models"], ["gpus", "--gpu-file", "/dev/null"],
                                  ["gpus", "--gpu-file", "/proc/self/status"], ["models", "--json"]])
def test_listing_commands(args):
    r = CliRunner().invoke(app, args)
    assert r.exit_code in (0, 2) and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
