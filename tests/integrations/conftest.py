import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

from tests.stack_fixtures import _quiet, data_file, tiny_llama  # noqa: E402,F401 - fixtures for this folder
