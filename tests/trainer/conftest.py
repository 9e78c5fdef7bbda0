import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="session", autouse=True)
def _quiet():
    from ftplan.trainer import quiet

    quiet()


@pytest.fixture(scope="session")
def archs(tmp_path_factory):
    from ftplan.archs import SMALL_CONFIGS, write_config

    root = tmp_path_factory.mktemp("archs")
    return {name: str(write_config(name, root)) for name in SMALL_CONFIGS}
