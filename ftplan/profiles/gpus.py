"""The GPU catalog: ``data/gpus.csv`` (from the project's sourced reference table), user overrides,
and the budget a process can really use.

Usable memory (what ``device_bytes`` must fit in), in order of preference:
1. ``torch_total_memory_bytes`` (``cudaDeviceProp.totalGlobalMem``), where it was read;
2. nvidia-smi's total minus 600 MiB: CUDA reports a few hundred MiB less than nvidia-smi
   (RTX 3090: 24,115 vs 24,576 MiB; RTX 6000 Ada: 48,509 vs 49,140 MiB);
3. the marketing size read as binary (``N GB`` is ``N x 1024 MiB``: GDDR and HBM parts come in binary sizes;
   measured nvidia-smi totals: RTX 4090 "24 GB" 24,564 MiB, A100 "80 GB" 81,920 MiB), less 1/16 on cards
   that ship with ECC on GDDR memory (``gddr_ecc``: A10 23,028 MiB with ECC on vs 24,564 off; L40S 46,068
   of 49,152), as the nvidia-smi total, then minus 600 MiB as in 2; flagged as estimated. Reading the size
   as GB = 1e9 B (as before) put 18 cards ~7% low: a 4 GB GTX 1650 at 3.14 GiB usable instead of 3.41 GiB.
"""

from __future__ import annotations

import csv
import json
import math
import os
from functools import lru_cache
from pathlib import Path

from ..atomic import check_input
from ..errors import FtplanError, UnknownNameError
from ..planner.types import GPUSpec, MiB
from ._names import norm_name

DATA = Path(__file__).parent / "data" / "gpus.csv"
SMI_TO_CUDA_MIB = 600
ECC_KEEPS = 15 / 16  # GDDR with ECC on: one byte in 16 holds the check bits (A10: 23,028 of 24,564 MiB)
GPU_FILE_ENV = "FTPLAN_GPUS"
# The one definition of a GPU row, in the packaged CSV's column order (a test holds the file's header to
# it): column -> kind. number: a float >= 0 or empty (unknown); flag: yes/no; range: a number or "lo-hi"
# (the high end is used); text: free text (aliases: ';'-separated). User files take any of these columns.
COLUMNS: dict[str, str] = {
    "key": "text", "name": "text", "aliases": "text", "vendor": "text", "architecture": "text",
    "compute_capability": "number", "memory_gb": "number", "nvidia_smi_total_mib": "number",
    "torch_total_memory_bytes": "number", "bandwidth_gbs": "number", "bf16_tflops": "number",
    "fp16_tflops": "number", "fp32_tflops": "number", "bf16": "flag", "flash_attention_2": "flag", "nvlink": "flag",
    "gddr_ecc": "flag", "tdp_w": "range", "price_per_hour": "number", "price_provider": "text", "price_date": "text", "sources": "text",
    "notes": "text",
}
FIELDS = tuple(COLUMNS)
NUMERIC = tuple(k for k, kind in COLUMNS.items() if kind == "number")


def _num(row: dict, key: str, where: str) -> float | None:
    v = str(row.get(key) or "").strip()
    if not v:
        return None
    try:
        x = float(v)
    except ValueError:
        raise FtplanError(f"{where}: {key}={v!r} is not a number") from None
    if not math.isfinite(x):
        raise FtplanError(f"{where}: {key}={v!r} must be a finite number, or empty (unknown)")
    if x < 0:
        raise FtplanError(f"{where}: {key}={v} is negative; give a value >= 0 or leave it empty (unknown)")
    return x


def usable_bytes(row: dict) -> tuple[int, str]:
    """The budget of one process on this GPU, and where the figure came from (module docstring)."""
    where = f"GPU {row.get('key')}"
    torch_total = _num(row, "torch_total_memory_bytes", where)
    if torch_total:
        return int(torch_total), "torch total_memory"
    smi = _num(row, "nvidia_smi_total_mib", where)
    if smi:
        return int((smi - SMI_TO_CUDA_MIB) * MiB), "nvidia-smi total - 600 MiB"
    gb = _num(row, "memory_gb", where)
    if not gb:
        raise FtplanError(f"{where}: no memory size (memory_gb, nvidia_smi_total_mib or torch_total_memory_bytes)")
    smi_estimate = gb * 1024 * (ECC_KEEPS if _yes(row.get("gddr_ecc")) else 1.0)
    src = "estimated from the marketing size (binary GiB" + (", less ECC's 1/16)" if _yes(row.get("gddr_ecc")) else ")")
    return int((smi_estimate - SMI_TO_CUDA_MIB) * MiB), src


MIN_USABLE = 256 * MiB  # less than this left for a process is not a GPU one can train on


def _checked_usable(row: dict) -> tuple[int, str]:
    """``usable_bytes``, refused when what it leaves is below ``MIN_USABLE`` (a 0.3 GB row, once CUDA's
    600 MiB are taken, would be negative memory)."""
    usable, src = usable_bytes(row)
    if usable < MIN_USABLE:
        raise FtplanError(f"GPU {row.get('key')}: {usable / 2**30:.2f} GiB usable ({src}) is less than "
                          f"{MIN_USABLE // MiB} MiB; give the card's real size")
    return usable, src


def _yes(v: str | None) -> bool:
    return str(v or "").strip().lower() in ("yes", "true", "1", "y")


