"""The REST port: TF Serving and KServe V2 routes, metrics, auth and ``{"error": ...}`` bodies."""

from __future__ import annotations

import asyncio
import logging
import re
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
from streaminfer.serving.responses import json_response
from streaminfer.serving.tfserving_rest import STATUS_PATH, TFServingRest

METRICS_PATHS = ("/monitoring/prometheus/metrics", "/metrics")
_HEALTH = re.compile(r"^/v2/health/(?:live|ready)$|^/v2/models/[^/]+(?:/versions/[^/]+)?/ready$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RETRY_AFTER_S = "1"


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
        finally:
            bodies.release(request)  # what its body reserved: it has been answered

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    logging.getLogger("aiohttp.server").addFilter(_QUIET_CLIENT_FAULTS)  # once, however many apps
    app = web.Application(middlewares=[errors], client_max_size=max_request_bytes)
    app[BODY_BUDGET] = bodies
    app.add_routes(TFServingRest(plane, metrics).routes())
    app.add_routes(KServeRest(plane, metrics).routes())
    app.add_routes([web.get(path, prometheus) for path in METRICS_PATHS])
    return app
