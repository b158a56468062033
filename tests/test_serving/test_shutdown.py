"""SIGTERM while requests are in flight: they all complete, and the process exits 0."""

from __future__ import annotations

import re
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson

from tests.repository import MODEL
from tests.servers import ServerProcess
from tests.support import wait_for

IN_FLIGHT = re.compile(r'streaminfer_server_in_flight_requests\{protocol="tfserving_rest"\} (\S+)')


def test_sigterm_drains_in_flight_requests(model_repo: Path, tmp_path: Path) -> None:
    # A long batching delay keeps the requests in flight until the batch times out.
    args = ("--max-batch-delay-ms", "1500", "--max-batch-size", "64")
    body = orjson.dumps({"instances": np.zeros((1, 3, 224, 224), np.float32).tolist()})
    path = f"/v1/models/{MODEL}:predict"

    def predict() -> httpx.Response:
        with server.client() as client:
            return client.post(path, content=body)

    def in_flight() -> float:
        with server.client() as client:
            match = IN_FLIGHT.search(client.get("/metrics").text)
        return float(match.group(1)) if match else 0.0

    with (
        ServerProcess(model_repo, *args, log=tmp_path / "serve.log") as server,
        ThreadPoolExecutor(3) as pool,
        socket.create_connection(("127.0.0.1", server.rest_port)) as upload,
        server.client() as kept_alive,
    ):
        assert kept_alive.get(f"/v1/models/{MODEL}").status_code == 200
        replies = [pool.submit(predict) for _ in range(3)]
        # The fourth request's body is half sent when the stop comes: it arrived, so it
        # is served.
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        upload.sendall(head.encode() + body[: len(body) // 2])
        wait_for(lambda: in_flight() == 4, what="four requests in flight")
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "SIGTERM received" in server.log, what="the stop logged")
        upload.sendall(body[len(body) // 2 :])
        # Sent after the stop, while the others are still batching: refused.
        late = kept_alive.post(path, content=body)
        assert late.status_code == 503, late.text
        assert "shutting down" in late.text and late.headers["Retry-After"] == "1"
        statuses = [reply.result().status_code for reply in replies]
        statuses.append(_status(upload))
        assert server.process.wait(60) == 0
    assert statuses == [200] * 4


def _status(connection: socket.socket) -> int:
    """The status code of the HTTP response read from ``connection``."""
    connection.settimeout(60)
    first_line = connection.makefile("rb").readline()
    return int(first_line.split()[1])
