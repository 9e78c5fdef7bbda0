"""A long-lived trial worker: ``python -m ftplan.tune.worker``.

It imports the training stack once, then answers requests, one JSON object per line on stdin:
``{"trial": n, "model": ..., "knobs": {...}, "steps": 3, "device": "cuda", "max_memory_bytes": ...}``.
On its protocol channel (the original stdout; anything the libraries print goes to stderr) it writes
one JSON line per event: ``{"event": "ready"}`` once, then per request ``{"event": "step", ...}`` after
each measured step and ``{"event": "result", "result": {...}}`` (the ``ftplan profile`` result: an
out-of-memory run is a result with ``status: "oom"``) or ``{"event": "error", "error": "..."}``.

``FTPLAN_TUNE_FAULT`` injects faults for tests of the tuner itself: ``crash@N`` makes the worker die
(exit 3) on trial N, ``hang@N`` makes it hang there (the parent's timeout must fire; a line on stderr,
the worker's log, says so first), ``oom@N`` runs trial N under a 1-byte simulated memory cap (a real
out-of-memory result from the profiler), ``startfail`` makes every worker die of an ``ImportError``
before it is ready (as one whose environment lacks a package: a setup error, not a failed trial).

The worker runs in a session of its own (a terminal's Ctrl-C reaches the tuner, which stops it), so
it does not die with its parent by itself: ``--parent PID`` names the tuner, and the worker exits when
that process is gone, even in the middle of a trial (see ``die_with_parent``).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time
import traceback

from .procs import pid_alive

PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies (Linux)
EXIT_ORPHANED = 4  # the exit status of a worker whose parent was gone
WATCH_PARENT_S = 1.0  # how often the fallback looks at the parent's process id


def _fault_parts() -> list[str]:
    """The faults ``FTPLAN_TUNE_FAULT`` asks for (comma-separated), none when it is unset."""
    return [p.strip() for p in os.environ.get("FTPLAN_TUNE_FAULT", "").split(",") if p.strip()]


def _start_fault() -> None:
    """``startfail``: die before "ready" of the error a missing package gives, to test the tuner's setup
    error path (no trial recorded, the exception and the log named)."""
    if "startfail" in _fault_parts():
        raise ImportError("FTPLAN_TUNE_FAULT=startfail: a package the trial worker needs cannot be imported")


def _fault(trial: int, req: dict) -> None:
    for part in _fault_parts():
        what, _, n = part.partition("@")
        if n.strip().isdigit() and int(n) == trial:
            if what == "crash":
                os._exit(3)
            if what == "hang":
                print(f"worker {os.getpid()}: FTPLAN_TUNE_FAULT hangs trial {trial}", file=sys.stderr, flush=True)
                time.sleep(3600)
            if what == "oom":
                req["max_memory_bytes"] = 1


def _request_death_signal() -> bool:
    """Linux: ask the kernel to SIGKILL this process when its parent exits (prctl PR_SET_PDEATHSIG);
    False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0),
                          ctypes.c_ulong(0)) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, direct: bool) -> None:
    """Exit as soon as ``parent`` is gone: this process was adopted by another (``direct``: the tuner
    started it), or no process ``parent`` exists (a launcher sits between them, e.g. a venv redirector)."""
    while os.getppid() == parent if direct else pid_alive(parent):
        time.sleep(WATCH_PARENT_S)
    os._exit(EXIT_ORPHANED)


def die_with_parent(parent: int) -> None:
    """Make this worker end with the tuner ``parent``, however the tuner ends (SIGKILL included).

    On Linux the kernel kills it (PR_SET_PDEATHSIG, set here rather than in a ``preexec_fn``, which is
    unsafe in a parent with threads); the check right after closes the race with a parent that died
    before the request. Everywhere, a daemon thread also watches the parent: a busy worker reads no
    stdin, so it would not notice the end of its input until the trial ended. (On Linux the death
    signal comes when the thread that started the worker exits; the tuner starts its workers from the
    thread that runs the whole study.)"""
    _request_death_signal()
    direct = os.getppid() == parent
    if not direct and not pid_alive(parent):
        os._exit(EXIT_ORPHANED)
    threading.Thread(target=_watch_parent, args=(parent, direct), name="ftplan-watch-parent", daemon=True).start()


def _parent_from_argv(argv: list[str]) -> int:
    """``--parent PID`` from the command line; the process that started this one when not given."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ftplan.tune.worker")
    ap.add_argument("--parent", type=int, default=None, help="the tuner's process id: exit when it is gone")
    return ap.parse_args(argv).parent or os.getppid()


def serve() -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from the stack cannot corrupt the protocol
    sys.stdout = sys.stderr

    def send(obj) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    _start_fault()
    from ..measure.profile import profile
    from ..stack.env import require_stack

    require_stack()
    import peft  # noqa: F401 - pay the imports once, before the first trial
    import torch  # noqa: F401
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        pass
    send({"event": "ready", "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        n = int(req.get("trial", -1))
        _fault(n, req)

        accum = int(req["knobs"].get("grad_accum") or 1)

        def on_step(rec, n=n, accum=accum) -> None:
            send({"event": "step", "trial": n, "step": rec.step, "time_s": rec.time_s,
                  "tokens_per_s": rec.tokens_per_s(accum)})

        try:
            res = profile(req["model"], steps=int(req.get("steps", 3)), device=req.get("device"),
                          synthetic_weights=bool(req.get("synthetic_weights", True)),
                          max_memory_bytes=req.get("max_memory_bytes"), breakdown=req.get("breakdown"),
                          on_step=on_step, argv=req.get("argv"), **req["knobs"])
            send({"event": "result", "trial": n, "result": res})
        except Exception as e:  # noqa: BLE001 - reported to the parent, which records it on the trial
            tb = traceback.format_exc(limit=4)
            send({"event": "error", "trial": n, "error": f"{type(e).__name__}: {e}", "traceback": tb})
    return 0


if __name__ == "__main__":
    die_with_parent(_parent_from_argv(sys.argv[1:]))  # first: the imports below take seconds

    from ..stack import quiet_stack

    with quiet_stack():
        rc = serve()
    sys.exit(rc)
