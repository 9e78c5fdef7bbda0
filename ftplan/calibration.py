"""The calibration store: measured/predicted ratios from real runs, for the terms a measurement can
show; on its own because ``tune`` writes it and the library face (``api``) reads it.

What is calibrated (``FACTORS``), each a median of measured/predicted over a study's finished trials:

- ``allocator_overhead``: reserved - allocated (the caching allocator's overhead), CUDA only;
- ``cuda_context``: what the process holds outside the allocator less the predicted paged optimizer
  state, over the predicted CUDA context; CUDA only, and independent of the model;
- ``allocated``: the peak allocated bytes (CUDA ``max_memory_allocated``, or the CPU tracker's live
  set). It corrects the model's own figure, so it applies only where it came from: the same GPU,
  library versions, device kind and model size class;
- ``tokens_per_s``: the achieved compute rate (hours and dollars follow).

There is no blanket multiplier on the whole peak: the device figure is rebuilt as allocated +
allocator overhead + CUDA context + paged state, each term non-negative, so
``device_bytes >= peak_reserved_bytes >= peak_allocated_bytes`` holds calibrated or not.

Keys: GPU, torch/transformers/peft/bitsandbytes versions (a new library can change memory), the device
kind of the run ("cuda" or "cpu") and the model size class (``size_class``: total parameters to an order
of magnitude). A size-dependent factor is never applied to another size class; ``cuda_context`` is, and
``Estimate.calibration`` says so. ``Estimate.calibration`` always says what was applied, to which
figure, from which study, and what was stored but not applied, with the reason.

Entries written by older versions (one ``memory`` ratio on the whole peak, no device kind or model
size) are read but never applied; their ``memory`` factor is reported as skipped.

The store is one JSON file: ``$FTPLAN_CALIBRATION`` or ``~/.cache/ftplan/calibration.json``.
Standard library only: ``import ftplan`` must stay light.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from .atomic import atomic_write_text
from .planner import bands
from .planner.types import Calibration, Estimate, GPUSpec

STACK = ("torch", "transformers", "peft", "bitsandbytes")
FACTOR_RANGE = (0.25, 4.0)  # a ratio outside this says the run measured something else: not stored, not applied
UNKNOWN_SIZE = "unknown"  # the size class of an entry recorded without the model's parameter count


class Factor(NamedTuple):
    """What one calibration factor multiplies and where it may be applied."""

    applies_to: str  # the figure of the estimate it changes
    size_dependent: bool  # True: only within the size class it was measured on
    cuda_only: bool  # True: a CPU run has no such term


FACTORS: dict[str, Factor] = {
    "allocated": Factor("peak allocated bytes", True, False),
    "allocator_overhead": Factor("reserved - allocated (allocator overhead)", True, True),
    "cuda_context": Factor("the CUDA context", False, True),
    "tokens_per_s": Factor("tokens/s (hours and dollars follow)", True, False),
}


@dataclass(frozen=True)
class Entry:
    """One stored set of factors: measured on ``device`` with models of ``size_class``."""

    device: str
    size_class: str
    factors: Mapping[str, float]
    source: str = ""
    spread: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # (min, max) ratio / median


@dataclass(frozen=True)
class Stored:
    """Every entry of the store for one GPU and the installed library versions (``lookup``)."""

    gpu: str
    versions: str
    entries: tuple[Entry, ...]


def store_path() -> Path:
    """``$FTPLAN_CALIBRATION``, else ``$XDG_CACHE_HOME/ftplan/calibration.json`` (``~/.cache`` by default)."""
    env = os.environ.get("FTPLAN_CALIBRATION")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ftplan" / "calibration.json"


def stack_versions() -> str:
    """'torch=2.13.0 transformers=5.23.0 ...' read from package metadata (no import of the packages)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in STACK:
        try:
            out.append(f"{pkg}={version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg}=none")
    return " ".join(out)


def device_kind(gpu: str | None) -> str:
    """The kind of run a GPU key stands for: "cpu" for the host (``--device cpu``), else "cuda"."""
    return "cpu" if gpu == "cpu" else "cuda"


