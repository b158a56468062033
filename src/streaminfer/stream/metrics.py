"""The worker's Prometheus metrics and its ``/metrics``, ``/healthz`` and ``/readyz`` endpoint."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from streaminfer.net import passive_addresses

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def observe_all(histogram: Histogram, amounts: Sequence[float] | np.ndarray) -> None:
    """``histogram.observe`` of every amount, in one update per bucket.

    prometheus_client has no bulk observe, and under ``--processes`` each call is a locked
    write to a shared file (1.6 us): per record, that is a few percent of a core.  This
    does what ``observe`` does, the sum then the first bucket whose bound holds each
    amount, once per bucket; a test holds it to ``observe``'s exposition.
    """
    if len(amounts) == 0:
        return
    bounds = np.asarray(histogram._upper_bounds)
    counts = np.bincount(np.searchsorted(bounds, amounts), minlength=len(bounds))
    histogram._sum.inc(float(np.sum(amounts)))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=True):
        if count:
            bucket.inc(count)


def observe_ages(histogram: Histogram, timestamps_ms: Sequence[int]) -> None:
    """``observe_all`` of each input's age: from its timestamp (Kafka's, in milliseconds)
    to now, in seconds, and none below zero (a producer's clock may run ahead)."""
    if timestamps_ms:  # read as integers: 20 ns a record less than as floats
        stamps = np.fromiter(timestamps_ms, np.int64, len(timestamps_ms))
        observe_all(histogram, np.maximum(time.time() - stamps / 1000, 0.0))


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.records_in = Counter("streaminfer_records_in", "Records consumed", registry=r)
        self.records_out = Counter(
            "streaminfer_records_out",
            "Predictions produced",
            ["model", "version", "mode", "route"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "streaminfer_records_dead_lettered", "Records sent to the DLQ", ["reason"], registry=r
        )
        self.end_to_end = Histogram(
            "streaminfer_end_to_end_seconds",
            "Record timestamp to output produced",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_committed = Histogram(
            "streaminfer_end_to_end_committed_seconds",
            "Record timestamp to its offset committed (exactly-once: its output readable)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_duration = Histogram(
            "streaminfer_commit_seconds",
            "Time a successful commit took",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "streaminfer_stage_seconds",
            "Time per stage",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "streaminfer_batch_size",
            "Records per predictor call",
            buckets=tuple(2**i for i in range(13)),  # chunks reach 64 x --batch-size
            registry=r,
        )
        # The multiprocess modes say how ``--processes N`` members' gauges add up.
        self.in_flight = Gauge(
            "streaminfer_in_flight",
            "Records consumed, not yet produced",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.lag = Gauge(
            "streaminfer_consumer_lag",
            "Records behind the high watermark",
            ["topic", "partition"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.circuit = Gauge(
            "streaminfer_circuit_open",
            "1 while the remote circuit is open",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.retries = Counter("streaminfer_predict_retries", "Predictor calls retried", registry=r)
        self.shadow_dropped = Counter(
            "streaminfer_shadow_dropped", "Shadow predictions dropped: queue full", registry=r
        )
        self.transactions = Counter(
            "streaminfer_transactions", "Transactions by outcome", ["outcome"], registry=r
        )
        self.token_expiry = Gauge(
            "streaminfer_kafka_token_expiry_timestamp_seconds",
            "When the soonest of the clients' OAUTHBEARER tokens expires (-X oauth_cb)",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.token_failures = Counter(
            "streaminfer_kafka_token_renewals_failed",
            "Token renewals the oauth_cb provider failed",
            registry=r,
        )


class MetricsServer:
    """A tiny HTTP server on its own thread; ``ready`` decides what ``/readyz`` answers.

    ``host`` may be an IPv6 address (``::`` takes IPv4 too where the system allows).  A
    connection gets a thread of its own, so one that goes ``idle_s`` without sending what
    its request needs is closed: a thread each was kept for as long as such clients
    held their connections.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        port: int,
        ready: Callable[[], bool],
        host: str = "127.0.0.1",
        idle_s: float = 10.0,
    ) -> None:

        class Handler(BaseHTTPRequestHandler):
            timeout = idle_s  # each read of a request, and each write of its answer

            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif self.path == "/readyz":
                    ok = ready()
                    self._send(
                        200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain"
                    )
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = _HTTPServer((host, port), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _HTTPServer(ThreadingHTTPServer):
    """The standard library's threaded server, in the address family of its host."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        host, port = address
        self.address_family = passive_addresses(host, port)[0][0]
        super().__init__(address, handler)
