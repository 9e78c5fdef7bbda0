"""The parent's side of a trial worker: start it, send a trial, read its events with a deadline,
and replace it after a crash, a timeout or a CUDA out-of-memory result (a CUDA context that ran out
of memory is not trusted for the next trial).

A worker that never says it is ready is a setup error (``WorkerStartError``), not a failed trial: the
same error would fail every trial. Its message names the exception the worker died of (the last line
of its traceback) and the worker's log; when that exception is the user's environment (a package
missing or broken) it is also an ``FtplanError``, which the command line reports as bad input.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FtplanError

# exceptions a worker dies of before it is ready because of the user's environment, not ftplan
ENVIRONMENT_ERRORS = ("ImportError", "ModuleNotFoundError", "FtplanError", "OSError")


@dataclass
class Outcome:
    kind: str  # result | crash | timeout | error | pruned
    result: dict[str, Any] | None = None
    reason: str = ""
    steps: list[dict] = field(default_factory=list)


class WorkerStartError(RuntimeError):
    """A trial worker that ended, or stayed silent, before it said it was ready."""

    def __init__(self, message: str, log_path: Path, exception: str | None) -> None:
        super().__init__(message)
        self.log_path, self.exception = log_path, exception


class WorkerEnvironmentError(WorkerStartError, FtplanError):
    """A worker that could not start because of the user's environment (e.g. a missing package)."""


def last_exception(text: str) -> str | None:
    """The exception line of the last traceback in ``text`` (``ImportError: No module named 'x'``), the
    first line of its message only; None when ``text`` holds no traceback. Why the last traceback's own
    line: the start of a traceback says where, never what."""
    lines = text.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if not heads:
        return None
    for line in lines[heads[-1] + 1:]:
        if line.strip() and not line[0].isspace():
            return line.strip()
    return None


def start_error(log_path: Path, returncode: int | None, timeout: float | None) -> WorkerStartError:
    """The error for a worker that was not ready: what it died of (from its log) and where its log is;
    an ``FtplanError`` too when the exception is one of ``ENVIRONMENT_ERRORS``."""
    try:
        exc = last_exception(log_path.read_text(errors="replace"))
    except OSError:
        exc = None
    where = f"see its log: {log_path}"
    if timeout is not None:
        msg = f"the trial worker did not say it was ready within {timeout:g} s ({where})"
    elif exc is not None:
        msg = f"the trial worker could not start: {exc} ({where})"
    else:
        msg = f"the trial worker could not start: it exited with status {returncode} before it was ready ({where})"
    kind = exc.split(":", 1)[0].rsplit(".", 1)[-1] if exc else ""
    cls = WorkerEnvironmentError if timeout is None and kind in ENVIRONMENT_ERRORS else WorkerStartError
    return cls(msg, log_path, exc)


class Worker:
    """One ``python -m ftplan.tune.worker`` process, in a session of its own (a terminal's Ctrl-C is the
    tuner's to handle) that ends with this process however it ends (``--parent``, see the worker)."""

    def __init__(self, log_path: Path, start_timeout: float = 300.0, env: dict | None = None) -> None:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "ftplan.tune.worker", "--parent", str(os.getpid())],
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, start_new_session=True,
                                     env={**os.environ, **(env or {})})
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ev = self._next(start_timeout)
        if ev is None or ev.get("event") != "ready":
            timed_out = ev is not None and ev.get("event") == "timeout"
            self.kill()
            raise start_error(log_path, self.proc.returncode, start_timeout if timed_out else None)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                self.events.put(json.loads(raw))
            except ValueError:
                continue
        self.events.put(None)  # end of stream: the process is gone

    def _next(self, timeout: float) -> dict | None:
        try:
            return self.events.get(timeout=max(timeout, 0.01))
        except queue.Empty:
            return {"event": "timeout"}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 6) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in lines[-n:])

    def run(self, request: dict[str, Any], timeout: float,
            on_step: Callable[[dict], bool] | None = None) -> Outcome:
        """Send one trial; wait at most ``timeout`` seconds. ``on_step`` returning True prunes it."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return Outcome("crash", reason=f"worker gone before the trial: {self.tail()}")
        deadline = time.monotonic() + timeout
        steps: list[dict] = []
        while True:
            ev = self._next(deadline - time.monotonic())
            if ev is None:
                self.proc.wait(timeout=10)
                return Outcome("crash", reason=f"worker died (exit {self.proc.returncode}): {self.tail()}",
                               steps=steps)
            kind = ev.get("event")
            if kind == "timeout":
                self.kill()
                return Outcome("timeout", reason=f"no result within {timeout:g} s", steps=steps)
            if kind == "step":
                steps.append(ev)
                if on_step is not None and on_step(ev):
                    self.kill()
                    return Outcome("pruned", reason=f"pruned after step {ev['step']}", steps=steps)
            elif kind == "result":
                return Outcome("result", result=ev["result"], steps=steps)
            elif kind == "error":
                return Outcome("error", reason=ev.get("error", ""), steps=steps)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


class Pool:
    """Keeps one worker alive across trials; replaces it after anything but a clean result (an
    out-of-memory result on the CPU is clean: the cap is simulated and the memory is freed)."""

    def __init__(self, folder: Path, env: dict | None = None) -> None:
        self.folder = folder
        self.env = env
        self.worker: Worker | None = None
        self.started = 0

    def start(self) -> None:
        """Have a live worker (start one when there is none). The tuner calls it before it asks the study
        for a trial, so that a worker that cannot start leaves no trial behind. Raises ``WorkerStartError``."""
        if self.worker is not None and self.worker.alive():
            return
        if self.worker is not None:
            self.worker.kill()  # gone already: this closes its log
            self.worker = None
        self.started += 1
        self.worker = Worker(self.folder / f"worker-{os.getpid()}-{self.started}.log", env=self.env)

    def run(self, request: dict[str, Any], timeout: float, on_step=None) -> Outcome:
        """Run one trial in the worker (started first when needed: ``WorkerStartError`` when it cannot)."""
        self.start()
        assert self.worker is not None
        out = self.worker.run(request, timeout, on_step)
        status = (out.result or {}).get("status")
        clean = out.kind == "result" and (status == "ok" or (status == "oom" and request.get("device") == "cpu"))
        if not clean or not self.worker.alive():
            self.worker.kill()
            self.worker = None
        return out

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