def size_class(total_params: int | float | None) -> str:
    """Total parameters rounded to an order of magnitude, ``"1e{round(log10(n))}"``: "1e10" spans
    3.2B-32B (8B, 14B), "1e7" a 10M-parameter toy. Memory and speed ratios change with model size
    (kernel efficiency, the share of fixed overheads), so a factor is keyed by the class it came from."""
    if not total_params or total_params <= 0:
        return UNKNOWN_SIZE
    return f"1e{round(math.log10(total_params))}"


def _class_exponent(cls: str) -> int | None:
    return int(cls[2:]) if cls.startswith("1e") and cls[2:].lstrip("-").isdigit() else None


def _count(n: float) -> str:
    """3.2e9 -> '3.2B', 3.2e7 -> '32M'."""
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2g}{suf}"
    return f"{n:.2g}"


def describe_class(cls: str) -> str:
    """'1e10' -> '1e10 (3.2B-32B parameters)'; the unknown class says so."""
    e = _class_exponent(cls)
    if e is None:
        return "an unknown model size"
    return f"{cls} ({_count(10 ** (e - 0.5))}-{_count(10 ** (e + 0.5))} parameters)"


def plausible(f: Any) -> bool:
    """A factor is usable when it is a finite number in ``FACTOR_RANGE``."""
    return (isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f)
            and FACTOR_RANGE[0] <= f <= FACTOR_RANGE[1])


def load(path: Path | None = None) -> dict[str, Any]:
    """The store as ``{"entries": {key: entry}}``; empty when missing or unreadable."""
    p = path or store_path()
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        return {"entries": {}}
    except (OSError, ValueError, RecursionError):
        return {"entries": {}}  # unreadable store: estimates stay uncalibrated rather than fail
    return data if isinstance(data, dict) and isinstance(data.get("entries"), dict) else {"entries": {}}


def _key(gpu: str, versions: str, device: str | None = None, size: str | None = None) -> str:
    """'gpu|versions|device|size class'; the two-part form is the older versions' key."""
    return f"{gpu}|{versions}" if device is None else f"{gpu}|{versions}|{device}|{size}"


def ratios(pairs: Iterable[tuple[float | None, float | None]]) -> list[float]:
    """measured/predicted for every pair where both are known and positive, in ``FACTOR_RANGE``."""
    out = []
    for measured, predicted in pairs:
        if measured and predicted and measured > 0 and predicted > 0:
            r = measured / predicted
            if FACTOR_RANGE[0] <= r <= FACTOR_RANGE[1]:
                out.append(r)
    return out


def record(gpu: str, memory: Sequence[float], tokens_per_s: Sequence[float], source: str,
           versions: str | None = None, path: Path | None = None, *, device: str | None = None,
           total_params: int | None = None, allocated: Sequence[float] = (),
           allocator_overhead: Sequence[float] = (), cuda_context: Sequence[float] = ()) -> dict[str, Any] | None:
    """Store the medians of the given measured/predicted ratios for ``gpu``, the installed stack (or
    ``versions``), the device kind (``device``, default from the GPU key) and the size class of
    ``total_params``; return the entry, or None if there is no ratio.

    ``memory`` is the older call's single memory ratio: the tensor-level allocated peak on the CPU
    (stored as ``allocated``); on CUDA it was the whole reserved peak, which is not a term and is not
    stored. Without ``total_params`` the entry's size class is unknown and its size-dependent factors
    never apply (``record_trials`` passes everything)."""
    device = device or device_kind(gpu)
    alloc = list(allocated) + (list(memory) if device == "cpu" else [])
    lists = {"allocated": alloc, "tokens_per_s": list(tokens_per_s)}
    if device == "cuda":
        lists.update(allocator_overhead=list(allocator_overhead), cuda_context=list(cuda_context))
    factors = {k: statistics.median(v) for k, v in lists.items() if v}
    if not factors:
        return None
    versions = versions or stack_versions()
    cls = size_class(total_params)
    spread = {k: [min(v) / factors[k], max(v) / factors[k]] for k, v in lists.items() if v}
    entry = {"gpu": gpu, "versions": versions, "device": device, "size_class": cls, "total_params": total_params,
             "factors": factors, "spread": spread, "source": source,
             "samples": {k: len(v) for k, v in lists.items() if v}}
    p = path or store_path()
    data = load(p)
    data["entries"][_key(gpu, versions, device, cls)] = entry
    atomic_write_text(p, json.dumps(data, indent=1, sort_keys=True))
    return entry


