"""A user's price file: ``gpu,price_per_hour[,spot_price_per_hour][,purchase_price][,source][,date]``.

Every row is checked: a GPU the catalog does not know, a missing, unreadable or negative price is an
error naming the file and line. Prices are US dollars per GPU-hour; ``purchase_price`` is US dollars
per GPU (for the owned-versus-rented break-even).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..atomic import check_input
from ..errors import FtplanError
from ..profiles.gpus import get_gpu


@dataclass(frozen=True)
class Price:
    gpu: str
    per_hour: float
    spot_per_hour: float | None = None
    purchase: float | None = None
    source: str = ""
    date: str = ""


def _number(raw: str | None, field: str, where: str, required: bool) -> float | None:
    if raw is None or not raw.strip():
        if required:
            raise FtplanError(f"{where}: {field} is missing")
        return None
    try:
        v = float(raw.replace("$", "").replace(",", ""))
    except ValueError:
        raise FtplanError(f"{where}: {field}={raw!r} is not a number") from None
    if v < 0:
        raise FtplanError(f"{where}: {field}={raw!r} must not be negative")
    return v


def read_prices(path: str | Path) -> dict[str, Price]:
    p = check_input(path, "price file")
    try:
        return _read_prices(p)
    except UnicodeDecodeError as e:
        raise FtplanError(f"price file {p}: not UTF-8 text (byte {e.start + 1})") from None
    except csv.Error as e:
        raise FtplanError(f"price file {p}: not CSV ({e})") from None


def _read_prices(p: Path) -> dict[str, Price]:
    out: dict[str, Price] = {}
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = {c.strip() for c in (reader.fieldnames or [])}
        if not {"gpu", "price_per_hour"} <= cols:
            raise FtplanError(f"{p}: needs the columns gpu and price_per_hour (has: {', '.join(sorted(cols)) or 'none'})")
        for n, row in enumerate(reader, 2):
            row = {k.strip(): (v or "") for k, v in row.items() if k}
            where = f"{p}:{n}"
            if not row.get("gpu", "").strip():
                raise FtplanError(f"{where}: gpu is missing")
            try:
                key = get_gpu(row["gpu"].strip()).key
            except FtplanError as e:
                raise FtplanError(f"{where}: {e}") from None
            out[key] = Price(key, _number(row.get("price_per_hour"), "price_per_hour", where, True) or 0.0,
                             _number(row.get("spot_price_per_hour"), "spot_price_per_hour", where, False),
                             _number(row.get("purchase_price"), "purchase_price", where, False),
                             row.get("source", "").strip() or f"{p.name}", row.get("date", "").strip())
    if not out:
        raise FtplanError(f"price file {str(p)!r} has no rows")
    return out
