"""Hypothesis properties of the memory model and the search."""

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

import ftplan
from ftplan.planner.memory.params import base_linear_terms
from ftplan.planner.memory.phases import device_bytes_fast, memory_model
from ftplan.planner.memory.precision import precision
from ftplan.planner.types import TrainConfig
from ftplan.profiles.gpus import get_gpu
from ftplan.profiles.models import get_model

MODELS = [get_model(n) for n in ("smollm2-135m", "llama3.2-1b", "qwen2.5-0.5b", "gemma2-2b", "phi-3-mini",
                                 "phi-2", "qwen3-30b-a3b", "falcon-7b", "8b")]
FORMATS = [("qlora", "nf4"), ("qlora", "fp4"), ("lora", "int8"), ("lora", "bf16"), ("full", "bf16"), ("full", "fp32")]

configs = st.builds(
    lambda fmt, dq, rank, mb, seq, accum, ckpt, opt, attn, drop, loss, targets, held: TrainConfig(
        method=fmt[0], quant=fmt[1], double_quant=dq, lora_rank=rank, lora_targets=targets, micro_batch=mb,
        seq_len=seq, grad_accum=accum, gradient_checkpointing=ckpt, optimizer=opt, attention=attn,
        lora_dropout=drop, loss_impl=loss, output_held=held),
    st.sampled_from(FORMATS), st.booleans(), st.integers(1, 128), st.integers(1, 8), st.integers(16, 4096),
    st.integers(1, 8), st.booleans(),
    st.sampled_from(["adamw", "adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd",
                     "adafactor"]),
    st.sampled_from(["sdpa", "eager", "flash_attention_2"]), st.sampled_from([0.0, 0.05]),
    st.sampled_from(["standard", "chunked", "legacy_shift", "legacy_upcast"]),
    st.sampled_from([("all-linear",), ("attention",), ("mlp",)]), st.booleans())
models = st.sampled_from(MODELS)
gpus = st.sampled_from([None, get_gpu("cpu"), get_gpu("rtx4090"), get_gpu("h100")])


def peak(model, cfg, gpu=None):
    return memory_model(model, cfg, gpu).peak_allocated


@settings(max_examples=150, deadline=None)
@given(models, configs)
def test_monotone_in_micro_batch_sequence_and_rank(model, cfg):
    base = peak(model, cfg)
    assert peak(model, replace(cfg, micro_batch=cfg.micro_batch + 1)) >= base
    assert peak(model, replace(cfg, seq_len=cfg.seq_len + 64)) >= base
    if cfg.is_lora:
        # on the device: a larger rank can move a LoRA tensor's paged optimizer state (>= 1e5 elements)
        # out of the torch allocator, so allocated alone may drop while the card's total still grows
        before = memory_model(model, cfg, None).device_bytes
        assert memory_model(model, replace(cfg, lora_rank=cfg.lora_rank * 2), None).device_bytes >= before


@settings(max_examples=150, deadline=None)
@given(models, configs)
def test_checkpointing_never_raises_the_peak(model, cfg):
    on = memory_model(model, replace(cfg, gradient_checkpointing=True), None)
    off = memory_model(model, replace(cfg, gradient_checkpointing=False), None)
    # With accumulation (gradients live all through backward) checkpointing never raises the peak. Without
    # it, the very end of backward (all gradients, first layer) keeps one more tensor under checkpointing:
    # the first layer's checkpointed input (hb*E*h bytes); that bound holds always.
    layer_input = precision(cfg).hidden * cfg.micro_batch * cfg.seq_len * model.hidden
    assert on.peak_allocated <= off.peak_allocated + layer_input
    if cfg.grad_accum > 1:
        assert on.peak_allocated <= off.peak_allocated


@settings(max_examples=60, deadline=None)
@given(models, st.booleans())
def test_four_bit_below_eight_bit_below_sixteen_bit_weights(model, dq):
    def weights(quant):
        cfg = TrainConfig(method="qlora" if quant == "nf4" else "lora", quant=quant, double_quant=dq)
        return sum(base_linear_terms(model, cfg, precision(cfg)).values())
    assert weights("nf4") <= weights("int8") <= weights("bf16") <= weights("fp32")


@settings(max_examples=150, deadline=None)
@given(models, configs, gpus)
def test_fast_path_equals_full_model(model, cfg, gpu):
    full = memory_model(model, cfg, gpu)
    assert device_bytes_fast(model, cfg, gpu) == full.device_bytes
    assert sum(full.breakdown.values()) == full.peak_allocated
    assert full.peak_allocated <= full.peak_reserved <= full.device_bytes


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["smollm2-135m", "llama3.2-1b", "8b", "qwen2.5-7b", "gemma2-9b"]),
       st.sampled_from(["t4", "rtx3090", "rtx4090", "a100-40gb", "h100"]),
       st.sampled_from([8, 16, 24, 64]), st.sampled_from([512, 2048, 4096]),
       st.sampled_from(["throughput", "cost", "quality"]))
def test_every_plan_fits_with_the_exact_effective_batch(model, gpu, eff, seq, objective):
    g = get_gpu(gpu)
    plans = ftplan.plan(model, g, effective_batch=eff, seq_len=seq, objective=objective, top=40)
    for p in plans:
        assert p.estimate.fits
        assert p.estimate.device_bytes <= g.usable_bytes * 0.95
        assert p.config.effective_batch == eff
    ranks = [p.rank for p in plans]
    assert ranks == list(range(1, len(plans) + 1))


@settings(max_examples=80, deadline=None)
@given(models, configs, st.sampled_from(["t4", "rtx4090", "h100", "gtx1650", "b200"]), st.integers(1, 4))
def test_fast_tokens_per_s_equals_step_time(model, cfg, gpu, n_gpus):
    from dataclasses import replace as _r

    from ftplan.planner.estimate import optimizer_traffic_bytes
    from ftplan.planner.timing import step_time, tokens_per_s

    g = get_gpu(gpu)
    cfg = _r(cfg, num_gpus=n_gpus, sharding="fsdp" if n_gpus > 2 else ("ddp" if n_gpus > 1 else None))
    opt = optimizer_traffic_bytes(model, cfg)
    full = step_time(model, cfg, g, opt)
    fast = tokens_per_s(model, cfg, g, opt)
    assert (full is None) == (fast is None)
    if full is not None:
        assert fast == full.tokens_per_s > 0


def _device_of(gpu):
    return "none" if gpu is None else ("cpu" if gpu.key == "cpu" else "cuda")


@settings(max_examples=150, deadline=None)
@given(models, configs, st.sampled_from([get_gpu("cpu"), get_gpu("rtx4090"), get_gpu("h100"), get_gpu("t4")]),
       st.integers(1, 64), st.sampled_from([1, 2, 8]), st.sampled_from([None, "ddp", "fsdp"]))
def test_cache_keys_hold_every_knob_the_terms_read(model, cfg, gpu, alpha, gpus, sharding):
    """The cached terms are computed from a configuration rebuilt from its cache key; computed from the
    full configuration directly they must be identical, else a term reads a knob outside its key."""
    from ftplan.planner.memory.phases import cached_terms, dynamic_terms, static_terms

    cfg = replace(cfg, lora_alpha=alpha, num_gpus=gpus, sharding=sharding if gpus > 1 else None)
    device = _device_of(gpu)
    static, dynamic = cached_terms(model, cfg, gpu)
    assert static == static_terms(model, cfg, device, gpu.compute_capability)
    assert dynamic == dynamic_terms(model, cfg, "cpu" if device == "cpu" else "cuda")
