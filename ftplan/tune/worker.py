"""A long-lived trial worker: ``python -m ftplan.tune.worker``.

It imports the training stack once, then answers requests, one JSON object per line on stdin:
``{"trial": n, "model": ..., "knobs": {...}, "steps": 3, "device": "cuda", "max_memory_bytes": ...}``.
On its protocol channel (the original stdout; anything the libraries print goes to stderr) it writes
one JSON line per event: ``{"event": "ready"}`` once, then per request ``{"event": "step", ...}`` after
each measured step and ``{"event": "result", "result": {...}}`` (the ``ftplan profile`` result: an
out-of-memory run is a result with ``status: "oom"``) or ``{"event": "error", "error": "..."}``.

``FTPLAN_TUNE_FAULT`` injects faults for tests of the tuner itself: ``crash@N`` makes the worker die
(exit 3) on trial N, ``hang@N`` makes it hang there (the parent's timeout must fire), ``oom@N`` runs
trial N under a 1-byte simulated memory cap (a real out-of-memory result from the profiler).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback


def _fault(trial: int, req: dict) -> None:
    spec = os.environ.get("FTPLAN_TUNE_FAULT", "")
    for part in filter(None, spec.split(",")):
        what, _, n = part.partition("@")
        if n.strip().isdigit() and int(n) == trial:
            if what == "crash":
                os._exit(3)
            if what == "hang":
                time.sleep(3600)
            if what == "oom":
                req["max_memory_bytes"] = 1


def serve() -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from the stack cannot corrupt the protocol
    sys.stdout = sys.stderr

    def send(obj) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

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
    from ..stack import quiet_stack

    with quiet_stack():
        rc = serve()
    sys.exit(rc)
