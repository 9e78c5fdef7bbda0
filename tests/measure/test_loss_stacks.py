"""``benchmarks/loss_stacks_cpu.py`` on the installed transformers: the loss model against the tracker, with
the output dropped (HF Trainer) and kept (a custom loop), bf16 and fp32; and which loss each version ran."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from loss_stacks_cpu import stack_loss  # noqa: E402


def test_each_transformers_version_maps_to_its_loss():
    assert stack_loss("4.38.2") == stack_loss("4.45.2") == "legacy_upcast"
    assert stack_loss("4.46.0") == stack_loss("4.48.3") == "legacy_shift"
    assert stack_loss("4.49.0") == stack_loss("5.24.0") == "standard"


def test_the_installed_stack_is_predicted_within_3_percent(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "loss.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loss_stacks_cpu.py"), "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 8  # bf16/fp32 x dropped/kept x forward/backward
    for r in rows:
        assert abs(r["error"]) < 0.03, r
    kept = {r["phase"]: r["measured_bytes"] for r in rows if r["run"] == "bf16/kept"}
    dropped = {r["phase"]: r["measured_bytes"] for r in rows if r["run"] == "bf16/dropped"}
    # the kept output holds the bf16 logits (2 b s V) through backward, and only there
    n = 2 * 128 * 32_000
    assert kept["forward"] == dropped["forward"]
    assert abs(kept["backward"] - dropped["backward"] - 2 * n) < 0.01 * 2 * n
