"""The calibration store: what autotune records, what estimate applies, to which figure, and when it
does not (another GPU, other library versions, another device kind or model size class)."""

import json
import math
import os
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ftplan
from ftplan import calibration
from ftplan.planner.estimate import build_estimate
from ftplan.planner.types import ModelSpec, TrainConfig
from ftplan.profiles.gpus import get_gpu
from ftplan.profiles.models import get_model

# about 10M parameters (a 40 MB fp32 model): the size of the CPU autotune smoke test's toy
TOY = ModelSpec(name="toy", hidden=256, intermediate=688, layers=4, heads=4, kv_heads=4, head_dim=64,
                vocab=32000, max_positions=2048)
NAMES = ("allocated", "allocator_overhead", "cuda_context", "tokens_per_s")  # the factors calibration knows


@pytest.fixture
def store(tmp_path, monkeypatch):
    path = tmp_path / "cal.json"
    monkeypatch.setenv("FTPLAN_CALIBRATION", str(path))
    return path


def _figures(est):
    return {"peak_allocated_bytes": est.peak_allocated_bytes, "peak_reserved_bytes": est.peak_reserved_bytes,
            "device_bytes": est.device_bytes, "tokens_per_s": est.time.tokens_per_s if est.time else None}


def _ordered(est):
    return est.device_bytes >= est.peak_reserved_bytes >= est.peak_allocated_bytes > 0


def test_ratios_keep_plausible_pairs_only():
    assert calibration.ratios([(110, 100), (None, 5), (5, 0), (1000, 1), (50, 100)]) == [1.1, 0.5]


def test_factor_names():
    assert set(calibration.FACTORS) == set(NAMES)


def test_size_classes_are_orders_of_magnitude():
    assert calibration.size_class(ftplan.estimate("8b").total_params) == "1e10"
    assert calibration.size_class(ftplan.estimate("70b").total_params) == "1e11"
    assert calibration.size_class(ftplan.estimate(TOY).total_params) == "1e7"
    assert calibration.size_class(None) == calibration.size_class(0) == "unknown"


def test_cpu_toy_factor_keeps_physics_and_stays_with_its_size_class(store):
    """The reported bug: a CPU autotune of a 40 MB model stored x0.95 (study.py's call, unchanged), which
    then applied to every model on that device and put reserved below allocated."""
    raw = ftplan.estimate("8b", "cpu", calibrate=False)
    calibration.record("cpu", [0.95], [], source="ftplan autotune study 'toy', 4 trials")
    est = ftplan.estimate("8b", "cpu")
    assert _ordered(est)
    assert (est.peak_allocated_bytes, est.peak_reserved_bytes, est.device_bytes) == (
        raw.peak_allocated_bytes, raw.peak_reserved_bytes, raw.device_bytes)
    assert est.calibration is not None and not est.calibration.applied  # says what it did not apply, and why
    assert "allocated (unknown)" in est.calibration.skipped
    # recorded with the model's size: it applies to that size class only, to allocated memory only
    calibration.record("cpu", [0.95], [], source="toy study", total_params=ftplan.estimate(TOY).total_params)
    big = ftplan.estimate("8b", "cpu")
    assert not big.calibration.applied and "allocated (1e7)" in big.calibration.skipped
    assert big.peak_allocated_bytes == raw.peak_allocated_bytes
    toy_raw = ftplan.estimate(TOY, "cpu", calibrate=False)
    toy = ftplan.estimate(TOY, "cpu")
    assert toy.calibration.factors == {"allocated": 0.95} and "allocated" in toy.calibration.applies_to
    assert toy.peak_allocated_bytes == round(toy_raw.peak_allocated_bytes * 0.95)
    assert _ordered(toy) and sum(toy.breakdown.values()) == toy.peak_allocated_bytes
    assert ftplan.estimate(TOY, "h100").calibration is None  # another device


