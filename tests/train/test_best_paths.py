"""best.json names its model folder from where the document lies: a hand-written document with a
relative ``model`` beside it works whatever folder ``ftplan train`` runs in; names that are no local
path (a catalog alias, a Hugging Face id) and absolute paths are left as written."""

import json
import subprocess
import sys

from ftplan.best import read_best
from tests.stack_fixtures import best_doc, write_jsonl


def _beside(tmp_path, model: str):
    from ftplan.measure.small_models import write_config

    folder = tmp_path / "other" / "dir"
    folder.mkdir(parents=True)
    write_config("llama", folder)
    path = folder / "best.json"
    path.write_text(json.dumps(best_doc(model)))
    return folder, path


def test_read_best_resolves_a_relative_model_against_the_documents_folder(tmp_path, monkeypatch):
    folder, path = _beside(tmp_path, "./llama")
    monkeypatch.chdir(tmp_path)
    assert read_best("other/dir/best.json")["model"] == str((folder / "llama").resolve())
    for name in ("8b", "meta-llama/Llama-3.1-8B", str(tmp_path / "elsewhere")):
        path.write_text(json.dumps(best_doc(name)))
        assert read_best(path)["model"] == name


def test_train_with_a_hand_written_document_from_another_folder(tmp_path):
    _, path = _beside(tmp_path, "llama")
    data = write_jsonl(tmp_path / "train.jsonl", 16)
    p = subprocess.run([sys.executable, "-m", "ftplan", "train", "--config", "other/dir/best.json", "--data", data,
                        "--max-steps", "2", "-o", "out", "-q"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert "trained 2 steps" in p.stdout
