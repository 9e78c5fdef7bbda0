"""The calibration store: what autotune records, what estimate applies, and when it does not."""

import json

import pytest

import ftplan
from ftplan import calibration


@pytest.fixture
def store(tmp_path, monkeypatch):
    path = tmp_path / "cal.json"
    monkeypatch.setenv("FTPLAN_CALIBRATION", str(path))
    return path


def test_ratios_keep_plausible_pairs_only():
    assert calibration.ratios([(110, 100), (None, 5), (5, 0), (1000, 1), (50, 100)]) == [1.1, 0.5]


def test_record_then_estimate_applies_factors(store):
    raw = ftplan.estimate("8b", "rtx4090", calibrate=False)
    assert ftplan.estimate("8b", "rtx4090").calibration is None  # empty store: nothing applied
    calibration.record("rtx4090", [1.10, 1.20, 1.30], [0.5, 0.7], source="test study")
    est = ftplan.estimate("8b", "rtx4090")
    assert est.calibration is not None and est.calibration.factors == {"memory": 1.2, "tokens_per_s": 0.6}
    assert est.device_bytes == int(raw.device_bytes * 1.2)
    assert est.peak_reserved_bytes == int(raw.peak_reserved_bytes * 1.2)
    assert est.peak_allocated_bytes == raw.peak_allocated_bytes  # the model's own figure stays
    assert est.time.tokens_per_s == pytest.approx(raw.time.tokens_per_s * 0.6)
    assert est.time.calibrated
    assert ftplan.estimate("8b", "rtx4090", calibrate=False).calibration is None
    assert ftplan.estimate("8b", "a100-80gb").calibration is None  # another GPU: not applied
    assert ftplan.plan("8b", "rtx4090")[0].estimate.calibration is not None


def test_other_library_versions_are_not_applied(store):
    calibration.record("rtx4090", [1.5], [], source="old stack", versions="torch=1.0 transformers=1.0")
    assert ftplan.estimate("8b", "rtx4090").calibration is None
    data = json.loads(store.read_text())
    assert list(data["entries"]) == ["rtx4090|torch=1.0 transformers=1.0"]


def test_unreadable_store_means_uncalibrated(store):
    store.write_text("{not json")
    assert ftplan.estimate("8b", "rtx4090").calibration is None


def test_no_ratio_records_nothing(store):
    assert calibration.record("rtx4090", [], [], source="x") is None
    assert not store.exists()
