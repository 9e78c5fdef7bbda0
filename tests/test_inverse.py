"""The inverse questions (``ftplan.inverse``): each answer fits and one step beyond it does not, by the same
search the fit command runs; the CLI's tables and exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import ftplan
from ftplan.cli import app
from ftplan.inverse import MAX_BATCH, SEQ_STEP, batch_table, context_table


def _fits(model, gpu, **kn) -> bool:
    return bool(ftplan.plan(model, gpu, top=1, **kn))


@pytest.mark.parametrize("method,gc", [("qlora", True), ("lora", True), ("qlora", False)])
def test_longest_sequence_fits_and_one_step_more_does_not(method, gc):
    lim = ftplan.max_seq_len("8b", "rtx4090", method=method, gradient_checkpointing=gc)
    assert lim.value is not None and lim.value % SEQ_STEP == 0 and not lim.at_limit
    kn = dict(method=method, gradient_checkpointing=gc, micro_batch=1)
    assert _fits("8b", "rtx4090", seq_len=lim.value, **kn)
    assert not _fits("8b", "rtx4090", seq_len=lim.value + SEQ_STEP, **kn)
    assert lim.plan is not None and lim.plan.config.seq_len == lim.value and lim.plan.estimate.fits


def test_checkpointing_lets_longer_sequences_fit():
    rows = {(r.method, r.gradient_checkpointing): r.value for r in context_table("8b", "rtx4090")}
    assert rows[("qlora", True)] > rows[("qlora", False)] and rows[("lora", True)] > rows[("lora", False)]
    assert rows[("qlora", True)] > rows[("lora", True)]  # 4-bit weights leave room for activations
    assert rows[("full", True)] is None  # 8B full fine-tuning does not fit a 24 GB card at any length


def test_the_model_context_limit_caps_the_answer():
    spec = ftplan.get_model("1b")
    lim = ftplan.max_seq_len("1b", "h200", method="qlora", gradient_checkpointing=True)
    assert lim.at_limit and lim.value == (spec.max_positions // SEQ_STEP) * SEQ_STEP


def test_largest_micro_batch_fits_and_one_more_does_not():
    lim = ftplan.max_batch("8b", "a100-80gb", method="qlora", gradient_checkpointing=True, seq_len=2048)
    assert lim.value is not None and 1 <= lim.value < MAX_BATCH
    kn = dict(method="qlora", gradient_checkpointing=True, seq_len=2048, grad_accum=1)
    assert _fits("8b", "a100-80gb", micro_batch=lim.value, **kn)
    assert not _fits("8b", "a100-80gb", micro_batch=lim.value + 1, **kn)
    rows = batch_table("8b", "a100-80gb", seq_len=2048, method="qlora")
    assert [(r.method, r.gradient_checkpointing) for r in rows] == [("qlora", True), ("qlora", False)]


def test_cli_tables_and_exit_codes():
    r = CliRunner().invoke(app, ["--model", "8b", "--gpu", "rtx4090", "--max-seq-len"])
    assert r.exit_code == 0, r.output
    assert "longest" in r.output and "qlora" in r.output and "does not fit even at 128 tokens" in r.output
    r = CliRunner().invoke(app, ["--model", "8b", "--gpu", "rtx4090", "--max-batch", "--seq-len", "1024", "--json"])
    doc = json.loads(r.output)
    assert r.exit_code == 0 and doc["question"] == "max_batch" and len(doc["rows"]) == 6
    r = CliRunner().invoke(app, ["--model", "405b", "--gpu", "gtx1650", "--max-seq-len"])
    assert r.exit_code == 1  # nothing fits at all
    r = CliRunner().invoke(app, ["--model", "8b", "--gpu", "rtx4090", "--max-seq-len", "--seq-len", "2048"])
    assert r.exit_code == 2 and "drop --seq-len" in r.output
