"""The gRPC envelope, sent raw over HTTP/2 to a real server: calls left idle, odd settings,
metadata, framing and compression.

gRPC's own clients only send well-formed calls, so these tests speak HTTP/2 themselves
(the ``h2`` state machine, no I/O of its own): a call may send its headers and never its
message, declare a length it does not send, mark a message compressed that is not, or
carry metadata no client would.  Whatever it sends, the call ends with a status or a
reset, within ``--body-timeout`` if the client goes quiet, the server answers a well-formed
call afterwards, and its log holds no traceback.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import string
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from streaminfer.serving.grpc_services import HeapTrimmer
from tests.servers import ContinuousPredictions, ServerProcess
from tests.support import wait_for

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
BODY_TIMEOUT_S = 1.0
SERVER_FAULTS = {"2", "13", "15"}  # UNKNOWN, INTERNAL, DATA_LOSS: the server's fault
# gRPC's own answers, in its C core before a call reaches the server, to envelopes that
# break its protocol: INTERNAL, as gRPC answers them in every server built on it.
GRPC_PROTOCOL_ERRORS = (
    "Error parsing 'grpc-timeout' metadata",
    "Error parsing 'grpc-encoding' metadata",
    "Compression bit set but no encoding configured",
    "Decompression failed",  # due to a zlib error, a data error ...
)


def _tiny_request() -> bytes:
    request = v2.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return request.SerializeToString()


TINY_REQUEST = _tiny_request()


def framed(message: bytes, compressed: int = 0, declared: int | None = None) -> bytes:
    """A gRPC length-prefixed message: its compressed flag, its length, its bytes."""
    length = len(message) if declared is None else declared
    return struct.pack(">BI", compressed, length) + message


@dataclass
class Outcome:
    """How a call ended, as the client saw it."""

    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    reset: int | None = None  # the RST_STREAM error code, when the server reset the call
    closed: bool = False  # the connection ended before the call did

    @property
    def ended(self) -> bool:
        return bool(self.trailers) or self.reset is not None or self.closed

    @property
    def status(self) -> str | None:
        """grpc-status, from the trailers or a trailers-only answer."""
        return self.trailers.get("grpc-status") or self.headers.get("grpc-status")


class RawConnection:
    """One HTTP/2 connection to the server's gRPC port, driven by hand."""

    def __init__(self, target: str, local_settings: dict[int, int] | None = None) -> None:
        host, port = target.rsplit(":", 1)
        self.socket = socket.create_connection((host, int(port)), timeout=10)
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            validate_outbound_headers=False,  # odd metadata is what is being sent
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config)
        self.h2.initiate_connection()
        if local_settings:
            self.h2.update_settings(local_settings)
        self.outcomes: dict[int, Outcome] = {}
        self.terminated = False  # the server sent GOAWAY or closed the connection
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            try:
                self.socket.sendall(data)
            except OSError:  # the server closed it: the outcomes say so
                self._closed()

    def open(self, path: str, metadata: list[tuple[str, str]] | None = None) -> int:
        """Start a call: its headers only."""
        stream = self.h2.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *(metadata or []),
        ]
        self.h2.send_headers(stream, headers)
        self.outcomes[stream] = Outcome()
        self.flush()
        return stream

    def send(self, stream: int, data: bytes, end: bool = False, frame: int = 16_384) -> None:
        """``data`` in DATA frames of at most ``frame`` bytes, as far as windows allow."""
        try:
            for start in range(0, max(len(data), 1), frame):
                piece = data[start : start + frame]
                last = start + frame >= len(data)
                self.h2.send_data(stream, piece, end_stream=end and last)
        except (h2.exceptions.FlowControlError, h2.exceptions.StreamClosedError):
            pass  # the window is shut or the server has already ended the call
        self.flush()

    def reset(self, stream: int) -> None:
        self.h2.reset_stream(stream)
        self.flush()

    def wait(self, streams: list[int], timeout: float) -> dict[int, Outcome]:
        """Read until every one of ``streams`` has ended, or ``timeout``."""
        self._read_until(lambda: all(self.outcomes[s].ended for s in streams), timeout)
        return {s: self.outcomes[s] for s in streams}

    def wait_answered(self, timeout: float) -> list[Outcome]:
        """Read until every call has its answer's headers (or has ended), or ``timeout``."""
        calls = self.outcomes.values()
        self._read_until(lambda: all(o.headers or o.ended for o in calls), timeout)
        return list(calls)

    def wait_closed(self, timeout: float) -> bool:
        """Read until the server ends the connection (GOAWAY or closing it), or ``timeout``."""
        self._read_until(lambda: self.terminated, timeout)
        return self.terminated

    def _read_until(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.socket.settimeout(left)
            try:
                data = self.socket.recv(1 << 16)
            except TimeoutError:
                break
            except OSError:
                data = b""
            if not data:
                self._closed()
                break
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:
                self._closed()
                break
            for event in events:
                self._note(event)
            self.flush()

    def _note(self, event: Any) -> None:
        outcome = self.outcomes.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        if isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = True
        if outcome is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            outcome.headers = dict(event.headers)
            if "grpc-status" in outcome.headers:  # a trailers-only answer
                outcome.trailers = dict(event.headers)
        elif isinstance(event, h2.events.TrailersReceived):
            outcome.trailers = dict(event.headers)
        elif isinstance(event, h2.events.StreamReset):
            outcome.reset = event.error_code

    def _closed(self) -> None:
        self.terminated = True
        for outcome in self.outcomes.values():
            outcome.closed = True

    def close(self) -> None:
        self.socket.close()


@pytest.fixture(scope="module")
def quick_server(
    stream_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server that gives a call's request ``BODY_TIMEOUT_S`` to arrive."""
    log = tmp_path_factory.mktemp("envelope") / "serve.log"
    with ServerProcess(stream_repo, "--body-timeout", str(BODY_TIMEOUT_S), log=log) as server:
        yield server


def _infer(server: ServerProcess) -> v2.ModelInferResponse:
    """A well-formed call through gRPC's own client."""
    with grpc.insecure_channel(server.grpc_target) as channel:
        request = v2.ModelInferRequest.FromString(TINY_REQUEST)
        return v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def test_calls_left_idle_end_at_the_body_timeout(quick_server: ServerProcess) -> None:
    """Calls that send their headers and then nothing, or a few bytes of a message that
    declares a megabyte, used to be held for as long as the client kept its connection.
    Each now ends DEADLINE_EXCEEDED once ``--body-timeout`` has passed, and meanwhile a
    well-formed call is answered."""
    connections = [RawConnection(quick_server.grpc_target) for _ in range(4)]
    calls = []
    for i, connection in enumerate(connections):
        for j in range(100):
            stream = connection.open(MODEL_INFER)
            if (i + j) % 2:
                connection.send(stream, framed(b"\x0a\x04ti", declared=1 << 20))
            calls.append((connection, stream))
    began = time.monotonic()
    answer = _infer(quick_server)
    assert answer.outputs[0].name == "y"
    for connection in connections:
        streams = [s for c, s in calls if c is connection]
        outcomes = connection.wait(streams, timeout=BODY_TIMEOUT_S + 20)
        for outcome in outcomes.values():
            assert outcome.status == "4", outcome  # DEADLINE_EXCEEDED
            assert "--body-timeout" in outcome.trailers["grpc-message"]
    assert time.monotonic() - began >= BODY_TIMEOUT_S * 0.9
    for connection in connections:
        connection.close()
    assert quick_server.process is not None and quick_server.process.alive()


def test_memory_of_calls_left_idle_is_given_back(quick_server: ServerProcess) -> None:
    """4,096 calls left idle at once: once they have ended, the heaps are trimmed.  The
    server kept 88 MB of them before, 43 MB of it free, and now gives that back."""
    before = quick_server.status_kb("VmRSS")
    connections = [RawConnection(quick_server.grpc_target) for _ in range(32)]
    streams = {c: [c.open(MODEL_INFER) for _ in range(128)] for c in connections}
    for connection, opened in streams.items():
        assert all(o.ended for o in connection.wait(opened, BODY_TIMEOUT_S + 30).values())
        connection.close()
    wait_for(
        lambda: quick_server.status_kb("VmRSS") - before < 64 * 1024,
        timeout=30,
        what="the server to give back the memory of the calls",
    )


def test_a_call_that_ends_without_its_request_is_refused(quick_server: ServerProcess) -> None:
    connection = RawConnection(quick_server.grpc_target)
    stream = connection.open(MODEL_INFER)
    connection.send(stream, b"", end=True)
    outcome = connection.wait([stream], timeout=20)[stream]
    connection.close()
    assert outcome.status == "3", outcome  # INVALID_ARGUMENT
    assert outcome.trailers["grpc-message"] == "the call sent no request"


def test_one_channel_makes_600_calls_at_once(quick_server: ServerProcess) -> None:
    """600 calls at once on one channel are all answered.  With a limit of 128 streams a
    connection (HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS), gRPC's own client sent past it,
    and 109 to 239 of the 600 were reset, UNAVAILABLE: no such limit is set."""

    async def calls() -> list[Any]:
        async with grpc.aio.insecure_channel(quick_server.grpc_target) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            request = v2.ModelInferRequest.FromString(TINY_REQUEST)
            return await asyncio.gather(
                *[stub.ModelInfer(request, timeout=60) for _ in range(600)],
                return_exceptions=True,
            )

    answers = asyncio.run(calls())
    failed = [a for a in answers if isinstance(a, BaseException)]
    assert failed == [], (len(failed), failed[:1])


def test_calls_whose_answers_are_never_read_end_with_their_connections(
    stream_repo: Path, tmp_path: Path
) -> None:
    """A client that opens no flow-control window never takes its answer, and its calls
    held their slots (``--max-concurrent-rpcs``) for as long as the connection lived.  A
    connection is now renewed after ``--grpc-connection-age``, and the calls left on it end
    a grace period later: the slots come free, and well-formed calls are answered again."""
    args = ("--max-concurrent-rpcs", "4", "--grpc-connection-age", "3")
    args += ("--body-timeout", "1", "--request-timeout", "1")  # a grace of 2 s
    with ServerProcess(stream_repo, *args, log=tmp_path / "serve.log") as server:
        readers = _hold_every_slot(server, 4)
        wait_for(lambda: not _refused(server), what="the slots to come free")
        for reader in readers:
            assert all(o.ended for o in reader.wait(list(reader.outcomes), timeout=10).values())
            reader.close()


def test_answers_a_client_left_behind_are_no_error_in_the_log(
    stream_repo: Path, tmp_path: Path
) -> None:
    """Clients that open no window and then close their connections: gRPC cannot send
    the answers, and logged each at ERROR with a traceback.  Those are kept for DEBUG, and
    the calls' slots come free."""
    with ServerProcess(stream_repo, "--max-concurrent-rpcs", "4", log=tmp_path / "s.log") as server:
        for reader in _hold_every_slot(server, 4):
            reader.close()
        wait_for(lambda: not _refused(server), what="the slots to come free")
        assert "Traceback" not in server.log, server.log[-3000:]


def _hold_every_slot(server: ServerProcess, slots: int) -> list[RawConnection]:
    """As many clients as the server has slots, each opening no window and making one
    call: once each call is answered (its headers arrive; its message cannot), every slot
    is held, and a well-formed call is refused."""
    closed = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
    readers = [RawConnection(server.grpc_target, closed) for _ in range(slots)]
    for reader in readers:
        reader.send(reader.open(MODEL_INFER), framed(TINY_REQUEST), end=True)
    for reader in readers:
        [outcome] = reader.wait_answered(timeout=30)
        assert outcome.headers and not outcome.ended, outcome
    assert _refused(server)
    return readers


def _refused(server: ServerProcess) -> bool:
    try:
        _infer(server)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        return True
    return False


def test_clients_keep_calling_across_connection_renewals(stream_repo: Path, tmp_path: Path) -> None:
    """A gRPC client calling without pause for five seconds while connections are renewed
    every second or so (a connection opened beside it is told to go): no call fails."""
    args = ("--grpc-connection-age", "1")
    with ServerProcess(stream_repo, *args, log=tmp_path / "serve.log") as server:
        value = np.ones((1, 4), np.float32)
        beside = RawConnection(server.grpc_target)
        with ContinuousPredictions(server.grpc_target, "tiny", "x", value) as client:
            assert beside.wait_closed(timeout=30)
            beside.close()
            later = time.monotonic() + 4
            wait_for(lambda: time.monotonic() > later, what="four more seconds of calls")
        assert client.failures == []
        assert len(client.versions) > 100, len(client.versions)


@pytest.mark.parametrize("method", ["Check", "Watch"])
def test_health_calls_refuse_a_malformed_request(quick_server: ServerProcess, method: str) -> None:
    """Bytes that are not a HealthCheckRequest are INVALID_ARGUMENT; Watch's were UNKNOWN
    ("Unexpected DecodeError"), as only methods of one answer were checked."""
    garbage = b"\xff\x00\x13garbage"
    with grpc.insecure_channel(quick_server.grpc_target) as channel:
        path = f"/grpc.health.v1.Health/{method}"
        with pytest.raises(grpc.RpcError) as refused:
            if method == "Watch":
                list(channel.unary_stream(path)(garbage, timeout=30))
            else:
                channel.unary_unary(path)(garbage, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
    assert "not a valid protobuf message" in refused.value.details()


# -- the envelope, fuzzed ---------------------------------------------------------------------
metadata_names = st.text(string.ascii_lowercase + string.digits + "-_.", min_size=1, max_size=24)
metadata_values = st.text(string.printable.strip(), max_size=40) | st.sampled_from(
    ["x" * 9_000, "y" * 20_000, "\x00\x01", "Bearer x"]
)
envelopes = st.fixed_dictionaries(
    {
        "path": st.sampled_from(
            [
                MODEL_INFER,
                "/inference.GRPCInferenceService/ServerLive",
                "/tensorflow.serving.PredictionService/Predict",
                "/tensorflow.serving.ModelService/GetModelStatus",
                "/grpc.health.v1.Health/Check",
                "/grpc.health.v1.Health/Watch",
                "/nope.Service/Method",
                "/",
            ]
        ),
        "content_type": st.sampled_from(
            ["application/grpc", "application/grpc+proto", "application/json", "", "text/x"]
        ),
        "encoding": st.sampled_from([None, "gzip", "identity", "deflate", "snappy", ""]),
        "timeout": st.sampled_from([None, "1S", "100m", "0n", "99999999H", "x", "-1S", "1"]),
        "metadata": st.lists(st.tuples(metadata_names, metadata_values), max_size=6),
        "message": st.sampled_from(["valid", "empty", "garbage", "gzipped"]),
        "compressed_flag": st.sampled_from([0, 1, 2, 255]),
        "declared": st.sampled_from(["right", "short", "long", "huge", "zero"]),
        "frame": st.sampled_from([1, 7, 16_384]),
        "end": st.sampled_from(["end", "open", "reset", "second message"]),
        "settings": st.sampled_from(
            [
                {},
                {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0},
                {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1},
                {h2.settings.SettingCodes.MAX_FRAME_SIZE: 16_777_215},
                {h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0},
                {h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 10},
            ]
        ),
    }
)


def _message(e: dict[str, Any]) -> bytes:
    body = {
        "valid": TINY_REQUEST,
        "empty": b"",
        "garbage": b"\xff\x00\x13garbage\x0a\x99",
        "gzipped": gzip.compress(TINY_REQUEST),
    }[e["message"]]
    declared = {
        "right": len(body),
        "short": max(0, len(body) - 3),
        "long": len(body) + 50,
        "huge": (1 << 32) - 1,
        "zero": 0,
    }[e["declared"]]
    data = framed(body, e["compressed_flag"], declared)
    if e["end"] == "second message":
        data += framed(TINY_REQUEST)
    return data


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(envelope=envelopes)
def test_grpc_envelopes(quick_server: ServerProcess, envelope: dict[str, Any]) -> None:
    """Every call ends (a status, a reset or the connection closed) within the body
    timeout and a margin, none with a status that blames the server for a client's
    bytes, and none puts a traceback in the log; the server answers well-formed calls."""
    logged = len(quick_server.log)
    connection = RawConnection(quick_server.grpc_target, envelope["settings"])
    metadata = [("content-type", envelope["content_type"])] if envelope["content_type"] else []
    if envelope["encoding"] is not None:
        metadata.append(("grpc-encoding", envelope["encoding"]))
    if envelope["timeout"] is not None:
        metadata.append(("grpc-timeout", envelope["timeout"]))
    metadata += envelope["metadata"]
    flow_blocked = envelope["settings"].get(h2.settings.SettingCodes.INITIAL_WINDOW_SIZE) == 0
    # An answer that cannot leave leaves the call open: no use waiting long for its end.
    timeout = BODY_TIMEOUT_S + (1 if flow_blocked else 20)
    try:
        stream = connection.open(envelope["path"], metadata)
        connection.send(stream, _message(envelope), envelope["end"] != "open", envelope["frame"])
        if envelope["end"] == "reset":
            connection.reset(stream)
            outcome = Outcome(reset=0)
        elif envelope["path"].endswith("/Watch"):  # answered, its answers go on
            [outcome] = connection.wait_answered(timeout)
        else:
            outcome = connection.wait([stream], timeout)[stream]
    except h2.exceptions.ProtocolError:
        outcome = Outcome(closed=True)  # settings the client's own state machine refuses
    finally:
        connection.close()
    watching = envelope["path"].endswith("/Watch") and outcome.headers  # answers go on
    assert outcome.ended or flow_blocked or watching, (outcome, envelope)
    if outcome.status in SERVER_FAULTS:
        message = outcome.trailers.get("grpc-message", "")
        assert message.startswith(GRPC_PROTOCOL_ERRORS), (outcome, envelope)
    assert "Traceback" not in quick_server.log[logged:], quick_server.log[logged:][-3000:]
    _infer(quick_server)


def test_a_heap_trim_asked_for_while_the_server_stops_is_skipped() -> None:
    """A large call that ends as the server stops asks for a trim after the event loop's
    executor has shut down: that raised, and was logged as a traceback at every such stop."""

    async def stopping() -> None:
        await asyncio.get_running_loop().shutdown_default_executor()
        trimmer = HeapTrimmer()
        trimmer.trim()
        assert trimmer._trimming is None  # nothing runs, nothing raised

    asyncio.run(stopping())
