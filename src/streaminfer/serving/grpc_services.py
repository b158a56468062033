"""What every gRPC service shares: error translation, the bearer-token check, the server."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

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
            await context.abort(status.code, message)

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


def create_server(auth: BearerAuth | None, max_message_bytes: int) -> grpc.aio.Server:
    return grpc.aio.server(
        interceptors=[AuthInterceptor(auth)] if auth else None,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),  # a taken port must fail, not be shared
        ],
    )
