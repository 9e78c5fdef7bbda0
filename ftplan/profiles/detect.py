"""``--gpu auto``: the local NVIDIA GPU through NVML (nvidia-ml-py), with its real free memory.

The catalog is passed in (``profiles.gpus`` calls this module, never the reverse)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from ..errors import FtplanError
from ..planner.types import GPUSpec
from ._names import norm_name


def _nvml():
    try:
        import pynvml  # nvidia-ml-py
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise FtplanError(f"--gpu auto needs nvidia-ml-py ({e}); or name a GPU, e.g. --gpu rtx4090") from None
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded...
        raise FtplanError(f"--gpu auto: no NVIDIA GPU found on this machine (NVML: {e}); "
                          "name one instead, e.g. --gpu rtx4090 (see `ftplan gpus`)") from None
    return pynvml


def detect_gpu(catalog: Mapping[str, GPUSpec], index: int = 0) -> GPUSpec:
    """GPU ``index``: its ``catalog`` profile when the name matches, its free memory as the budget."""
    nv = _nvml()
    try:
        count = nv.nvmlDeviceGetCount()
        if count == 0 or index >= count:
            raise FtplanError(f"--gpu auto: NVML sees {count} GPU(s); none at index {index}")
        h = nv.nvmlDeviceGetHandleByIndex(index)
        name = nv.nvmlDeviceGetName(h)
        name = name.decode() if isinstance(name, bytes) else str(name)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        try:
            major, minor = nv.nvmlDeviceGetCudaComputeCapability(h)
            cc = float(f"{major}.{minor}")
        except Exception:
            cc = None
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:
            pass
    base = match_catalog(name, catalog)
    src = f"NVML free memory on {name} (total {mem.total / 1024**3:.1f} GiB)"
    if base is None:
        return GPUSpec(key="auto", name=name, memory_gb=mem.total / 1e9, usable_bytes=int(mem.free),
                       usable_source=src, bandwidth_gbs=None, bf16_tflops=None, fp16_tflops=None,
                       fp32_tflops=None, compute_capability=cc, bf16=(cc or 0) >= 8, flash_attention_2=(cc or 0) >= 8,
                       price_per_hour=None, notes="not in the catalog: speed and price unknown")
    return replace(base, usable_bytes=int(mem.free), usable_source=src)


def match_catalog(nvml_name: str, catalog: Mapping[str, GPUSpec]) -> GPUSpec | None:
    """Best ``catalog`` entry for an NVML name such as 'NVIDIA GeForce RTX 4090' or 'NVIDIA H100 80GB HBM3'."""
    target = norm_name(nvml_name.replace("NVIDIA", "").replace("GeForce", ""))
    best, best_len = None, 0
    for g in catalog.values():
        for n in (g.key, g.name, *g.aliases):
            k = norm_name(n.replace("GeForce", ""))
            if k and k in target and len(k) > best_len:
                best, best_len = g, len(k)
    return best
