"""The GPU catalog: coverage, aliases, usable memory, user overrides, NVML detection."""

import json
import sys
import types

import pytest

from ftplan.errors import FtplanError, UnknownNameError
from ftplan.planner.types import MiB
from ftplan.profiles import gpus as gpumod
from ftplan.profiles.detect import detect_gpu, match_catalog
from ftplan.profiles.gpus import get_gpu, list_gpus, load_catalog


def test_catalog_spans_gtx1650_to_h200_and_b200():
    keys = {g.key for g in list_gpus()}
    assert len(keys) >= 35
    assert {"gtx1650", "rtx4090", "a100-80gb", "h100-sxm", "h200", "b200"} <= keys


@pytest.mark.parametrize("alias", ["4090", "rtx4090", "RTX 4090", "rtx-4090", "GeForce RTX 4090"])
def test_rtx4090_aliases(alias):
    assert get_gpu(alias).key == "rtx4090"


@pytest.mark.parametrize("alias", ["h100", "h100-sxm", "H100 SXM5 80GB"])
def test_h100_aliases(alias):
    assert get_gpu(alias).key == "h100-sxm"


def test_usable_memory_sources():
    # RTX 3090: torch total_memory read from deviceQuery (25,286,672,384 B)
    assert get_gpu("rtx3090").usable_bytes == 25_286_672_384
    # RTX 4090: nvidia-smi 24,564 MiB minus 600 MiB
    assert get_gpu("rtx4090").usable_bytes == (24_564 - 600) * MiB
    # GTX 1650: no nvidia-smi figure read: 4 GB marketing size, flagged as estimated
    g = get_gpu("gtx1650")
    assert g.usable_source.startswith("estimated") and g.usable_bytes == int(4e9 - 600 * MiB)


def test_unknown_figures_stay_unknown():
    g = get_gpu("rtx5090")
    assert g.bf16_tflops is None and g.price_per_hour is None
    assert get_gpu("gtx1650").bf16 is False


def test_unknown_gpu_suggests_close_names():
    with pytest.raises(UnknownNameError) as e:
        get_gpu("rtx4091")
    assert "rtx4090" in str(e.value)


def test_user_file_overrides_price_and_adds_a_gpu(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("key,price_per_hour,memory_gb,name\nrtx4090,0.35,,\nmy-card,1.0,40,My Card\n")
    cat = load_catalog(str(f))
    assert cat["rtx4090"].price_per_hour == 0.35 and cat["rtx4090"].price_date == "user file"
    assert cat["rtx4090"].bandwidth_gbs == 1008  # other columns kept
    assert cat["my-card"].usable_bytes == int(40e9 - 600 * MiB)
    assert get_gpu("My Card", str(f)).key == "my-card"


def test_user_file_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("key,price_per_hour\nrtx4090,-1\n")
    with pytest.raises(FtplanError, match="negative"):
        load_catalog(str(bad))
    cols = tmp_path / "cols.json"
    cols.write_text(json.dumps([{"key": "x", "colour": "red"}]))
    with pytest.raises(FtplanError, match="unknown column"):
        load_catalog(str(cols))
    with pytest.raises(FtplanError, match="does not exist"):
        load_catalog(str(tmp_path / "missing.csv"))


def _fake_pynvml(monkeypatch, name="NVIDIA GeForce RTX 4090", free=20 * 1024**3, fail=False):
    m = types.ModuleType("pynvml")

    def init():
        if fail:
            raise RuntimeError("NVML Shared Library Not Found")
    m.nvmlInit = init
    m.nvmlShutdown = lambda: None
    m.nvmlDeviceGetCount = lambda: 1
    m.nvmlDeviceGetHandleByIndex = lambda i: object()
    m.nvmlDeviceGetName = lambda h: name
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=24 * 1024**3, free=free, used=0)
    m.nvmlDeviceGetCudaComputeCapability = lambda h: (8, 9)
    monkeypatch.setitem(sys.modules, "pynvml", m)


def test_auto_uses_nvml_free_memory(monkeypatch):
    _fake_pynvml(monkeypatch)
    g = get_gpu("auto")
    assert g.key == "rtx4090" and g.usable_bytes == 20 * 1024**3 and "NVML" in g.usable_source


def test_auto_unknown_card_keeps_memory(monkeypatch):
    _fake_pynvml(monkeypatch, name="NVIDIA Mystery 9000")
    g = detect_gpu(gpumod.load_catalog())
    assert g.key == "auto" and g.bf16_tflops is None and g.usable_bytes == 20 * 1024**3


def test_auto_without_gpu_says_so(monkeypatch):
    _fake_pynvml(monkeypatch, fail=True)
    with pytest.raises(FtplanError, match="no NVIDIA GPU"):
        get_gpu("auto")


def test_nvml_names_match_catalog():
    assert match_catalog("NVIDIA H100 80GB HBM3", gpumod.load_catalog()).key in ("h100-sxm", "h100-pcie")
    assert match_catalog("NVIDIA A100-SXM4-80GB", gpumod.load_catalog()).key.startswith("a100")
    assert match_catalog("Tesla T4", gpumod.load_catalog()).key == "t4"


def test_data_file_is_packaged():
    assert gpumod.DATA.exists()


def test_one_schema_for_the_catalog_and_user_files(tmp_path):
    """The packaged CSV's header is the schema's column list, so every catalog column (tdp_w included)
    is also accepted in a user file."""
    import csv

    with gpumod.DATA.open(newline="") as fh:
        assert tuple(next(csv.reader(fh))) == gpumod.FIELDS
    f = tmp_path / "mine.csv"
    f.write_text(",".join(gpumod.FIELDS) + "\n" + "my-card,My Card,mc,ACME,Ada,8.9,40,,,900,100,100,50,yes,yes,no,"
                 "250-300,1.25,me,2026-11,my datasheet,\n")
    g = load_catalog(str(f))["my-card"]
    assert (g.tdp_w, g.bandwidth_gbs, g.bf16, g.nvlink, g.aliases) == (300.0, 900.0, True, False, ("mc",))
