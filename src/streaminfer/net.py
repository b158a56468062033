"""Loopback ports for the local parts this project starts: a broker, servers, workers."""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Any

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10_000  # below: ports that well-known services and their tests tend to use
_ATTEMPTS = 100
_handed_out: set[int] = set()  # this process's picks: never the same port twice


def free_port(host: str = "127.0.0.1", count: int = 1) -> int:
    """A port nothing listens on now, and the ``count - 1`` ports after it (a local
    cluster's nodes listen on consecutive ports); the caller binds them soon after.

    The OS's own pick (``bind(host, 0)``) comes from the ephemeral range, which is also
    where every outgoing connection gets its local port: between this call and the
    caller's bind, any connection (a client of the broker, say) may take it, and the
    caller fails with "address already in use".  So the port is drawn at random from
    below that range, where only an explicit bind can land, and checked to be free.
    """
    low, _ = ephemeral_range()
    room_below = low - LOWEST_PORT >= 1_000
    for _ in range(_ATTEMPTS):
        port = random.randrange(LOWEST_PORT, low - count + 1) if room_below else _os_pick(host)
        block = range(port, port + count)
        if _handed_out.isdisjoint(block) and all(_bindable(host, p) for p in block):
            _handed_out.update(block)
            return port
    raise OSError(f"no {count} free consecutive ports found on {host}")


def _os_pick(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ephemeral_range() -> tuple[int, int]:
    """The local ports the OS gives outgoing connections (Linux's default if unknown)."""
    try:
        low, high = EPHEMERAL_RANGE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def passive_addresses(host: str, port: int) -> list[tuple[Any, ...]]:
    """``getaddrinfo``'s answers for listening on ``host`` (``""``: every interface)."""
    return socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)


def host_port(host: str, port: int) -> str:
    """``host:port`` as gRPC and URLs write it: an IPv6 address in brackets, and every
    interface (``""``) as ``[::]``."""
    host = host or "::"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
