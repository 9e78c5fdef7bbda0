"""The torch stack that measuring (``ftplan.measure``) and training (``ftplan.train``) both run, in one
place: torch, transformers, peft and bitsandbytes are imported lazily, never by ``import ftplan``.

- ``env``: is the stack installed, which device, is an error an out-of-memory, the run's provenance
- ``build``: HF configs, models with real or synthetic weights, quantization, PEFT
- ``optim``: the autocast region and the optimizer of a training step, as HF Trainer sets them up
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

STACK_LOGGERS = ("bitsandbytes", "transformers", "peft", "accelerate", "huggingface_hub")


@contextlib.contextmanager
def quiet_stack() -> Iterator[None]:
    """Inside the block, the stack's import-time notices and warnings (missing optional kernels,
    deprecations) are not shown, so that a command's output is its own; errors still surface.

    For the command line and scripts only: the library never calls it, so a program that imports
    ftplan keeps its own warning filters and log levels. Everything is restored on exit."""
    levels = {name: logging.getLogger(name).level for name in STACK_LOGGERS}
    verbosity = os.environ.get("TRANSFORMERS_VERBOSITY")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        with warnings.catch_warnings():
            for name in STACK_LOGGERS:
                logging.getLogger(name).setLevel(logging.ERROR)
            for mod in (*STACK_LOGGERS, "torch"):
                warnings.filterwarnings("ignore", module=mod)
            for category in (UserWarning, FutureWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category)
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if verbosity is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        else:
            os.environ["TRANSFORMERS_VERBOSITY"] = verbosity
