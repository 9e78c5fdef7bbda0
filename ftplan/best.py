"""The winner's document, ``best.json``: its schema, reading and writing, and the configuration it holds.

A module of its own because three packages meet here: ``ftplan autotune`` (``tune``) writes it, and
``ftplan train`` (``train``) and the HF helpers (``integrations``) read it; none of them imports another.
Pure standard library.

Schema (``format: ftplan-best/1``): ``model`` (what ``--model`` took), ``knobs`` (``ftplan.estimate``
keywords, ``grad_accum`` included), and where the winner came from: ``ftplan_version``, ``created``,
``model_name``, ``hf_id``, ``synthetic_weights``, ``gpu``, ``device``, ``effective_batch``, ``predicted``,
``measured``, ``objective``, ``value``, ``study``, ``storage``, ``trial``, ``data``, ``command``. A
document written by hand needs only ``model`` and ``knobs``.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .errors import FtplanError

FORMAT = "ftplan-best/1"


def best_knobs(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A best.json document's configuration as ``ftplan.estimate`` keywords (``changes`` override)."""
    knobs = {k: v for k, v in doc["knobs"].items() if k != "effective_batch"}
    return {**knobs, **changes}


def best_config(doc: dict[str, Any], model: str | None = None, **changes: Any):
    """(ModelSpec, TrainConfig) of a best.json document, validated like any knobs; ``model`` overrides
    the document's model, ``changes`` its knobs."""
    from .planner.options import make_config
    from .profiles.models import get_model

    spec = get_model(model or doc["model"])
    return spec, make_config(spec, None, **best_knobs(doc, **changes)).config


def document(*, model: str, model_name: str, hf_id: str | None, knobs: dict[str, Any], **provenance: Any) -> dict[str, Any]:
    """A new best.json document: the configuration and, in ``provenance``, where it came from (the
    schema's other fields)."""
    from ._version import __version__

    return {"format": FORMAT, "ftplan_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": model, "model_name": model_name, "hf_id": hf_id, "knobs": dict(knobs),
            "effective_batch": knobs["micro_batch"] * knobs["grad_accum"], **provenance}


def read_best(path: str | Path) -> dict[str, Any]:
    """A best.json document from ``path``; a clear error when it is missing or not one."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise FtplanError(f"--config {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FtplanError(f"--config {str(path)!r} cannot be read ({e})") from None
    except ValueError as e:
        raise FtplanError(f"--config {str(path)!r} is not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("knobs"), dict) or "model" not in doc:
        raise FtplanError(f"--config {str(path)!r} has no 'model' and 'knobs' (write it with ftplan autotune)")
    return doc


def write_best(path: str | Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` to ``path`` atomically (a reader never sees half a file)."""
    p = Path(path)
    atomic_write_text(p, json.dumps(doc, indent=2) + "\n")
    return p
