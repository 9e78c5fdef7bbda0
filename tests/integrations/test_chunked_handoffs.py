"""A plan with ``loss_impl="chunked"`` reaches every hand-off as Liger's fused linear cross-entropy, in each
tool's own switch; without liger-kernel the HF hand-off says so instead of running the standard loss."""

import pytest
import yaml

import ftplan
from ftplan.errors import FtplanError
from ftplan.integrations import exports, hf
from tests.stack_fixtures import best_doc


def _fake_liger(tmp_path, monkeypatch):
    (tmp_path / "liger_kernel").mkdir()
    (tmp_path / "liger_kernel" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_training_arguments_turn_on_liger_flce_only(tiny_llama, tmp_path, monkeypatch):
    est = ftplan.estimate(tiny_llama, loss_impl="chunked")
    _fake_liger(tmp_path, monkeypatch)
    args = hf.training_arguments(est, str(tmp_path / "out"), use_cpu=True)
    assert args.use_liger_kernel is True
    assert args.liger_kernel_config["fused_linear_cross_entropy"] is True
    assert not any(v for k, v in args.liger_kernel_config.items() if k != "fused_linear_cross_entropy")
    assert hf.compute_loss_func(est) is None  # the Trainer's own loss path, which Liger patches
    std = hf.training_arguments(ftplan.estimate(tiny_llama), str(tmp_path / "out"), use_cpu=True)
    assert std.use_liger_kernel is False


def test_without_liger_the_hf_handoff_refuses(tiny_llama, tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is not None:
        pytest.skip("liger-kernel is installed here")
    est = ftplan.estimate(tiny_llama, loss_impl="chunked")
    with pytest.raises(FtplanError, match="pip install liger-kernel"):
        hf.training_arguments(est, str(tmp_path / "out"), use_cpu=True)
    with pytest.raises(FtplanError, match="liger-kernel"):
        hf.compute_loss_func(est)
    assert hf.compute_loss_func(ftplan.estimate(tiny_llama)) is None


def test_exports_write_each_tools_liger_switch(tiny_llama):
    doc = best_doc(tiny_llama, loss_impl="chunked")
    ax = yaml.safe_load(exports.axolotl(doc))
    assert ax["plugins"] == ["axolotl.integrations.liger.LigerPlugin"]
    assert ax["liger_fused_linear_cross_entropy"] is True
    lf = yaml.safe_load(exports.llamafactory(doc))
    assert lf["enable_liger_kernel"] is True
    trl = exports.trl(doc)
    assert "use_liger_kernel=True" in trl and "'fused_linear_cross_entropy': True" in trl
    compile(trl, "trl_sft.py", "exec")
    std = best_doc(tiny_llama, loss_impl="standard")
    assert "liger" not in exports.axolotl(std) + exports.llamafactory(std) + exports.trl(std)


def test_a_model_liger_does_not_cover_gets_no_chunked_handoff(tmp_path, monkeypatch):
    # Phi-2: a chunked plan (ftplan train runs its own) cannot go to HF Trainer or the exports' Liger
    # switch; the exports are not written, with why, and the HF helper refuses
    plan = ftplan.plan("phi-2", "rtx4070ti", top=1, loss_impl="chunked")[0]
    doc = {"model": "phi-2", "knobs": plan.config.knobs()}
    files = exports.write_all(tmp_path, doc)
    assert set(files) == {"best", "axolotl_not_written", "llamafactory_not_written", "trl_not_written"}
    assert "no kernel for phi-2" in files["trl_not_written"] and "--for trl" in files["trl_not_written"]
    _fake_liger(tmp_path, monkeypatch)
    with pytest.raises(FtplanError, match="no kernel for phi-2"):
        hf.training_arguments(doc, str(tmp_path / "out"), use_cpu=True)
    # planned for the trainer: the standard loss, and every export is written
    std = ftplan.plan("phi-2", "rtx4070ti", top=1, handoff="trl")[0]
    assert std.config.loss_impl == "standard"
    assert {"axolotl", "llamafactory", "trl"} <= set(exports.write_all(tmp_path, {"model": "phi-2", "knobs": std.config.knobs()}))
