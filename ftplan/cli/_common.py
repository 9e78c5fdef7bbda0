"""Error handling shared by the commands: a one-line message and exit code 2 for bad input (1 for a write
the machine refused)."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import typer

from ..errors import FtplanError


@contextmanager
def user_errors():
    try:
        yield
    except FtplanError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def echo_json(text: str) -> None:
    sys.stdout.write(text + "\n")
