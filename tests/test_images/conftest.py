"""Real images, and a real HTTP server on loopback that misbehaves in every way we guard against.

An audit hook records every socket connect made during these tests and refuses any
to a non-loopback address, so "refused without connecting" is checked, and a bug in
the address guard can never send traffic off this machine.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import skimage.data
from PIL import Image

from streaminfer.images import FetchPolicy
from tests.test_images.cases import ImageServer, bomb_png, encode

_connect_log: list[tuple[str, int]] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "socket.connect" or _connect_log is None:
        return
    address = args[1]
    if not isinstance(address, tuple):
        return
    host, port = str(address[0]), int(address[1])
    _connect_log.append((host, port))
    if not ipaddress.ip_address(host.partition("%")[0]).is_loopback:
        raise ConnectionRefusedError(f"test guard: refusing to connect to {host}:{port}")


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def connections() -> Iterator[list[tuple[str, int]]]:
    """The (host, port) of every socket connect the test makes; off-machine ones are refused."""
    global _connect_log
    log: list[tuple[str, int]] = []
    _connect_log = log
    yield log
    _connect_log = None


@pytest.fixture(scope="session")
def chelsea_jpeg() -> bytes:
    return encode(Image.fromarray(skimage.data.chelsea()), "JPEG", quality=90)


@pytest.fixture(scope="session")
def coffee_png() -> bytes:
    return encode(Image.fromarray(skimage.data.coffee()), "PNG")


@pytest.fixture(scope="session")
def bomb() -> bytes:
    """400 megapixels in about 50 KB: past twice Pillow's limit, so Pillow itself raises."""
    return bomb_png(20_000, 20_000)


@pytest.fixture(scope="session")
def truncated_jpeg(chelsea_jpeg: bytes) -> bytes:
    return chelsea_jpeg[: len(chelsea_jpeg) // 2]


@pytest.fixture(scope="session")
def image_server(
    chelsea_jpeg: bytes, coffee_png: bytes, bomb: bytes, truncated_jpeg: bytes
) -> Iterator[ImageServer]:
    server = ImageServer(
        {
            "/chelsea.jpg": ("image/jpeg", chelsea_jpeg),
            "/coffee.png": ("image/png", coffee_png),
            "/bomb.png": ("image/png", bomb),
            "/truncated.jpg": ("image/jpeg", truncated_jpeg),
            "/page.html": ("text/html", b"<!DOCTYPE html><html><body>Sign in</body></html>"),
        }
    )
    yield server
    server.stop()


@pytest.fixture
def loopback_policy() -> FetchPolicy:
    """Allows the test server, with timeouts short enough for fast tests."""
    return FetchPolicy(
        allow_networks=["127.0.0.0/8"], connect_timeout=1.0, read_timeout=0.5, total_timeout=2.0
    )
