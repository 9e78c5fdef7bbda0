"""``ftplan report``: a self-contained HTML cost and memory report for finance (plotly, pandas).

    from ftplan import reports
    r = reports.build("8b", "rtx4090,l40s,a100-80gb,h100", "50M", epochs=3)
    reports.write_html(r, "report.html")

``build`` needs only the standard library; ``write_html`` imports plotly, ``frames`` pandas.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..errors import FtplanError
from .data import Option, Report, build

__all__ = ["build", "write_html", "frames", "write_tables", "write_pdf", "find_browser", "require_browser", "Report",
           "Option"]


def write_html(report: Report, path: str | Path) -> Path:
    from .html import page

    try:
        text = page(report)
    except ImportError as e:
        raise FtplanError(f"the HTML report needs plotly: pip install 'ftplan[report]' ({e.name} missing)") from None
    p = Path(path)
    atomic_write_text(p, text)
    return p


def frames(report: Report) -> dict[str, Any]:
    """The report's tables as pandas DataFrames: ``options`` and (with a study) ``trials``."""
    import pandas as pd

    rows = []
    for o in report.options:
        c = o.plan.config if o.plan else None
        mem = o.plan.estimate.device_bytes_range if o.plan else None
        rows.append({"gpu": o.gpu, "gpu_name": o.gpu_name, "gpus": o.count, "fits": o.fits,
                     "method": c.method if c else None, "base_weights": c.quant if c else None,
                     "lora_rank": c.lora_rank if c and c.is_lora else None, "micro_batch": c.micro_batch if c else None,
                     "grad_accum": c.grad_accum if c else None, "checkpointing": c.gradient_checkpointing if c else None,
                     "optimizer": c.optimizer if c else None,
                     "memory_gib": o.plan.estimate.device_bytes / 2**30 if o.plan else None, "usable_gib": o.usable_bytes / 2**30,
                     "memory_low_gib": mem[0] / 2**30 if mem else None, "memory_high_gib": mem[1] / 2**30 if mem else None,
                     "memory_basis": o.plan.estimate.memory_basis if o.plan else None,
                     "tokens_per_s": o.tokens_per_s, "hours": o.hours, "gpu_hours": o.gpu_hours,
                     "price_per_gpu_hour": o.price_per_gpu_hour, "price_source": o.price_source, "price_date": o.price_date,
                     "cost_on_demand": o.cost, "cost_spot": o.spot_cost, "cost_per_million_tokens": o.per_million,
                     "cost_per_million_tokens_spot": o.spot_per_million, "breakeven_weeks": o.breakeven_weeks,
                     "cheapest": report.cheapest is o, "fastest": report.fastest is o, "note": o.note,
                     "nvlink": o.nvlink, "interconnect": o.interconnect,
                     "hours_low": o.hours_range[0] if o.hours_range else None,
                     "hours_high": o.hours_range[1] if o.hours_range else None,
                     "cost_low": o.cost_range[0] if o.cost_range else None,
                     "cost_high": o.cost_range[1] if o.cost_range else None,
                     "range_basis": o.range_basis, "spot_label": o.spot_label})
    out = {"options": pd.DataFrame(rows)}
    if report.trials:
        out["trials"] = pd.DataFrame([{"trial": t["number"], "state": t["state"], "reason": t.get("reason", ""),
                                       **{f"predicted_{k}": v for k, v in (t.get("predicted") or {}).items()},
                                       **{f"measured_{k}": v for k, v in (t.get("measured") or {}).items()}}
                                      for t in report.trials])
    return out


def write_tables(report: Report, csv_path: str | Path | None = None, json_path: str | Path | None = None) -> list[Path]:
    """The options table as CSV and/or JSON (records), written atomically."""
    try:
        df = frames(report)["options"]
    except ImportError:
        raise FtplanError("--csv/--json exports need pandas: pip install 'ftplan[report]'") from None
    written = []
    if csv_path:
        atomic_write_text(Path(csv_path), df.to_csv(index=False))
        written.append(Path(csv_path))
    if json_path:
        atomic_write_text(Path(json_path), df.to_json(orient="records", indent=1))
        written.append(Path(json_path))
    return written


def find_browser() -> str | None:
    """Chromium or Chrome on PATH (Debian's ``chromium`` first), or ``$FTPLAN_BROWSER``."""
    env = os.environ.get("FTPLAN_BROWSER")
    if env:
        return env if shutil.which(env) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def require_browser() -> str:
    """The browser ``write_pdf`` will use, or an error saying none is installed and how to get one."""
    browser = find_browser()
    if browser is None:
        raise FtplanError("--pdf needs Chromium or Chrome and none is installed "
                          "(Debian: apt-get install chromium; or set FTPLAN_BROWSER to its path)")
    return browser


def write_pdf(html_path: str | Path, pdf_path: str | Path, timeout: float = 120.0) -> Path:
    """Print the HTML page to PDF with headless Chromium (the page's print stylesheet applies)."""
    browser = require_browser()
    pdf = Path(pdf_path)
    pdf.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        fd, tmp = tempfile.mkstemp(dir=pdf.parent, suffix=".pdf.tmp")
        os.close(fd)
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--no-pdf-header-footer",
               "--virtual-time-budget=10000", f"--print-to-pdf={tmp}", Path(html_path).resolve().as_uri()]
        try:
            subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
            if os.path.getsize(tmp) == 0:
                raise FtplanError(f"{browser} wrote no PDF")
            os.chmod(tmp, 0o644)
            os.replace(tmp, pdf)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return pdf