def test_study_trials_calibrate_terms_not_the_whole_peak(store):
    g = get_gpu("h100")
    raw = ftplan.estimate("8b", g, optimizer="paged_adamw_8bit", calibrate=False)
    context = raw.overheads["cuda_context"]
    paged = raw.overheads["paged_optimizer_state"]
    assert paged > 0
    overhead = raw.peak_reserved_bytes - raw.peak_allocated_bytes
    measured = {"peak_allocated_bytes": raw.peak_allocated_bytes * 1.01,
                "peak_reserved_bytes": raw.peak_allocated_bytes * 1.01 + overhead * 1.5,
                "device_bytes": raw.peak_allocated_bytes * 1.01 + overhead * 1.5 + context * 0.8 + paged,
                "tokens_per_s": raw.time.tokens_per_s * 0.75}
    entry = calibration.record_trials(g, "cuda", raw.total_params, [(measured, _figures(raw))], source="study s")
    assert entry["size_class"] == "1e10" and entry["device"] == "cuda"
    assert entry["factors"] == pytest.approx({"allocated": 1.01, "allocator_overhead": 1.5, "cuda_context": 0.8,
                                              "tokens_per_s": 0.75})
    est = ftplan.estimate("8b", g, optimizer="paged_adamw_8bit")
    cal = est.calibration
    assert cal.applied and set(cal.applies_to) == set(cal.factors) and cal.source == "study s"
    assert est.peak_reserved_bytes - est.peak_allocated_bytes == pytest.approx(overhead * 1.5, abs=2)
    assert est.overheads["cuda_context"] == pytest.approx(context * 0.8, abs=1)
    assert est.device_bytes == est.peak_reserved_bytes + est.overheads["cuda_context"] + paged
    assert sum(est.breakdown.values()) == est.peak_allocated_bytes
    assert est.time.tokens_per_s == pytest.approx(raw.time.tokens_per_s * 0.75) and est.time.calibrated
    assert "calibration" in est.time.notes[0]
    assert ftplan.estimate("8b", g, calibrate=False).calibration is None
    assert ftplan.estimate("8b", "a100-80gb").calibration is None  # another GPU: nothing
    assert ftplan.plan("8b", g)[0].estimate.calibration.applied


def test_another_size_class_gets_only_the_size_independent_factor_and_says_so(store):
    g = get_gpu("h100")
    raw = ftplan.estimate("8b", g, calibrate=False)
    measured = {**_figures(raw), "peak_reserved_bytes": raw.peak_reserved_bytes * 1.0,
                "device_bytes": raw.device_bytes + 0.2 * raw.overheads["cuda_context"],
                "tokens_per_s": raw.time.tokens_per_s * 0.5}
    calibration.record_trials(g, "cuda", raw.total_params, [(measured, _figures(raw))], source="8b study")
    raw70 = ftplan.estimate("70b", g, calibrate=False)
    est = ftplan.estimate("70b", g)
    cal = est.calibration
    assert cal.size_class == "1e11" and set(cal.factors) == {"cuda_context"}
    assert "1e10" in cal.applies_to["cuda_context"]  # applied across classes, and said so
    assert "tokens_per_s (1e10)" in cal.skipped and "1e10" in cal.summary
    assert est.time.tokens_per_s == raw70.time.tokens_per_s
    assert est.peak_allocated_bytes == raw70.peak_allocated_bytes


def test_other_library_versions_are_not_applied(store):
    calibration.record("rtx4090", [], [0.5], source="old stack", versions="torch=1.0 transformers=1.0",
                       total_params=ftplan.estimate("8b").total_params)
    assert ftplan.estimate("8b", "rtx4090").calibration is None
    data = json.loads(store.read_text())
    assert list(data["entries"]) == ["rtx4090|torch=1.0 transformers=1.0|cuda|1e10"]


def test_entries_of_older_versions_are_read_but_never_applied(store):
    """The old store format: one whole-peak ``memory`` ratio, no device kind, no model size."""
    versions = calibration.stack_versions()
    store.write_text(json.dumps({"entries": {f"rtx4090|{versions}": {
        "gpu": "rtx4090", "versions": versions, "factors": {"memory": 0.9, "tokens_per_s": 0.6}, "source": "old"}}}))
    raw = ftplan.estimate("8b", "rtx4090", calibrate=False)
    est = ftplan.estimate("8b", "rtx4090")
    assert (est.device_bytes, est.time.tokens_per_s) == (raw.device_bytes, raw.time.tokens_per_s)
    assert not est.calibration.applied and "memory (unknown)" in est.calibration.skipped


def test_unreadable_store_means_uncalibrated(store):
    store.write_text("{not json")
    assert ftplan.estimate("8b", "rtx4090").calibration is None


def test_no_ratio_records_nothing(store):
    assert calibration.record("rtx4090", [], [], source="x") is None
    assert calibration.record("rtx4090", [1.2], [], source="whole-peak CUDA ratio: not a term") is None
    assert not store.exists()


