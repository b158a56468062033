"""Fetch encoded images by URI under limits that make URIs from untrusted records safe.

Records name their images by ``http``, ``https``, ``file`` or ``data:`` URI, or carry
the bytes themselves.  A URI comes from whoever wrote the record, so by default an
http(s) fetch may only reach public addresses (an SSRF guard: no cloud metadata
endpoint, no service on the private network), a ``file:`` URI may read nothing, every
fetch is bounded in size, time and redirects, and each fails with one specific
:mod:`streaminfer.images.errors` error per cause.

``total_timeout`` bounds the whole fetch — connect, TLS handshake, status line, headers
and body of every redirect — however slowly the server sends (see
:mod:`streaminfer.http_deadline`).  Local files are opt-in: ``allow_files`` names the
folders whose regular files may be read, checked after resolving symbolic links and
``..``; device files, FIFOs and sockets are never read.

The guard resolves each host name once, refuses the name if any of its addresses is
forbidden, and connects to the checked address itself, so a DNS answer that changes
between check and connect (DNS rebinding) cannot slip through; TLS still verifies
the certificate against the host name.  Environment proxy settings are ignored, since
a proxy would make the address check meaningless.  Host name resolution itself is not
bounded by the timeouts (the system resolver has its own).

This uses httpcore, the transport under httpx, because it lets the fetcher supply the
code that opens connections.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import os
import socket
import stat
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import httpcore
import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from streaminfer import __version__
from streaminfer.http_deadline import DeadlineBackend, DeadlinePassed, deadline
from streaminfer.images.errors import (
    ForbiddenAddress,
    ForbiddenFile,
    ImageFetchFailed,
    ImageFetchTimeout,
    ImageNotFound,
    ImageTooLarge,
    InvalidImageURI,
    TooManyRedirects,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_HTTP_SCHEMES = ("http", "https")
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_GONE_STATUSES = frozenset({404, 410})
# Address kinds that ``allow_private`` opens; link-local (where cloud metadata
# endpoints live), multicast, reserved and unspecified stay closed.
_PRIVATE_KINDS = frozenset({"loopback", "private"})
# Idle connections are closed after this many seconds, before most servers drop them.
_KEEPALIVE_EXPIRY = 5.0
_HEADERS = [
    (b"User-Agent", f"streaminfer/{__version__}".encode()),
    (b"Accept", b"image/jpeg, image/png, image/webp, image/gif, image/bmp, */*;q=0.5"),
    # Images are compressed already; refusing transfer encodings keeps max_bytes exact.
    (b"Accept-Encoding", b"identity"),
]


class FetchPolicy(BaseModel):
    """Limits on fetching one image; the defaults suit URIs from untrusted records."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_bytes: int = Field(default=20 * 1024 * 1024, gt=0, description="Largest encoded image.")
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to open a connection.")
    read_timeout: float = Field(default=10.0, gt=0, description="Seconds to wait for any data.")
    total_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds for the whole fetch: connect, TLS, status line, headers and "
        "body, redirects included, so a server that trickles bytes still times out.",
    )
    max_redirects: int = Field(default=3, ge=0, description="Redirects followed per fetch.")
    allow_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs (e.g. '127.0.0.0/8') that http(s) may reach although not public.",
    )
    allow_private: bool = Field(
        default=False,
        description="Let http(s) reach loopback and private-network addresses (not link-local).",
    )
    allow_files: list[Path] = Field(
        default_factory=list,
        description="Folders whose regular files file:// URIs may name; none: file:// is refused.",
    )

    @field_validator("allow_networks")
    @classmethod
    def _normalize_networks(cls, value: list[str]) -> list[str]:
        return [str(ipaddress.ip_network(network, strict=False)) for network in value]

    @field_validator("allow_files")
    @classmethod
    def _resolve_folders(cls, value: list[Path]) -> list[Path]:
        return [Path(os.path.realpath(folder)) for folder in value]


def _short(uri: str) -> str:
    """The URI as error messages show it: data: URIs can be megabytes long."""
    return uri if len(uri) <= 120 else uri[:100] + "..."


def _address_kind(address: IPAddress) -> str | None:
    """Why ``address`` is not public, or None if it is."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if address.is_private or not address.is_global:
        return "private"
    return None


class AddressGuard:
    """Decides which IP addresses an http(s) fetch may connect to."""

    def __init__(self, policy: FetchPolicy) -> None:
        self._allowed = [ipaddress.ip_network(network) for network in policy.allow_networks]
        self._allow_private = policy.allow_private

    def forbidden_kind(self, address: IPAddress) -> str | None:
        """The kind of a forbidden address ("loopback", "link-local", ...), None if allowed."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self._allowed):
            return None
        kind = _address_kind(address)
        if kind is None or (self._allow_private and kind in _PRIVATE_KINDS):
            return None
        return kind

    def check(self, host: str, addresses: list[str]) -> list[str]:
        """The distinct addresses if all are allowed: one forbidden address refuses the name."""
        distinct = list(dict.fromkeys(addresses))
        for text in distinct:
            kind = self.forbidden_kind(ipaddress.ip_address(text))
            if kind is not None:
                shown = host if host == text else f"{host} ({text})"
                allow = ipaddress.ip_network(text.partition("%")[0])
                raise ForbiddenAddress(
                    f"{shown} is a {kind} address; fetching images from it is refused to "
                    f"protect internal services (allow it with FetchPolicy.allow_networks="
                    f"['{allow}'])"
                )
        return distinct

    def resolve(self, host: str, port: int) -> list[str]:
        """The checked addresses of ``host``, resolved once so that they are what we connect to."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ImageFetchFailed(f"cannot resolve host {host!r}: {exc.strerror}") from exc
        return self.check(host, [str(info[4][0]) for info in infos])


class _GuardedBackend(DeadlineBackend):
    """Opens connections only to addresses the guard accepted, bounded by the fetch deadline."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        *others, last = self._guard.resolve(host, port)
        for address in others:
            with contextlib.suppress(httpcore.ConnectError):
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
        return super().connect_tcp(last, port, timeout, local_address, socket_options)


