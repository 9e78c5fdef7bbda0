import os
import sys

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


# --- tiers and CI -------------------------------------------------------------------------------
# The heavy tier: the folders that run the training stack (torch, transformers, peft, bitsandbytes:
# real steps, kills and resumes, autotune end to end) and any test marked ``slow``. ``--fast`` runs
# the rest in seconds: the heavy folders are not even collected (collecting them imports torch).
HEAVY_DIRS = ("measure", "train", "tune", "integrations")
TESTS = __import__("pathlib").Path(__file__).resolve().parent


def pytest_addoption(parser):
    parser.addoption("--fast", action="store_true", help="the fast tier: skip the heavy folders and slow tests")


def pytest_ignore_collect(collection_path, config):
    if config.getoption("--fast"):
        rel = collection_path.resolve().relative_to(TESTS) if collection_path.resolve().is_relative_to(TESTS) else None
        if rel is not None and rel.parts and rel.parts[0] in HEAVY_DIRS:
            return True
    return None


def pytest_collection_modifyitems(config, items):
    heavy = pytest.mark.slow
    for item in items:
        rel = item.path.resolve().relative_to(TESTS) if item.path.resolve().is_relative_to(TESTS) else None
        if rel is not None and rel.parts and rel.parts[0] in HEAVY_DIRS:
            item.add_marker(heavy)
    if config.getoption("--fast"):
        kept = [i for i in items if i.get_closest_marker("slow") is None]
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("slow") is not None])
        items[:] = kept


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """In CI (``CI=true``) a skipped test fails the run: a missing service (PostgreSQL, Chromium) or a
    missing training stack would otherwise pass unseen. Locally a skip stays a skip, with its reason."""
    if not in_ci():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        lines = []
        for rep in skipped:
            reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
            lines.append(f"  {rep.nodeid}: {reason}")
        sys.stderr.write(f"\nCI=true: {len(skipped)} test(s) or module(s) skipped; in CI everything must run:\n"
                         + "\n".join(lines) + "\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
