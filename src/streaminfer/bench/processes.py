"""The processes a benchmark starts: workers, the model server, the image host.

Each runs as its own OS process, as it would in production, so its CPU time and peak
memory can be read from ``/proc`` without disturbing it, and a crash shows up as an
exit code and a log instead of taking the benchmark down.
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from streaminfer.bench.measure import cpu_seconds, peak_rss_mb
from streaminfer.errors import InfrastructureError
from streaminfer.kafka.broker import free_port

STREAMINFER = (sys.executable, "-m", "streaminfer.cli.main")
_READY_TIMEOUT_S = 90.0
_POLL_S = 0.05


class ManagedProcess:
    """A child process writing to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> InfrastructureError:
        """An error naming the process, its exit code if it died, and the end of its log."""
        code = self.process.poll()
        state = f"exit code {code}" if code is not None else "still running"
        return InfrastructureError(
            f"{self.name}: {what} ({state}; log {self.log_path}):\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 30.0) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def wait_http_ok(
    process: ManagedProcess, port: int, path: str, timeout: float = _READY_TIMEOUT_S
) -> None:
    """Poll ``http://127.0.0.1:<port><path>`` until it answers 200; fail early if it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise process.failure("did not start")
        if _answers_ok(port, path):
            return
        time.sleep(_POLL_S)
    process.stop()
    raise process.failure(f"was not ready within {timeout:.0f}s")


def _answers_ok(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


class ModelServerProcess(ManagedProcess):
    """``streaminfer serve`` on free loopback ports, returned once it reports ready."""

    def __init__(self, repo: Path, log_path: Path) -> None:
        self.grpc_port, self.rest_port = free_port(), free_port()
        args = [
            *STREAMINFER,
            "serve",
            "--repo",
            str(repo),
            "--grpc-port",
            str(self.grpc_port),
            "--rest-port",
            str(self.rest_port),
        ]
        super().__init__("model server", args, log_path)
        wait_http_ok(self, self.rest_port, "/v2/health/ready")

    def address(self, rest: bool) -> str:
        """``host:port`` of the REST or the gRPC port."""
        return f"127.0.0.1:{self.rest_port if rest else self.grpc_port}"


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
