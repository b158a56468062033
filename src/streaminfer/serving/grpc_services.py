"""What every gRPC service shares: error translation, the bearer-token check, the server.

A request that is not a valid protobuf message never reaches a servicer: it is answered
INVALID_ARGUMENT (gRPC itself would answer INTERNAL or UNKNOWN, blaming the server).  Once
a large request is answered, the heaps are trimmed (``TrimAfterLargeRequests``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from streaminfer.allocator import LARGE_BLOCK, trim_heaps
from streaminfer.codecs.protowire import check_field_count
from streaminfer.errors import drop_tracebacks
from streaminfer.serving.auth import BearerAuth
from streaminfer.serving.errors import Unauthenticated, describe

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


@dataclass(frozen=True)
class _Malformed:
    """What a request that does not parse becomes, so the call can answer for it."""

    reason: str


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Answers a request that is not a valid message with INVALID_ARGUMENT."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        return _wrapped(await continuation(details), _refusing_malformed, _tolerant)


def _wrapped(
    handler: grpc.RpcMethodHandler | None,
    behavior: Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]],
    parse: Callable[[Callable[[bytes], Any]], Callable[[bytes], Any]],
) -> grpc.RpcMethodHandler | None:
    """A unary method's handler with its behavior and its request's parse wrapped; any
    other handler as it is (an unknown method, UNIMPLEMENTED, or nothing to parse)."""
    if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
        return handler
    return grpc.unary_unary_rpc_method_handler(
        behavior(handler.unary_unary),
        request_deserializer=parse(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, RecursionError, ValueError) as exc:
            return _Malformed(str(exc)[:200])

    return parse_or_mark


def _refusing_malformed(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Malformed):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid protobuf message of this method: {request.reason}",
            )
        return await behavior(request, context)

    return call


_LARGE_REQUEST = contextvars.ContextVar("large_request", default=False)


class TrimAfterLargeRequests(grpc.aio.ServerInterceptor):
    """Trims the heaps, in a thread, once a call whose request was ``LARGE_BLOCK`` or more
    has been answered.  gRPC reads a message in many small blocks, and freed they stayed in
    the heaps: after 16 requests of 60 MB at once, a server of the tiny model held 450 to
    800 MB instead of 120.  A call's request is read in the task that then runs the call,
    so a context variable carries whether it was large from the one to the other."""

    def __init__(self) -> None:
        self._trimming: asyncio.Future[None] | None = None
        self._again = False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        return _wrapped(await continuation(details), self._trimming_after, _noting_size)

    def _trimming_after(
        self, behavior: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            finally:
                if _LARGE_REQUEST.get():
                    self._trim()

        return call

    def _trim(self) -> None:
        """Trim now, or once more after the trim under way: the calls it ran beside may
        have freed their memory since it began."""
        if self._trimming is not None:
            self._again = True
            return
        self._again = False
        self._trimming = asyncio.get_running_loop().run_in_executor(None, trim_heaps)
        self._trimming.add_done_callback(self._trimmed)

    def _trimmed(self, _: asyncio.Future[None]) -> None:
        self._trimming = None
        if self._again:
            self._trim()


def _noting_size(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse_noting_size(data: bytes) -> Any:
        if len(data) >= LARGE_BLOCK:
            _LARGE_REQUEST.set(True)
        return parse(data)

    return parse_noting_size


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
    auth: BearerAuth | None, max_message_bytes: int, max_concurrent_rpcs: int | None = None
) -> grpc.aio.Server:
    """``max_concurrent_rpcs``: calls beyond it are refused (RESOURCE_EXHAUSTED) before
    their messages are read, which bounds the bytes gRPC holds for them: sixteen 27 MB
    requests at once took a server of EfficientNet-Lite0 to 939 MB, with a limit of 4
    to 561."""
    interceptors: list[grpc.aio.ServerInterceptor] = [
        TrimAfterLargeRequests(),  # outside: malformed requests are trimmed after too
        MalformedRequestInterceptor(),
    ]
    if auth is not None:
        interceptors.insert(0, AuthInterceptor(auth))
    return grpc.aio.server(
        interceptors=interceptors,
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),  # a taken port must fail, not be shared
        ],
    )
