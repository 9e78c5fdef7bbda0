"""The prepared GPU check (``benchmarks/gpu_check.py``) cannot rot between GPU runs: its dry run walks every
stage on the CPU with the tiniest shapes, and its stage budgets fit the 8 minutes it promises."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_stage_budgets_add_up_to_eight_minutes():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    assert [s for s, _ in gpu_check.STAGES] == ["env", "rates", "accuracy", "fsdp", "autotune", "train"]
    assert sum(b for _, b in gpu_check.STAGES) <= gpu_check.TOTAL_BUDGET_S <= 8 * 60


def test_wheel_script_pins_what_ci_tests():
    """The wheels brought to the GPU machine are the versions constraints.txt pins (the tested ones)."""
    script = (ROOT / "benchmarks" / "gpu_wheels.sh").read_text()
    pins = {m.group(1).lower() for m in re.finditer(r'\$\(pin ([\w-]+)\)', script)}
    assert {"bitsandbytes", "optuna", "alembic", "sqlalchemy", "colorlog", "mako"} <= pins
    constraints = (ROOT / "constraints.txt").read_text().lower()
    for p in pins:
        assert re.search(rf"^{re.escape(p)}==", constraints, re.M), p


@pytest.mark.slow
def test_dry_run_walks_every_stage(tmp_path):
    out = tmp_path / "gc"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    assert {k: v["status"] for k, v in summary["stages"].items()} == {
        s: "ok" for s in ("env", "rates", "accuracy", "fsdp", "autotune", "train")}
    rates = json.loads((out / "rates.json").read_text())
    assert len(rates["matmul_bf16"]) >= 2 and all(r["tflops"] > 0 for r in rates["matmul_bf16"])
    acc = json.loads((out / "accuracy.json").read_text())
    assert acc["ran"] == acc["configurations"] >= 2 and all(r["status"] == "ok" for r in acc["rows"])
    fsdp = json.loads((out / "fsdp.json").read_text())
    m, pr = fsdp["measured"]["peak_allocated_bytes"], fsdp["predicted"]["peak_allocated_bytes"]
    assert m and abs(pr / m - 1) < 0.10  # the tiny FSDP2 rank, tracked on the CPU
    tune = json.loads((out / "autotune.json").read_text())
    assert tune["status"] == "ok" and tune["oom_trials"] == 1 and tune["complete_trials"] >= 1
    train = json.loads((out / "train.json").read_text())
    assert train["status"] == "ok" and train["steps"] == 3
    assert "stage     status" in p.stdout  # the summary table


def test_the_nccl_measurement_walks_its_flow_on_the_cpu(tmp_path):
    """``benchmarks/nccl_memory.py`` needs two GPUs to measure; its dry run (one gloo process) checks the flow
    and the document it writes, so the script cannot rot between multi-GPU runs."""
    out = tmp_path / "nccl.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "nccl_memory.py"), "--dry-run", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert doc["world_size"] == 1 and doc["prior_bytes"] == 0 and doc["ranks"][0]["nccl_bytes"] is None
    assert set(doc["ranks"][0]["points_outside_allocator"]) == {"before_init", "after_init", "after_all_reduce",
                                                                 "after_all_gather", "after_reduce_scatter",
                                                                 "after_barrier"}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "nccl_memory.py")], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "needs CUDA GPUs and torchrun" in p.stderr
