"""Fixtures and helpers shared by the tests that run the training stack (train, tune, integrations)."""

import json

import pytest


@pytest.fixture(scope="session", autouse=True)
def _quiet():
    from ftplan.stack import quiet_stack

    with quiet_stack():
        yield


def write_jsonl(path, n: int = 48) -> str:
    """Small generated data: arithmetic in prompt/completion form (learnable, so the loss falls)."""
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Q: {i} plus {i}?", "completion": f" A: {2 * i}."}) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    from ftplan.measure.small_models import write_config

    return str(write_config("llama", tmp_path_factory.mktemp("arch")))


@pytest.fixture(scope="session")
def data_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl")


def best_doc(model: str, **knobs) -> dict:
    """A best.json document for a small QLoRA run on the CPU with synthetic weights."""
    base = {"method": "qlora", "quant": "nf4", "double_quant": True, "lora_rank": 8, "lora_alpha": 16,
            "lora_targets": ["all-linear"], "lora_dropout": 0.0, "micro_batch": 2, "seq_len": 32, "grad_accum": 2,
            "gradient_checkpointing": True, "optimizer": "adamw", "attention": "sdpa"}
    base.update(knobs)
    return {"format": "ftplan-best/1", "model": model, "synthetic_weights": True, "device": "cpu", "knobs": base}