def _scheme(uri: str) -> str:
    scheme, colon, _ = uri.partition(":")
    if not colon or not scheme:
        raise InvalidImageURI(
            f"{_short(uri)!r} is not a URI: expected http(s)://..., file:///... or data:..."
        )
    return scheme.lower()


def _too_large(what: str, max_bytes: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"{what}: image is larger than the limit of {max_bytes} bytes (FetchPolicy.max_bytes)"
    )


def _check_size(data: bytes, max_bytes: int, what: str) -> bytes:
    if len(data) > max_bytes:
        raise _too_large(what, max_bytes)
    return data


def _decode_data_uri(uri: str) -> bytes:
    header, comma, payload = uri[len("data:") :].partition(",")
    if not comma:
        raise InvalidImageURI(f"{_short(uri)}: a data: URI needs a comma before its payload")
    raw = urllib.parse.unquote_to_bytes(payload)
    if not header.lower().endswith(";base64"):
        return raw
    compact = b"".join(raw.split())
    try:
        return base64.b64decode(compact + b"=" * (-len(compact) % 4), validate=True)
    except binascii.Error as exc:
        raise InvalidImageURI(f"{_short(uri)}: invalid base64 payload ({exc})") from exc


def _allowed_path(uri: str, folders: list[Path]) -> str:
    """The real path a file URI names, if it lies inside one of ``folders``."""
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise InvalidImageURI(
            f"{_short(uri)}: a file URI must name a local path (file:///path/to/image.jpg)"
        )
    path = urllib.request.url2pathname(parts.path)
    if not os.path.isabs(path):
        raise InvalidImageURI(f"{_short(uri)}: a file URI needs an absolute path")
    if "\0" in path:
        raise InvalidImageURI(f"{_short(uri)}: a file URI may not hold a NUL character")
    real = Path(os.path.realpath(path))  # symbolic links and ".." resolved
    if not any(real.is_relative_to(folder) for folder in folders):
        where = "no folder is" if not folders else "the path is not under a folder"
        raise ForbiddenFile(
            f"{_short(uri)}: reading local files is refused ({where} allowed with --allow-files)"
        )
    return str(real)


