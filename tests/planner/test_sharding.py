"""Per-rank terms of DDP and FSDP2 (``planner.memory.sharding``), hand-computed, and the knobs around them.

The hand-computed model is a layer-heavy Llama (``WIDE``): hidden 512, MLP 1,408, 8 heads of 64, 2 KV heads,
4 layers, vocabulary 1,024, untied. One layer's linears: q 512x512 + k 512x128 + v 512x128 + o 512x512 +
gate/up 2 x 512x1,408 + down 1,408x512 = 2,818,048 parameters; its two RMSNorms 1,024.
"""

from __future__ import annotations

import json

import pytest

import ftplan
from ftplan.errors import FtplanError
from ftplan.planner.memory import sharding as sh
from ftplan.planner.memory.precision import precision
from ftplan.planner.options import make_config
from ftplan.profiles.models import get_model

WIDE = {"model_type": "llama", "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4,
        "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1024, "max_position_embeddings": 4096,
        "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "architectures": ["LlamaForCausalLM"]}
LAYER_LINEAR = 2_818_048
LAYER_NORMS = 1_024


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    d = tmp_path_factory.mktemp("wide")
    (d / "config.json").write_text(json.dumps(WIDE))
    return str(d)


def _cfg(spec, **kn):
    return make_config(spec, None, **kn).config


def test_layer_param_counts(wide):
    assert sh.layer_param_counts(get_model(wide)) == (LAYER_LINEAR, LAYER_NORMS)


def test_shard_rounds_up():
    assert sh.shard(10, 4) == 3
    assert sh.shard(8, 4) == 2
    assert sh.shard(0, 8) == 0


def test_master_bytes_follow_accelerates_upcast(wide):
    spec = get_model(wide)
    full = _cfg(spec, method="full", quant="bf16", num_gpus=2, sharding="fsdp")
    assert sh.fsdp_master_bytes(full, precision(full)) == 4  # bf16 trainable parameters upcast to fp32
    pure = _cfg(spec, method="full", quant="bf16", num_gpus=2, sharding="fsdp", autocast=False)
    assert sh.fsdp_master_bytes(pure, precision(pure)) == 2  # no mixed precision: kept as loaded
    q = _cfg(spec, method="qlora", quant="nf4", num_gpus=2, sharding="fsdp")
    assert sh.fsdp_master_bytes(q, precision(q)) == 4  # LoRA adapters are fp32 already


def test_layer_gathered_bytes_full_and_lora(wide):
    spec = get_model(wide)
    full = _cfg(spec, method="full", quant="bf16", num_gpus=2, sharding="fsdp")
    # gathered in bf16 (MixedPrecisionPolicy param_dtype): (2,818,048 + 1,024) x 2 = 5,638,144 B, the size of
    # FSDP2's all-gather output measured on 2 CPU ranks
    assert sh.fsdp_layer_gathered_bytes(spec, full, precision(full), 0) == 5_638_144
    lora = _cfg(spec, method="lora", quant="bf16", num_gpus=2, sharding="fsdp")
    assert sh.fsdp_layer_gathered_bytes(spec, lora, precision(lora), 1000) == 5_638_144 + 2_000


def test_tail_and_embedding_units(wide):
    spec = get_model(wide)
    full = _cfg(spec, method="full", quant="bf16", num_gpus=2, sharding="fsdp")
    p = precision(full)
    assert sh.fsdp_tail_gathered_bytes(spec, full, p) == (512 + 1024 * 512) * 2  # final norm + lm_head, bf16
    assert sh.fsdp_embedding_gathered_bytes(spec, full, p) == 1024 * 512 * 2


def test_gathered_moments():
    g = sh.fsdp_gathered(L=10, T=3, E=2, R=4, G=5, grad_op=False, layers=6)
    assert g == sh.Gathered(forward_copy_out=30, forward_layer=20, loss=6, backward_start=3,
                            backward_layer=25, backward_end=6, held_reduce=4, layer_grads=5)
    assert sh.held_reduce_at_layer(g, layer_activations=1) == 3  # from the second layer on
    assert sh.held_reduce_at_layer(g, layer_activations=9) == 0
    op = sh.fsdp_gathered(L=10, T=3, E=2, R=4, G=5, grad_op=True, layers=6)
    assert op.forward_layer == 6 * 10 + 2 + 10  # every unit kept gathered, plus the held all-gather output
    assert op.backward_layer == 6 * 10 + 5


def test_per_rank_weights_and_state_are_sharded(wide):
    one = ftplan.estimate(wide, "cpu", calibrate=False, method="full", quant="bf16", optimizer="adamw_torch")
    two = ftplan.estimate(wide, "cpu", calibrate=False, method="full", quant="bf16", optimizer="adamw_torch",
                          num_gpus=2, sharding="fsdp")
    step1, step2 = one.phases["optimizer_step"], two.phases["optimizer_step"]
    # fp32 shards (x2 bytes) over 2 ranks (/2): the same bytes as the bf16 model on one device
    assert step2["weights_dense"] == step1["weights_dense"]
    # Adam's two fp32 states of half the parameters vs two bf16 states of all of them
    assert step2["optimizer_state"] == pytest.approx(step1["optimizer_state"], abs=8)


@pytest.mark.parametrize("model,method", [("8b", "qlora"), ("8b", "full"), ("70b", "lora"), ("70b", "qlora")])
def test_per_rank_memory_never_rises_with_more_ranks(model, method):
    quant = "nf4" if method == "qlora" else "bf16"
    last = None
    for n in (2, 4, 8, 16):
        e = ftplan.estimate(model, "h100", calibrate=False, method=method, quant=quant, num_gpus=n,
                            sharding="fsdp", micro_batch=1, grad_accum=1)
        if last is not None:
            assert e.peak_allocated_bytes <= last
        last = e.peak_allocated_bytes


def test_accumulation_holds_unsharded_gradients(wide):
    kn = dict(method="full", quant="bf16", optimizer="adamw_torch", num_gpus=4, sharding="fsdp", micro_batch=1)
    once = ftplan.estimate(wide, "cpu", calibrate=False, grad_accum=1, **kn)
    accum = ftplan.estimate(wide, "cpu", calibrate=False, grad_accum=2, **kn)
    trainable = once.trainable_params
    # between micro-batches every unit keeps its unsharded bf16 gradients (HF Trainer's no_sync)
    assert accum.phases["forward_end"]["gradients"] == trainable * 2
    assert "gradients" not in once.phases["forward_end"]


def test_offload_moves_state_to_the_host():
    kn = dict(method="qlora", num_gpus=2, sharding="fsdp", micro_batch=1, grad_accum=1)
    on = ftplan.estimate("70b", "rtx4090", calibrate=False, offload="params", **kn)
    off = ftplan.estimate("70b", "rtx4090", calibrate=False, **kn)
    assert on.device_bytes < off.device_bytes
    assert "weights_quantized" not in on.breakdown and "optimizer_state" not in on.breakdown
    per_rank = off.phases["optimizer_step"]["weights_quantized"]
    assert on.host_breakdown["offloaded_weights_quantized"] == 2 * per_rank  # two ranks on the node


def test_model_load_needs_host_memory_under_fsdp():
    e = ftplan.estimate("8b", "h100", calibrate=False, method="lora", quant="bf16", num_gpus=2, sharding="fsdp")
    assert set(e.host_breakdown) == {"model_load"}
    assert e.host_bytes > 15 * 2**30  # 8B parameters in bf16 on rank 0's host
    single = ftplan.estimate("8b", "h100", calibrate=False, method="lora", quant="bf16")
    assert single.host_bytes == 0 and single.host_fits is None


def test_host_ram_decides_the_fit():
    kn = dict(method="qlora", num_gpus=2, sharding="fsdp", offload="params", micro_batch=1, grad_accum=1)
    e = ftplan.estimate("70b", "rtx4090", calibrate=False, **kn)
    assert e.fits and e.host_fits is None
    small = ftplan.estimate("70b", "rtx4090", calibrate=False, host_ram="16GiB", **kn)
    assert small.host_fits is False and small.fits is False
    big = ftplan.estimate("70b", "rtx4090", calibrate=False, host_ram="512GiB", **kn)
    assert big.host_fits and big.fits
    plans = ftplan.plan("70b", "rtx4090", host_ram="16GiB", num_gpus=2, sharding="fsdp", offload="params",
                        calibrate=False)
    assert plans == []


@pytest.mark.parametrize("sharding,offload", [("ddp", "params"), ("fsdp", "optimizer"), (None, "params"),
                                              ("zero2", "params"), ("ddp", "optimizer")])
def test_impossible_offload_is_refused(sharding, offload):
    kn = {"num_gpus": 1} if sharding is None else {"num_gpus": 2, "sharding": sharding}
    with pytest.raises(FtplanError, match=f"--offload={offload} is not possible"):
        ftplan.estimate("8b", "h100", offload=offload, **kn)


def test_a_zero_plan_goes_to_the_trainers_that_run_deepspeed():
    from ftplan.planner.handoff import handoff_knobs

    with pytest.raises(FtplanError, match="ftplan train runs DDP and FSDP, not DeepSpeed"):
        handoff_knobs(get_model("8b"), "ftplan", {"sharding": "zero2", "num_gpus": 2})
    for target in ("hf", "trl", "axolotl", "llamafactory"):
        assert handoff_knobs(get_model("8b"), target, {"sharding": "zero2", "num_gpus": 2})[0]["sharding"] == "zero2"


def test_sharding_spellings():
    for alias, canon in (("full_shard", "fsdp"), ("FSDP2", "fsdp"), ("shard_grad_op", "fsdp_grad_op")):
        assert ftplan.estimate("8b", "h100", num_gpus=2, sharding=alias).config.sharding == canon
    assert ftplan.estimate("8b", "h100", num_gpus=2, sharding="ZeRO-3", method="lora").config.sharding == "zero3"
    with pytest.raises(FtplanError, match="unknown sharding 'zero9'; did you mean: zero3, zero2, zero1"):
        ftplan.estimate("8b", "h100", num_gpus=2, sharding="zero9")


def test_bitsandbytes_optimizers_are_not_planned_under_fsdp():
    """bitsandbytes' 8-bit step gets FSDP2's DTensor shards beside plain state tensors and refuses them."""
    with pytest.raises(FtplanError, match="bitsandbytes optimizers do not run on FSDP2"):
        ftplan.estimate("8b", "h100", num_gpus=2, sharding="fsdp", optimizer="paged_adamw_8bit")
    e = ftplan.estimate("8b", "h100", num_gpus=2, sharding="fsdp")
    assert e.config.optimizer == "adamw" and any("paged_adamw_8bit" in w for w in e.warnings)
    plans = ftplan.plan("70b", "rtx4090", num_gpus=4, calibrate=False)
    assert plans and all(p.config.optimizer not in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
                         for p in plans if p.config.sharding in ("fsdp", "fsdp_grad_op"))


def test_nodes_divide_the_host_memory_and_slow_the_collectives():
    kn = dict(method="qlora", num_gpus=8, sharding="fsdp", offload="params", micro_batch=1, grad_accum=1,
              calibrate=False)
    one = ftplan.estimate("70b", "h100", **kn)
    two = ftplan.estimate("70b", "h100", nodes=2, **kn)
    # the offloaded state of 4 ranks per server instead of 8; the model loaded once per server either way
    off1 = sum(v for k, v in one.host_breakdown.items() if k.startswith("offloaded_"))
    off2 = sum(v for k, v in two.host_breakdown.items() if k.startswith("offloaded_"))
    assert off2 * 2 == off1 and two.host_breakdown["model_load"] == one.host_breakdown["model_load"]
    assert two.device_bytes == one.device_bytes  # per GPU, nothing changes
    assert two.time.step_time_s >= one.time.step_time_s  # the network is slower than NVLink
    assert any("network between 2 servers" in n for n in two.time.notes)
    with pytest.raises(FtplanError, match="--nodes=3 does not divide --gpus=8"):
        ftplan.estimate("70b", "h100", num_gpus=8, nodes=3)


def test_the_gpu_count_cap_is_eight_per_server():
    s = ftplan.suggest("405b", "rtx4090", nodes=4, calibrate=False)
    assert s["max_gpus"] == 32
