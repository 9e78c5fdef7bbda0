"""The model catalog (``data/models.json``: config facts, no weights) and ``--model`` resolution:
an alias, a catalog HF id (offline), a path to a ``config.json`` or a model folder, or any other HF id
(local HF cache, then the Hub when online)."""

from __future__ import annotations

import json
from dataclasses import fields
from functools import lru_cache
from pathlib import Path

from ..errors import UnknownNameError
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


def get_model(model: str | ModelSpec) -> ModelSpec:
    """Resolve ``--model``: catalog alias or id, config path/folder, or HF id (cache, then Hub)."""
    if isinstance(model, ModelSpec):
        return model
    s = str(model).strip()
    key = _index().get(norm_name(s))
    if key is not None:
        return load_catalog()[key]
    p = Path(s).expanduser()
    if p.suffix == ".json" or p.is_dir() or p.exists():
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
