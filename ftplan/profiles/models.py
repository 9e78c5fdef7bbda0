"""The model catalog (``data/models.json``: config facts, no weights) and ``--model`` resolution:
an alias, a catalog HF id (offline), a path to a ``config.json`` or a model folder, or any other HF id
(local HF cache, then the Hub when online)."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from functools import lru_cache
from pathlib import Path

from ..errors import FtplanError, UnknownNameError
from ..planner.types import ModelSpec
from ._names import norm_name

DATA = Path(__file__).parent / "data" / "models.json"
_FIELDS = {f.name for f in fields(ModelSpec)}


@lru_cache(maxsize=1)
def load_catalog() -> dict[str, ModelSpec]:
    out = {}
    for d in json.loads(DATA.read_text()):
        d = dict(d)
        d["aliases"] = tuple(d.get("aliases", ()))
        out[d["name"]] = ModelSpec(**{k: v for k, v in d.items() if k in _FIELDS})
    return out


@lru_cache(maxsize=1)
def _index() -> dict[str, str]:
    idx: dict[str, str] = {}
    for name, m in load_catalog().items():
        for n in (name, m.hf_id, m.hf_id.split("/")[-1], *m.aliases):
            if n:
                idx.setdefault(norm_name(n), name)
    return idx


MAX_NAME = 1000  # characters in --model: a path or an id longer than this is a mistake


def _existing_path(s: str) -> Path | None:
    """``s`` as a path when it names a config file or folder (or ends in .json), else None; a name the
    file system cannot even look up (too long, a NUL byte, an unknown ``~user``) is not a path."""
    try:
        p = Path(s).expanduser()
        return p if (p.suffix == ".json" or p.is_dir() or p.exists()) else None
    except (OSError, ValueError, RuntimeError):
        return None


def get_model(model: str | ModelSpec) -> ModelSpec:
    """Resolve ``--model``: catalog alias or id, config path/folder, or HF id (cache, then Hub)."""
    if isinstance(model, ModelSpec):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise FtplanError(f"model={model!r} must be a name (an alias from `ftplan models`, a Hugging Face id, or a "
                          "path to config.json), not a {type(model).__name__}")
    s = str(model).strip()
    if not s or len(s) > MAX_NAME:
        raise FtplanError(f"model={s[:40]!r}{'...' if len(s) > 40 else ''} must be a name of 1 to {MAX_NAME} "
                          "characters (an alias from `ftplan models`, a Hugging Face id, or a path to config.json)")
    key = _index().get(norm_name(s))
    if key is not None:
        return load_catalog()[key]
    p = _existing_path(s)
    if p is not None:
        from .hf_config import spec_from_path

        return spec_from_path(p)
    if "/" in s and not s.startswith((".", "/")):
        from .hf_config import spec_from_hub

        return spec_from_hub(s)
    valid = list(load_catalog()) + [a for m in load_catalog().values() for a in m.aliases if "/" not in a]
    raise UnknownNameError("model", s, valid,
                           "an alias from `ftplan models`, a Hugging Face id, or a path to config.json")


def list_models() -> list[ModelSpec]:
    from ..planner.arch import total_params

    return sorted(load_catalog().values(), key=lambda m: (total_params(m), m.name))
