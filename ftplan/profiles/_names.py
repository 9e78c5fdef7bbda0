"""Name normalisation shared by the GPU and model catalogs."""

from __future__ import annotations

import re


def norm_name(s: str) -> str:
    """Lower-case, drop everything but letters, digits and dots: 'RTX 4090' == 'rtx-4090' == 'rtx4090'."""
    return re.sub(r"[^a-z0-9.]", "", s.lower())
