"""The GPU catalog: coverage, aliases, usable memory, user overrides, NVML detection."""

import json
import sys
import types

import pytest

import ftplan
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
    # GTX 1650: no nvidia-smi figure read: the 4 GB marketing size read as binary (4,096 MiB), flagged
    g = get_gpu("gtx1650")
    assert g.usable_source.startswith("estimated") and g.usable_bytes == (4_096 - 600) * MiB
    # L40: 48 GB GDDR6 with ECC on as shipped: 15/16 of 49,152 MiB (the L40S reads 46,068 MiB in nvidia-smi)
    assert get_gpu("l40").usable_bytes == (46_080 - 600) * MiB
    assert abs(get_gpu("l40").usable_bytes - get_gpu("l40s").usable_bytes) < 16 * MiB


def test_binary_reading_matches_every_measured_row():
    """Where the catalog has a measured nvidia-smi total, the binary reading of the marketing size (with
    ECC's 1/16 where flagged) lands within 3% of it; the decimal reading (GB = 1e9 B) was 7% low."""
    import csv

    with gpumod.DATA.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["nvidia_smi_total_mib"]]
    assert len(rows) >= 15
    for r in rows:
        estimated = dict(r, nvidia_smi_total_mib="", torch_total_memory_bytes="")
        est, _ = gpumod.usable_bytes(estimated)
        real = (float(r["nvidia_smi_total_mib"]) - gpumod.SMI_TO_CUDA_MIB) * MiB
        assert abs(est - real) / real < 0.03, (r["key"], est / MiB, real / MiB)


def test_llama_1b_fits_a_gtx1650():
    """The headline small card: with the binary reading the 1B model fits (it missed by 0.02 GiB)."""
    assert ftplan.plan("meta-llama/Llama-3.2-1B", "gtx1650")


def test_unknown_figures_stay_unknown():
    g = get_gpu("rtx4070ti")
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
    assert cat["my-card"].usable_bytes == (40 * 1024 - 600) * MiB
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
    row = {"key": "my-card", "name": "My Card", "aliases": "mc", "vendor": "ACME", "architecture": "Ada",
           "compute_capability": "8.9", "memory_gb": "40", "bandwidth_gbs": "900", "bf16_tflops": "100",
           "fp16_tflops": "100", "fp32_tflops": "50", "bf16": "yes", "flash_attention_2": "yes", "nvlink": "no",
           "gddr_ecc": "no", "tdp_w": "250-300", "price_per_hour": "1.25", "price_provider": "me",
           "price_date": "2026-11", "sources": "my datasheet"}
    assert set(row) <= set(gpumod.FIELDS)
    f.write_text(",".join(gpumod.FIELDS) + "\n" + ",".join(row.get(k, "") for k in gpumod.FIELDS) + "\n")
    g = load_catalog(str(f))["my-card"]
    assert (g.tdp_w, g.bandwidth_gbs, g.bf16, g.nvlink, g.aliases) == (300.0, 900.0, True, False, ("mc",))
