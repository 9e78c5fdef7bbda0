"""Errors a user can act on. The CLI prints them on one line and exits with their ``exit_code``: 2 for
bad input, 1 for a write the machine refused (disk full, read-only)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FtplanError(ValueError):
    """A bad value from the user: the message names the value and what would be valid."""

    exit_code = 2


class WriteError(FtplanError):
    """A file could not be written (disk full, read-only, no permission): one line with the path."""

    exit_code = 1


class UnknownNameError(FtplanError, KeyError):
    """An unknown GPU, model, optimizer... with the closest valid names."""

    def __init__(self, kind: str, value: str, valid: Iterable[str], hint: str = ""):
        valid = sorted(set(valid))
        close = difflib.get_close_matches(str(value).lower(), [v.lower() for v in valid], n=5, cutoff=0.5)
        lower_to_name = {v.lower(): v for v in valid}
        close_names = [lower_to_name[c] for c in close]
        msg = f"unknown {kind} {value!r}"
        if close_names:
            msg += f"; did you mean: {', '.join(close_names)}?"
        elif len(valid) <= 12:
            msg += f"; valid: {', '.join(valid)}"
        if hint:
            msg += f" ({hint})"
        self.kind, self.value, self.suggestions = kind, value, close_names
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]
