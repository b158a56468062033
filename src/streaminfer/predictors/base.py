"""One interface for every way of getting a prediction: ``predict(batch) -> results``.

The stream worker hands a predictor a micro-batch of requests (one per record) and gets
back, position by position, either a ``PredictResult`` or the ``RecordError`` that
explains why that one record cannot be served (it goes to the dead-letter topic).  A
failure of the predictor itself (server down, deadline exceeded) raises an
``InfrastructureError`` for the whole batch: the worker retries it and never
dead-letters it.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from streaminfer.errors import RecordError
from streaminfer.models.postprocess import Prediction
from streaminfer.types import ModelRef, Tensors


@dataclass(slots=True)
class PredictRequest:
    """What one record asks for: an encoded image, or named tensors for a tensor model."""

    model: str
    version: int | None = None
    label: str | None = None
    image: bytes | None = None
    tensors: Tensors | None = None
    top_k: int | None = None  # None: the model's default
    # The outputs a remote server should answer with (V2 and TF Serving gRPC can ask for
    # them); empty: what it answers by default.  The embedded runtime computes them all.
    output_filter: tuple[str, ...] = ()

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.model, self.version, self.label)


@dataclass(slots=True)
class PredictResult:
    model: str
    version: int
    mode: str  # who served it, e.g. "embedded", "tfserving-grpc", "embedded-fallback"
    predictions: list[Prediction] | None = None  # image models: top-k, best first
    outputs: Tensors | None = None  # tensor models: the raw outputs
    # preprocess, inference: each from elapsed_ms, so outputs report them as they are
    timings_ms: dict[str, float] = field(default_factory=dict)


def elapsed_ms(started: float, now: float) -> float:
    """Milliseconds from ``started`` to ``now`` (seconds on one clock), cut to the µs.

    Every timing an output reports is cut here once, where it is measured (once per model
    run, not once per record), so an output document is written with the values as they are.
    """
    return int((now - started) * 1_000_000) / 1000


_waits = threading.local()


def waited_s() -> float:
    """Seconds this thread has spent so far waiting on work that needs no GIL: model runs,
    remote calls, decodes and downloads on other threads.  A stream worker runs more
    chunks side by side only while they spend enough of their time so (``ChunkLanes``)."""
    return getattr(_waits, "seconds", 0.0)


def count_wait(started: float) -> float:
    """The milliseconds since ``started`` (``time.perf_counter``), counted in ``waited_s``."""
    now = time.perf_counter()
    _waits.seconds = waited_s() + (now - started)
    return elapsed_ms(started, now)


Outcome = PredictResult | RecordError


class Predictor(ABC):
    """Thread-safe: the worker calls ``predict`` from several threads at once."""

    mode: str

    @abstractmethod
    def predict(self, batch: list[PredictRequest]) -> list[Outcome]:
        """One outcome per request, in order; raises InfrastructureError if none can be served."""

    def predict_stacked(
        self, batch: list[PredictRequest], stacked: Tensors, rows: list[int]
    ) -> list[Outcome]:
        """``predict`` for requests of one model whose tensors are consecutive slices of
        ``stacked`` (``rows[i]`` rows each), so a predictor may run them as they are."""
        return self.predict(batch)

    def circuit_state(self) -> int:
        """The circuit breaker's state as a gauge (0 closed, 1 open, 2 half-open); 0 if none."""
        return 0

    def close(self) -> None:  # noqa: B027 - most predictors hold nothing to release
        """Release connections, threads and sessions."""
