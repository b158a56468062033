"""Real parts for the predictor tests: a loaded registry, and real model server processes."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streaminfer.kafka.broker import free_port
from streaminfer.models.registry import ModelRegistry
from tests.support import STREAMINFER

STARTUP_TIMEOUT_S = 60.0


class ServerProcess:
    """``streaminfer serve`` in a subprocess on fixed ports, so it can be restarted on them."""

    def __init__(
        self, repo: Path, log: Path, *extra_args: str, env: dict[str, str] | None = None
    ) -> None:
        self.repo = repo
        self.log = log
        self.extra_args = extra_args
        self.env = {**os.environ, **(env or {})}
        self.scheme = "https" if "--tls-cert" in extra_args else "http"
        self.grpc_port = free_port()
        self.rest_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_target(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    def target(self, mode: str) -> str:
        return self.rest_target if mode in ("tfserving-rest", "kserve-http") else self.grpc_target

    def requests_served(self) -> float:
        """Inference requests the server has counted, from its Prometheus metrics."""
        text = httpx.get(f"{self.scheme}://{self.rest_target}/metrics", timeout=5).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "streaminfer_server_requests"
            for sample in family.samples
            if sample.name.endswith("_total")
        )

    def start(self) -> None:
        command = [
            *STREAMINFER,
            "serve",
            "--repo",
            str(self.repo),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            str(self.grpc_port),
            "--rest-port",
            str(self.rest_port),
            *self.extra_args,
        ]
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        self._wait_ready()

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _wait_ready(self) -> None:
        """Poll until both ports accept connections (the server loads its models first)."""
        assert self._process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the server exited early:\n{self.log.read_text()[-3000:]}")
            if _accepts(self.grpc_port) and _accepts(self.rest_port):
                return
            time.sleep(0.05)  # polling interval, not a synchronisation
        self.stop()
        raise RuntimeError(f"the server was not ready in time:\n{self.log.read_text()[-3000:]}")


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def registry(model_repo: Path) -> Iterator[ModelRegistry]:
    registry = ModelRegistry(model_repo)
    registry.reload()
    yield registry
    registry.close()


@pytest.fixture(scope="session")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the tests that only talk to it."""
    process = ServerProcess(model_repo, tmp_path_factory.mktemp("server") / "serve.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def own_server(model_repo: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server this test may stop and start again (on the same ports)."""
    process = ServerProcess(model_repo, tmp_path / "serve.log")
    process.start()
    yield process
    process.stop()
