"""The ftplan command: output, JSON, exit codes (0 fits, 1 nothing fits, 2 bad input), catalogs."""

import json
import sys
import types

import pytest
from typer.testing import CliRunner

import ftplan
from ftplan.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def test_fit_prints_everything_the_user_needs():
    r = run("--model", "8b", "--gpu", "rtx4090")
    assert r.exit_code == 0, r.output
    out = r.output
    for needle in ("FITS", "Recommended configuration", "micro-batch", "checkpointing", "optimizer",
                   "Memory at the peak (phase:", "= device (nvidia-smi)", "tokens/s", "GPU-hours", "$",
                   "Runner-ups", "defaults:"):
        assert needle in out, needle


def test_json_matches_the_library():
    r = run("--model", "8b", "--gpu", "rtx4090", "--json", "--tokens", "20M")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    rec = doc["recommendation"]
    cfg = rec["config"]
    knobs = {k: cfg[k] for k in ("method", "quant", "double_quant", "lora_rank", "micro_batch", "seq_len",
                                  "grad_accum", "gradient_checkpointing", "optimizer", "attention", "loss_impl")}
    est = ftplan.estimate("8b", "rtx4090", tokens=20e6, lora_targets=cfg["lora_targets"], **knobs)
    assert rec["estimate"]["device_bytes"] == est.device_bytes
    assert rec["estimate"]["cost"]["tokens"] == 20e6
    assert doc["fits"] is True and doc["candidates"] >= doc["feasible"] > 0


