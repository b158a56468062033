"""What every gRPC service shares: error translation, the bearer-token check, the server.

Every call's request is read by ``RequestReader``: one that does not arrive in time ends
the call, one that is not a valid protobuf message never reaches a servicer, and a large
one is followed by a trim of the heaps.  Connections are renewed: a client cannot hold
calls open for as long as it likes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from streaminfer.allocator import LARGE_BLOCK, trim_heaps
from streaminfer.codecs.protowire import Unread, check_field_count
from streaminfer.errors import drop_tracebacks
from streaminfer.serving.auth import BearerAuth
from streaminfer.serving.errors import AnswerTooLarge, Unauthenticated, describe
from streaminfer.types import Tensors

Servicer = TypeVar("Servicer")
Method = Callable[[Servicer, Any, grpc.aio.ServicerContext], Awaitable[Any]]

OPEN_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
        "/inference.GRPCInferenceService/ModelReady",
        "/tensorflow.serving.ModelService/GetModelStatus",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    }
)
"""Health checks answer without a token, like their REST counterparts."""


def rpc(method: Method[Servicer]) -> Method[Servicer]:
    """Answer a failed call with the status its error maps to, and a message saying why."""

    @functools.wraps(method)
    async def handle(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Exception as exc:
            status, message = describe(exc)
            drop_tracebacks(exc)  # its frames hold the request, its body too
        # Not context.abort: the error it raises joins a cycle in gRPC's own frames that
        # held each refused request (60 MB of them, say) until the collector ran.
        context.set_code(status.code)
        context.set_details(message)
        return None

    return handle


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` metadata before they run."""

    def __init__(self, auth: BearerAuth) -> None:
        self._auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method not in OPEN_METHODS:
            metadata = dict(details.invocation_metadata or ())  # type: ignore[attr-defined]
            header = metadata.get("authorization")
            try:
                self._auth.check(header if isinstance(header, str) else None)
            except Unauthenticated as exc:
                return _refuse(str(exc))
        return await continuation(details)


def _refuse(message: str) -> grpc.RpcMethodHandler:
    async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(refuse)


class HeapTrimmer:
    """Trims the heaps in a thread (it takes milliseconds); asked while a trim runs, it
    trims once more after it, as the calls it ran beside may have freed memory since."""

    def __init__(self) -> None:
        self._trimming: asyncio.Future[None] | None = None
        self._again = False

    def trim(self) -> None:
        if self._trimming is not None:
            self._again = True
            return
        self._again = False
        try:
            self._trimming = asyncio.get_running_loop().run_in_executor(None, trim_heaps)
        except RuntimeError:  # the loop's executor has been shut down: the server is stopping
            return
        self._trimming.add_done_callback(self._trimmed)

    def _trimmed(self, _: asyncio.Future[None]) -> None:
        self._trimming = None
        if self._again:
            self.trim()


