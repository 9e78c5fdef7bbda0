"""Ranges on every time and cost (``planner.bands``): they contain the point figure, narrow once a measured
calibration applies, and hours and dollars move opposite to tokens/s."""

from __future__ import annotations

import pytest

import ftplan
from ftplan.planner import bands


def test_uncalibrated_band_contains_the_point_and_names_its_source():
    b = bands.uncalibrated()
    assert b.low <= 1.0 <= b.high
    est = ftplan.estimate("8b", "rtx4090", method="qlora", tokens=1e7, calibrate=False)
    t, c = est.time, est.cost
    assert t is not None and c is not None
    assert t.tokens_per_s_range[0] <= t.tokens_per_s <= t.tokens_per_s_range[1]
    assert c.hours_range[0] <= c.hours <= c.hours_range[1]
    assert c.dollars is not None and c.dollars_range is not None
    assert c.dollars_range[0] <= c.dollars <= c.dollars_range[1]
    # hours = tokens / tokens/s: the slow end of the speed is the long end of the hours
    assert c.hours_range[1] == pytest.approx(c.hours * t.tokens_per_s / t.tokens_per_s_range[0])
    assert t.range_basis == b.basis


def test_several_gpus_carry_their_own_band():
    one, many = bands.uncalibrated("single_gpu"), bands.uncalibrated("multi_gpu")
    assert "single-GPU" in one.basis and "multi-GPU" in many.basis
    est = ftplan.estimate("8b", "h100", method="lora", num_gpus=2, sharding="fsdp", tokens=1e7, calibrate=False)
    assert est.time is not None and est.time.range_basis == many.basis


def test_calibrated_band_is_narrower_and_keeps_a_floor():
    u = bands.uncalibrated()
    tight = bands.calibrated((0.99, 1.01))  # a study whose trials agreed within 1%
    assert tight.low == pytest.approx(max(1 - bands.CALIBRATED_FLOOR, u.low))
    assert tight.high == pytest.approx(min(1 + bands.CALIBRATED_FLOOR, u.high))
    wide = bands.calibrated((0.01, 100.0))  # never wider than the uncalibrated range
    assert (wide.low, wide.high) == (u.low, u.high)
    none = bands.calibrated(None)
    assert none.low <= 1.0 <= none.high and (none.high - none.low) <= (u.high - u.low)


def test_calibration_store_narrows_the_range(tmp_path, monkeypatch):
    from ftplan import calibration

    store = tmp_path / "cal.json"
    monkeypatch.setenv("FTPLAN_CALIBRATION", str(store))
    raw = ftplan.estimate("8b", "rtx4090", method="qlora", tokens=1e7, calibrate=False)
    assert raw.time is not None
    spec = ftplan.get_model("8b")
    total = raw.total_params
    pred = {"tokens_per_s": raw.time.tokens_per_s}
    trials = [({"tokens_per_s": raw.time.tokens_per_s * r}, pred) for r in (0.9, 0.92, 0.95)]
    calibration.record_trials("rtx4090", "cuda", total, trials, source="test study", path=store)
    cal = ftplan.estimate("8b", "rtx4090", method="qlora", tokens=1e7)
    assert cal.time is not None and cal.time.calibrated and spec.name
    lo, hi = cal.time.tokens_per_s_range
    raw_lo, raw_hi = raw.time.tokens_per_s_range
    assert lo <= cal.time.tokens_per_s <= hi
    assert (hi - lo) / cal.time.tokens_per_s < (raw_hi - raw_lo) / raw.time.tokens_per_s
    assert cal.time.range_basis.startswith("calibrated")


