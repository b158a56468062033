"""The two kinds of failure the whole product distinguishes.

A ``RecordError`` is the fault of one input (a bad URL, not an image, an unknown
model): the worker sends that record to the dead-letter topic and goes on, and the
server answers 4xx / INVALID_ARGUMENT / NOT_FOUND.  An ``InfrastructureError`` is a
fault of something around the record (a model server down, a broker hiccup): the
record is retried, never dead-lettered.  ``ConfigError`` is a user's bad setting and
ends a command with a one-line message.
"""

from __future__ import annotations


class StreamInferError(Exception):
    """Base of every error streaminfer raises on purpose."""


class ConfigError(StreamInferError):
    """A bad flag, setting or environment: the command stops with this message."""


class RecordError(StreamInferError):
    """The input itself cannot be processed; ``reason`` is a stable short code."""

    reason = "invalid_record"


class InfrastructureError(StreamInferError):
    """Something the record depends on is unavailable; retrying may succeed."""


class RequestFailed(StreamInferError):
    """A server that answers other requests failed this one (gRPC ``INTERNAL``, HTTP 500 or
    422): not an outage.  The worker narrows it down to the record that causes it, retries
    that record alone a few times, then dead-letters it as ``server_error``."""


def drop_tracebacks(error: BaseException) -> None:
    """Forget the tracebacks of an error and of the exceptions it was raised from or while
    handling.  Their frames (and each frame's callers) hold what failed, a record or a
    request's body, often in a cycle through the error itself (a local that holds it)
    that only Python's cycle collector frees, minutes and many megabytes later."""
    pending, seen = [error], set()
    while pending:
        exc = pending.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        exc.__traceback__ = None
        pending.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)


def bounded(message: str, limit: int) -> str:
    """``message``, or its start and end around a note of what was cut, in ``limit``
    UTF-8 bytes at most: the reason a message gives usually comes at one end.  A lone
    surrogate (which no UTF-8 holds, so no gRPC status nor log line either) is written
    escaped."""
    encoded = message.encode(errors="backslashreplace")
    if len(encoded) <= limit:
        return encoded.decode()
    note = f" ... [{len(encoded) - limit} bytes cut] ... "
    keep = (limit - len(note) - 8) // 2  # the note's count shrinks by at most 8 digits
    head = encoded[:keep].decode(errors="ignore")  # a character cut in two is dropped
    tail = encoded[len(encoded) - keep :].decode(errors="ignore")
    cut = len(encoded) - len(head.encode()) - len(tail.encode())
    return f"{head} ... [{cut} bytes cut] ... {tail}"
