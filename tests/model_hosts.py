"""An HTTP host of model archives on loopback, for control-topic deployments that take long.

``/archive`` answers at once; ``/held`` answers only once :meth:`ArchiveHost.release` is
called; ``/trickle`` sends its headers, then one byte a second until the host closes: a
download that never ends, yet never stays silent long enough for a read timeout.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

TRICKLE_INTERVAL = 1.0


class ArchiveHost(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, archive: Path | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.archive = archive
        self.released = threading.Event()
        self.closing = threading.Event()
        self.trickling: set[int] = set()  # client ports of the trickles still sending
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def release(self) -> None:
        """Let every ``/held`` request, waiting or to come, have the archive."""
        self.released.set()

    def close(self) -> None:
        self.closing.set()
        self.released.set()  # wakes the held requests, which then end unanswered
        self.shutdown()
        self.server_close()

    def __enter__(self) -> ArchiveHost:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ArchiveHost

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows failures, not access logs."""

    def do_GET(self) -> None:
        if self.path == "/trickle":
            self._trickle()
            return
        if self.path == "/held":
            self.server.released.wait()
        if self.server.closing.is_set() or self.server.archive is None:
            self.send_error(404)
            return
        body = self.server.archive.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(1 << 30))
        self.end_headers()
        port = self.client_address[1]
        self.server.trickling.add(port)
        try:
            while not self.server.closing.wait(TRICKLE_INTERVAL):
                self.wfile.write(b"\0")
                self.wfile.flush()
        except OSError:  # the client gave up
            pass
        finally:
            self.server.trickling.discard(port)
            self.close_connection = True