class RequestReader(grpc.aio.ServerInterceptor):
    """Reads the one request of every call itself, so that a call cannot wait for it
    without end, a request that does not parse is the client's fault, and a large one
    leaves no memory behind.

    - Its request must arrive within ``timeout_s`` of the call's headers, or the call ends
      DEADLINE_EXCEEDED.  gRPC starts a call at its headers and waits for its message
      without end: 2,560 calls opened with a few bytes of their messages each were still
      held after 90 s, and 12,800 took a server of the tiny model from 125 to 250 MB.
    - A request that is not a valid message of its method is answered INVALID_ARGUMENT
      (gRPC would answer INTERNAL or UNKNOWN, blaming the server).
    - A request of ``LARGE_BLOCK`` or more has the heaps trimmed before it is parsed and
      again once its call has been answered.  gRPC reads a message in many small blocks,
      and freed they stayed in the heaps: after 16 requests of 60 MB at once, a server of
      the tiny model held 450 to 800 MB instead of 120.  Trimmed before parsing, a 60 MB
      request took a server from 295 to 468 MB at most, where it took it to 513-548.

    A method of one request is served as one whose client streams, whose call starts at
    the headers and reads its one message itself (the wire is the same).  One sweeper
    ends the reads past the deadline: a timer for each call cost small calls about 5 % of
    their rate."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._trimmer = HeapTrimmer()
        self._sweep_s = min(1.0, timeout_s / 4)
        # The calls waiting for their requests, and when each began: oldest first.
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()  # reads the sweeper cancelled
        self._sweeper: asyncio.Task[None] | None = None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        parse = handler.request_deserializer or _as_it_is
        if handler.unary_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                functools.partial(self._answer, handler.unary_unary, parse),
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(  # a stream of answers: Health/Watch
            functools.partial(self._answers, handler.unary_stream, parse),
            response_serializer=handler.response_serializer,
        )

    async def _answer(
        self,
        behavior: Callable[..., Awaitable[Any]],
        parse: Callable[[bytes], Any],
        _: Any,
        context: grpc.aio.ServicerContext,
    ) -> Any:
        request, large = await self._request(context, parse)
        try:
            return await behavior(request, context)
        finally:
            if large:
                self._trimmer.trim()

    async def _answers(
        self,
        behavior: Callable[..., AsyncIterator[Any]],
        parse: Callable[[bytes], Any],
        _: Any,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[Any]:
        request, large = await self._request(context, parse)
        try:
            async for answer in behavior(request, context):
                yield answer
        finally:
            if large:
                self._trimmer.trim()

    async def _request(
        self, context: grpc.aio.ServicerContext, parse: Callable[[bytes], Any]
    ) -> tuple[Any, bool]:
        """The call's one request, read within the deadline and parsed, and whether it was
        large.  One that does not parse ends the call, the heaps trimmed if it was large."""
        data = await self._read(context)
        if data is grpc.aio.EOF:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call sent no request")
        large = len(data) >= LARGE_BLOCK
        if large:
            trim_heaps()  # on the loop: 1-7 ms, where parsing 60 MB takes 55-140
        try:
            return parse(data), large
        except Unread as exc:
            reason = f"the request is refused unread: {exc}"
        except (DecodeError, RecursionError, ValueError) as exc:
            # Not the error itself: its frames hold the request.
            reason = f"the request is not a valid protobuf message of this method: {exc}"
        del data
        if large:
            self._trimmer.trim()
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason[:300])
        raise AssertionError("context.abort raises")  # its stubs do not say so

    async def _read(self, context: grpc.aio.ServicerContext) -> Any:
        task = asyncio.current_task()
        assert task is not None
        self._reading[task] = time.monotonic()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        try:
            return await context.read()
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # the client or the server's stop
            task.uncancel()
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request did not arrive within {self._timeout_s:g} s (--body-timeout)",
            )
        finally:
            self._reading.pop(task, None)
            self._expired.discard(task)  # a read that ended as it was cancelled: forget it

    async def _sweep(self) -> None:
        """Every ``_sweep_s`` while calls are reading: cancel the reads past the deadline,
        and trim the heaps once the calls cancelled have ended (4,096 left 88 MB behind
        in them, 43 MB of it free)."""
        expired: list[asyncio.Task[Any]] = []
        while self._reading or expired:
            await asyncio.sleep(self._sweep_s)
            if expired:
                self._trimmer.trim()
            too_old = time.monotonic() - self._timeout_s
            expired = []
            for task, began in self._reading.items():  # oldest first
                if began >= too_old:
                    break
                expired.append(task)
            for task in expired:
                del self._reading[task]
                self._expired.add(task)
                task.cancel()
        self._sweeper = None


def check_answer_size(outputs: Tensors, limit: int) -> None:
    """``AnswerTooLarge`` if ``outputs`` alone hold more than ``limit`` bytes, before the
    answer is built: gRPC refused it only once built, and a 128 MB answer took a server to
    1.16 GB on the way.  The text holds gRPC's own words for a message past the limit, by
    which a streaminfer worker sends the record to its dead-letter topic."""
    size = sum(
        sum(len(value) for value in array.flat) if array.dtype == object else array.nbytes
        for array in outputs.values()
    )
    if size > limit:
        raise AnswerTooLarge(
            f"the answer would be larger than max ({size} bytes of outputs, more than the "
            f"{limit} a gRPC message may hold, --max-request-mb): ask for fewer rows, or "
            "for fewer outputs with output_filter"
        )


def _as_it_is(data: bytes) -> bytes:
    return data


def add_servicer(
    server: grpc.aio.Server,
    service: str,
    add_generated: Callable[[Any, Any], None],
    servicer: Any,
    parsers: dict[str, Callable[[bytes], Any]],
) -> None:
    """Register a servicer through its generated ``add_..._to_server``. The methods named
    in ``parsers`` read their requests with those functions instead of protobuf's, and
    answer with their response already serialized."""
    generated = _Handlers()
    add_generated(servicer, generated)
    handlers = dict(generated.handlers)
    for method, handler in handlers.items():
        if method in parsers:
            handlers[method] = grpc.unary_unary_rpc_method_handler(
                handler.unary_unary, request_deserializer=parsers[method]
            )
        elif handler.unary_unary is not None and handler.request_deserializer is not None:
            handlers[method] = grpc.unary_unary_rpc_method_handler(
                handler.unary_unary,
                request_deserializer=_counting_fields(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def _counting_fields(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``parse``, for a request of at most 1,024 fields at its top level (the custom
    parsers of Predict and ModelInfer count them as they walk)."""

    def parse_counted(data: bytes) -> Any:
        check_field_count(data)
        return parse(data)

    return parse_counted


