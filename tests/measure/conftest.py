import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="session", autouse=True)
def _quiet():
    from ftplan.stack import quiet_stack

    with quiet_stack():
        yield


@pytest.fixture(scope="session")
def archs(tmp_path_factory):
    from ftplan.measure.small_models import SMALL_CONFIGS, write_config

    root = tmp_path_factory.mktemp("archs")
    return {name: str(write_config(name, root)) for name in SMALL_CONFIGS}
