"""fp16 compute on GPUs without bf16 (T4, V100, GTX 16xx, RTX 20xx): how a configuration resolves, what the
memory model adds for it (hand-computed on the small ``tiny`` model), and the command line's plan for the
4 GB GTX 1650."""

import json

import pytest
from typer.testing import CliRunner

from ftplan.cli import app
from ftplan.errors import FtplanError
from ftplan.planner.memory import optimizer as O
from ftplan.planner.memory import precision as P
from ftplan.planner.memory.phases import memory_model
from ftplan.planner.options import make_config
from ftplan.profiles.gpus import get_gpu

NO_BF16 = ("gtx1650", "t4", "v100", "rtx2080ti")


@pytest.mark.parametrize("gpu", NO_BF16)
def test_gpus_without_bf16_compute_in_fp16(tiny, gpu):
    g = get_gpu(gpu)
    assert g.bf16 is False
    qlora = make_config(tiny, g, method="qlora")
    assert qlora.config.quant == "nf4" and qlora.config.compute_dtype == "fp16" and P.loss_scaling(qlora.config)
    assert any("has no bf16" in w and "loss scaling" in w for w in qlora.warnings)
    lora = make_config(tiny, g, method="lora").config
    assert (lora.quant, lora.compute_dtype) == ("fp16", "fp16")
    asked = make_config(tiny, g, method="lora", quant="bf16", compute_dtype="bf16")
    assert (asked.config.quant, asked.config.compute_dtype) == ("fp16", "fp16")
    assert any("compute_dtype=bf16 replaced" in w for w in asked.warnings)
    full = make_config(tiny, g, method="full")
    # GradScaler refuses fp16 gradients: full fine-tuning keeps fp32 master weights under fp16 autocast
    assert (full.config.quant, full.config.compute_dtype) == ("fp32", "fp16")
    assert any("fp32 master weights" in w for w in full.warnings)


@pytest.mark.parametrize("gpu", ("rtx3090", "a100-80gb", "cpu", None))
def test_bf16_gpus_keep_bf16(tiny, gpu):
    g = get_gpu(gpu) if gpu else None
    for method in ("qlora", "lora", "full"):
        r = make_config(tiny, g, method=method, seq_len=256)
        assert r.config.compute_dtype == "bf16" and not P.loss_scaling(r.config) and not r.warnings
        assert r.config.quant in ("nf4", "bf16")


def test_fp16_asked_for_on_a_bf16_gpu(tiny):
    g = get_gpu("a100-80gb")
    by_base = make_config(tiny, g, method="lora", quant="fp16").config
    assert (by_base.quant, by_base.compute_dtype) == ("fp16", "fp16")
    by_knob = make_config(tiny, g, method="lora", compute_dtype="float16").config
    assert (by_knob.quant, by_knob.compute_dtype) == ("fp16", "fp16")
    assert make_config(tiny, g, method="qlora", compute_dtype="fp16").config.compute_dtype == "fp16"
    assert make_config(tiny, g, method="full", quant="fp16").config.quant == "fp32"
    assert not P.loss_scaling(make_config(tiny, g, method="lora", quant="fp16", autocast=False).config)
    with pytest.raises(FtplanError, match="compute_dtype=bf16 over an fp16 base"):
        make_config(tiny, g, method="lora", quant="fp16", compute_dtype="bf16")
    with pytest.raises(FtplanError, match="compute dtype"):
        make_config(tiny, g, compute_dtype="fp8")


@pytest.mark.parametrize("gpu", ("gtx1650", "t4", "rtx3090"))
@pytest.mark.parametrize("method", ("qlora", "lora", "full"))
def test_knobs_round_trip(tiny, gpu, method):
    """best.json carries ``compute_dtype``: the knobs rebuild the same configuration, with or without the GPU."""
    cfg = make_config(tiny, get_gpu(gpu), method=method).config
    assert make_config(tiny, get_gpu(gpu), **cfg.knobs()).config == cfg
    assert make_config(tiny, None, **cfg.knobs()).config == cfg


def test_scaler_tensor_sizes():
    # 0-d fp32/int32 tensors: 4 B of storage on the CPU, one 512 B block of the CUDA caching allocator
    assert O.scalar_tensor_bytes("cpu") == 4 and O.scalar_tensor_bytes("cuda") == O.scalar_tensor_bytes("none") == 512
    assert O.grad_scaler_state_bytes("cuda") == 2 * 512  # _scale + _growth_tracker
    assert O.grad_scaler_step_bytes("cuda") == 4 * 512  # (inv_)scale, found_inf and a per-device copy of each
    assert O.grad_scaler_state_bytes("cpu") == 8 and O.grad_scaler_step_bytes("cpu") == 16


def _pair(tiny, gpu, **knobs):
    bf = memory_model(tiny, make_config(tiny, gpu, compute_dtype="bf16", **knobs).config, gpu)
    fp = memory_model(tiny, make_config(tiny, gpu, compute_dtype="fp16", **knobs).config, gpu)
    return bf, fp


def _diff(a: dict, b: dict) -> dict:
    return {k: b.get(k, 0) - a.get(k, 0) for k in a.keys() | b.keys() if b.get(k, 0) != a.get(k, 0)}


@pytest.mark.parametrize("knobs", [dict(method="qlora", quant="nf4"), dict(method="lora", quant="bf16"),
                                   dict(method="lora", quant="int8")], ids=("qlora", "lora16", "lora8"))
