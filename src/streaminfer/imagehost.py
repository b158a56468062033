"""A static file host for image URLs (the demo, the images benchmark, the tests).

Run it as ``python -m streaminfer.imagehost DIR PORT``, or in a thread: :func:`serve_in_thread`.

``python -m http.server`` would do, but with HTTP/1.1 keep-alive it writes headers and
body separately with Nagle's algorithm on, so every response waits ~40 ms for the
client's delayed ACK: that would measure the host, not the worker.  This one speaks
HTTP/1.1 with ``TCP_NODELAY``, as a real web server does.
"""

from __future__ import annotations

import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class _Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would cost more than serving it


class _Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: a burst of new connections (a worker's
    # fetch threads) overflows it, and each dropped SYN waits a 1 s retransmit.
    request_queue_size = 128


def serve(directory: str, port: int) -> None:
    handler = partial(_Handler, directory=directory)
    with _Server(("127.0.0.1", port), handler) as server:
        server.serve_forever()


def serve_in_thread(directory: str, port: int = 0) -> ThreadingHTTPServer:
    """The same host on a daemon thread of this process (``port`` 0: a free one).

    Stop it with ``shutdown()`` and ``server_close()``.
    """
    server = _Server(("127.0.0.1", port), partial(_Handler, directory=directory))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
