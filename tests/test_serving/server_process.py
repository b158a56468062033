"""A real ``streaminfer serve`` subprocess on free loopback ports, for the serving tests."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from streaminfer.kafka.broker import free_port
from tests.support import STREAMINFER

START_TIMEOUT = 90.0


class ServerProcess:
    """Starts the server, waits until its readiness endpoint answers, stops it with SIGTERM."""

    def __init__(
        self,
        repo: Path,
        *args: str,
        ca_cert: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.grpc_address = f"127.0.0.1:{self.grpc_port}"
        self.scheme = "https" if ca_cert else "http"
        self.rest_url = f"{self.scheme}://127.0.0.1:{self.rest_port}"
        self.ca_cert = ca_cert
        self._log = tempfile.NamedTemporaryFile(prefix="serve-", suffix=".log", delete=False)  # noqa: SIM115
        command = [
            *STREAMINFER,
            "serve",
            "--repo",
            str(repo),
            "--grpc-port",
            str(self.grpc_port),
            "--rest-port",
            str(self.rest_port),
            *args,
        ]
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self._wait_ready()

    @property
    def log(self) -> str:
        return Path(self._log.name).read_text()

    def client(self, **kwargs: object) -> httpx.Client:
        """An HTTP client for the REST port (trusting the test CA under TLS)."""
        verify = ssl.create_default_context(cafile=self.ca_cert) if self.ca_cert else True
        return httpx.Client(base_url=self.rest_url, verify=verify, timeout=60, **kwargs)  # type: ignore[arg-type]

    def _wait_ready(self) -> None:
        """Poll readiness until it answers 200; fail early if the process dies."""
        deadline = time.monotonic() + START_TIMEOUT
        with self.client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log}")
                try:
                    if client.get("/v2/health/ready").status_code == 200:
                        assert "streaminfer server ready" in self.log
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)  # polling interval, not synchronisation
        self.stop()
        raise RuntimeError(f"server not ready after {START_TIMEOUT}s:\n{self.log}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        os.unlink(self._log.name)