class _QuietCallsGone(logging.Filter):
    """Keeps gRPC's report of an answer it could not send, its call gone (cancelled, or
    its connection closed before a client that opened no window took it), for DEBUG:
    gRPC logs each at ERROR with a traceback, which a client could repeat to flood the
    log."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if type(error).__name__ == "ExecuteBatchError":  # in gRPC's private module
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_QUIET_CALLS_GONE = _QuietCallsGone()


class _Handlers:
    """Stands in for the server to a generated registration, to keep its handlers."""

    handlers: dict[str, grpc.RpcMethodHandler]

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers come below, by name

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers = handlers


def create_server(
    auth: BearerAuth | None,
    *,
    max_message_bytes: int,
    read_s: float,
    connection_age_s: float,
    connection_grace_s: float,
    max_concurrent_rpcs: int,
    max_connections: int,
) -> grpc.aio.Server:
    """``read_s``: how long a call may wait for its request (``RequestReader``), and a new
    connection for its handshake; ``max_connections``: connections open at once, more
    are closed as they come;
    ``connection_age_s``: a connection older is asked to close (GOAWAY; clients open a new
    one), and ended ``connection_grace_s`` later with the calls still on it.  That is
    what ends a call whose client never opens a window for its answer, which held its slot
    and the answer's memory for as long as the connection lived.  ``max_concurrent_rpcs``:
    calls beyond it are refused (RESOURCE_EXHAUSTED) before their messages are read,
    which bounds the bytes gRPC holds for them: sixteen 27 MB requests at once took a
    server of EfficientNet-Lite0 to 939 MB, with a limit of 4 to 561."""
    logging.getLogger("grpc._cython.cygrpc").addFilter(_QUIET_CALLS_GONE)  # once, however often
    # The first is the outermost: the deadline covers calls refused for their token too.
    interceptors: list[grpc.aio.ServerInterceptor] = [RequestReader(read_s)]
    if auth is not None:
        interceptors.append(AuthInterceptor(auth))
    return grpc.aio.server(
        interceptors=interceptors,
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_connection_age_ms", round(connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", round(connection_grace_s * 1000)),
            # A connection that has not made its HTTP/2 (and TLS) handshake by then is closed.
            ("grpc.server_handshake_timeout_ms", round(read_s * 1000)),
            ("grpc.max_allowed_incoming_connections", max_connections),
            ("grpc.so_reuseport", 0),  # a taken port must fail, not be shared
        ],
    )