@pytest.mark.parametrize("optimizer", ("adamw", "paged_adamw_8bit"))
def test_adapters_fp16_vs_bf16_is_the_scaler(tiny, knobs, optimizer):
    """LoRA/QLoRA: fp16 and bf16 are both 2 bytes (activations, autocast copies, dequantized weights, a 16-bit
    base) and the adapters stay fp32, so fp16 adds only GradScaler's tensors: 2 x 512 B resident (scale,
    growth tracker) and 4 x 512 B during the optimizer step (its inf/NaN check)."""
    gpu = get_gpu("rtx3090")
    bf, fp = _pair(tiny, gpu, micro_batch=1, seq_len=256, grad_accum=1, optimizer=optimizer, **knobs)
    assert _diff(bf.phases["forward_end"], fp.phases["forward_end"]) == {"grad_scaler": 1024}
    assert _diff(bf.phases["backward"], fp.phases["backward"]) == {"grad_scaler": 1024}
    assert _diff(bf.phases["optimizer_step"], fp.phases["optimizer_step"]) == {"grad_scaler": 1024,
                                                                                "optimizer_temp": 4 * 512}
    assert bf.peak_phase == fp.peak_phase != "optimizer_step"
    assert fp.peak_allocated - bf.peak_allocated == 1024
    assert fp.device_bytes - bf.device_bytes == 1024  # no transient changed: same allocator overhead


def test_scaler_on_the_cpu_and_without_autocast(tiny):
    cpu = get_gpu("cpu")
    bf, fp = _pair(tiny, cpu, method="lora", quant="bf16", micro_batch=1, seq_len=64, grad_accum=1, optimizer="adamw")
    assert _diff(bf.phases["optimizer_step"], fp.phases["optimizer_step"]) == {"grad_scaler": 8, "optimizer_temp": 16}
    bf, fp = _pair(tiny, get_gpu("rtx3090"), method="lora", quant="bf16", autocast=False, grad_accum=1)
    assert all(_diff(bf.phases[p], fp.phases[p]) == {} for p in bf.phases)  # no autocast: no scaler


def test_full_fp16_keeps_fp32_master_weights(tiny):
    """Full fine-tuning, fp16 compute vs bf16, resident terms by hand. ``tiny``: h=64, f=128, 2 layers, 4 heads
    and 2 kv heads of 16, vocab 100, untied.
    - layer linears per layer: q 64x64 + k 64x32 + v 64x32 + o 64x64 + gate, up 64x128 + down 128x64
      = 4096 + 2048 + 2048 + 4096 + 3 x 8192 = 36,864; x 2 layers = 73,728 weights;
    - embeddings 100x64 = 6,400, lm_head 6,400, RMSNorm weights (2 per layer + final) x 64 = 320: 13,120;
    - trainable: 73,728 + 13,120 = 86,848 parameters.
    bf16: 2 B weights, fused AdamW states 2 x 2 B. fp16 compute: fp32 master weights (4 B) and states
    (2 x 4 B), plus GradScaler's 2 x 512 B."""
    gpu = get_gpu("rtx3090")
    bf, fp = _pair(tiny, gpu, method="full", quant="bf16", micro_batch=1, seq_len=64, grad_accum=2, optimizer="adamw")
    assert fp.trainable_params == bf.trainable_params == 86_848
    d = _diff(bf.phases["forward_end"], fp.phases["forward_end"])
    assert d["weights_dense"] == 73_728 * (4 - 2)
    assert d["weights_unquantized"] == 13_120 * (4 - 2)
    assert d["optimizer_state"] == 86_848 * 2 * (4 - 2)
    assert d["gradients"] == 86_848 * (4 - 2)  # accumulation: last micro-batch's gradients are live
    assert d["grad_scaler"] == 1024
    # fp32 master weights are cast to fp16 by autocast (cached for the forward): 2 B per layer-linear weight,
    # and lm_head's fp16 copy for the head matmul
    assert d["autocast_weight_copies"] == 73_728 * 2 + 6_400 * 2
    # an fp32 model also carries an fp32 residual stream: its saved activations grow as well
    assert set(d) - {"weights_dense", "weights_unquantized", "optimizer_state", "gradients", "grad_scaler",
                     "autocast_weight_copies"} == {"activations", "forward_transient"}
    assert d["activations"] > 0 and d["forward_transient"] > 0


def _strings(x):
    """Every key and string value of a JSON document."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from _strings(v)
    elif isinstance(x, str):
        yield x


def test_gtx1650_command_line_recommends_fp16_and_no_bf16():
    """The headline case: Llama-3.2-1B on a 4 GB GTX 1650. Nothing in the document asks for bf16 (the only
    mention says the GPU has none); the recommendation and every runner-up compute in fp16 with loss scaling."""
    r = CliRunner().invoke(app, ["--model", "meta-llama/Llama-3.2-1B", "--gpu", "gtx1650", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    mentions = [s for s in _strings(doc) if "bf16" in s.lower() or "bfloat16" in s.lower()]
    assert mentions and all("has no bf16: fp16 compute" in s for s in mentions), mentions
    assert doc["fits"] is True
    for p in [doc["recommendation"], *doc["runner_ups"]]:
        for cfg in (p["config"], p["estimate"]["config"]):
            assert cfg["compute_dtype"] == "fp16" and cfg["autocast"] is True and cfg["quant"] != "bf16"
        assert p["estimate"]["breakdown"]["grad_scaler"] == 1024  # GradScaler's scale and growth tracker
        assert "fp16 autocast and dynamic loss scaling" in p["estimate"]["assumptions"][0]
