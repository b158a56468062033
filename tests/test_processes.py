"""Child processes started by the bench and the demo are stopped however the wait for
them ends (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from streaminfer.errors import InfrastructureError
from streaminfer.net import free_port
from streaminfer.processes import ManagedProcess, ended, interrupted_by_sigterm, wait_http_ok

NEVER_READY = [sys.executable, "-c", "import time; time.sleep(120)"]


def test_a_process_interrupted_while_starting_is_stopped(tmp_path: Path) -> None:
    """SIGTERM (``timeout``, a cancelled job) during the wait for readiness: no ``with``
    holds the process yet, so the wait itself must stop it."""
    process = ManagedProcess("never ready", NEVER_READY, tmp_path / "child.log")
    sigterm = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        with interrupted_by_sigterm(), pytest.raises(KeyboardInterrupt):
            sigterm.start()
            wait_http_ok(process, free_port(), "/", timeout=60)
    finally:
        sigterm.cancel()  # had the wait ended first, SIGTERM would stop the test run
    assert not process.alive()


def test_a_process_not_ready_in_time_is_stopped(tmp_path: Path) -> None:
    process = ManagedProcess("never ready", NEVER_READY, tmp_path / "child.log")
    with pytest.raises(InfrastructureError, match="not ready within"):
        wait_http_ok(process, free_port(), "/", timeout=0.5)
    assert not process.alive()


def test_ended_waits_for_every_process_and_says_whether_all_ended() -> None:
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert ended(quick.pid, timeout=30)  # reaped here: not left a zombie
        assert not ended(quick.pid, slow.pid, timeout=0.3)
        slow.kill()
        assert ended(quick.pid, slow.pid, timeout=30)
    finally:
        slow.kill()
        slow.wait()