def _read_file(uri: str, policy: FetchPolicy) -> bytes:
    path = _allowed_path(uri, policy.allow_files)
    max_bytes = policy.max_bytes
    try:
        # O_NONBLOCK: opening a FIFO must not hang the worker waiting for a writer;
        # O_NOFOLLOW: a link swapped in after the check is not followed out of the folder.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ImageNotFound(f"{path}: no such file") from exc
    except OSError as exc:
        raise ImageFetchFailed(f"{path}: cannot open: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageFetchFailed(f"{path}: not a regular file")
        if info.st_size > max_bytes:
            raise _too_large(path, max_bytes)
        with open(fd, "rb", closefd=False) as file:
            data = file.read(max_bytes + 1)
    finally:
        os.close(fd)
    return _check_size(data, max_bytes, path)


def _fetch_local(uri: str, scheme: str, policy: FetchPolicy) -> bytes:
    """Bytes of a data: or file: URI; any other non-http scheme is refused."""
    if scheme == "data":
        return _check_size(_decode_data_uri(uri), policy.max_bytes, "data: URI")
    if scheme == "file":
        return _read_file(uri, policy)
    raise InvalidImageURI(
        f"{_short(uri)}: unsupported scheme {scheme!r}; use http, https, file or data"
    )


def _http_url(uri: str) -> httpx.URL:
    try:
        url = httpx.URL(uri)
    except httpx.InvalidURL as exc:
        raise InvalidImageURI(f"{_short(uri)}: malformed URL ({exc})") from exc
    if not url.host:
        raise InvalidImageURI(f"{_short(uri)}: URL has no host")
    return url


def _remaining(url: httpx.URL, ends: float, policy: FetchPolicy) -> float:
    left = ends - time.monotonic()
    if left <= 0:
        raise ImageFetchTimeout(
            f"{url}: fetch took longer than {policy.total_timeout}s (FetchPolicy.total_timeout)"
        )
    return left


def _request(url: httpx.URL, ends: float, policy: FetchPolicy) -> httpcore.Request:
    left = _remaining(url, ends, policy)
    wait = min(policy.read_timeout, left)
    return httpcore.Request(
        "GET",
        httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
        headers=[(b"Host", url.netloc), *_HEADERS],
        extensions={
            "timeout": {
                "connect": min(policy.connect_timeout, left),
                "read": wait,
                "write": wait,
                "pool": left,
            }
        },
    )


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _redirect_target(response: httpcore.Response, url: httpx.URL) -> httpx.URL | None:
    """Where a redirect leads, or None for a response that carries the image."""
    status = response.status
    if status in _REDIRECT_STATUSES:
        location = _header(response, b"location")
        if location is None:
            raise ImageFetchFailed(f"{url}: HTTP {status} redirect without a Location header")
        try:
            target = url.join(location)
        except httpx.InvalidURL as exc:
            raise ImageFetchFailed(f"{url}: redirect to a malformed URL ({exc})") from exc
        if target.scheme not in _HTTP_SCHEMES:
            raise ForbiddenAddress(
                f"{url}: redirect to {_short(str(target))} refused: "
                "redirects may only lead to http or https"
            )
        return target
    if status in _GONE_STATUSES:
        raise ImageNotFound(f"{url}: HTTP {status}, no image at this URL")
    if not 200 <= status < 300:
        raise ImageFetchFailed(f"{url}: HTTP {status}")
    return None


class _Body:
    """Collects a response body within the size limit (the streams keep the deadline)."""

    def __init__(self, url: httpx.URL, response: httpcore.Response, policy: FetchPolicy) -> None:
        self._url = url
        self._policy = policy
        self._chunks: list[bytes] = []
        self._size = 0
        length = _header(response, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > policy.max_bytes:
            raise _too_large(str(url), policy.max_bytes)

    def add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._policy.max_bytes:
            raise _too_large(str(self._url), self._policy.max_bytes)
        self._chunks.append(chunk)

    def value(self) -> bytes:
        return b"".join(self._chunks)


@contextlib.contextmanager
def _transport_errors(url: httpx.URL, policy: FetchPolicy) -> Iterator[None]:
    """Turn httpcore's exceptions into ours; our own errors pass through untouched."""
    try:
        yield
    except DeadlinePassed as exc:
        raise ImageFetchTimeout(
            f"{url}: fetch took longer than {policy.total_timeout}s (FetchPolicy.total_timeout)"
        ) from exc
    except httpcore.ConnectTimeout as exc:
        raise ImageFetchTimeout(
            f"{url}: no connection within {policy.connect_timeout}s (FetchPolicy.connect_timeout)"
        ) from exc
    except httpcore.PoolTimeout as exc:
        raise ImageFetchTimeout(f"{url}: every connection of this fetcher stayed busy") from exc
    except httpcore.TimeoutException as exc:
        raise ImageFetchTimeout(
            f"{url}: the server sent nothing for {policy.read_timeout}s (FetchPolicy.read_timeout)"
        ) from exc
    except httpcore.ConnectError as exc:
        raise ImageFetchFailed(f"{url}: cannot connect: {exc}") from exc
    except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
        raise ImageFetchFailed(f"{url}: connection failed: {exc or type(exc).__name__}") from exc


class ImageFetcher:
    """Fetches encoded images under a :class:`FetchPolicy`.

    Make one per process and share it: it is thread-safe and keeps connections open
    for reuse, at most ``max_connections`` at once (more concurrent fetches wait for
    one, within their deadline).  Close it, or use it as a context manager, to release
    them.
    """

    def __init__(self, policy: FetchPolicy | None = None, *, max_connections: int = 100) -> None:
        self.policy = policy or FetchPolicy()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpcore.default_ssl_context(),
            max_connections=max_connections,
            keepalive_expiry=_KEEPALIVE_EXPIRY,
            network_backend=_GuardedBackend(AddressGuard(self.policy)),
        )

    def fetch(self, source: str | bytes) -> bytes:
        """The encoded image named by a URI, or ``source`` itself when it is bytes.

        Raises one of the :mod:`streaminfer.images.errors` errors on any failure.
        """
        if isinstance(source, bytes):
            return _check_size(source, self.policy.max_bytes, "image bytes")
        scheme = _scheme(source)
        if scheme in _HTTP_SCHEMES:
            return self._fetch_http(source)
        return _fetch_local(source, scheme, self.policy)

    def _fetch_http(self, uri: str) -> bytes:
        url = _http_url(uri)
        with deadline(self.policy.total_timeout) as ends:
            for _ in range(self.policy.max_redirects + 1):
                with _transport_errors(url, self.policy):
                    response = self._pool.handle_request(_request(url, ends, self.policy))
                    try:
                        target = _redirect_target(response, url)
                        if target is None:
                            body = _Body(url, response, self.policy)
                            for chunk in response.iter_stream():
                                body.add(chunk)
                            return body.value()
                    finally:
                        response.close()
                url = target
        raise TooManyRedirects(
            f"{_short(uri)}: more than {self.policy.max_redirects} redirects "
            "(FetchPolicy.max_redirects)"
        )

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
