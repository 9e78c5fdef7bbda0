"""The ``ftplan`` command (typer). One file per command; the logic lives in the library."""

from __future__ import annotations

import typer

from .autotune import autotune_command
from .fit import fit_callback
from .gpus import gpus_command
from .models import models_command
from .profile import profile_command
from .report import report_command
from .trace import trace_command
from .train import train_command

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=False, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Will this fine-tune fit, how should it be configured, how long and what will it cost?")
app.callback(invoke_without_command=True)(fit_callback)
app.command("gpus")(gpus_command)
app.command("models")(models_command)
app.command("profile")(profile_command)
app.command("trace")(trace_command)
app.command("autotune")(autotune_command)
app.command("train")(train_command)
app.command("report")(report_command)


def main() -> None:
    """The console script: typer's own exit codes, and any exception that escapes a command as an internal
    error (``crash``: exit 3, one line, the traceback in a log file)."""
    import sys

    try:
        app()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as e:  # a bug: never a traceback on the terminal
        from .crash import out_of_memory, report_internal_error

        if out_of_memory(e):  # the machine ran out of memory (building a model too large for its RAM)
            sys.stderr.write(f"out of memory: {str(e).splitlines()[0][:200]}; use a smaller model or a larger "
                             "machine\n")
            sys.exit(1)
        sys.exit(report_internal_error(e))