def test_to_dict_carries_what_was_applied(store):
    raw = ftplan.estimate("8b", "h100", calibrate=False)
    calibration.record_trials(get_gpu("h100"), "cuda", raw.total_params,
                              [({**_figures(raw), "tokens_per_s": raw.time.tokens_per_s * 0.9}, _figures(raw))],
                              source="s")
    d = json.loads(json.dumps(ftplan.estimate("8b", "h100", tokens=1e6).to_dict()))
    assert d["calibration"]["factors"]["tokens_per_s"] == pytest.approx(0.9)
    assert d["calibration"]["applies_to"]["tokens_per_s"].startswith("tokens/s")
    assert d["calibration"]["size_class"] == "1e10" and d["calibration"]["device"] == "cuda"


# --- the invariant, calibrated or not -------------------------------------------------------------

MODELS = [get_model(n) for n in ("smollm2-135m", "llama3.2-1b", "qwen2.5-0.5b", "gemma2-2b", "8b", "qwen3-30b-a3b")]
FORMATS = [("qlora", "nf4"), ("qlora", "fp4"), ("lora", "int8"), ("lora", "bf16"), ("full", "bf16")]
GPUS = [get_gpu(n) for n in ("cpu", "t4", "rtx4090", "a100-80gb", "h100")]
configs = st.builds(
    lambda fmt, mb, seq, ckpt, opt, loss: TrainConfig(method=fmt[0], quant=fmt[1], micro_batch=mb, seq_len=seq,
                                                      gradient_checkpointing=ckpt, optimizer=opt, loss_impl=loss),
    st.sampled_from(FORMATS), st.integers(1, 8), st.sampled_from([128, 512, 2048]), st.booleans(),
    st.sampled_from(["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"]),
    st.sampled_from(["standard", "chunked"]))
factor = st.floats(0.5, 2.0)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(MODELS), configs, st.sampled_from(GPUS),
       st.fixed_dictionaries({k: factor for k in NAMES}), factor, st.floats(0.0, 0.2))
def test_device_at_least_reserved_at_least_allocated_calibrated_or_not(model, cfg, gpu, factors, whole, margin):
    raw = build_estimate(model, cfg, gpu)
    assert _ordered(raw)
    versions = calibration.stack_versions()
    kind = "cpu" if gpu.key == "cpu" else "cuda"
    entries = {  # an older ftplan's whole-peak ratio, and arbitrary factors for this very model's class
        f"{gpu.key}|{versions}": {"gpu": gpu.key, "versions": versions, "source": "old",
                                  "factors": {"memory": whole, "tokens_per_s": factors["tokens_per_s"]}},
        f"{gpu.key}|{versions}|{kind}|x": {"gpu": gpu.key, "versions": versions, "device": kind,
                                           "size_class": f"1e{round(math.log10(raw.total_params))}",
                                           "factors": factors, "source": "arbitrary"}}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "cal.json")
        with open(path, "w") as f:
            json.dump({"entries": entries}, f)
        from pathlib import Path

        found = calibration.lookup(gpu.key, Path(path))
    assert found is not None
    est = calibration.apply(raw, found, margin)
    assert _ordered(est)
    assert sum(est.breakdown.values()) == est.peak_allocated_bytes
    assert est.device_bytes == est.peak_reserved_bytes + sum(v for k, v in est.overheads.items()
                                                             if k != "allocator_overhead")
    assert est.fits == (est.device_bytes <= gpu.usable_bytes * (1 - margin))
    cal = est.calibration
    assert cal is not None and set(cal.applies_to) == set(cal.factors) and "memory (unknown)" in cal.skipped
    if kind == "cpu":
        assert set(cal.factors) <= {"allocated"} and est.peak_reserved_bytes == est.peak_allocated_bytes


def test_a_plan_the_calibration_pushes_over_the_budget_is_not_offered(store):
    """plan() ranks with the raw model, then applies the stored factors: a plan they push over the budget
    is dropped (it used to be listed with fits=False), and the ranks stay 1..n."""
    g = get_gpu("rtx4090")
    spec = get_model("8b")
    calibration.record("rtx4090", (), (), source="study big", device="cuda",
                       total_params=ftplan.estimate(spec, g, calibrate=False).total_params, allocated=[1.15])
    raw = ftplan.plan(spec, g, calibrate=False)
    res = ftplan.plan_search(spec, g)
    assert any(not calibration.apply(p.estimate, calibration.lookup("rtx4090")).fits for p in raw)
    assert res.plans and all(p.estimate.fits for p in res.plans)
    assert [p.rank for p in res.plans] == list(range(1, len(res.plans) + 1))
    assert any("no longer fit once calibrated" in w for w in res.warnings)
