"""Bytes per element of the formats the planner knows."""

from __future__ import annotations

from ...errors import FtplanError

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "int8": 1,
               "uint8": 1, "bool": 1, "int64": 8}


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise FtplanError(f"unknown dtype {dtype!r}; valid: {', '.join(sorted(DTYPE_BYTES))}") from None
