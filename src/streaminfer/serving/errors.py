"""What a request failure means on each protocol: one table from exception to gRPC and HTTP.

The data plane raises the product's own errors (``RecordError`` for a bad request,
``InfrastructureError`` for a busy or stopping server) and the codecs ``DecodeError`` for
a tensor that does not add up; every door translates them here, so a given mistake gets
the same status whether it came over REST or gRPC.  The status of an exception is that of
the nearest class in its MRO that the table names, so a specific class wins over its
parent whatever order the table lists them in.

Messages quote what the client sent (a model name, a signature, a label), so every
message leaves here cut to ``MAX_MESSAGE_BYTES``: a 20 KB model name quoted in full made
a gRPC status its client refused to read (RESOURCE_EXHAUSTED instead of NOT_FOUND).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from streaminfer.codecs.errors import DecodeError
from streaminfer.errors import ConfigError, InfrastructureError, RecordError, bounded
from streaminfer.models.batcher import Overloaded
from streaminfer.models.errors import ModelNotFound

log = logging.getLogger(__name__)


class InvalidRequest(RecordError):
    """The request is malformed: bad JSON, wrong types, a tensor that does not add up."""

    reason = "invalid_request"


class Unimplemented(RecordError):
    """A method this server does not offer (TF Serving's Classify and Regress)."""

    reason = "unimplemented"


class Unauthenticated(RecordError):
    """No bearer token, or the wrong one."""

    reason = "unauthenticated"


class AnswerTooLarge(RecordError):
    """The answer would be larger than gRPC may send (``--max-request-mb``): said before
    it is built, as gRPC would refuse it only once built, at twice its size or more."""

    reason = "answer_too_large"


class Unavailable(InfrastructureError):
    """The server is shutting down and takes no new work."""


class DeadlineExceeded(InfrastructureError):
    """The request took longer than the server's ``request_timeout``."""


@dataclass(frozen=True)
class Status:
    code: grpc.StatusCode
    http: int

    @property
    def name(self) -> str:
        """The lower-case gRPC code name, as metrics label it."""
        return str(self.code.name).lower()


MAX_MESSAGE_BYTES = 2048
"""The most UTF-8 bytes of an error message.  gRPC percent-encodes every byte outside
printable ASCII in ``grpc-message``, so this is at most 6 KB of metadata, within the 8 KB
that gRPC clients read by default."""

OK = Status(grpc.StatusCode.OK, 200)
_INVALID = Status(grpc.StatusCode.INVALID_ARGUMENT, 400)
_INTERNAL = Status(grpc.StatusCode.INTERNAL, 500)


STATUS_BY_TYPE: Mapping[type[BaseException], Status] = {
    ModelNotFound: Status(grpc.StatusCode.NOT_FOUND, 404),
    Unimplemented: Status(grpc.StatusCode.UNIMPLEMENTED, 501),
    Unauthenticated: Status(grpc.StatusCode.UNAUTHENTICATED, 401),
    RecordError: _INVALID,  # bad labels, inputs, images and requests alike
    DecodeError: _INVALID,  # a tensor or body that does not add up
    ConfigError: _INVALID,  # a model config sent to HandleReloadConfigRequest
    Overloaded: Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    AnswerTooLarge: Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    DeadlineExceeded: Status(grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    InfrastructureError: Status(grpc.StatusCode.UNAVAILABLE, 503),
    asyncio.CancelledError: Status(grpc.StatusCode.CANCELLED, 499),  # the client went away
}


def status_of(
    exc: BaseException, table: Mapping[type[BaseException], Status] = STATUS_BY_TYPE
) -> Status:
    """The status of the nearest class of ``exc`` the table names; else 500 / INTERNAL."""
    for kind in type(exc).__mro__:
        if kind in table:
            return table[kind]
    return _INTERNAL


def describe(exc: BaseException) -> tuple[Status, str]:
    """The status and message that tell a client what went wrong.

    Unforeseen errors are logged with their traceback and answered without internals.
    """
    status = status_of(exc)
    if status is _INTERNAL:
        log.error("request failed unexpectedly", exc_info=exc)
        return status, f"internal error ({type(exc).__name__}); see the server log"
    return status, bounded(str(exc), MAX_MESSAGE_BYTES)
