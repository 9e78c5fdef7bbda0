"""Bridges from a plan to other libraries' objects (imported lazily; ``import ftplan`` loads none)."""
