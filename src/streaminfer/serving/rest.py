"""The REST port: TF Serving and KServe V2 routes, metrics, auth and ``{"error": ...}`` bodies."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from streaminfer.errors import drop_tracebacks
from streaminfer.serving.auth import BearerAuth
from streaminfer.serving.dataplane import DataPlane
from streaminfer.serving.errors import describe
from streaminfer.serving.kserve_rest import KServeRest
from streaminfer.serving.metrics import CONTENT_TYPE, ServerMetrics
from streaminfer.serving.request_body import BODY_BUDGET, BodyBudget
from streaminfer.serving.responses import answer_bytes, json_response
from streaminfer.serving.tfserving_rest import STATUS_PATH, TFServingRest

METRICS_PATHS = ("/monitoring/prometheus/metrics", "/metrics")
_HEALTH = re.compile(r"^/v2/health/(?:live|ready)$|^/v2/models/[^/]+(?:/versions/[^/]+)?/ready$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RETRY_AFTER_S = "1"
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: closing sends a reset


class _QuietClientFaults(logging.Filter):
    """Keeps aiohttp's reports of clients' faults for DEBUG.  It logs each malformed
    request (bad framing, a body that does not decompress) and each client gone before
    its answer at ERROR with a traceback, thirty lines for what it has already answered
    400 or could not answer at all: a hostile client could flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, RequestPayloadError):
            error = error.__cause__
        malformed = isinstance(error, HttpProcessingError) and 400 <= error.code < 500
        if malformed or isinstance(error, ConnectionResetError):
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_QUIET_CLIENT_FAULTS = _QuietClientFaults()


class Handling:
    """The REST requests being handled, each a future done when it has been answered.

    A stop waits for the ones that arrived before it and only then closes connections:
    once aiohttp closes a connection it drops whatever still arrives of its body.
    """

    def __init__(self) -> None:
        self._requests: set[asyncio.Future[None]] = set()

    async def wait(self, timeout: float) -> None:
        """Until the requests being handled now are answered, or ``timeout`` has passed."""
        if self._requests:
            await asyncio.wait(set(self._requests), timeout=timeout)

    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        answered = asyncio.get_running_loop().create_future()
        self._requests.add(answered)
        try:
            return await handler(request)
        finally:
            self._requests.discard(answered)
            answered.set_result(None)


async def _send(request: web.Request, response: web.StreamResponse, timeout: float) -> None:
    """Write ``response`` within ``timeout``, or cut its client off: one that never reads
    its answer would hold it in the connection's buffer for as long as it stays connected."""
    try:
        async with asyncio.timeout(timeout):
            await response.prepare(request)
            await response.write_eof()  # returns once all but 64 KiB has gone to the socket
    except TimeoutError:
        if request.transport is not None:
            _reset(request.transport)
    except ConnectionError:
        pass  # the client has gone; aiohttp finds so too, and ends the connection


def _reset(transport: asyncio.Transport) -> None:
    """End the connection at once, dropping what it has yet to write: close() would wait
    to write it, and even a closed socket's queue (megabytes) waits in the kernel for
    minutes, unless it is reset."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    transport.abort()


def _is_open(request: web.Request) -> bool:
    """Liveness, readiness and model status answer without a token (load balancers ask)."""
    if _HEALTH.match(request.path):
        return True
    return request.method == "GET" and STATUS_PATH.match(request.path) is not None


def build_app(
    plane: DataPlane,
    metrics: ServerMetrics,
    auth: BearerAuth | None,
    max_request_bytes: int,
    handling: Handling,
    bodies: BodyBudget,
) -> web.Application:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if auth is not None and not _is_open(request):
                auth.check(request.headers.get("Authorization"))
            return await handling.handle(request, handler)
        except web.HTTPException as exc:  # routing: unknown path, wrong method, body too large
            if exc.status < 400:
                raise
            response = json_response({"error": exc.text or exc.reason}, exc.status)
            if exc.keep_alive is False:  # the connection ends with it (a body not read)
                response.force_close()
            return response
        except Exception as exc:
            status, message = describe(exc)
            drop_tracebacks(exc)  # its frames hold the request, its body too
            response = json_response({"error": message}, status.http)
            if status.http in (429, 503):  # overloaded or stopping: worth another try soon
                response.headers["Retry-After"] = RETRY_AFTER_S
            return response

    @web.middleware
    async def written(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Writes the answer here, not after the middlewares as aiohttp would, so that it
        holds its body's share of the budget until it has been written."""
        try:
            response = await handler(request)
            bodies.hold_answer(request, answer_bytes(response))
            await _send(request, response, bodies.timeout)
            return response
        finally:
            bodies.release(request)

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    logging.getLogger("aiohttp.server").addFilter(_QUIET_CLIENT_FAULTS)  # once, however many apps
    app = web.Application(middlewares=[written, errors], client_max_size=max_request_bytes)
    app[BODY_BUDGET] = bodies
    app.add_routes(TFServingRest(plane, metrics).routes())
    app.add_routes(KServeRest(plane, metrics).routes())
    app.add_routes([web.get(path, prometheus) for path in METRICS_PATHS])
    return app
