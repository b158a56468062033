"""SIGTERM while requests are in flight: they all complete, and the process exits 0."""

from __future__ import annotations

import re
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from tests.repository import MODEL
from tests.servers import ServerProcess
from tests.support import wait_for

IN_FLIGHT = re.compile(r'streaminfer_server_in_flight_requests\{protocol="tfserving_rest"\} (\S+)')


def test_sigterm_drains_in_flight_requests(model_repo: Path, tmp_path: Path) -> None:
    # A long batching delay keeps the requests in flight until the batch times out.
    args = ("--max-batch-delay-ms", "1500", "--max-batch-size", "64")
    body = {"instances": np.zeros((1, 3, 224, 224), np.float32).tolist()}

    def predict() -> httpx.Response:
        with server.client() as client:
            return client.post(f"/v1/models/{MODEL}:predict", json=body)

    def in_flight() -> float:
        with server.client() as client:
            match = IN_FLIGHT.search(client.get("/metrics").text)
        return float(match.group(1)) if match else 0.0

    with (
        ServerProcess(model_repo, *args, log=tmp_path / "serve.log") as server,
        ThreadPoolExecutor(4) as pool,
    ):
        replies = [pool.submit(predict) for _ in range(4)]
        wait_for(lambda: in_flight() == 4, what="four requests in flight")
        server.process.send_signal(signal.SIGTERM)
        statuses = [reply.result().status_code for reply in replies]
        assert server.process.wait(60) == 0
        assert "SIGTERM received" in server.log
    assert statuses == [200] * 4
