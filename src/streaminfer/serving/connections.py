"""How many REST connections the server keeps, and how long one may go without a request.

aiohttp keeps a connection for as long as its client holds it open: one that sent part of a
request head, or nothing, was kept for an hour (its handler's keep-alive default), some
6 KB of the server's memory and a file descriptor each, so a client opening them faster
than that could take the server past any memory bound.  Two bounds, then:
- the REST port listens on :class:`Listener` sockets, which count the connections they
  hand out until each is closed and close the ones past ``--max-connections`` as they are
  accepted, before asyncio or aiohttp make anything for them (TLS handshakes included);
- the runner's keep-alive is ``--body-timeout``: a connection whose next request head has
  not arrived that long after it opened, or after its last answer, is closed.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from streaminfer.net import passive_addresses

log = logging.getLogger(__name__)

_LOG_EVERY_S = 10.0  # a flood of refusals logs a line per interval, not one each


class Connections:
    """The REST connections open, shared by the port's listeners (one per address)."""

    def __init__(self, limit: int, on_refused: Callable[[], None]) -> None:
        self.limit, self.open = limit, 0
        self._on_refused = on_refused
        self._refused_since_log = 0
        self._logged_at = -_LOG_EVERY_S

    def refused(self) -> None:
        self._on_refused()
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:
            log.warning(
                "%d REST connections open, as many as --max-connections allows: %d more "
                "closed as they came",
                self.limit,
                self._refused_since_log,
            )
            self._logged_at, self._refused_since_log = now, 0


class Listener(socket.socket):
    """A listening socket whose ``accept`` hands out counted connections while fewer than
    the limit are open, and closes the others at once."""

    def __init__(self, family: int, connections: Connections) -> None:
        super().__init__(family, socket.SOCK_STREAM)
        self.connections = connections

    def accept(self) -> tuple[socket.socket, object]:
        while True:  # ends with a connection, or BlockingIOError once none is waiting
            fd, address = self._accept()  # type: ignore[attr-defined]
            if self.connections.open < self.connections.limit:
                break
            os.close(fd)
            self.connections.refused()
        self.connections.open += 1
        return _Connection(self.family, fd, self.connections), address


class _Connection(socket.socket):
    """An accepted connection, counted until closed (asyncio closes each one it ends)."""

    def __init__(self, family: int, fd: int, connections: Connections) -> None:
        super().__init__(family, socket.SOCK_STREAM, fileno=fd)
        self._connections: Connections | None = connections

    def close(self) -> None:
        self._release()
        super().close()

    def __del__(self) -> None:  # closed without close(): its file descriptor went with it
        self._release()

    def _release(self) -> None:
        if self._connections is not None:
            self._connections.open -= 1
            self._connections = None


def listeners(host: str, port: int, connections: Connections) -> list[Listener]:
    """Bound sockets for every address of ``host`` (``""``: every interface), skipping a
    family the host cannot open, sharing ``connections``; port 0 takes the first address's
    free port for all.  An IPv6 address bound alone (``::``) takes IPv4 too where the
    system allows, as gRPC's port does; beside an IPv4 one it takes IPv6 only."""
    found = passive_addresses(host, port)
    families = {family for family, *_ in found}
    bound: list[Listener] = []
    try:
        for family, *_, address in found:
            if bound and port == 0:
                address = (address[0], bound[0].getsockname()[1], *address[2:])
            try:
                sock = Listener(family, connections)
            except OSError:  # a family this host cannot open (IPv6 turned off): skipped
                continue
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and socket.AF_INET in families:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
        if not bound:
            raise OSError(f"this host opens no socket of the family of {host!r}")
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound
