"""Analytical planner: pure stdlib (no torch, no numpy)."""