def _num(d: Mapping[str, Any], k: str) -> float | None:
    v = d.get(k)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def trial_ratios(measured: Mapping[str, Any], predicted: Mapping[str, Any], device: str,
                 context_bytes: int) -> dict[str, tuple[float | None, float | None]]:
    """One trial's (measured, predicted) pair for each factor.

    ``allocator_overhead``: reserved - allocated of each. ``cuda_context``: the measured bytes outside the
    allocator (device - reserved) less what the prediction puts there besides the context (its paged
    optimizer state: predicted device - reserved - ``context_bytes``), against ``context_bytes``."""
    m_alloc, p_alloc = _num(measured, "peak_allocated_bytes"), _num(predicted, "peak_allocated_bytes")
    out: dict[str, tuple[float | None, float | None]] = {
        "allocated": (m_alloc, p_alloc),
        "tokens_per_s": (_num(measured, "tokens_per_s"), _num(predicted, "tokens_per_s"))}
    if device != "cuda":
        return out
    m_res, p_res = _num(measured, "peak_reserved_bytes"), _num(predicted, "peak_reserved_bytes")
    m_dev, p_dev = _num(measured, "device_bytes"), _num(predicted, "device_bytes")
    if m_res is not None and m_alloc is not None and p_res is not None and p_alloc is not None:
        out["allocator_overhead"] = (m_res - m_alloc, p_res - p_alloc)
    if m_dev is not None and m_res is not None and p_dev is not None and p_res is not None and context_bytes > 0:
        paged = p_dev - p_res - context_bytes
        out["cuda_context"] = (m_dev - m_res - paged, float(context_bytes))
    return out


def record_trials(gpu: GPUSpec | str, device: str, total_params: int,
                  trials: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]], source: str,
                  versions: str | None = None, path: Path | None = None,
                  context_bytes: int | None = None) -> dict[str, Any] | None:
    """Store the factors of a study's finished trials, each a ``(measured, predicted)`` pair of dicts
    with ``peak_allocated_bytes``, ``peak_reserved_bytes``, ``device_bytes`` and ``tokens_per_s`` (as
    ``ftplan profile`` and ``ftplan.estimate`` name them). ``device`` is the kind of run ("cuda" or
    "cpu"); ``total_params`` the model's, for its size class. The predicted CUDA context comes from the
    GPU (``context_bytes`` when ``gpu`` is only a key). None when no ratio is plausible."""
    from .planner.memory.overhead import cuda_context_bytes

    key = gpu.key if isinstance(gpu, GPUSpec) else gpu
    if context_bytes is None:
        context_bytes = cuda_context_bytes(gpu) if isinstance(gpu, GPUSpec) else 0
    pairs: dict[str, list[tuple[float | None, float | None]]] = {k: [] for k in FACTORS}
    for measured, predicted in trials:
        for k, pair in trial_ratios(measured or {}, predicted or {}, device, context_bytes).items():
            pairs[k].append(pair)
    r = {k: ratios(v) for k, v in pairs.items()}
    return record(key, [], r["tokens_per_s"], source, versions, path, device=device, total_params=total_params,
                  allocated=r["allocated"], allocator_overhead=r["allocator_overhead"],
                  cuda_context=r["cuda_context"])


def _entry(e: Mapping[str, Any], gpu: str) -> Entry:
    """A stored entry; an older one (no device kind or size class) reads as device from the GPU key and
    size class unknown."""
    factors = e.get("factors")
    spread: dict[str, tuple[float, float]] = {}
    for k, v in (e.get("spread") or {}).items() if isinstance(e.get("spread"), dict) else ():
        if isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and 0 < x < 10 for x in v):
            spread[k] = (float(min(v)), float(max(v)))
    return Entry(device=str(e.get("device") or device_kind(gpu)), size_class=str(e.get("size_class") or UNKNOWN_SIZE),
                 factors=dict(factors) if isinstance(factors, dict) else {}, source=str(e.get("source", "")),
                 spread=spread)


