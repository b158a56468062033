"""Image test helpers: encoded images, a decompression bomb, and a misbehaving HTTP server."""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import sys
import threading
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

HUGE_BYTES = 30 * 1024 * 1024
TRICKLE_INTERVAL = 0.05
SLOW_HEADER_INTERVAL = 1.0


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def bomb_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of ``width`` x ``height`` that compresses about 1000:1."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    compressor = zlib.compressobj(9)
    rows_per_block = 1000
    block = row * rows_per_block
    data = [compressor.compress(block) for _ in range(height // rows_per_block)]
    data.append(compressor.compress(row * (height % rows_per_block)))
    data.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(data))
        + _png_chunk(b"IEND", b"")
    )


class ImageServer(ThreadingHTTPServer):
    """Serves the routes of :class:`_Handler`; :meth:`stop` ends every handler thread."""

    daemon_threads = False  # server_close() joins them: nothing outlives the fixture
    request_queue_size = 128  # the default backlog of 5 drops SYNs of concurrent fetches

    def __init__(self, files: dict[str, tuple[str, bytes]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.stopping = threading.Event()
        self.client_ports: list[int] = []
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="image-server"
        )
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hang up on purpose (too large, timeouts): that is not a server error."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        with self._lock:
            for sock in self._sockets:  # wake handlers idling on kept-alive connections
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self.server_close()
        self._thread.join()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ImageServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows failures, not access logs."""

    def do_GET(self) -> None:
        self.server.client_ports.append(self.client_address[1])
        path, _, query = self.path.partition("?")
        first, _, rest = path.lstrip("/").partition("/")
        if path in self.server.files:
            content_type, body = self.server.files[path]
            self._send(200, body, content_type)
        elif first == "chain":  # /chain/N redirects N times, then serves the JPEG
            hops = int(rest)
            target = f"/chain/{hops - 1}" if hops > 1 else "/chelsea.jpg"
            # Alternate absolute and relative Location headers.
            self._redirect(self.server.url(target) if hops % 2 else target)
        elif first == "loop":
            self._redirect(f"/loop/{int(rest) + 1}")
        elif first == "redirect":
            self._redirect(urllib.parse.parse_qs(query)["to"][0])
        elif first == "error":
            self._send(503, b"busy", "text/plain")
        elif first == "stall":
            self.server.stopping.wait(30)
        elif first == "trickle":
            self._trickle()
        elif first == "slow-headers":
            self._slow_headers()
        elif first == "huge":
            self._huge(chunked=rest == "chunked")
        else:
            self._send(404, b"not here", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _trickle(self) -> None:
        """One byte per TRICKLE_INTERVAL: never idle long enough for a read timeout."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(1000):
            if self.server.stopping.wait(TRICKLE_INTERVAL):
                return
            self.wfile.write(b"x")
            self.wfile.flush()

    def _slow_headers(self) -> None:
        """The status line and headers one byte a second: every read gets data in time."""
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 4\r\n\r\n"
        for byte in head + b"\xff\xd8\xff\xd9":
            if self.server.stopping.wait(SLOW_HEADER_INTERVAL):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
        self.close_connection = True

    def _huge(self, *, chunked: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(HUGE_BYTES))
        self.end_headers()
        block = b"\xff" * 65536
        for _ in range(HUGE_BYTES // len(block)):
            self.wfile.write(b"%x\r\n%b\r\n" % (len(block), block) if chunked else block)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
