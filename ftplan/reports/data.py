"""The report's figures, as plain data (no plotly, no pandas): one row per GPU option.

Every figure comes from ``ftplan.plan`` (the best configuration for each GPU and count) and the prices
(the catalog's dated prices, or the user's file). Costs are US dollars; times are hours.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..api import plan_search, suggest
from ..errors import FtplanError
from ..planner.cost import spot_clause
from ..planner.estimate import ASSUMPTIONS
from ..planner.types import Plan
from ..profiles.gpus import get_gpu
from ..profiles.models import get_model
from ..units import parse_count, real
from .prices import Price, read_prices

# the memory picture in words a finance reader can follow: (label, model terms and overheads)
MEMORY_GROUPS = (
    ("Model weights", ("weights_quantized", "weights_dense", "weights_unquantized")),
    ("Quantization constants", ("quant_constants",)),
    ("LoRA adapter", ("lora_weights",)),
    ("Gradients", ("gradients", "ddp_buckets")),
    ("Optimizer state", ("optimizer_state", "master_weights", "optimizer_temp", "paged_optimizer_state",
                         "grad_scaler")),
    ("Activations", ("activations", "recompute", "backward_transient", "forward_transient", "autocast_weight_copies",
                     "dequant_transient", "cuda_workspace", "fsdp_gathered", "zero_buffers")),
    ("Logits and loss", ("logits_loss", "logits_held")),
    ("CUDA context", ("cuda_context",)),
    ("NCCL buffers", ("nccl_buffers",)),
    ("Allocator overhead", ("allocator_overhead",)),
)
POWER_PRICE = 0.15  # US dollars per kWh, for the owned-GPU running cost (stated in the report)


@dataclass(frozen=True)
class Option:
    gpu: str
    gpu_name: str
    count: int
    fits: bool
    plan: Plan | None
    memory: dict[str, int]
    usable_bytes: int
    tokens_per_s: float | None
    hours: float | None
    gpu_hours: float | None
    price_per_gpu_hour: float | None
    spot_per_gpu_hour: float | None
    purchase_per_gpu: float | None
    price_source: str
    price_date: str
    cost: float | None
    spot_cost: float | None
    per_million: float | None
    spot_per_million: float | None
    breakeven_weeks: float | None
    note: str = ""
    nvlink: bool = False  # the catalog's GPUSpec.nvlink
    # where eight in ten published runs of this kind fell (planner.bands); none where there is no speed
    hours_range: tuple[float, float] | None = None
    cost_range: tuple[float, float] | None = None
    range_basis: str = ""
    spot_label: str = ""  # what the spot figure is: a quote from the price file, or an estimate and why

    @property
    def label(self) -> str:
        return self.gpu_name if self.count == 1 else f"{self.count} x {self.gpu_name}"

    @property
    def pcie_only(self) -> bool:
        """Several GPUs with no NVLink: the gradient sync goes over PCIe."""
        return self.count > 1 and not self.nvlink

    @property
    def interconnect(self) -> str:
        """How the option's GPUs talk, in words ('' for one GPU)."""
        if self.count == 1:
            return ""
        if self.nvlink:
            return "data-parallel over NVLink"
        return ("no NVLink: the speed assumes data-parallel scaling with the gradient sync over PCIe "
                "(slower links or a cross-socket path make it slower)")


@dataclass(frozen=True)
class Report:
    model: str
    model_name: str
    tokens: float
    epochs: float
    options: list[Option]
    cheapest: Option | None
    fastest: Option | None
    spot_discount: float
    hours_per_week: float
    assumptions: list[str]
    command: str
    created: str
    version: str = __version__
    trials: list[dict[str, Any]] = field(default_factory=list)
    study: str | None = None
    data: dict[str, Any] | None = None  # ftplan.dataset.apply_data's profile of --data


MAX_GPUS = 65_536  # the planner's own ceiling (planner.options.UPPER["num_gpus"])
MAX_OPTIONS = 64  # GPU options in one report (each is a plan search; a table finance can read)


ANY_OPTIONS = 12  # --gpus any: the options a report shows (the best by time and by cost)


def _is_any(gpus: str | list[str]) -> bool:
    return isinstance(gpus, str) and gpus.strip().lower() == "any"