def test_fixed_knobs_are_honoured():
    # knobs that fit a 4090 (checked: 8 of 8 candidates fit at 1,024 tokens without checkpointing), so the
    # test always reaches its assertions: every plan shown, not only the first, keeps every fixed knob
    r = run("-m", "8b", "-g", "4090", "--method", "qlora", "--no-grad-ckpt", "--micro-batch", "1",
            "--optimizer", "paged_adamw_8bit", "--rank", "64", "--targets", "q_proj,v_proj", "--seq-len", "1024",
            "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["fits"] is True
    plans = [doc["recommendation"], *doc["runner_ups"]]
    assert len(plans) >= 2
    for p in plans:
        cfg = p["config"]
        assert (cfg["method"], cfg["gradient_checkpointing"], cfg["micro_batch"], cfg["optimizer"]) == (
            "qlora", False, 1, "paged_adamw_8bit")
        assert (cfg["lora_rank"], cfg["lora_targets"], cfg["seq_len"]) == (64, ["q_proj", "v_proj"], 1024)


def test_nothing_fits_exits_1_and_names_a_gpu():
    r = run("--model", "70b", "--gpu", "rtx4090")
    assert r.exit_code == 1
    assert "DOES NOT FIT" in r.output and "smallest GPU that fits" in r.output
    doc = json.loads(run("--model", "70b", "--gpu", "rtx4090", "--json").stdout)
    assert doc["fits"] is False and doc["suggestion"]["smallest_gpu"]


@pytest.mark.parametrize("args,needle", [
    (("--model", "8b", "--gpu", "rtx4091"), "rtx4090"),
    (("--model", "nope-model", "--gpu", "rtx4090"), "unknown model"),
    (("--model", "8b", "--gpu", "rtx4090", "--rank", "0"), "lora_rank=0"),
    (("--model", "8b", "--gpu", "rtx4090", "--micro-batch", "-1"), "micro_batch=-1"),
    (("--model", "8b", "--gpu", "rtx4090", "--seq-len", "0"), "seq_len=0"),
    (("--model", "8b", "--gpu", "rtx4090", "--price", "-2"), "price=-2"),
    (("--model", "8b", "--gpu", "rtx4090", "--optimizer", "lion"), "unknown optimizer"),
    (("--model", "8b", "--gpu", "rtx4090", "--tokens", "lots"), "tokens='lots'"),
    (("--model", "8b", "--gpu", "rtx4090", "--targets", "qkv_proj"), "q_proj"),
    (("--model", "8b", "--gpu", "auto"), "no NVIDIA GPU"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, monkeypatch):
    nvml = types.ModuleType("pynvml")  # a machine without an NVIDIA driver

    def init():
        raise RuntimeError("NVML Shared Library Not Found")
    nvml.nvmlInit = init
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert "Traceback" not in r.output


def test_malformed_config_json(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"hidden_size": 10,')
    r = run("--model", str(p), "--gpu", "rtx4090")
    assert r.exit_code == 2 and "not valid JSON" in r.output


def test_missing_model_is_usage_error():
    r = run()
    assert r.exit_code == 2


def test_catalog_commands():
    g = run("gpus")
    assert g.exit_code == 0 and "rtx4090" in g.output and "h200" in g.output
    m = run("models")
    assert m.exit_code == 0 and "llama3.1-8b" in m.output and "meta-llama/Llama-3.1-8B" in m.output
    assert len(json.loads(run("gpus", "--json").stdout)) >= 35
    assert len(json.loads(run("models", "--json").stdout)) >= 40


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and ftplan.__version__ in r.output


def test_does_not_fit_names_the_budget_and_ways_out_that_fit():
    # was: "smallest GPU that fits it: t4" for the T4 itself, and no budget
    args = ("--model", "7b", "--gpu", "t4", "--method", "lora", "--seq-len", "512")
    r = run(*args)
    assert r.exit_code == 1, r.output
    out = r.output
    assert "budget checked: 13.69 GiB (14.41 GiB usable less the 5% margin" in out
    assert "not searched: the length is fixed (--seq-len 512)" in out
    assert "--method lora --quant int8 fits" in out
    assert "smallest GPU that fits: a4000" in out and "smallest GPU that fits: t4" not in out
    assert "not suggested: a single GPU fits" in out
    doc = json.loads(run(*args, "--json").stdout)
    s = doc["suggestion"]
    assert doc["fits"] is False and s["smallest_gpu"] == "a4000" and s["budget_bytes"] < s["lean_bytes"]
    for extra in (("--gpu", "a4000"), ("--quant", "int8")):
        assert run(*args, *extra).exit_code == 0, extra  # each way out fits with the same command


def test_no_fsdp_count_for_a_model_one_larger_gpu_fits():
    r = run("--model", "70b", "--gpu", "rtx4090")
    assert r.exit_code == 1
    assert "16 x rtx4090" not in r.output and "--gpus" not in r.output  # one H100 fits
    assert "smallest GPU that fits: h100-pcie" in r.output


def test_quality_defaults_header_omits_the_searched_rank():
    r = run("--model", "8b", "--gpu", "h100", "--objective", "quality", "--json")
    doc = json.loads(r.stdout)
    assert doc["recommendation"]["config"]["lora_rank"] != 16
    assert "lora_rank" not in doc["defaults_used"] and "lora_targets" not in doc["defaults_used"]
    header = run("--model", "8b", "--gpu", "h100", "--objective", "quality").output.splitlines()[1]
    assert "defaults:" in header and "lora_rank" not in header


def test_a_gpu_without_a_sourced_tensor_rate_shows_no_speed_and_says_what_ranked():
    """RTX 4070 Ti: no dense tensor figure was sourced. No made-up speed; the answer says the ranking
    used device memory instead (text and JSON)."""
    r = run("--model", "3b", "--gpu", "rtx4070ti")
    assert r.exit_code == 0
    assert "Speed: unknown; the throughput objective ranked by least device memory" in r.output
    doc = json.loads(run("--model", "3b", "--gpu", "rtx4070ti", "--json").stdout)
    assert doc["recommendation"]["estimate"]["time"] is None
    assert doc["ranked_by"].startswith("least device memory")
    assert json.loads(run("--model", "3b", "--gpu", "rtx4090", "--json").stdout)["ranked_by"].startswith("tokens/s")


def test_no_calibration_flag_gives_the_raw_model():
    """A factor stored for this GPU, stack and size class changes the answer and says so; --no-calibration
    gives the raw model back (the suite's private calibration store, see tests/conftest.py)."""
    from ftplan import calibration
    from ftplan.planner.arch import total_params
    from ftplan.profiles.models import get_model

    calibration.record("rtx4090", (), [0.8], source="test study", device="cuda",
                       total_params=total_params(get_model("8b")))
    try:
        cal = json.loads(run("-m", "8b", "-g", "4090", "--json").stdout)["recommendation"]["estimate"]
        raw = json.loads(run("-m", "8b", "-g", "4090", "--json", "--no-calibration").stdout)["recommendation"]["estimate"]
        assert raw["calibration"] is None and cal["calibration"] is not None
        assert cal["time"]["tokens_per_s"] < raw["time"]["tokens_per_s"]
        text = run("-m", "8b", "-g", "4090").output
        assert "Calibration: " in text and "--no-calibration" in text
        assert "Calibration: " not in run("-m", "8b", "-g", "4090", "--no-calibration").output
    finally:
        calibration.store_path().unlink()
