"""Checkpoints that survive a kill: each is written into a temporary folder and renamed into place
(a rename is atomic), so a folder named ``step-NNNNNN`` is always complete. The last ``keep`` are kept.

A checkpoint holds the trainable parameters (the adapter, or every weight in full fine-tuning), the
optimizer and scheduler states, the step, the RNG states and a fingerprint of the configuration (a
resume with another configuration is refused).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import FtplanError

PREFIX = "step-"


def _dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:06d}"


def latest(root: Path) -> Path | None:
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").exists())
    return done[-1] if done else None


def trainable_state(model) -> dict[str, Any]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save(root: Path, step: int, model, optimizer, scheduler, state: dict[str, Any], keep: int = 2,
         full: tuple[dict, dict] | None = None) -> Path:
    """``full``: (trainable parameters, optimizer state) already gathered whole from an FSDP2 run
    (``dist.full_state``); the optimizer state is then keyed by parameter name (``state.json`` says
    ``"optimizer_format": "full"``)."""
    import torch

    if full is not None:
        state = {**state, "optimizer_format": "full"}

    def write(tmp: Path) -> None:
        torch.save(full[0] if full is not None else trainable_state(model), tmp / "trainable.pt")
        torch.save(full[1] if full is not None else optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))  # last: marks it complete
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())

    final = save_folder_atomic(_dir(root, step), write)
    for old in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in [*root.glob(".tmp-*"), *root.glob(".old-*")]:  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load(path: Path, model, optimizer, scheduler, fingerprint: str, load_full=None) -> dict[str, Any]:
    """Resume from ``path``. ``load_full(params, optimizer_state)`` puts a whole checkpoint into a sharded model
    (FSDP2: ``dist.load_full_state``); a checkpoint of a sharded run needs one, and the reverse."""
    import torch

    state = json.loads((path / "state.json").read_text())
    if state.get("fingerprint") != fingerprint:
        raise FtplanError(f"checkpoint {path} was written with another configuration or data; "
                          "resume with the same --config and --data, or use a new --output")
    params = _load(path / "trainable.pt")
    named = dict(model.named_parameters())
    missing = [n for n in params if n not in named]
    if missing:
        raise FtplanError(f"checkpoint {path} does not match the model (unknown parameter {missing[0]})")
    full = state.get("optimizer_format") == "full"
    if full != (load_full is not None):
        raise FtplanError(f"checkpoint {path} was written by a {'sharded (FSDP)' if full else 'DDP or one-process'} "
                          f"run; resume it with the same --gpus and sharding")
    if load_full is not None:
        load_full(params, _load(path / "optimizer.pt"))
    else:
        with torch.no_grad():
            for n, t in params.items():
                named[n].copy_(t.to(named[n].device))
        optimizer.load_state_dict(_load(path / "optimizer.pt"))
    scheduler.load_state_dict(_load(path / "scheduler.pt"))
    rng = _load(path / "rng.pt")
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state


def _load(file: Path) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors, numbers, strings and containers only, so a crafted
    checkpoint cannot run code when it is resumed; anything else is an FtplanError naming the file."""
    import pickle

    import torch

    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FtplanError(f"checkpoint file {file} cannot be loaded safely ({first[:200]}); it holds more than "
                          "tensors and plain values, or is damaged: resume from another checkpoint or start a "
                          "new --output") from None


def save_folder_atomic(dest: Path, write) -> Path:
    """Call ``write(tmp_folder)`` and rename the folder to ``dest`` (replacing an older one)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{dest.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
    except BaseException as e:  # a failed save (disk full, a kill's KeyboardInterrupt) leaves no partial folder
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            from ..atomic import write_error

            raise write_error(dest, e) from None
        raise
    old = dest.parent / f".old-{dest.name}-{os.getpid()}"
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return dest