def any_gpus(model: str, tokens: float, epochs: float, knobs: dict[str, Any]) -> list[tuple[str, int]]:
    """``--gpus any``: the catalog GPUs and counts that fit the job (``ftplan.anygpu.rank_gpus``), the
    ``ANY_OPTIONS // 2`` fastest and the ``ANY_OPTIONS // 2`` cheapest, each once."""
    from ..anygpu import rank_gpus

    kn = {k: v for k, v in knobs.items() if v is not None}
    fast = rank_gpus(model, tokens=tokens, epochs=epochs, objective="throughput", **kn).options
    cheap = sorted(fast, key=lambda o: (o.dollars, o.hours))
    out: list[tuple[str, int]] = []
    for o in [*fast[: ANY_OPTIONS // 2], *cheap[: ANY_OPTIONS // 2]]:
        if (o.gpu.key, o.count) not in out:
            out.append((o.gpu.key, o.count))
    if not out:
        raise FtplanError("--gpus any: no catalog GPU with a dated price and a speed model fits this job")
    return out


def parse_gpus(text: str | list[str]) -> list[tuple[str, int]]:
    """'rtx4090,2xh100,a100-80gb:4' -> [(key, count)] (a count as 'Nx' before or ':N' after the name);
    unknown names raise with close matches."""
    items = text if isinstance(text, list) else [t for t in str(text).split(",") if t.strip()]
    if not items:
        raise FtplanError("--gpus is empty; give one or more names from `ftplan gpus`")
    if len(items) > MAX_OPTIONS:
        raise FtplanError(f"--gpus lists {len(items)} options; a report compares at most {MAX_OPTIONS}")
    out = []
    for raw in items:
        t = raw.strip().lower()
        n = 1
        before = re.fullmatch(r"(\d+)\s*[x*]\s*(.+)", t)
        after = re.fullmatch(r"(.+?)\s*:\s*(\d+)", t)
        if before:
            n, t = int(before.group(1)), before.group(2)
        elif after:
            t, n = after.group(1), int(after.group(2))
        elif ":" in t or re.match(r"\d*\s*[x*]\s*$", t):
            raise FtplanError(f"--gpus {raw!r}: a count is written 2xh100 or h100:2")
        if n < 1:
            raise FtplanError(f"--gpus {raw!r}: the GPU count must be at least 1")
        if n > MAX_GPUS:
            raise FtplanError(f"--gpus {raw!r}: at most {MAX_GPUS:,} GPUs")
        out.append((get_gpu(t).key, n))
    return out


def _memory(plan: Plan) -> dict[str, int]:
    est = plan.estimate
    terms = {**est.breakdown, **est.overheads}
    out = {label: sum(int(terms.get(t, 0)) for t in names) for label, names in MEMORY_GROUPS}
    other = est.device_bytes - sum(out.values())
    if other > 0:
        out["Other"] = other
    return out


def _option(spec, key: str, count: int, tokens: float, epochs: float, prices: dict[str, Price], spot_discount: float,
            hours_per_week: float, knobs: dict[str, Any], note: str = "") -> Option:
    gpu = get_gpu(key)
    p = prices.get(key)
    price = p.per_hour if p else gpu.price_per_hour
    src = (p.source if p else gpu.price_provider) or ""
    date = (p.date if p else gpu.price_date) or ""
    fixed = dict(knobs)
    if count > 1:  # the strategy searched (DDP, FSDP, FSDP grad-op, FSDP with offload) unless --sharding is given
        fixed.update(num_gpus=count)
    res = plan_search(spec, gpu, tokens=tokens, epochs=epochs, price=price, top=1, **fixed)
    plan = res.plans[0] if res.plans else None
    spot = (p.spot_per_hour if p and p.spot_per_hour is not None else (price * (1 - spot_discount) if price is not None else None))
    spot_label = spot_text(gpu, p, spot_discount) if spot is not None else ""
    if plan is None or plan.estimate.time is None or plan.estimate.cost is None:
        return Option(key, gpu.name, count, plan is not None, plan, _memory(plan) if plan else {}, gpu.usable_bytes,
                      None, None, None, price, spot, p.purchase if p else None, src, date, None, None, None, None, None, note,
                      gpu.nvlink, spot_label=spot_label)
    c = plan.estimate.cost
    gh = c.gpu_hours
    cost = gh * price if price is not None else None
    spot_cost = gh * spot if spot is not None else None
    mtok = c.tokens / 1e6
    purchase = p.purchase if p else None
    be = None
    if purchase is not None and price is not None and hours_per_week > 0:
        power = (gpu_tdp_kw(gpu) or 0.0) * POWER_PRICE
        if price > power:
            be = purchase / ((price - power) * hours_per_week)  # weeks per GPU (count cancels out)
    lo, hi = c.gpu_hours_range
    cost_range = (lo * price, hi * price) if price is not None else None
    return Option(key, gpu.name, count, True, plan, _memory(plan), gpu.usable_bytes, plan.estimate.time.tokens_per_s,
                  c.hours, gh, price, spot, purchase, src, date, cost, spot_cost,
                  cost / mtok if cost is not None else None, spot_cost / mtok if spot_cost is not None else None, be, note,
                  gpu.nvlink, c.hours_range, cost_range, plan.estimate.time.range_basis, spot_label)


def spot_text(gpu, price: Price | None, discount: float) -> str:
    """What the report's spot figure is: the price file's spot quote, or an estimate (and, for a catalog price,
    whether its provider sells spot at all: ``planner.cost.spot_clause``)."""
    if price is not None and price.spot_per_hour is not None:
        return f"spot price from the price file{' (' + price.source + ')' if price.source else ''}"
    base = f"estimate: on-demand x (1 - {discount:.0%})"
    return base if price is not None else f"{base}; {spot_clause(gpu)}"


def gpu_tdp_kw(gpu) -> float | None:
    """Board power in kW (the catalog's ``tdp_w``), or None where unknown."""
    return gpu.tdp_w / 1000.0 if gpu.tdp_w else None


def build(model: str, gpus: str | list[str], tokens: str | float | None, *, epochs: float = 1.0,
          prices: str | None = None, spot_discount: float = 0.0, hours_per_week: float = 40.0, study: str | None = None,
          storage: str | None = None, command: str = "", data: str | None = None, **knobs: Any) -> Report:
    """The report's data for ``model`` on each GPU option (``'rtx4090,2xh100'``) for ``tokens`` x ``epochs``;
    ``data``: a JSONL training file whose tokens and length set ``tokens`` and ``seq_len`` unless given."""
    data_doc = None
    if data is not None:
        from ..dataset import apply_data

        data_doc, tokens, knobs["seq_len"] = apply_data(model, data, tokens, knobs.get("seq_len"))
    if tokens is None:
        raise FtplanError("give --tokens (training tokens per epoch, e.g. 50M) or --data (a JSONL file to count)")
    epochs = real("--epochs", epochs, low=0, low_open=True, high=1e6)
    spot_discount = real("--spot-discount", spot_discount, low=0, high=1, high_open=True)
    hours_per_week = real("--utilization-hours-per-week", hours_per_week, low=0, low_open=True, high=168)
    tok = parse_count(tokens, "--tokens")
    spec = get_model(model)
    opts = any_gpus(model, tok, epochs, knobs) if _is_any(gpus) else parse_gpus(gpus)
    price_map = read_prices(prices) if prices else {}
    knobs = {k: v for k, v in knobs.items() if v is not None}
    options: list[Option] = []
    for key, count in opts:
        o = _option(spec, key, count, tok, epochs, price_map, spot_discount, hours_per_week, knobs)
        options.append(o)
        if not o.fits and count == 1:
            n = suggest(spec, key, **knobs).get("gpu_count")  # only when no single catalog GPU fits
            if n:
                options.append(_option(spec, key, n, tok, epochs, price_map, spot_discount, hours_per_week, knobs,
                                       note=f"no single GPU in the catalog fits: the smallest count of {o.gpu_name} "
                                            "that does (one node at most)"))
    priced = [o for o in options if o.cost is not None]
    timed = [o for o in options if o.hours is not None]
    cheapest = min(priced, key=lambda o: o.cost) if priced else None
    fastest = min(timed, key=lambda o: o.hours) if timed else None
    assumptions = list(ASSUMPTIONS) + [
        "Throughput is predicted operation by operation from each GPU's measured (or datasheet x measured ratio) "
        "compute and memory rates (uncalibrated unless `ftplan autotune` stored measured factors for this GPU "
        "and library versions)",
        "Ranges: eight in ten published training runs of the same kind finished within the range shown around "
        "ftplan's estimate (10th to 90th percentile, benchmarks/published_speed.py); a calibration from your own "
        "runs narrows it",
        f"Spot price = on-demand price x (1 - {spot_discount:.0%}) unless the price file gives a spot price",
        f"Owned-GPU break-even: purchase price / ((rental price - power cost) x {hours_per_week:g} hours a week); "
        f"power at {POWER_PRICE} US dollars per kWh is counted only where the board power is known",
        "Memory: the peak during a training step, including the CUDA context and allocator overhead; "
        "a configuration fits when it stays under the card's usable memory less a 5% margin",
        "Several GPUs: the speed assumes data-parallel scaling (FSDP/DDP) with the gradient sync over NVLink "
        "where the catalog says the card has it, else over PCIe; options on cards without NVLink are marked",
    ]
    trials = load_trials(study, storage) if study else []
    return Report(model, spec.name, tok, epochs, options, cheapest, fastest, spot_discount, hours_per_week,
                  assumptions, command, _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  trials=trials, study=study, data=data_doc)


def load_trials(study: str, storage: str | None) -> list[dict[str, Any]]:
    """The measured trials of an autotune study, predicted beside measured. Optuna is optional (the
    ``tune`` extra): without it ``--study`` is a bad request with its fix, not a traceback."""
    try:
        import optuna
    except ImportError:
        raise FtplanError("--study needs optuna, which is not installed: pip install 'ftplan[tune]'") from None

    from ..tune.study import DEFAULT_RUNS, open_storage, trial_row

    url = storage or f"sqlite:///{(DEFAULT_RUNS / 'ftplan.db').as_posix()}"
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():  # read only: create nothing
        raise FtplanError(f"--study {study!r}: there is no study database at {url[len('sqlite:///'):]} "
                          "(give --storage, or run ftplan autotune first)")
    try:
        st = optuna.load_study(study_name=study, storage=open_storage(url))
    except KeyError:
        raise FtplanError(f"--study {study!r} is not in {url}") from None
    return [trial_row(t) for t in st.get_trials(deepcopy=False) if t.user_attrs.get("ran")]
