"""Provenance of a measurement: device, driver, library versions, date, command."""

from __future__ import annotations

import datetime as _dt
import platform
import shlex
import sys
from importlib import metadata


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "ftplan"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def device_info(device: str) -> dict[str, str | None]:
    if device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        driver = None
        try:
            import pynvml

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
            driver = driver.decode() if isinstance(driver, bytes) else driver
        except Exception:  # noqa: BLE001 - NVML is optional
            pass
        return {"device": "cuda", "device_name": props.name, "total_memory_bytes": str(props.total_memory),
                "compute_capability": f"{props.major}.{props.minor}", "driver": driver,
                "cuda": getattr(__import__("torch").version, "cuda", None)}
    return {"device": device, "device_name": platform.processor() or platform.machine(), "driver": None}


def provenance(device: str, argv: list[str] | None = None) -> dict:
    return {**device_info(device), "versions": versions(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(argv if argv is not None else ["ftplan", *sys.argv[1:]]),
            "platform": platform.platform()}
