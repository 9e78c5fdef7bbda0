"""A trial worker ends with its tuner: the portable fallback (polling the parent's process id) on its
own, and a worker started for a parent that is already gone. The whole path, with the kernel's death
signal, is ``test_autotune.py::test_worker_dies_with_its_parent``."""

import os
import signal
import subprocess
import sys
import time

import pytest

from ftplan.tune import worker
from tests.tune.helpers import process_gone

# a parent that starts a child in a session of its own which watches it (as the worker does, minus the
# kernel's death signal), says the child's pid and waits to be killed
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import os, threading, time
from ftplan.tune.worker import _watch_parent
threading.Thread(target=_watch_parent, args=(os.getppid(), True), daemon=True).start()
time.sleep(60)
'''], start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process ids and signals")
def test_fallback_notices_the_parent_is_gone():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        time.sleep(0.5)  # the watcher is running
        assert not process_gone(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 3 * worker.WATCH_PARENT_S + 2
        while not process_gone(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process_gone(child), "the watcher did not notice its parent was gone"
    finally:
        if not process_gone(child):
            os.kill(child, signal.SIGKILL)


def test_worker_for_a_parent_already_gone_exits_at_once():
    p = subprocess.run([sys.executable, "-m", "ftplan.tune.worker", "--parent", str(2**22 + 12345)],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert p.returncode == worker.EXIT_ORPHANED and '"ready"' not in p.stdout


def test_fallback_watches_a_tuner_behind_a_launcher():
    """When something sits between tuner and worker (a launcher that starts the interpreter as its own
    child), the worker's parent is not the tuner: the watcher looks for the tuner's process instead."""
    tuner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                              "from ftplan.tune.worker import _watch_parent\n"
                              f"threading.Thread(target=_watch_parent, args=({tuner.pid}, False), daemon=True).start()\n"
                              "time.sleep(60)"])
    try:
        time.sleep(0.5)
        assert child.poll() is None
        tuner.kill()
        tuner.wait()  # reaped: no process with its id is left
        assert child.wait(timeout=3 * worker.WATCH_PARENT_S + 2) == worker.EXIT_ORPHANED
    finally:
        for p in (tuner, child):
            if p.poll() is None:
                p.kill()
                p.wait()
