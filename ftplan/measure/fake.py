"""Helpers shared by the full-size traces (``measure.trace``, ``measure.sharded_trace``)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def unpacked_positions():
    """transformers checks ``position_ids`` for packed sequences by reading their values; a fake tensor
    has none, so it assumes packing and builds an explicit O(s^2) mask that a real run of the same
    batch (positions ``0..s-1``, one sequence per row) would not. Answer the check as the real run does."""
    try:
        from transformers import masking_utils
    except ImportError:  # transformers before 4.53 has no packed-sequence detection
        yield
        return
    if not hasattr(masking_utils, "find_packed_sequence_indices"):
        yield
        return
    orig = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = orig
