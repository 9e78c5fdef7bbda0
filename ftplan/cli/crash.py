"""What a bug looks like from the outside: exit code 3, one line naming the error and a log file that holds
the traceback, and a request to report it. Nothing else prints a traceback (``main``)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

INTERNAL_ERROR = 3  # exit code of an internal error (0 fits/done, 1 nothing fits/run failed, 2 bad input)


def log_dir() -> Path:
    """``$FTPLAN_LOG_DIR``, else ``~/.cache/ftplan/crashes``."""
    env = os.environ.get("FTPLAN_LOG_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ftplan" / "crashes"


def write_log(text: str) -> str:
    """The traceback in a new file of the log folder (the system's temporary folder when that one cannot be
    written); its path."""
    name = f"ftplan-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            with open(path, "x", encoding="utf-8", errors="backslashreplace") as f:
                f.write(text)
            return str(path)
        except OSError:
            continue
    return "(no log: neither the log folder nor the temporary folder can be written)"


def out_of_memory(exc: BaseException) -> bool:
    """A run that failed for want of memory (a result, exit 1), not a bug."""
    from ..stack.env import OOM_TEXT  # the texts is_oom reads (stack.env imports no torch at module level)

    return isinstance(exc, MemoryError) or any(t in str(exc).lower() for t in OOM_TEXT)


def report_internal_error(exc: BaseException) -> int:
    """Write the traceback of ``exc`` to a log, print one line, return the exit code."""
    text = "ftplan " + " ".join(sys.argv[1:]) + "\n\n" + "".join(traceback.format_exception(exc))
    path = write_log(text)
    what = f"{type(exc).__name__}: {exc}".splitlines()[0][:300] if str(exc) else type(exc).__name__
    sys.stderr.write(f"internal error ({what}); the traceback is in {path}. This is a bug in ftplan: please "
                     "report it to its maintainers with that file.\n")
    return INTERNAL_ERROR
