"""The benchmark's own processes: workers and the image host (see :mod:`streaminfer.processes`)."""

from __future__ import annotations

import sys
from pathlib import Path

from streaminfer.net import free_port
from streaminfer.processes import STREAMINFER, ManagedProcess, wait_http_ok


class ImageHostProcess(ManagedProcess):
    """The images' web host (:mod:`streaminfer.bench.imagehost`) on a free loopback port."""

    def __init__(self, directory: Path, probe_file: str, log_path: Path) -> None:
        self.port = free_port()
        args = [sys.executable, "-m", "streaminfer.bench.imagehost", str(directory), str(self.port)]
        super().__init__("image host", args, log_path)
        wait_http_ok(self, self.port, f"/{probe_file}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def worker_process(args: list[str], log_path: Path) -> ManagedProcess:
    """``streaminfer run`` with ``args``; its readiness shows as its first output."""
    return ManagedProcess("worker", [*STREAMINFER, "run", *args], log_path)


def quix_process(python: Path, args: list[str], log_path: Path) -> ManagedProcess:
    """The Quix Streams application (:mod:`streaminfer.bench.quixapp`) under ``python``."""
    command = [str(python), "-m", "streaminfer.bench.quixapp", *args]
    return ManagedProcess("Quix Streams app", command, log_path)
