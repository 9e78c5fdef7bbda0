"""Plans per hand-off target (``planner.handoff``): each trainer's k-bit preparation and chunked-loss switch,
and the fit's answer saying which was assumed."""

import json
import subprocess
import sys

import pytest

import ftplan
from ftplan.errors import FtplanError
from ftplan.fit import run_fit
from ftplan.fit.text import fit_json, fit_text
from ftplan.planner.handoff import HANDOFFS, get_handoff, handoff_knobs
from ftplan.profiles.models import get_model

GiB = 2**30


def test_names_and_aliases():
    assert get_handoff("LLaMA-Factory").key == "llamafactory" and get_handoff("transformers").key == "hf"
    with pytest.raises(FtplanError, match="unknown hand-off target .deepspeed-chat.; valid: axolotl, ftplan, hf, llamafactory, trl"):
        get_handoff("deepspeed-chat")


@pytest.mark.parametrize("target,prepare", [("ftplan", True), ("hf", True), ("trl", False), ("axolotl", False),
                                            ("llamafactory", False)])
def test_each_target_sets_its_kbit_preparation(target, prepare):
    knobs, note = handoff_knobs(get_model("8b"), target, {"seq_len": 1024})
    assert knobs == {"seq_len": 1024, "prepare_kbit": prepare}  # the loss stays searched: Liger covers Llama
    assert note.startswith(HANDOFFS[target].name)


def test_a_knob_the_target_cannot_build_is_refused():
    with pytest.raises(FtplanError, match="prepare_kbit=True is not what TRL"):
        handoff_knobs(get_model("8b"), "trl", {"prepare_kbit": True})
    with pytest.raises(FtplanError, match="Liger.*phi-2.*--for ftplan"):
        handoff_knobs(get_model("phi-2"), "axolotl", {"loss_impl": "chunked"})


def test_no_liger_kernel_means_the_standard_loss_and_the_answer_says_so():
    knobs, note = handoff_knobs(get_model("phi-2"), "llamafactory", {})
    assert knobs["loss_impl"] == "standard" and "standard loss only" in note and "phi family" in note
    # ftplan train runs its own chunked loss for any causal LM: still searched
    assert "loss_impl" not in handoff_knobs(get_model("phi-2"), "ftplan", {})[0]
    plans = ftplan.plan("phi-2", "rtx4090", handoff="axolotl", top=20)
    assert plans and {p.config.loss_impl for p in plans} == {"standard"}


def test_the_kbit_preparation_changes_the_unquantized_weights_by_the_hand_computed_bytes():
    # Llama 3.1 8B: untied embeddings and lm_head, 128256 x 4096 each, plus 65 RMSNorm weights of 4096:
    # fp32 after peft's preparation (ftplan train), bf16 in TRL (no preparation): 2 bytes apart per parameter
    n = 2 * 128256 * 4096 + 65 * 4096
    own = ftplan.estimate("8b", "rtx4090", method="qlora", handoff="ftplan", calibrate=False)
    trl = ftplan.estimate("8b", "rtx4090", method="qlora", handoff="trl", calibrate=False)
    assert own.breakdown["weights_unquantized"] == 4 * n
    assert trl.breakdown["weights_unquantized"] == 2 * n
    assert trl.device_bytes < own.device_bytes


def test_fit_names_the_target_in_text_and_json():
    r = run_fit("8b", "rtx4080", seq_len=1024, handoff="trl")
    assert r.plans and all(not p.config.prepare_kbit for p in r.plans)
    assert "Hand-off: TRL SFTTrainer (>= 0.26): no k-bit preparation" in fit_text(r)
    doc = fit_json(r)["handoff"]
    assert doc["target"] == "trl" and "no k-bit preparation" in doc["assumed"]
    # the default is ftplan train, and the answer says so too
    assert "Hand-off: ftplan train" in fit_text(run_fit("8b", "rtx4080", seq_len=1024))


def test_cli_for_option():
    r = subprocess.run([sys.executable, "-m", "ftplan", "-m", "8b", "-g", "rtx4080", "--for", "axolotl", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["handoff"]["target"] == "axolotl"
    r = subprocess.run([sys.executable, "-m", "ftplan", "-m", "8b", "-g", "rtx4080", "--for", "megatron"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "megatron" in r.stderr and "llamafactory" in r.stderr and "Traceback" not in r.stderr
