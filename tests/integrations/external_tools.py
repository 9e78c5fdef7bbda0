"""Axolotl and LLaMA-Factory in virtual environments of their own, for running ftplan's exports.

Neither can share the project's environment: Axolotl 0.19 pins transformers 5.16 and peft 0.20,
LLaMA-Factory 0.9.5 pins transformers <= 5.6, peft <= 0.18 and trl <= 0.24. Each gets a venv with the CPU
torch pinned (the same ``torch==2.13.0``), made once under ``FTPLAN_TOOLS_DIR`` (default
``~/.cache/ftplan/export-tools``) and reused; a venv is complete only once its ``ready`` file exists.

On the CPU: LLaMA-Factory pulls CUDA builds of torchvision and torchaudio, which cannot load beside a CPU
torch; they are removed, and an empty ``torchaudio`` package stands in for the one it imports at start
(it uses it for audio data only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TORCH_PIN = "torch==2.13.0"
TOOLS = {
    "axolotl": {"pins": ["axolotl==0.19.0"], "remove": [], "stub": None},
    "llamafactory": {"pins": ["llamafactory==0.9.5", "bitsandbytes==0.50.2"], "remove": ["torchvision", "torchaudio"],
                     "stub": "torchaudio"},
}


def tools_dir() -> Path:
    return Path(os.environ.get("FTPLAN_TOOLS_DIR") or Path.home() / ".cache" / "ftplan" / "export-tools")


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed (exit {r.returncode}); see {log}")


def tool_env(name: str) -> dict[str, str]:
    """{"python": the venv's python, "stubs": a folder for PYTHONPATH, "log": the install log}; made once."""
    spec = TOOLS[name]
    folder = tools_dir() / f"{name}-{spec['pins'][0].split('==')[1]}"
    py = folder / "bin" / "python"
    stubs = folder / "stubs"
    log = folder.parent / f"{folder.name}.log"
    if not (folder / "ready").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        _run([sys.executable, "-m", "venv", str(folder)], log)
        pin = folder / "torch-pin.txt"
        pin.write_text(TORCH_PIN + "\n")
        _run([str(py), "-m", "pip", "install", "-q", TORCH_PIN], log)
        _run([str(py), "-m", "pip", "install", "-q", "-c", str(pin), *spec["pins"]], log)
        if spec["remove"]:
            _run([str(py), "-m", "pip", "uninstall", "-q", "-y", *spec["remove"]], log)
        stubs.mkdir()
        if spec["stub"]:
            (stubs / spec["stub"]).mkdir()
            (stubs / spec["stub"] / "__init__.py").write_text('"""stands in for a CUDA-only build (see external_tools)."""\n')
        (folder / "ready").write_text("ok\n")
    return {"python": str(py), "stubs": str(stubs), "log": str(log)}
