"""ImageFetcher against a real HTTP server on loopback, real files and real data: URIs."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from streaminfer.errors import RecordError
from streaminfer.images import (
    CorruptImage,
    DecompressionBomb,
    FetchPolicy,
    ForbiddenAddress,
    ForbiddenFile,
    ImageFetcher,
    ImageFetchFailed,
    ImageFetchTimeout,
    ImageNotFound,
    ImageTooLarge,
    InvalidImageURI,
    NotAnImage,
    TooManyRedirects,
    decode_image,
)
from streaminfer.images.fetch import AddressGuard
from tests.test_images.cases import ImageServer


@pytest.fixture
def fetcher(loopback_policy: FetchPolicy) -> Iterator[ImageFetcher]:
    with ImageFetcher(loopback_policy) as fetcher:
        yield fetcher


def test_reasons_are_stable_record_errors() -> None:
    reasons = {
        InvalidImageURI: "bad_uri",
        ImageNotFound: "not_found",
        ImageFetchFailed: "fetch_failed",
        ImageFetchTimeout: "timeout",
        ImageTooLarge: "too_large",
        TooManyRedirects: "too_many_redirects",
        ForbiddenAddress: "forbidden_address",
        ForbiddenFile: "forbidden",
        NotAnImage: "not_an_image",
        CorruptImage: "corrupt_image",
        DecompressionBomb: "decompression_bomb",
    }
    for error, reason in reasons.items():
        assert issubclass(error, RecordError)
        assert error.reason == reason


# --- http ---------------------------------------------------------------------------------


def test_fetches_jpeg_and_png(
    fetcher: ImageFetcher, image_server: ImageServer, chelsea_jpeg: bytes, coffee_png: bytes
) -> None:
    assert fetcher.fetch(image_server.url("/chelsea.jpg")) == chelsea_jpeg
    assert fetcher.fetch(image_server.url("/coffee.png")) == coffee_png


def test_reuses_connections(fetcher: ImageFetcher, image_server: ImageServer) -> None:
    image_server.client_ports.clear()
    for _ in range(3):
        fetcher.fetch(image_server.url("/chelsea.jpg"))
    assert len(set(image_server.client_ports)) == 1


def test_is_thread_safe(
    fetcher: ImageFetcher, image_server: ImageServer, chelsea_jpeg: bytes, coffee_png: bytes
) -> None:
    uris = [image_server.url("/chelsea.jpg"), image_server.url("/coffee.png")] * 16
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(fetcher.fetch, uris))
    assert results == [chelsea_jpeg, coffee_png] * 16


def test_404_is_not_found(fetcher: ImageFetcher, image_server: ImageServer) -> None:
    with pytest.raises(ImageNotFound, match="HTTP 404"):
        fetcher.fetch(image_server.url("/missing.jpg"))


def test_other_status_fails(fetcher: ImageFetcher, image_server: ImageServer) -> None:
    with pytest.raises(ImageFetchFailed, match="HTTP 503"):
        fetcher.fetch(image_server.url("/error"))


def test_connection_refused_fails(fetcher: ImageFetcher) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ImageFetchFailed, match="cannot connect"):
        fetcher.fetch(f"http://127.0.0.1:{port}/x.jpg")


def test_unknown_host_fails(fetcher: ImageFetcher) -> None:
    with pytest.raises(ImageFetchFailed, match="cannot resolve"):
        fetcher.fetch("http://no-such-host.invalid/x.jpg")


def test_connect_timeout() -> None:
    policy = FetchPolicy(allow_networks=["127.0.0.0/8"], connect_timeout=0.3)
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(64):  # fill the accept queue until the kernel ignores new connections
            probe = stack.enter_context(socket.socket())
            probe.settimeout(0.2)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        else:
            pytest.skip("this kernel never left a connection attempt unanswered")
        fetcher = stack.enter_context(ImageFetcher(policy))
        with pytest.raises(ImageFetchTimeout, match="connect_timeout"):
            fetcher.fetch(f"http://127.0.0.1:{port}/x.jpg")


def test_stalled_server_times_out(
    fetcher: ImageFetcher, image_server: ImageServer, loopback_policy: FetchPolicy
) -> None:
    start = time.monotonic()
    with pytest.raises(ImageFetchTimeout, match="read_timeout"):
        fetcher.fetch(image_server.url("/stall"))
    assert time.monotonic() - start < loopback_policy.read_timeout + 1.0


def test_trickling_server_hits_the_total_deadline(image_server: ImageServer) -> None:
    policy = FetchPolicy(allow_networks=["127.0.0.0/8"], read_timeout=1.0, total_timeout=0.5)
    start = time.monotonic()
    with ImageFetcher(policy) as fetcher, pytest.raises(ImageFetchTimeout, match="total_timeout"):
        fetcher.fetch(image_server.url("/trickle"))
    assert time.monotonic() - start < policy.total_timeout + policy.read_timeout


def test_slow_status_line_and_headers_hit_the_total_deadline(image_server: ImageServer) -> None:
    """One byte a second never trips the read timeout; the deadline covers the headers too."""
    policy = FetchPolicy(allow_networks=["127.0.0.0/8"], read_timeout=3.0, total_timeout=2.0)
    start = time.monotonic()
    with ImageFetcher(policy) as fetcher, pytest.raises(ImageFetchTimeout, match="total_timeout"):
        fetcher.fetch(image_server.url("/slow-headers"))
    # The headers alone take over a minute to arrive: only the deadline can end the fetch here.
    assert time.monotonic() - start < policy.read_timeout
    assert ImageFetchTimeout.reason == "timeout"


def test_slow_tls_handshake_hits_the_total_deadline() -> None:
    """A TLS record header, then its body one byte at a time: the handshake never completes."""
    stop = threading.Event()

    def trickle(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)  # the ClientHello
            conn.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16 KiB follows
            while not stop.wait(0.2):
                conn.sendall(b"\x00")

    policy = FetchPolicy(
        allow_networks=["127.0.0.0/8"], connect_timeout=5.0, read_timeout=5.0, total_timeout=1.5
    )
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=trickle, args=(listener,))
        server.start()
        start = time.monotonic()
        try:
            url = f"https://127.0.0.1:{listener.getsockname()[1]}/x.jpg"
            with ImageFetcher(policy) as fetcher, pytest.raises(ImageFetchTimeout, match="total"):
                fetcher.fetch(url)
            assert time.monotonic() - start < policy.connect_timeout
        finally:
            stop.set()
            server.join()


def test_redirect_chain_within_the_limit(
    fetcher: ImageFetcher, image_server: ImageServer, chelsea_jpeg: bytes
) -> None:
    assert fetcher.policy.max_redirects == 3
    assert fetcher.fetch(image_server.url("/chain/3")) == chelsea_jpeg


def test_too_many_redirects(fetcher: ImageFetcher, image_server: ImageServer) -> None:
    with pytest.raises(TooManyRedirects, match="more than 3 redirects"):
        fetcher.fetch(image_server.url("/chain/4"))
    with pytest.raises(TooManyRedirects):
        fetcher.fetch(image_server.url("/loop/0"))


@pytest.mark.parametrize("route", ["/huge", "/huge/chunked"])
def test_body_over_max_bytes_is_too_large(
    fetcher: ImageFetcher, image_server: ImageServer, route: str
) -> None:
    assert fetcher.policy.max_bytes == 20 * 1024 * 1024
    with pytest.raises(ImageTooLarge, match="max_bytes"):
        fetcher.fetch(image_server.url(route))


def test_html_page_is_not_an_image(fetcher: ImageFetcher, image_server: ImageServer) -> None:
    data = fetcher.fetch(image_server.url("/page.html"))
    with pytest.raises(NotAnImage, match="looks like HTML") as caught:
        decode_image(data)
    assert "Sign in" not in str(caught.value)  # the page itself is never quoted


def test_served_bomb_and_truncated_jpeg(fetcher: ImageFetcher, image_server: ImageServer) -> None:
    bomb = fetcher.fetch(image_server.url("/bomb.png"))
    assert len(bomb) < 100_000
    with pytest.raises(DecompressionBomb):
        decode_image(bomb)
    with pytest.raises(CorruptImage, match="truncated"):
        decode_image(fetcher.fetch(image_server.url("/truncated.jpg")))


# --- the address guard ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.1.2.3/x.jpg", "private"),
        ("http://192.168.0.1/x.jpg", "private"),
        ("http://[::ffff:10.0.0.1]/x.jpg", "private"),
        ("http://0.0.0.0/x.jpg", "unspecified"),
        ("http://224.0.0.1/x.jpg", "multicast"),
        ("http://[::1]/x.jpg", "loopback"),
        ("http://2130706433/x.jpg", "loopback"),  # 127.0.0.1 spelled as one number
        ("http://localhost/x.jpg", "loopback"),
    ],
)
def test_non_public_addresses_are_refused_without_connecting(
    uri: str, kind: str, connections: list[tuple[str, int]]
) -> None:
    with ImageFetcher() as fetcher, pytest.raises(ForbiddenAddress, match=f"a {kind} address"):
        fetcher.fetch(uri)
    assert connections == []


def test_loopback_refused_by_default_allowed_by_allow_list(
    image_server: ImageServer, chelsea_jpeg: bytes, connections: list[tuple[str, int]]
) -> None:
    uri = image_server.url("/chelsea.jpg")
    with ImageFetcher() as fetcher, pytest.raises(ForbiddenAddress, match="allow_networks"):
        fetcher.fetch(uri)
    assert connections == []
    for policy in (FetchPolicy(allow_networks=["127.0.0.1/32"]), FetchPolicy(allow_private=True)):
        with ImageFetcher(policy) as fetcher:
            assert fetcher.fetch(uri) == chelsea_jpeg


def test_allow_private_keeps_link_local_closed() -> None:
    guard = AddressGuard(FetchPolicy(allow_private=True))
    assert guard.forbidden_kind(ipaddress.ip_address("10.0.0.1")) is None
    assert guard.forbidden_kind(ipaddress.ip_address("127.0.0.1")) is None
    assert guard.forbidden_kind(ipaddress.ip_address("169.254.169.254")) == "link-local"
    assert guard.forbidden_kind(ipaddress.ip_address("8.8.8.8")) is None


def test_allow_networks_are_validated() -> None:
    assert FetchPolicy(allow_networks=["127.0.0.1/8"]).allow_networks == ["127.0.0.0/8"]
    with pytest.raises(ValidationError):
        FetchPolicy(allow_networks=["not-a-network"])


def test_redirect_to_a_forbidden_address_is_refused(
    fetcher: ImageFetcher, image_server: ImageServer, connections: list[tuple[str, int]]
) -> None:
    target = urllib.parse.quote("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(ForbiddenAddress, match="link-local"):
        fetcher.fetch(image_server.url(f"/redirect?to={target}"))
    assert {host for host, _ in connections} == {"127.0.0.1"}


def test_redirect_to_a_file_is_refused(fetcher: ImageFetcher, image_server: ImageServer) -> None:
    target = urllib.parse.quote("file:///etc/passwd")
    with pytest.raises(ForbiddenAddress, match="http or https"):
        fetcher.fetch(image_server.url(f"/redirect?to={target}"))


# --- data:, file:, bytes, bad URIs ------------------------------------------------------------


def test_data_uris(fetcher: ImageFetcher, chelsea_jpeg: bytes) -> None:
    encoded = base64.b64encode(chelsea_jpeg).decode()
    assert fetcher.fetch(f"data:image/jpeg;base64,{encoded}") == chelsea_jpeg
    assert fetcher.fetch(f"DATA:image/jpeg;BASE64,{urllib.parse.quote(encoded)}") == chelsea_jpeg
    assert fetcher.fetch("data:;base64,aGVsbG8") == b"hello"  # padding left out
    assert fetcher.fetch("data:text/plain,hello%20world") == b"hello world"


@pytest.mark.parametrize(
    "uri", ["data:image/png;base64,not*base64!", "data:image/png;base64", "ftp://example.com/a"]
)
def test_invalid_uris(fetcher: ImageFetcher, uri: str) -> None:
    with pytest.raises(InvalidImageURI):
        fetcher.fetch(uri)


@pytest.mark.parametrize(
    "uri", ["/tmp/cat.jpg", "cat.jpg", "http:///cat.jpg", "http://[::1/cat.jpg", "file:cat.jpg"]
)
def test_malformed_uris(fetcher: ImageFetcher, uri: str) -> None:
    with pytest.raises(InvalidImageURI):
        fetcher.fetch(uri)


def test_data_uri_over_max_bytes() -> None:
    with ImageFetcher(FetchPolicy(max_bytes=4)) as fetcher, pytest.raises(ImageTooLarge):
        fetcher.fetch("data:;base64,aGVsbG8=")


def test_file_uris(tmp_path: Path, chelsea_jpeg: bytes) -> None:
    path = tmp_path / "a cat #1.jpg"
    path.write_bytes(chelsea_jpeg)
    fetcher = ImageFetcher(FetchPolicy(allow_files=[tmp_path]))
    assert fetcher.fetch(path.as_uri()) == chelsea_jpeg
    assert fetcher.fetch("file://localhost" + urllib.parse.quote(str(path))) == chelsea_jpeg
    with pytest.raises(ImageNotFound):
        fetcher.fetch((tmp_path / "missing.jpg").as_uri())
    with pytest.raises(ImageFetchFailed, match="not a regular file"):
        fetcher.fetch(tmp_path.as_uri())
    with pytest.raises(InvalidImageURI, match="local path"):
        fetcher.fetch("file://example.com/a.jpg")
    with pytest.raises(InvalidImageURI, match="NUL"):
        fetcher.fetch(f"{tmp_path.as_uri()}/a%00b.jpg")


def test_file_over_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(b"\xff" * 100)
    policy = FetchPolicy(max_bytes=99, allow_files=[tmp_path])
    with ImageFetcher(policy) as fetcher, pytest.raises(ImageTooLarge):
        fetcher.fetch(path.as_uri())


@pytest.mark.parametrize("uri", ["file:///etc/passwd", "file:///proc/self/environ"])
def test_file_access_is_refused_by_default(uri: str) -> None:
    with ImageFetcher() as fetcher, pytest.raises(ForbiddenFile, match="--allow-files") as caught:
        fetcher.fetch(uri)
    assert caught.value.reason == "forbidden"
    assert "root" not in str(caught.value) and "PATH" not in str(caught.value)


def test_only_regular_files_under_allowed_folders_are_read(
    tmp_path: Path, chelsea_jpeg: bytes
) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "cat.jpg").write_bytes(chelsea_jpeg)
    secret = outside / "secret.txt"
    secret.write_bytes(b"the secret contents")
    (allowed / "escape.jpg").symlink_to(secret)
    (allowed / "up").symlink_to(outside)
    os.mkfifo(allowed / "fifo.jpg")
    with ImageFetcher(FetchPolicy(allow_files=[allowed])) as fetcher:
        assert fetcher.fetch((allowed / "cat.jpg").as_uri()) == chelsea_jpeg
        assert fetcher.fetch(f"file://{outside}/../allowed/cat.jpg") == chelsea_jpeg
        for escape in ("escape.jpg", "up/secret.txt", "../outside/secret.txt"):
            with pytest.raises(ForbiddenFile, match="not under a folder") as caught:
                fetcher.fetch(f"file://{allowed}/{escape}")
            assert "secret contents" not in str(caught.value)
        with pytest.raises(ImageFetchFailed, match="not a regular file"):  # and does not hang
            fetcher.fetch((allowed / "fifo.jpg").as_uri())
        with pytest.raises(ForbiddenFile):  # a folder whose name only starts like an allowed one
            fetcher.fetch((tmp_path / "allowed-not" / "cat.jpg").as_uri())


def test_not_an_image_never_quotes_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"password=hunter2\n")
    with ImageFetcher(FetchPolicy(allow_files=[tmp_path])) as fetcher:
        data = fetcher.fetch(path.as_uri())
    with pytest.raises(NotAnImage) as caught:
        decode_image(data)
    assert "hunter2" not in str(caught.value)


def test_raw_bytes(chelsea_jpeg: bytes) -> None:
    with ImageFetcher(FetchPolicy(max_bytes=len(chelsea_jpeg))) as fetcher:
        assert fetcher.fetch(chelsea_jpeg) == chelsea_jpeg
        with pytest.raises(ImageTooLarge):
            fetcher.fetch(chelsea_jpeg + b"\0")
