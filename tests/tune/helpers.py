"""Helpers for the tuner's process tests: wait for a condition, tell whether a process is gone."""

import os
import time


def wait_for(what: str, check, timeout: float = 240.0, proc=None):
    """Poll ``check`` until it returns something truthy and return that; fail naming ``what`` after
    ``timeout`` seconds, or at once when ``proc`` (a Popen with stderr piped) ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the autotune process ended (exit {proc.returncode}) before {what}: "
                                 f"{proc.stderr.read()[-2000:]}")
        try:
            found = check()
        except Exception:  # noqa: BLE001 - what is checked may not exist yet (a study, a log file)
            found = None
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")


def process_gone(pid: int) -> bool:
    """True when ``pid`` has exited: no such process, or a zombie nobody reaped yet (an orphan's new
    parent, e.g. a container's init, may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return state in ("Z", "X")