def _spec(row: dict) -> GPUSpec:
    where = f"GPU {row.get('key')}"
    usable, src = _checked_usable(row)
    return GPUSpec(
        key=row["key"], name=row.get("name") or row["key"], memory_gb=_num(row, "memory_gb", where) or usable / 1e9,
        usable_bytes=usable, usable_source=src, bandwidth_gbs=_num(row, "bandwidth_gbs", where),
        bf16_tflops=_num(row, "bf16_tflops", where), fp16_tflops=_num(row, "fp16_tflops", where),
        fp32_tflops=_num(row, "fp32_tflops", where), compute_capability=_num(row, "compute_capability", where),
        bf16=_yes(row.get("bf16")), flash_attention_2=_yes(row.get("flash_attention_2")),
        price_per_hour=_num(row, "price_per_hour", where), price_provider=row.get("price_provider") or "",
        price_date=row.get("price_date") or "",
        aliases=tuple(a for a in (row.get("aliases") or "").split(";") if a), nvlink=_yes(row.get("nvlink")),
        tdp_w=_num({"tdp_w": str(row.get("tdp_w") or "").split("-")[-1]}, "tdp_w", where),
        vendor=row.get("vendor") or "NVIDIA", sources=row.get("sources") or "", notes=row.get("notes") or "")


def _read_rows(path: Path) -> list[dict]:
    check_input(path, "GPU file")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            rows = data if isinstance(data, list) else data.get("gpus", []) if isinstance(data, dict) else None
            if not isinstance(rows, list):
                raise FtplanError(f"GPU file {str(path)!r}: expected a list of GPU objects, or {{\"gpus\": [...]}}")
        else:
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
    except FtplanError:
        raise
    except (OSError, ValueError, csv.Error) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise FtplanError(f"cannot read GPU file {str(path)!r}: {str(e)[:200]}") from None
    except RecursionError:
        raise FtplanError(f"cannot read GPU file {str(path)!r}: JSON nested too deeply") from None
    for i, r in enumerate(rows, start=2):
        if not isinstance(r, dict) or not str(r.get("key") or "").strip():
            raise FtplanError(f"GPU file {str(path)!r}: row {i} has no 'key'")
        unknown = set(r) - set(FIELDS)
        if unknown:
            raise FtplanError(f"GPU file {str(path)!r}: unknown column(s) {sorted(unknown)}; valid: {', '.join(FIELDS)}")
    return rows


@lru_cache(maxsize=8)
def load_catalog(extra: str | None = None) -> dict[str, GPUSpec]:
    """Built-in GPUs, then rows of ``extra`` (or ``$FTPLAN_GPUS``): a CSV/JSON with a ``key`` column and
    any of the other columns. A known key overrides only the columns given (e.g. a price); a new key adds
    a GPU (it then needs a memory size)."""
    with DATA.open(newline="") as fh:
        rows = {r["key"]: r for r in csv.DictReader(fh)}
    extra = extra or os.environ.get(GPU_FILE_ENV) or None
    if extra:
        for r in _read_rows(Path(extra)):
            key = str(r["key"]).strip()
            if not isinstance(r["key"], str):
                raise FtplanError(f"GPU file {extra!r}: key={r['key']!r} must be text (a name such as my-gpu)")
            given = {k: v for k, v in r.items() if v not in (None, "")}
            if key in rows:
                rows[key] = {**rows[key], **given}
            else:
                rows[key] = {"name": key, **given}
            if "price_per_hour" in given and "price_date" not in given:
                rows[key]["price_date"] = "user file"
                rows[key]["price_provider"] = given.get("price_provider", "user file")
    from .providers import with_providers
    from .rates import with_rates

    return with_providers(with_rates({k: _spec(r) for k, r in rows.items()}))


def cpu_spec() -> GPUSpec:
    """The CPU as a device: its RAM is the budget; no CUDA context, no allocator rounding."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 16 * 1024**3
    return GPUSpec(key="cpu", name="CPU (host memory)", memory_gb=ram / 1e9, usable_bytes=ram,
                   usable_source="physical RAM", bandwidth_gbs=None, bf16_tflops=None, fp16_tflops=None,
                   fp32_tflops=None, compute_capability=None, bf16=True, flash_attention_2=False,
                   price_per_hour=None)


def _index(catalog: dict[str, GPUSpec]) -> dict[str, str]:
    idx: dict[str, str] = {}
    for key, g in catalog.items():
        for n in (key, g.name, *g.aliases):
            idx.setdefault(norm_name(n), key)
    return idx


def get_gpu(name: str | GPUSpec, extra: str | None = None) -> GPUSpec:
    """A GPU by key, alias or name ('4090', 'rtx4090', 'RTX 4090', 'h100', 'h100-sxm'); 'cpu' for the
    host. ``auto`` is resolved by ``profiles.detect``."""
    if isinstance(name, GPUSpec):
        return name
    if norm_name(str(name)) == "cpu":
        return cpu_spec()
    if str(name).strip().lower() == "auto":
        from .detect import detect_gpu

        return detect_gpu(load_catalog(extra))
    catalog = load_catalog(extra)
    key = _index(catalog).get(norm_name(str(name)))
    if key is None:
        valid = list(catalog) + [a for g in catalog.values() for a in g.aliases]
        raise UnknownNameError("GPU", name, valid, "see `ftplan gpus`")
    return catalog[key]


def list_gpus(extra: str | None = None) -> list[GPUSpec]:
    return sorted(load_catalog(extra).values(), key=lambda g: (g.usable_bytes, g.key))
