"""Helpers the tests share: running the CLI, awaiting a condition (fixtures: tests/fixtures/)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from streaminfer.processes import STREAMINFER

T = TypeVar("T")


def run_cli(
    *args: str,
    input: bytes | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real ``streaminfer`` command in a subprocess."""
    return subprocess.run(
        [*STREAMINFER, *args],
        input=input.decode() if input else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def wait_for(
    condition: Callable[[], T],
    timeout: float = 60,
    what: str = "a condition",
    interval: float = 0.02,
) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def processes_mentioning(text: str) -> set[int]:
    """Pids of processes whose command line mentions ``text`` (e.g. a demo's home folder)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found