def test_band_file_matches_the_committed_benchmark_results():
    """The shipped band is what the committed run of benchmarks/published_speed.py measured (rerun it with
    --write-band after changing the model or the rows)."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    res = json.loads((root / "benchmarks" / "results" / "published_speed.json").read_text())
    band = json.loads(bands.BAND_FILE.read_text())
    plain = [r for r in res["rows"] if r["status"] == "ok" and not r["special"]]
    for kind, rows in (("single_gpu", [r for r in plain if r["gpus"] == 1]),
                       ("multi_gpu", [r for r in plain if r["gpus"] > 1])):
        ratios = sorted(r["ratio"] for r in rows)
        n = len(ratios)
        assert band[kind]["rows"] == n > 0
        assert band[kind]["p10"] == pytest.approx(ratios[int(round(0.1 * (n - 1)))])
        assert band[kind]["p90"] == pytest.approx(ratios[int(round(0.9 * (n - 1)))])


# --- memory: the device figure's range from the published runs (``bands.memory_band``) ----------------------

def test_memory_band_contains_the_point_and_names_its_runs():
    for kind, what, script in (("single_gpu", "single-GPU", "published.py"),
                               ("multi_gpu", "multi-GPU", "published_multi.py")):
        b = bands.memory_band(kind)
        assert b is not None and b.low <= 1.0 <= b.high
        assert what in b.basis and script in b.basis and "analytical" in b.basis
    one = ftplan.estimate("8b", "rtx4090", calibrate=False)
    lo, hi = one.device_bytes_range
    b = bands.memory_band("single_gpu")
    assert (lo, hi) == (int(one.device_bytes * b.low), int(one.device_bytes * b.high))
    assert one.memory_basis == b.basis
    many = ftplan.estimate("8b", "h100", method="lora", quant="bf16", num_gpus=2, sharding="fsdp", calibrate=False)
    assert many.memory_basis == bands.memory_band("multi_gpu").basis
    doc = one.to_dict()
    assert doc["device_bytes_range"] == [lo, hi] and doc["memory_basis"] == b.basis


def test_the_cpu_and_a_calibrated_figure_carry_no_published_range():
    from ftplan.calibration import adjusted

    cpu = ftplan.estimate("8b", "cpu", calibrate=False)
    assert cpu.device_bytes_range is None and "CPU" in cpu.memory_basis
    est = ftplan.estimate("8b", "rtx4090", calibrate=False)
    cal = adjusted(est, {"allocated": 1.05})
    assert cal.device_bytes_range is None and cal.memory_basis.startswith("calibrated: measured allocated")
    same = adjusted(est, {"tokens_per_s": 0.9})  # a speed factor leaves the memory figure's basis alone
    assert same.device_bytes_range == est.device_bytes_range


def test_the_fit_output_shows_the_range():
    from typer.testing import CliRunner

    from ftplan.cli import app

    r = CliRunner().invoke(app, ["--model", "8b", "--gpu", "rtx4090", "--no-calibration", "--json"])
    assert r.exit_code == 0, r.output
    import json

    est = json.loads(r.output)["recommendation"]["estimate"]
    lo, hi = est["device_bytes_range"]
    assert lo <= est["device_bytes"] <= hi
    r = CliRunner().invoke(app, ["--model", "8b", "--gpu", "rtx4090", "--no-calibration"])
    n = json.loads(bands.MEMORY_BAND_FILE.read_text())["single_gpu"]["rows"]
    assert f"  range {lo / 2**30:.2f}-{hi / 2**30:.2f} GiB: analytical; 10th-90th percentile" in r.output
    assert f"over {n} published single-GPU runs" in r.output


def test_the_band_writer_by_hand(tmp_path):
    import sys

    sys.path.insert(0, str(bands.BAND_FILE.parents[3] / "benchmarks"))
    from published import write_memory_band

    path = tmp_path / "band.json"
    # error = predicted/published - 1, so published/predicted = 1 / (1 + error)
    rows = [{"error": e} for e in (-0.2, 0.0, 0.25, -0.5, 0.0)]
    write_memory_band("multi_gpu", rows, "x.py", path)
    import json

    d = json.loads(path.read_text())["multi_gpu"]
    # ratios sorted: 0.8, 1.0, 1.0, 1.25, 2.0 -> 10th percentile index round(0.4) = 0, 90th round(3.6) = 4
    assert (d["p10"], d["p90"], d["rows"]) == (0.8, 2.0, 5)
    assert d["median_abs_error"] == 0.2
    write_memory_band("single_gpu", rows[:1], "y.py", path)  # the other kind's entry is kept
    both = json.loads(path.read_text())
    assert set(both) == {"multi_gpu", "single_gpu"} and both["single_gpu"]["rows"] == 1
