"""One deadline for a whole blocking HTTP exchange made with httpcore.

httpcore bounds each connect, read and write by its own timeout, so a server that sends
a byte just before every read timeout (a status line and headers one byte a second, say)
holds an exchange for as long as it likes.  :class:`DeadlineBackend` opens connections
whose every operation is bounded by the time left until the deadline set with
:func:`deadline` around the exchange — connect, TLS handshake, request, status line,
headers and body alike — and raises :class:`DeadlinePassed` once it has gone.

The deadline lives in a context variable, so a connection kept in a pool obeys the
deadline of whichever exchange uses it next; outside :func:`deadline` only httpcore's own
timeouts apply.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import httpcore

_T = TypeVar("_T")
_deadline: ContextVar[float | None] = ContextVar("streaminfer_http_deadline", default=None)


class DeadlinePassed(httpcore.TimeoutException):
    """The exchange's deadline passed before it was done."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Bound every exchange made inside this block to end ``seconds`` from now.

    Yields the deadline, on the ``time.monotonic()`` clock.
    """
    ends = time.monotonic() + seconds
    token = _deadline.set(ends)
    try:
        yield ends
    finally:
        _deadline.reset(token)


def _bounded(operation: Callable[[float | None], _T], timeout: float | None) -> _T:
    """Run ``operation`` with ``timeout`` cut to the time left before the deadline."""
    at = _deadline.get()
    if at is None:
        return operation(timeout)
    left = at - time.monotonic()
    if left <= 0:
        raise DeadlinePassed("the deadline passed")
    cut = timeout is None or left < timeout
    try:
        return operation(left if cut else timeout)
    except httpcore.TimeoutException as exc:
        if cut:  # it was the deadline, not the operation's own timeout, that ran out
            raise DeadlinePassed("the deadline passed") from exc
        raise


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every operation ends by the current deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return _bounded(lambda t: self._inner.read(max_bytes, t), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        _bounded(lambda t: self._inner.write(buffer, t), timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        # One bound covers the whole handshake: CPython applies a socket's timeout to it all.
        return _DeadlineStream(
            _bounded(lambda t: self._inner.start_tls(ssl_context, server_hostname, t), timeout)
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.SyncBackend):
    """httpcore's blocking backend, with the streams it opens bound by :func:`deadline`."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        def connect(limit: float | None) -> httpcore.NetworkStream:
            return super(DeadlineBackend, self).connect_tcp(
                host, port, limit, local_address, socket_options
            )

        return _DeadlineStream(_bounded(connect, timeout))
