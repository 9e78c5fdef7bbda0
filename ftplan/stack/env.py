"""The stack's presence and the device (checked before anything heavy runs), and the provenance of a
measurement: device, driver, library versions, date, command."""

from __future__ import annotations

import datetime as _dt
import platform
import shlex
import sys
from importlib import metadata

from ..errors import FtplanError

OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory")


def require_stack() -> None:
    """Fail early, with the install command, when the training stack is missing."""
    missing = []
    for mod in ("torch", "transformers", "peft"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise FtplanError(f"this command needs {', '.join(missing)}: pip install 'ftplan[train]' "
                          "(CPU torch first: pip install torch --index-url https://download.pytorch.org/whl/cpu)")


DEVICES = ("auto", "cpu", "cuda")


def check_device_name(device: str | None) -> None:
    """``--device`` is auto, cpu or cuda (or unset): checked before torch is imported."""
    if device is not None and device not in DEVICES:
        raise FtplanError(f"--device {device!r} is not valid; use {', '.join(DEVICES)}")


def resolve_device(device: str | None) -> str:
    check_device_name(device)
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise FtplanError(f"--device {device!r} is not valid; use cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise FtplanError("--device cuda: no CUDA GPU is visible to torch (use --device cpu)")
    return device


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or any(t in str(exc).lower() for t in OOM_TEXT)


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
