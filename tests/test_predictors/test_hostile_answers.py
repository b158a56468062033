"""A REST model server whose answers are too large, too slow or malformed costs a request
its outcome, never the worker its memory or its time.

The server is a small aiohttp app on loopback, in a thread of the test; the model name
asked for picks how it answers.  The real predictors call it as the worker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

import numpy as np
import pytest
from aiohttp import web

from streaminfer.codecs.tfserving_json import MODEL_VERSION_HEADER
from streaminfer.errors import InfrastructureError, RequestFailed
from streaminfer.predictors.base import PredictRequest
from streaminfer.predictors.kserve_http import KServeHttpPredictor
from streaminfer.predictors.remote import (
    UNKNOWN_CLASS_ID,
    AnswerTooLarge,
    RemoteOptions,
    RemotePredictor,
    rank_from_classes,
)
from streaminfer.predictors.tfserving_rest import TFServingRestPredictor
from streaminfer.types import ModelRef

MIB = 1 << 20
LIMIT = MIB  # the clients' max_answer_bytes here
TIMEOUT_S = 2.0
PREDICTORS = [TFServingRestPredictor, KServeHttpPredictor]

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def declares_a_gigabyte(request: web.Request) -> web.StreamResponse:
    """Declares 1 GB and sends a little of it, then waits: reading it would time out."""
    response = web.StreamResponse(headers={"Content-Length": str(1 << 30)})
    await response.prepare(request)
    await response.write(b" " * MIB)
    await asyncio.sleep(3 * TIMEOUT_S)
    return response


async def never_ends(request: web.Request) -> web.StreamResponse:
    """Chunked, of no declared length: 64 MiB (for ever, in a hostile server's hands)."""
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(64):
        await response.write(b" " * MIB)
    return response


async def trickles(request: web.Request) -> web.StreamResponse:
    """One byte every 0.1 s, for twice the clients' timeout: each read waits 0.1 s."""
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(int(2 * TIMEOUT_S / 0.1)):
        await response.write(b" ")
        await asyncio.sleep(0.1)
    return response


ODD_VERSIONS = ["\u00b2", "9" * 5000]  # str.isdigit takes both, int() refuses both


async def odd_version(request: web.Request) -> web.StreamResponse:
    """A valid answer whose version (TF Serving: a header; V2: in the body) is
    ``ODD_VERSIONS[i]``, for model ``odd-version-<i>``."""
    version = ODD_VERSIONS[int(request.match_info["model"].removesuffix(":predict")[-1])]
    if request.path.startswith("/v2/"):
        y = {"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}
        return web.json_response({"model_version": version, "outputs": [y]})
    answer = {"outputs": {"y": [[1.0, 2.0]]}}
    return web.json_response(answer, headers={MODEL_VERSION_HEADER: version})


async def fails_nested(request: web.Request) -> web.StreamResponse:
    """500, its body a JSON array nested 10,000 deep (never closed)."""
    return web.Response(status=500, body=b"[" * 10_000)


async def fails_at_length(request: web.Request) -> web.StreamResponse:
    """500, with an error message of 32 KB (within the part of the body that is read),
    its reason last, as Triton's comes after a traceback."""
    return web.json_response({"error": "x" * 32_000 + " the reason"}, status=500)


def _gzipped(size: int) -> web.StreamResponse:
    """A TF Serving answer of ``size`` bytes, gzip-encoded whatever the client asked for."""
    answer = b'{"outputs": {"y": [[1.0, 2.0]]}}'
    body = gzip.compress(answer + b" " * (size - len(answer)))
    return web.Response(body=body, headers={"Content-Encoding": "gzip"})


async def compresses_anyway(request: web.Request) -> web.StreamResponse:
    return _gzipped(1000)


async def compresses_a_bomb(request: web.Request) -> web.StreamResponse:
    """64 KiB on the wire, 64 MiB decoded."""
    return _gzipped(64 * MIB)


BEHAVIOURS: dict[str, Behaviour] = {
    "compresses-anyway": compresses_anyway,
    "compresses-a-bomb": compresses_a_bomb,
    "declares-a-gigabyte": declares_a_gigabyte,
    "never-ends": never_ends,
    "trickles": trickles,
    "odd-version-0": odd_version,
    "odd-version-1": odd_version,
    "fails-nested": fails_nested,
    "fails-at-length": fails_at_length,
}


async def _answer(request: web.Request) -> web.StreamResponse:
    await request.read()
    return await BEHAVIOURS[request.match_info["model"].removesuffix(":predict")](request)


async def _metadata(request: web.Request) -> web.StreamResponse:
    """Every model takes and answers rows of two floats (KServe V2)."""
    tensor = {"datatype": "FP32", "shape": [-1, 2]}
    return web.json_response(
        {"inputs": [{"name": "x", **tensor}], "outputs": [{"name": "y", **tensor}]}
    )


@pytest.fixture(scope="module")
def hostile_server() -> Iterator[str]:
    app = web.Application()
    app.router.add_post("/v1/models/{model}", _answer)  # TF Serving: "<model>:predict"
    app.router.add_post("/v2/models/{model}/infer", _answer)
    app.router.add_get("/v2/models/{model}", _metadata)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@contextlib.contextmanager
def _client(predictor: type[RemotePredictor], target: str) -> Iterator[RemotePredictor]:
    options = RemoteOptions(timeout_s=TIMEOUT_S, max_answer_bytes=LIMIT, v2_binary="never")
    client = predictor(target, options)
    try:
        yield client
    finally:
        client.close()


def _ask(client: RemotePredictor, model: str) -> object:
    return client._infer_tensors(ModelRef(model), {"x": np.ones((1, 2), np.float32)})


@pytest.mark.parametrize("predictor", PREDICTORS)
@pytest.mark.parametrize("model", ["declares-a-gigabyte", "never-ends"])
def test_an_answer_past_the_limit_is_refused_as_it_arrives(
    predictor: type[RemotePredictor], model: str, hostile_server: str
) -> None:
    # httpx read each whole first: a 1 GB one took a worker to 2.2 GB, an endless one
    # grew it by 600 MB a second.  Refused, a request of fewer records is tried (remote).
    started = time.monotonic()
    with (
        _client(predictor, hostile_server) as client,
        pytest.raises(AnswerTooLarge, match=f"larger than {LIMIT}"),
    ):
        _ask(client, model)
    assert time.monotonic() - started < TIMEOUT_S  # the declared length was enough


def test_records_whose_answers_pass_the_limit_end_too_large(hostile_server: str) -> None:
    batch = [PredictRequest("never-ends", tensors={"x": np.ones((1, 2), np.float32)})] * 2
    with _client(KServeHttpPredictor, hostile_server) as client:
        outcomes = client.predict(batch)  # refused whole, then each record alone
    assert [type(o) for o in outcomes] == [AnswerTooLarge] * 2
    assert {o.reason for o in outcomes if isinstance(o, AnswerTooLarge)} == {"too_large"}


@pytest.mark.parametrize("predictor", PREDICTORS)
def test_an_answer_that_trickles_times_out_with_its_request(
    predictor: type[RemotePredictor], hostile_server: str
) -> None:
    # httpx's timeout bounds each read: a byte a second kept a request for as long as the
    # server liked.  A timeout is an outage's: the batch is retried.
    started = time.monotonic()
    with (
        _client(predictor, hostile_server) as client,
        pytest.raises(InfrastructureError, match="timed out"),
    ):
        _ask(client, "trickles")
    assert time.monotonic() - started < TIMEOUT_S + 0.5


@pytest.mark.parametrize("predictor", PREDICTORS)
@pytest.mark.parametrize("model", ["odd-version-0", "odd-version-1"])
def test_a_version_that_is_no_number_is_read_as_none_given(
    predictor: type[RemotePredictor], model: str, hostile_server: str
) -> None:
    # int() raised ValueError on "²" and on 5000 digits: the records were dead-lettered
    # internal_error for the server's answer.
    with _client(predictor, hostile_server) as client:
        version, outputs = client._infer_tensors(
            ModelRef(model), {"x": np.ones((1, 2), np.float32)}
        )
    assert version == 0
    assert outputs["y"].tolist() == [[1.0, 2.0]]


def test_a_class_name_that_is_no_number_has_no_id() -> None:
    classes = np.array([["\u00b2".encode(), b"9" * 5000, b"7"]], dtype=object)
    scores = np.array([[0.5, 0.3, 0.2]], np.float32)
    (ranked,) = rank_from_classes({"classes": classes, "scores": scores}, 1, "server")
    assert [p.class_id for p in ranked] == [UNKNOWN_CLASS_ID, UNKNOWN_CLASS_ID, 7]


@pytest.mark.parametrize("predictor", PREDICTORS)
@pytest.mark.parametrize("model", ["fails-nested", "fails-at-length"])
def test_a_failure_is_a_failed_request_whatever_its_explanation(
    predictor: type[RemotePredictor], model: str, hostile_server: str
) -> None:
    # The nested one raised RecursionError (dead-lettered internal_error, never retried
    # as server_error); the long one's message went whole into every retry's log line.
    with (
        _client(predictor, hostile_server) as client,
        pytest.raises(RequestFailed, match=": 500 ") as failed,
    ):
        _ask(client, model)
    assert len(str(failed.value)) < 1100
    if model == "fails-at-length":
        assert str(failed.value).endswith(" the reason")


def test_an_answer_compressed_all_the_same_is_read_decoded_and_bounded_decoded(
    hostile_server: str,
) -> None:
    """The worker asks for answers as they are; a server that compresses them all the same
    is read decoded, and its limit counts the decoded bytes: 64 KiB that decode to 64 MiB
    are refused as they are decoded."""
    with _client(TFServingRestPredictor, hostile_server) as client:
        _, outputs = client._infer_tensors(
            ModelRef("compresses-anyway"), {"x": np.ones((1, 2), np.float32)}
        )
        assert outputs["y"].tolist() == [[1.0, 2.0]]
        with pytest.raises(AnswerTooLarge, match=f"larger than {LIMIT}"):
            _ask(client, "compresses-a-bomb")


@pytest.fixture
def header_trickler() -> Iterator[str]:
    """A server that answers each request with a status line and then a header line every
    0.1 s, for three times the clients' timeout: no read waits long."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            with connection:
                connection.recv(1 << 16)  # the request: small, in one piece on loopback
                connection.sendall(b"HTTP/1.1 200 OK\r\n")
                for _ in range(int(3 * TIMEOUT_S / 0.1)):
                    connection.sendall(b"X-Slow: 1\r\n")
                    time.sleep(0.1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    thread.join(10)


def test_headers_that_trickle_time_out_with_their_request(header_trickler: str) -> None:
    # httpx's timeout bounds each read: headers a line every 0.1 s held a request for as
    # long as the server went on.  The whole exchange now ends at the request's timeout.
    started = time.monotonic()
    with (
        _client(TFServingRestPredictor, header_trickler) as client,
        pytest.raises(InfrastructureError, match="timed out"),
    ):
        _ask(client, "any")
    assert time.monotonic() - started < TIMEOUT_S + 0.5
