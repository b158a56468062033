"""Free loopback ports: outside the range outgoing connections take their ports from."""

from __future__ import annotations

import socket

import pytest

from streaminfer import net
from streaminfer.net import ephemeral_range, free_port, host_port


def test_free_ports_are_bindable_distinct_and_below_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    assert 0 < low < high
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(port < low for port in ports)  # no outgoing connection can take one meanwhile
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))


def test_a_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        picks = iter([taken, taken + 1])
        monkeypatch.setattr(net.random, "randrange", lambda *_: next(picks))
        assert free_port() == taken + 1


def test_a_block_with_a_port_in_use_after_its_first_is_passed_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        picks = iter([taken - 2, taken + 1])  # the first block ends on the port in use
        monkeypatch.setattr(net.random, "randrange", lambda *_: next(picks))
        assert free_port(count=3) == taken + 1
        for port in range(taken + 1, taken + 4):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("host", "written"),
    [("127.0.0.1", "127.0.0.1:80"), ("localhost", "localhost:80"), ("::", "[::]:80"),
     ("::1", "[::1]:80"), ("", "[::]:80")],
)  # fmt: skip
def test_host_port_brackets_ipv6_and_writes_every_interface_as_ipv6_any(
    host: str, written: str
) -> None:
    assert host_port(host, 80) == written
