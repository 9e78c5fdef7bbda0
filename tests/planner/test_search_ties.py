"""How the search breaks ties: when memory is not the constraint, the simpler and faster setup wins
(largest micro-batch, plain AdamW for a small optimizer state, no checkpointing), and the runner-ups are
distinct alternatives rather than NF4/FP4 twins."""

from dataclasses import replace

import ftplan
from ftplan.planner import search as S
from ftplan.planner.types import GiB, TrainConfig
from ftplan.profiles.gpus import get_gpu
from ftplan.profiles.models import get_model

H100 = get_gpu("h100")
LORA = TrainConfig(method="lora", quant="bf16", micro_batch=1, grad_accum=16, gradient_checkpointing=True,
                   optimizer="adamw_8bit")


def _key(cfg, device_bytes, small=True, tps=1000.0, best=None):
    return S.light_key("throughput", cfg, tps, device_bytes, H100, None, small, best)


def test_ties_go_to_the_larger_micro_batch_not_to_less_memory():
    one, four = LORA, replace(LORA, micro_batch=4, grad_accum=4)
    assert _key(four, 40 * GiB) < _key(one, 20 * GiB)


def test_ties_go_to_no_checkpointing_not_to_less_memory():
    off = replace(LORA, gradient_checkpointing=False)
    assert _key(off, 40 * GiB) < _key(LORA, 20 * GiB)


def test_ties_go_to_plain_adamw_only_when_the_state_is_small():
    plain = replace(LORA, optimizer="adamw")
    assert _key(plain, 21 * GiB, small=True) < _key(LORA, 20 * GiB, small=True)
    assert _key(LORA, 20 * GiB, small=False) < _key(plain, 21 * GiB, small=False)  # large state: memory decides
    assert S.optimizer_state_is_small(int(0.9 * GiB), None)
    assert not S.optimizer_state_is_small(2 * GiB, 20 * GiB)
    assert S.optimizer_state_is_small(2 * GiB, 75 * GiB)  # under 5% of the budget


def test_a_faster_bucket_still_wins_over_every_tie_break():
    slow_simple = replace(LORA, micro_batch=16, grad_accum=1, optimizer="adamw", gradient_checkpointing=False)
    assert _key(LORA, 50 * GiB, tps=1020.0, best=1020.0) < _key(slow_simple, 10 * GiB, tps=1000.0, best=1020.0)


def test_rates_within_the_tie_of_the_best_share_its_bucket():
    best = 14_889.0
    assert S._speed_bucket(best, best) == S._speed_bucket(best * 0.996, best) == 0
    assert S._speed_bucket(best * 0.99, best) > 0


def test_8b_on_an_h100_with_memory_to_spare():
    """Before: micro-batch 1 x 16 accumulation and 8-bit Adam for 0.08 GiB of optimizer state, 45 GiB free."""
    best = ftplan.plan("8b", "h100")[0]
    c = best.config
    assert c.micro_batch >= 2 and c.grad_accum <= 8
    assert c.optimizer == "adamw" and not c.gradient_checkpointing
    # nothing in its speed bucket that fits has a larger micro-batch with the same simple setup
    same = [p for p in ftplan.plan("8b", "h100", top=None) if p.estimate.time.tokens_per_s >= best.estimate.time.tokens_per_s
            * (1 - S.SPEED_TIE) and p.config.loss_impl == c.loss_impl and p.config.attention == c.attention]
    assert max(p.config.micro_batch for p in same) == c.micro_batch


def test_8b_on_an_rtx4090_keeps_plain_adamw_for_a_lora():
    c = ftplan.plan("8b", "rtx4090")[0].config
    assert c.optimizer == "adamw"


def test_full_fine_tuning_with_a_large_state_still_takes_8bit_adam():
    plans = ftplan.plan("1b", "rtx4090", method="full")
    assert plans and plans[0].config.optimizer != "adamw"


def _twins(plans):
    def sig(c):
        return (c.method, c.double_quant, c.micro_batch, c.gradient_checkpointing, c.optimizer, c.attention,
                c.loss_impl, c.lora_rank)
    seen = {}
    twins = 0
    for p in plans:
        s = sig(p.config)
        if s in seen and {seen[s], p.config.quant} == {"nf4", "fp4"}:
            twins += 1
        seen.setdefault(s, p.config.quant)
    return twins


def test_runner_ups_are_distinct_alternatives_not_nf4_fp4_twins():
    for gpu in ("h100", "rtx4090", "t4"):
        res = ftplan.plan_search("8b", gpu, top=6, diverse=True)
        assert res.plans and _twins(res.plans) == 0
        assert all(p.config.quant != "fp4" for p in res.plans)  # NF4 is the one kept (equal figures)


def test_fixed_quant_is_kept():
    plans = ftplan.plan_search("8b", "rtx4090", quant="fp4", top=6, diverse=True).plans
    assert plans and all(p.config.quant == "fp4" for p in plans)
    plans = ftplan.plan_search("8b", "rtx4090", quant="nf4", top=6, diverse=True).plans
    assert {p.config.double_quant for p in plans} == {True}  # double quant merged: the better one stays
    plans = ftplan.plan_search("8b", "rtx4090", quant="nf4", double_quant=False, top=6, diverse=True).plans
    assert plans and {p.config.double_quant for p in plans} == {False}


def test_without_a_speed_model_the_leanest_comes_first():
    """The CPU has no speed model: nothing says what is faster, so memory orders ties as before (the
    autotuner's CPU seeds rely on it)."""
    spec = get_model("smollm2-135m")
    plans = ftplan.plan(spec, "cpu", top=None)
    simple = [p for p in plans if p.config.loss_impl == "standard" and p.config.attention == "sdpa"]
    assert simple[0].estimate.device_bytes == min(p.estimate.device_bytes for p in simple)
