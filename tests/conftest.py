import pytest

from ftplan.planner.types import ModelSpec, TrainConfig


@pytest.fixture
def tiny() -> ModelSpec:
    """A small Llama-shaped model with numbers easy to compute by hand."""
    return ModelSpec(name="tiny", hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=16,
                     vocab=100, max_positions=512)


@pytest.fixture
def qlora_cfg() -> TrainConfig:
    return TrainConfig(method="qlora", quant="nf4", double_quant=True, lora_rank=4, micro_batch=1, seq_len=8,
                       grad_accum=1, gradient_checkpointing=False, optimizer="adamw", attention="sdpa")


@pytest.fixture(autouse=True, scope="session")
def _private_calibration_store(tmp_path_factory):
    """Tests never read or write the user's calibration store."""
    import os

    path = tmp_path_factory.mktemp("calibration") / "calibration.json"
    old = os.environ.get("FTPLAN_CALIBRATION")
    os.environ["FTPLAN_CALIBRATION"] = str(path)
    yield path
    if old is None:
        os.environ.pop("FTPLAN_CALIBRATION", None)
    else:
        os.environ["FTPLAN_CALIBRATION"] = old
