"""Numbers with units as people type them: token counts (``50M``), sizes (``12GiB``) and durations
(``1.5h``). One parser serves the CLI, the library, autotune and the reports, so every command reads
``50M`` or ``12GiB`` the same way and rejects the same nonsense (zero, negatives, NaN, inf). Pure
standard library; it stands alone because every layer above the planner uses it."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from .errors import FtplanError

COUNT_UNITS: Mapping[str, float] = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
BYTE_UNITS: Mapping[str, float] = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
                                   "t": 1e12, "tb": 1e12, "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20,
                                   "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40}
DURATION_UNITS: Mapping[str, float] = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600,
                                        "d": 86400, "day": 86400}

_NUMBER = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*")


def parse_quantity(text: str | float | int, units: Mapping[str, float], name: str, example: str) -> float:
    """``text`` (a number, or digits followed by one of ``units``, case-insensitive) as a finite value
    greater than 0. The error names ``name``, the value and an ``example`` of what is valid."""
    if isinstance(text, bool):
        raise FtplanError(f"{name}={text!r} is not a number; use e.g. {example}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _NUMBER.fullmatch(str(text).lower())
        if not m or m.group(2) not in units:
            raise FtplanError(f"{name}={text!r} is not valid; use e.g. {example}")
        value = float(m.group(1)) * units[m.group(2)]
    if not math.isfinite(value) or value <= 0:
        raise FtplanError(f"{name}={text!r} must be greater than 0 (and finite); use e.g. {example}")
    return value


def parse_count(text: str | float | int, name: str = "tokens") -> float:
    """'50M' -> 5e7, '1.5B' -> 1.5e9, '20000' -> 2e4."""
    return parse_quantity(text, COUNT_UNITS, name, "20000, 50M, 1.5B")


def parse_bytes(text: str | float | int | None, name: str = "--max-memory") -> int | None:
    """'12GiB' -> 12 * 2**30, '500MB' -> 5e8, '2e9' -> 2e9 (GB = 1e9 B, GiB = 2**30 B); None stays None."""
    if text is None:
        return None
    return int(parse_quantity(text, BYTE_UNITS, name, "12GiB, 500MB, 2e9"))


def parse_duration(text: str | float | int | None, name: str = "--time-budget") -> float | None:
    """'90s', '10m', '1.5h', '2d', '600' -> seconds; None stays None."""
    if text is None:
        return None
    return parse_quantity(text, DURATION_UNITS, name, "90s, 10m, 1.5h, 2d")


def whole(name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int within ``[low, high]`` (a bool is not one); an FtplanError naming ``name``, the value
    and the range otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FtplanError(f"{name}={value!r} must be a whole number from {low:,} to {high:,}")
    return value


def real(name: str, value: object, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float within ``[low, high]`` (an open end excludes its bound); an FtplanError
    naming ``name``, the value and the range otherwise (NaN, inf, a bool, text that is not a number)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise FtplanError(f"{name}={value!r} must be a number") from None
    lo = "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
    hi = "" if high is None else (f"< {high:g}" if high_open else f"<= {high:g}")
    rng = " and ".join(x for x in (lo, hi) if x) or "finite"
    if not math.isfinite(v):
        raise FtplanError(f"{name}={value!r} must be a finite number ({rng})")
    if low is not None and (v < low or (low_open and v == low)):
        raise FtplanError(f"{name}={v:g} must be {rng}")
    if high is not None and (v > high or (high_open and v == high)):
        raise FtplanError(f"{name}={v:g} must be {rng}")
    return v


def hours_text(h: float) -> str:
    """A duration in hours as people read it: '12.3 hours', '1.5 hours', '42 minutes', '20 seconds' (a
    thousand-GPU job is not '0.0 hours')."""
    if h >= 1 or h == 0:
        return f"{h:,.1f} hours"
    n, unit = (round(h * 60), "minute") if h * 60 >= 1 else (max(round(h * 3600), 1), "second")
    return f"{n} {unit}{'' if n == 1 else 's'}"
