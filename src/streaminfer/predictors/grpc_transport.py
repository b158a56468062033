"""One long-lived gRPC channel per remote predictor, and gRPC statuses mapped to the two errors.

NOT_FOUND and INVALID_ARGUMENT are a record's fault, and so is a message refused for its
size, which no retry can fix: an answer larger than ``max_answer_bytes`` too, refused by
gRPC as it arrives (``AnswerTooLarge``; without a limit, a 512 MB answer took a worker
to 1.65 GB before its tensors were refused).  INTERNAL and UNKNOWN come from a server
that answers but failed this one request (Triton's Python backend on a truncated JPEG):
``RequestFailed``, which the worker narrows down to its record.  Every other status
(UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ...) is the infrastructure's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from streaminfer.errors import InfrastructureError, RequestFailed, StreamInferError
from streaminfer.models.errors import ModelNotFound
from streaminfer.predictors.remote import AnswerTooLarge, RemoteOptions, ServerRejected

Reply = TypeVar("Reply")

_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),  # notice a dead peer behind a silent network
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", -1),
    # Reconnect soon after a server restart (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    # At most 0.5 s: outputs resume soon after an outage ends (see ResilientPredictor's probe).
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.enable_retries", 0),  # retries are ResilientPredictor's job, with its backoff
]
_TOO_LARGE = "larger than max"  # gRPC core's text when a message exceeds the size limit
_ANSWER_TOO_LARGE = "CLIENT: Received message " + _TOO_LARGE  # ours, on an answer


class GrpcTransport:
    """A channel made once and shared by every thread (gRPC channels are thread-safe)."""

    def __init__(self, target: str, options: RemoteOptions) -> None:
        self.target = target
        self.timeout_s = options.timeout_s
        self.metadata: tuple[tuple[str, str], ...] = ()
        if options.token:
            self.metadata = (("authorization", f"Bearer {options.token}"),)
        channel_options = [
            *_CHANNEL_OPTIONS,
            ("grpc.max_receive_message_length", options.max_answer_bytes),
        ]
        if options.tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=options.read_ca())
            self.channel = grpc.secure_channel(target, credentials, channel_options)
        else:
            self.channel = grpc.insecure_channel(target, channel_options)

    def call(self, method: Callable[..., Reply], request: Any) -> Reply:
        """Invoke a unary stub method under the deadline; map a failure to our errors."""
        try:
            return method(request, timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise status_error(self.target, exc) from exc

    def close(self) -> None:
        self.channel.close()


def status_error(target: str, exc: grpc.RpcError) -> StreamInferError:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    message = f"{target}: {code.name}: {details}"
    if code is grpc.StatusCode.NOT_FOUND:
        return ModelNotFound(message)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return ServerRejected(message)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and _ANSWER_TOO_LARGE in details:
        return AnswerTooLarge(message)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE in details:
        return ServerRejected(message)
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return RequestFailed(message)
    return InfrastructureError(message)
