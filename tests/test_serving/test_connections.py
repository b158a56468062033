"""Connections that never send a request: a real server closes them after
``--body-timeout`` (REST and gRPC), and closes REST connections past ``--max-connections``
at once, so that clients holding connections open cannot grow it without bound."""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import grpc
import httpx
import pytest

from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from streaminfer.serving.connections import Connections, listeners
from tests.servers import ServerProcess, self_signed
from tests.support import wait_for

LIMIT = 24
BODY_TIMEOUT_S = 3.0
PARTIAL_HEAD = b"POST /v1/models/model:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 9"


@pytest.fixture(scope="module", params=["http", "https"])
def limited_server(
    request: pytest.FixtureRequest, model_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp(f"limited-{request.param}")
    tls: list[str] = []
    if request.param == "https":
        cert, key = self_signed(folder)
        tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    limits = ["--max-connections", str(LIMIT), "--body-timeout", str(BODY_TIMEOUT_S)]
    with ServerProcess(model_repo, *limits, *tls, log=folder / "serve.log") as server:
        yield server


def _connect(server: ServerProcess, stack: ExitStack, *, handshake: bool) -> socket.socket:
    """A raw connection to the REST port; over TLS, made only if ``handshake``."""
    sock = stack.enter_context(socket.create_connection(("127.0.0.1", server.rest_port)))
    if server.ca_cert is None or not handshake:
        return sock
    context = ssl.create_default_context(cafile=str(server.ca_cert))
    return stack.enter_context(context.wrap_socket(sock, server_hostname="localhost"))


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (what it sent is dropped)."""
    deadline = time.monotonic() + seconds
    while select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return True
    return False


def _refused(server: ServerProcess) -> float:
    return server.gauge("streaminfer_server_rest_connections_refused")


def _served(server: ServerProcess) -> bool:
    with server.client() as client:
        return client.get("/v2/health/live", timeout=5).status_code == 200


def test_connections_past_the_limit_are_closed_at_once_and_the_others_after_the_timeout(
    limited_server: ServerProcess,
) -> None:
    """Held open with part of a request head (over TLS, before the handshake)."""
    server = limited_server
    before = _refused(server)  # its connection may still count for a moment
    with ExitStack() as stack:
        started = time.monotonic()
        opened = []
        for _ in range(LIMIT + 8):
            sock = _connect(server, stack, handshake=False)
            if server.ca_cert is None:
                sock.sendall(PARTIAL_HEAD)
            opened.append(sock)
        # Those past the limit are closed as they come; the metrics request's connection
        # may still have counted when the first of them came.
        wait_for(lambda: sum(_closed_within(s, 0) for s in opened) >= 8, 2, "closed at once")
        refused = [sock for sock in opened if _closed_within(sock, 0)]
        held = [sock for sock in opened if sock not in refused]
        assert len(refused) in (8, 9), len(refused)
        assert all(_closed_within(sock, BODY_TIMEOUT_S + 5) for sock in held)
        assert time.monotonic() - started >= BODY_TIMEOUT_S - 0.5
    wait_for(lambda: _served(server), 10, "the server to serve again")
    assert _refused(server) - before in (8, 9)


def test_a_head_sent_a_byte_at_a_time_gets_no_more_time(limited_server: ServerProcess) -> None:
    """The deadline runs from the connection's start: bytes trickling in do not renew it."""
    with ExitStack() as stack:
        sock = _connect(limited_server, stack, handshake=True)
        started = time.monotonic()
        closed = False
        for byte in PARTIAL_HEAD * 10:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                closed = True
            if closed or _closed_within(sock, 0.1):
                break
        else:
            raise AssertionError("the server kept a head that never ended")
        assert BODY_TIMEOUT_S - 0.5 <= time.monotonic() - started <= BODY_TIMEOUT_S + 5


def test_a_kept_alive_connection_is_closed_after_the_timeout_without_a_request(
    limited_server: ServerProcess,
) -> None:
    server = limited_server
    if server.ca_cert is None:
        connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    else:
        context = ssl.create_default_context(cafile=str(server.ca_cert))
        connection = http.client.HTTPSConnection(
            "localhost", server.rest_port, timeout=10, context=context
        )
    with closing(connection):
        connection.request("GET", "/v2/health/live")
        answer = connection.getresponse()
        assert answer.status == 200 and not answer.will_close
        answer.read()
        answered = time.monotonic()
        assert connection.sock is not None
        assert _closed_within(connection.sock, BODY_TIMEOUT_S + 5)
        assert time.monotonic() - answered >= BODY_TIMEOUT_S - 0.5


def test_a_grpc_connection_without_its_handshake_is_closed_after_the_timeout(
    limited_server: ServerProcess,
) -> None:
    """gRPC's own bound: HTTP/2's preface (and TLS's handshake) within ``--body-timeout``."""
    with ExitStack() as stack:
        sock = stack.enter_context(
            socket.create_connection(("127.0.0.1", limited_server.grpc_port))
        )
        if limited_server.ca_cert is None:  # (plain text to a TLS port is refused at once)
            sock.sendall(b"PRI * HTTP/2.0\r\n")  # a third of the preface
        started = time.monotonic()
        assert _closed_within(sock, BODY_TIMEOUT_S + 5)
        assert time.monotonic() - started >= BODY_TIMEOUT_S - 0.5


def test_grpc_connections_past_the_limit_are_closed_at_once(
    limited_server: ServerProcess,
) -> None:
    """gRPC's own limit (``grpc.max_allowed_incoming_connections``), counting connections
    that have not made their handshake."""
    with ExitStack() as stack:
        address = ("127.0.0.1", limited_server.grpc_port)
        opened = [stack.enter_context(socket.create_connection(address)) for _ in range(LIMIT + 8)]
        wait_for(lambda: sum(_closed_within(s, 0) for s in opened) >= 8, 2, "closed at once")
        assert sum(_closed_within(s, 0) for s in opened) in (8, 9)


@pytest.mark.parametrize("host", ["::", ""])
def test_a_server_on_every_interface_answers_over_ipv6_and_ipv4(
    host: str, model_repo: Path, tmp_path: Path
) -> None:
    """``--host ::`` (an IPv6-only cluster's) and ``--host ""``: gRPC took ``:::8500`` for a
    domain name and refused to start."""
    with ServerProcess(model_repo, "--host", host, log=tmp_path / "serve.log") as server:
        for address in ("[::1]", "127.0.0.1"):
            answer = httpx.get(f"http://{address}:{server.rest_port}/v2/health/live", timeout=10)
            assert answer.status_code == 200, address
            with grpc.insecure_channel(f"{address}:{server.grpc_port}") as channel:
                stub = v2_grpc.GRPCInferenceServiceStub(channel)
                assert stub.ServerLive(v2.ServerLiveRequest(), timeout=10).live, address
        assert f"gRPC [::]:{server.grpc_port}" in server.log


def test_listeners_bind_every_address_on_one_port() -> None:
    connections = Connections(limit=1, on_refused=lambda: None)
    bound = listeners("", 0, connections)
    try:
        ports = {sock.getsockname()[1] for sock in bound}
        families = [sock.family for sock in bound]
        assert len(ports) == 1 and ports != {0}
        assert socket.AF_INET in families and len(set(families)) == len(families)
    finally:
        for sock in bound:
            sock.close()


def test_an_accepted_connection_counts_until_it_is_closed() -> None:
    refusals: list[int] = []
    connections = Connections(limit=1, on_refused=lambda: refusals.append(1))
    (listener,) = listeners("127.0.0.1", 0, connections)
    with listener:
        listener.listen()
        address = listener.getsockname()
        with socket.create_connection(address), socket.create_connection(address) as second:
            accepted, _ = listener.accept()
            assert connections.open == 1
            listener.setblocking(False)
            with pytest.raises(BlockingIOError):  # the second closed, and none waits after it
                listener.accept()
            assert refusals == [1]
            assert _closed_within(second, 2)
            accepted.close()
            assert connections.open == 0
            accepted.close()  # closing twice counts once
            assert connections.open == 0
