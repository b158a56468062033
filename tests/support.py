"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

STREAMINFER = [sys.executable, "-m", "streaminfer.cli.main"]


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