def lookup(gpu: str, path: Path | None = None) -> Stored | None:
    """Every entry stored for ``gpu`` and the installed library versions; None when there is none."""
    p = path or store_path()
    if not p.exists():
        return None
    entries = load(p)["entries"]
    if not any(isinstance(k, str) and k.startswith(gpu + "|") for k in entries):
        return None
    versions = stack_versions()
    found = tuple(_entry(e, gpu) for e in entries.values()
                  if isinstance(e, dict) and e.get("gpu") == gpu and e.get("versions") == versions)
    return Stored(gpu, versions, found) if found else None


def _distance(a: str, b: str) -> float:
    ea, eb = _class_exponent(a), _class_exponent(b)
    return math.inf if ea is None or eb is None else abs(ea - eb)


def _why_not(name: str, f: Any, e: Entry, device: str, cls: str) -> str | None:
    """Why factor ``name`` of entry ``e`` does not apply to a ``device`` run of a ``cls`` model; None
    when it applies."""
    spec = FACTORS.get(name)
    if spec is None:
        if name == "memory":
            return "a ratio on the whole peak from an older ftplan, not a term: never applied (re-run ftplan autotune)"
        return "not a factor this version knows"
    if not plausible(f):
        return f"{f!r} is outside the plausible range {FACTOR_RANGE[0]}-{FACTOR_RANGE[1]}"
    if spec.cuda_only and device != "cuda":
        return "a CUDA term; this is a CPU estimate"
    if spec.size_dependent and e.size_class != cls:
        if e.size_class == UNKNOWN_SIZE:
            return "recorded without the model size: applies to no size class"
        return f"measured on size class {describe_class(e.size_class)}, this model is {cls}"
    return None


def choose(stored: Stored, device: str, cls: str) -> Calibration | None:
    """The calibration a ``device`` estimate of a ``cls`` model gets: the factors of its own entry, plus a
    size-independent factor (``cuda_context``) from the nearest other class when its own entry lacks it
    (said in ``applies_to``). Everything else stored for this device kind is listed in ``skipped``.
    None when nothing is stored for this device kind."""
    mine = sorted((e for e in stored.entries if e.device == device),
                  key=lambda e: (e.size_class != cls, _distance(e.size_class, cls), e.size_class))
    if not mine:
        return None
    factors: dict[str, float] = {}
    spread: dict[str, tuple[float, float]] = {}
    applies: dict[str, str] = {}
    skipped: dict[str, str] = {}
    sources: list[str] = []
    for e in mine:
        for name, f in e.factors.items():
            why = _why_not(name, f, e, device, cls)
            if why is None and name not in factors:
                factors[name] = float(f)
                if name in e.spread:
                    spread[name] = e.spread[name]
                applies[name] = FACTORS[name].applies_to
                if e.size_class != cls:
                    applies[name] += f", measured on size class {e.size_class} (size-independent)"
                if e.source and e.source not in sources:
                    sources.append(e.source)
            elif why is not None:
                skipped[name if e.size_class == cls else f"{name} ({e.size_class})"] = why
    if not sources:
        sources = list(dict.fromkeys(e.source for e in mine if e.source))
    note = _note(factors)
    return Calibration(gpu=stored.gpu, versions=stored.versions, factors=factors, source="; ".join(sources),
                       device=device, size_class=cls, applies_to=applies, skipped=skipped, note=note, spread=spread)


def _note(factors: Mapping[str, float]) -> str:
    return f"{len(factors)} measured factor(s) applied" if factors else "no stored factor applies to this model"


