"""Prometheus metrics of one server instance, in a registry of its own.

Requests are counted and timed by model, version, protocol and status; batch sizes come
from the registry's ``on_batch`` callback; queue depths and the decoder's bodies are read
when scraped.  Model names that the server does not serve are labelled ``unknown``, so
clients cannot grow the label set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from streaminfer.models.registry import ModelRegistry
from streaminfer.serving.errors import OK, status_of
from streaminfer.serving.request_body import BodyBudget

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)  # past 16: grown slices


@dataclass
class Observation:
    """Filled in by a handler as it learns which version answered."""

    model: str
    version: str = ""


class _QueueDepth(Collector):
    def __init__(self, models: ModelRegistry) -> None:
        self._models = models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "streaminfer_server_queue_depth",
            "Requests waiting for a model's batcher.",
            labels=["model", "version"],
        )
        for loaded in self._models:
            if loaded.batcher is not None:
                family.add_metric([loaded.name, str(loaded.version)], loaded.batcher.queue_depth)
        yield family


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._models: ModelRegistry | None = None
        labels = ["model", "version", "protocol", "status"]
        self._requests = Counter(
            "streaminfer_server_requests", "Inference requests.", labels, registry=self.registry
        )
        self._latency = Histogram(
            "streaminfer_server_request_duration_seconds",
            "Time from receiving an inference request to answering it.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._in_flight = Gauge(
            "streaminfer_server_in_flight_requests",
            "Inference requests being handled.",
            ["protocol"],
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "streaminfer_server_rest_connections_refused",
            "REST connections closed as soon as accepted: --max-connections were open.",
            registry=self.registry,
        )
        self._batch_size = Histogram(
            "streaminfer_server_batch_size",
            "Rows per model run.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )

    def attach(
        self, models: ModelRegistry, decoder_bodies: Callable[[], int], budget: BodyBudget
    ) -> None:
        """Start reporting the queue depth of ``models`` and labelling by its model names,
        the bodies ``decoder_bodies`` counts, and what the body ``budget`` holds."""
        self._models = models
        self.registry.register(_QueueDepth(models))
        Gauge(
            "streaminfer_server_decoder_bodies",
            "Large request bodies in the decoder process or waiting for it.",
            registry=self.registry,
        ).set_function(decoder_bodies)
        Gauge(
            "streaminfer_server_body_bytes_held",
            "Bytes reserved by the REST bodies being read or handled.",
            registry=self.registry,
        ).set_function(lambda: budget.held)
        Gauge(
            "streaminfer_server_bodies_waiting",
            "REST bodies waiting for others to be answered before they are read.",
            registry=self.registry,
        ).set_function(lambda: budget.waiting)

    def on_batch(self, model: str, rows: int) -> None:
        self._batch_size.labels(model).observe(rows)

    @contextmanager
    def track(self, protocol: str, model: str) -> Iterator[Observation]:
        """Count and time one request; an exception sets the status it will be answered with."""
        observation = Observation(model)
        status = OK.name
        start = time.perf_counter()
        in_flight = self._in_flight.labels(protocol)
        in_flight.inc()
        try:
            yield observation
        except BaseException as exc:
            status = status_of(exc).name
            raise
        finally:
            in_flight.dec()
            served = self._models is not None and observation.model in self._models.models()
            labels = (
                observation.model if served else "unknown",
                observation.version,
                protocol,
                status,
            )
            self._requests.labels(*labels).inc()
            self._latency.labels(*labels).observe(time.perf_counter() - start)

    def render(self) -> bytes:
        return generate_latest(self.registry)
