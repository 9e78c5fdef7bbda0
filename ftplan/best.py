"""The winner's document, ``best.json``: its schema, reading and writing, and the configuration it holds.

A module of its own because three packages meet here: ``ftplan autotune`` (``tune``) writes it, and
``ftplan train`` (``train``) and the HF helpers (``integrations``) read it; none of them imports another.
Pure standard library.

Schema (``format: ftplan-best/1``): ``model`` (what ``--model`` took), ``knobs`` (``ftplan.estimate``
keywords, ``grad_accum`` included), and where the winner came from: ``ftplan_version``, ``created``,
``model_name``, ``hf_id``, ``synthetic_weights``, ``gpu``, ``device``, ``effective_batch``, ``predicted``,
``measured``, ``objective``, ``value``, ``study``, ``storage``, ``trial``, ``data``, ``command``. A
document written by hand needs only ``model`` and ``knobs``.

Paths: ``ftplan autotune`` stores a local ``model`` folder and ``data.path`` as absolute paths, so the
document works from any folder. Reading a document resolves a relative ``model`` against the document's
own folder when it exists there (a hand-written document beside its model folder).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text, check_input
from .errors import FtplanError

FORMAT = "ftplan-best/1"
DEFAULT_LR = 2e-4  # the peak learning rate of ftplan train and of the exports (not planned: memory does not depend on it)


def best_knobs(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A best.json document's configuration as ``ftplan.estimate`` keywords (``changes`` override)."""
    knobs = {k: v for k, v in doc["knobs"].items() if k != "effective_batch"}
    return {**knobs, **changes}


def best_config(doc: dict[str, Any], model: str | None = None, **changes: Any):
    """(ModelSpec, TrainConfig) of a best.json document, validated like any knobs; ``model`` overrides
    the document's model, ``changes`` its knobs."""
    from .planner.options import make_config, require_buildable
    from .profiles.models import get_model

    spec = get_model(model or doc["model"])
    cfg = make_config(spec, None, **best_knobs(doc, **changes)).config
    require_buildable(cfg, "a run from this file")
    return spec, cfg


def local_path(value: str, base: str | Path | None = None) -> str | None:
    """The absolute path ``value`` names when that file or folder exists (a relative ``value`` is taken
    from ``base``, else from the working folder); None when it names none (a catalog alias, a Hugging
    Face id). Why: a relative path in a document means nothing once the reader runs elsewhere."""
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return str(p.resolve()) if p.exists() else None


def _absolute_data(data: Any) -> Any:
    """``data`` (what the data file says) with its ``path`` absolute when that file exists."""
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        return {**data, "path": local_path(data["path"]) or data["path"]}
    return data


def document(*, model: str, model_name: str, hf_id: str | None, knobs: dict[str, Any], **provenance: Any) -> dict[str, Any]:
    """A new best.json document: the configuration and, in ``provenance``, where it came from (the
    schema's other fields). ``data.path`` is stored absolute; ``model`` as given (the caller knows
    whether it names a local folder: see ``local_path``)."""
    from ._version import __version__

    if "data" in provenance:
        provenance["data"] = _absolute_data(provenance["data"])
    return {"format": FORMAT, "ftplan_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": model, "model_name": model_name, "hf_id": hf_id, "knobs": dict(knobs),
            "effective_batch": knobs["micro_batch"] * knobs["grad_accum"], **provenance}


def read_best(path: str | Path) -> dict[str, Any]:
    """A best.json document from ``path``; a clear error when it is missing or not one."""
    p = check_input(path, "--config")
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise FtplanError(f"--config {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FtplanError(f"--config {str(path)!r} cannot be read ({e})") from None
    except ValueError as e:
        raise FtplanError(f"--config {str(path)!r} is not JSON ({str(e)[:200]})") from None
    except RecursionError:
        raise FtplanError(f"--config {str(path)!r}: JSON nested too deeply") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("knobs"), dict) or "model" not in doc:
        raise FtplanError(f"--config {str(path)!r} has no 'model' and 'knobs' (write it with ftplan autotune)")
    return _model_beside(doc, p.resolve().parent)


def _model_beside(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``doc`` with a relative ``model`` that exists in the document's ``folder`` made absolute: a
    hand-written document names its model folder from where it lies, not from where ``ftplan train`` runs."""
    model = doc["model"]
    if isinstance(model, str) and model and not Path(model).expanduser().is_absolute():
        found = local_path(model, folder)
        if found is not None:
            return {**doc, "model": found}
    return doc


def write_best(path: str | Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` to ``path`` atomically (a reader never sees half a file)."""
    p = Path(path)
    atomic_write_text(p, json.dumps(doc, indent=2) + "\n")
    return p