def adjusted(est: Estimate, factors: Mapping[str, float], margin: float = 0.0,
             spread: tuple[float, float] | None = None) -> Estimate:
    """``est`` with the factors applied term by term (unknown names are ignored):

    allocated' = allocated x ``allocated`` (the difference is the breakdown's ``calibration`` term, so
    the breakdown still sums to allocated; the phases stay the model's); reserved' = allocated' +
    (reserved - allocated) x ``allocator_overhead``; device' = reserved' + context x ``cuda_context`` +
    the paged optimizer state; tokens/s x ``tokens_per_s`` (step time, hours and dollars follow, and their
    range narrows to the calibrated one, ``planner.bands.calibrated(spread)``).
    Every added term is non-negative, so device' >= reserved' >= allocated' for any positive factors."""
    f = {k: float(v) for k, v in factors.items() if k in FACTORS and plausible(v)}
    alloc = est.peak_allocated_bytes
    overhead = max(0, est.peak_reserved_bytes - alloc)
    context = max(0, est.overheads.get("cuda_context", 0))
    outside = max(0, est.device_bytes - est.peak_reserved_bytes - context)  # paged optimizer state
    alloc2 = round(alloc * f.get("allocated", 1.0))
    overhead2 = round(overhead * f.get("allocator_overhead", 1.0))
    context2 = round(context * f.get("cuda_context", 1.0))
    reserved2 = alloc2 + overhead2
    device2 = reserved2 + context2 + outside
    breakdown = dict(est.breakdown)
    if alloc2 != alloc:
        breakdown["calibration"] = breakdown.get("calibration", 0) + alloc2 - alloc
    overheads = {**est.overheads, "allocator_overhead": overhead2, "cuda_context": context2}
    fits = est.fits if est.usable_bytes is None else device2 <= est.usable_bytes * (1.0 - margin)
    if fits and est.host_fits is False:
        fits = False  # the host memory check is not a device figure: a calibration leaves it as it was
    speed = f.get("tokens_per_s", 1.0)
    time, cost = est.time, est.cost
    if time is not None and speed != 1.0:
        notes = (f"{time.notes[0]} x {speed:.3f} measured (calibration)", *time.notes[1:]) if time.notes else ()
        time = replace(time, tokens_per_s=time.tokens_per_s * speed, step_time_s=time.step_time_s / speed,
                       calibrated=True, notes=notes)
        if cost is not None:
            dollars = cost.dollars / speed if cost.dollars is not None else None
            cost = replace(cost, hours=cost.hours / speed, gpu_hours=cost.gpu_hours / speed, dollars=dollars)
        time, cost = bands.with_ranges(time, cost, bands.calibrated(spread, bands.kind_of(est.config.num_gpus)))
    mem_range, basis = est.device_bytes_range, est.memory_basis
    applied = sorted(k for k in ("allocated", "allocator_overhead", "cuda_context") if k in f)
    if applied:  # the figure now rests on this machine's runs: the published range no longer describes it
        mem_range, basis = None, f"calibrated: measured {', '.join(applied)} factors applied (ftplan autotune runs)"
    return replace(est, peak_allocated_bytes=alloc2, peak_reserved_bytes=reserved2, device_bytes=device2,
                   breakdown=breakdown, overheads=overheads, fits=fits, time=time, cost=cost,
                   device_bytes_range=mem_range, memory_basis=basis)


def _without(cal: Calibration, why: Mapping[str, str]) -> Calibration:
    """``cal`` with the factors named in ``why`` moved to ``skipped`` (with the reason) and its note
    restated."""
    factors = {k: v for k, v in cal.factors.items() if k not in why}
    applies = {k: v for k, v in cal.applies_to.items() if k in factors}
    skipped = {**cal.skipped, **{k: r for k, r in why.items() if k in cal.factors}}
    note = _note(factors)
    return replace(cal, factors=factors, applies_to=applies, skipped=skipped, note=note)


def apply(est: Estimate, cal: Stored | Calibration, margin: float = 0.0) -> Estimate:
    """The estimate calibrated with what ``lookup`` found (the entry for its device kind and size class,
    see ``choose``), or with one given ``Calibration``'s factors as they are. ``Estimate.calibration``
    records what was applied, to what, and what was skipped; the estimate is unchanged when nothing is
    stored for its device kind."""
    chosen = cal if isinstance(cal, Calibration) else choose(cal, device_kind(est.gpu), size_class(est.total_params))
    if chosen is None:
        return est
    why = {k: "not a factor this version knows" for k in chosen.factors if k not in FACTORS}
    why.update({k: f"{v!r} is outside the plausible range" for k, v in chosen.factors.items()
                if k in FACTORS and not plausible(v)})
    if est.time is None:
        why["tokens_per_s"] = "this estimate has no speed (no speed model for this device)"
    chosen = _without(chosen, why)
    out = adjusted(est, chosen.factors, margin, chosen.spread.get("tokens_per_s")) if chosen.factors else est
    return replace(out, calibration=chosen)
