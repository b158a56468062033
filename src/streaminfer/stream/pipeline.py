"""The record pipeline: parse → fetch → route → features → predict → explain → output.

Each step is a plain function from one immutable record-in-progress (``Work``) to the
next; nothing here touches Kafka.  One record is isolated from the next: a record whose
step fails becomes a dead letter with its reason, and the others in its batch go on:

* a ``RecordError`` carries its own reason (``bad_json``, ``fetch_failed``, ...);
* any other exception while handling one record is a bug or an input nobody imagined: it
  becomes ``internal_error`` naming the exception's type, never a crash of the worker.

Only an ``InfrastructureError`` of the predictor stops a batch: the batch is retried
(``RetryPolicy``) for as long as the outage lasts, because a record is never
dead-lettered for something that is not its fault.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from streaminfer.errors import InfrastructureError, RecordError, RequestFailed
from streaminfer.images import ImageFetcher
from streaminfer.kafka.records import Headers
from streaminfer.predictors.base import Predictor, PredictRequest, PredictResult
from streaminfer.predictors.resilience import CircuitOpen, RetryPolicy
from streaminfer.stream.metrics import WorkerMetrics
from streaminfer.stream.records import (
    Request,
    Source,
    dead_letter_headers,
    output_document,
    parse_value,
    to_json,
    trace_headers,
)
from streaminfer.stream.routing import Route
from streaminfer.stream.tabular import TabularModels

log = logging.getLogger(__name__)

T = TypeVar("T")

TRUNCATED_HEADER = "streaminfer.value.truncated"  # the original length of a cut DLQ value
# librdkafka and the broker count a record's framing too: keep this much below their limit.
RECORD_OVERHEAD_BYTES = 512

SERVER_ERROR_ATTEMPTS = 3  # a record a healthy server fails is tried alone this often
# An outage is retried without limit; the wait grows to 5 s so a dead server is probed
# a few times a minute, not hammered.
OUTAGE_RETRY = RetryPolicy(max_attempts=None, initial_backoff_s=0.1, max_backoff_s=5.0)


class TooLarge(RecordError):
    """The record's output is larger than its topic accepts."""

    reason = "too_large"


class ServerError(RecordError):
    """A healthy server kept failing this record's request."""

    reason = "server_error"


class Abandoned(Exception):
    """The batch's partitions were revoked or its transaction aborted: drop its work."""


class InternalError(RecordError):
    """Handling one record raised something unexpected; the record is dead-lettered for it."""

    reason = "internal_error"

    def __init__(self, step: str, exc: BaseException) -> None:
        super().__init__(f"{step} failed with {type(exc).__name__}: {_describe(exc)}")
        self.exception_type = type(exc).__name__


@dataclass(frozen=True)
class InputRecord:
    """One consumed record, as the pipeline needs it: no Kafka client types."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    source: Source
    consumed_at: float  # time.monotonic() when polled

    @property
    def routing_key(self) -> bytes:
        """The key a route hashes: the record key, else its place in the log."""
        return self.key or f"{self.source.partition}:{self.source.offset}".encode()


@dataclass(frozen=True)
class Work:
    """A record in progress: each step returns a new one, with its part filled in."""

    record: InputRecord
    request: Request | None = None  # parsed
    predict: PredictRequest | None = None  # what it runs on (after routing)
    route: str | None = None  # the route's target name, when a route chose it
    result: PredictResult | None = None
    error: RecordError | None = None
    fetch_ms: float = 0.0

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass(frozen=True)
class Produced:
    """A record to write: the output, or the dead letter, of one input record."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    error: RecordError | None = None  # set for a dead letter


@dataclass(frozen=True)
class Defaults:
    """What a record runs on when it does not say: the worker's flags."""

    model: str
    version: int | None = None
    label: str | None = None
    top_k: int | None = None
    route: Route | None = None


def isolated(step: str, work: Work, fn: Callable[[Work], Work]) -> Work:
    """Run one step on one record; whatever it raises stays with that record."""
    if work.failed:
        return work
    outcome = _attempt(step, work, lambda: fn(work))
    return outcome if isinstance(outcome, Work) else dataclasses.replace(work, error=outcome)


# -- the steps ---------------------------------------------------------------------------------
def parse(work: Work) -> Work:
    return dataclasses.replace(work, request=parse_value(work.record.value))


def fetch(fetcher: ImageFetcher, work: Work) -> Work:
    """Download the record's image, if it names one by URL."""
    request = work.request
    if request is None or request.url is None:
        return work
    started = time.perf_counter()
    image = fetcher.fetch(request.url)
    return dataclasses.replace(
        work,
        request=dataclasses.replace(request, image=image),
        fetch_ms=(time.perf_counter() - started) * 1000,
    )


def route(defaults: Defaults, work: Work) -> Work:
    """What to run a record on: its own pin, else the route's pick by key, else the flags."""
    request = work.request
    assert request is not None
    version, label, chosen = defaults.version, defaults.label, None
    if request.version is not None or request.label is not None:
        version, label = request.version, request.label
    elif defaults.route is not None and request.model in (None, defaults.model):
        target = defaults.route.choose(work.record.routing_key)
        version, label, chosen = target.version, target.label, target.name
    predict = PredictRequest(
        model=request.model or defaults.model,
        version=version,
        label=label,
        image=request.image,
        tensors=request.tensors,
        top_k=request.top_k or defaults.top_k,
    )
    return dataclasses.replace(work, predict=predict, route=chosen)


def tabulate(models: TabularModels, work: Work) -> Work:
    """A tabular record's features as its model's input row (other records pass as they are)."""
    request, predict = work.request, work.predict
    if request is None or request.features is None or predict is None:
        return work
    model = models.get(predict.model, predict.version)
    return dataclasses.replace(work, predict=model.request(request.features, predict))


def explain(models: TabularModels, work: Work) -> Work:
    """A tabular record's outputs as what a user reads: ranked classes, or named values."""
    request, predict, result = work.request, work.predict, work.result
    if request is None or request.features is None or predict is None or result is None:
        return work
    model = models.get(predict.model, predict.version)
    return dataclasses.replace(work, result=model.result(result, predict.top_k))


def output(topic: str, work: Work) -> Produced:
    """The output record of a served record (its value is the README's output format)."""
    result = work.result
    assert result is not None
    record = work.record
    timings = {
        "fetch": work.fetch_ms,
        **result.timings_ms,
        "total": (time.monotonic() - record.consumed_at) * 1000,
    }
    document = output_document(work.request, record.source, result, timings, work.route)
    value = to_json(document)
    return Produced(topic, record.key, value, trace_headers(record.headers))


def size(record: Produced) -> int:
    """A record's bytes as the producer counts them (value, key and headers)."""
    headers = sum(len(k) + len(v or b"") for k, v in record.headers)
    return len(record.value or b"") + len(record.key or b"") + headers


def truncated(record: Produced, limit: int) -> Produced:
    """A dead letter that fits ``limit``: its value cut, and a header saying how long it was."""
    original = len(record.value or b"")
    headers: Headers = [*record.headers, (TRUNCATED_HEADER, str(original).encode())]
    room = max(0, limit - size(dataclasses.replace(record, value=b"", headers=headers)))
    value = (record.value or b"")[:room]
    return dataclasses.replace(record, value=value, headers=headers)


def dead_letter(topic: str, work: Work) -> Produced:
    """The dead letter of a failed record: its value as it came, the reason in headers."""
    assert work.error is not None
    record = work.record
    headers = dead_letter_headers(trace_headers(record.headers), work.error, record.source)
    return Produced(topic, record.key, record.value, headers, work.error)


# -- the pipeline ------------------------------------------------------------------------------
class Pipeline:
    """Runs a batch of records through the steps; thread-safe, called from chunk threads."""

    def __init__(
        self,
        defaults: Defaults,
        predictor: Predictor,
        fetcher: ImageFetcher,
        metrics: WorkerMetrics,
        *,
        output_topic: str,
        dead_letter_topic: str,
        fetch_threads: int = 8,
        max_bytes: dict[str, int],
        tabular: TabularModels | None = None,
        retry: RetryPolicy = OUTAGE_RETRY,
        rng: random.Random | None = None,
    ) -> None:
        self.defaults = defaults
        self.predictor = predictor
        self.fetcher = fetcher
        self.metrics = metrics
        self.output_topic = output_topic
        self.dead_letter_topic = dead_letter_topic
        self.max_bytes = max_bytes  # the largest record the output and DLQ topics accept
        self.tabular = tabular or TabularModels(None)
        self.retry = retry
        self._rng = rng or random.Random()
        self._fetches = ThreadPoolExecutor(fetch_threads, thread_name_prefix="fetch")

    def process(self, records: list[InputRecord], abandoned: threading.Event) -> list[Work]:
        """Every record of the batch, finished: served (``result``) or failed (``error``)."""
        batch = [isolated("parse", Work(r), parse) for r in records]
        batch = self._fetch_all(batch)
        batch = [isolated("route", w, lambda w: route(self.defaults, w)) for w in batch]
        batch = [isolated("features", w, lambda w: tabulate(self.tabular, w)) for w in batch]
        todo = [i for i, w in enumerate(batch) if not w.failed]
        if todo:
            served = self._predict([batch[i] for i in todo], abandoned)
            for i, work in zip(todo, served, strict=True):
                batch[i] = isolated("explain", work, lambda w: explain(self.tabular, w))
        return batch

    def produced(self, work: Work) -> Produced:
        """The record to write for a finished one: its output if that can be built and fits
        its topic, else its dead letter (cut to fit, if it must be)."""
        if not work.failed:
            built = _attempt("output", work, lambda: output(self.output_topic, work))
            if isinstance(built, Produced) and size(built) <= self._limit(self.output_topic):
                return built
            if isinstance(built, Produced):
                built = TooLarge(
                    f"the output is {size(built)} bytes; {self.output_topic!r} accepts "
                    f"{self._limit(self.output_topic)}"
                )
            work = dataclasses.replace(work, error=built)
        letter = dead_letter(self.dead_letter_topic, work)
        limit = self._limit(self.dead_letter_topic)
        return letter if size(letter) <= limit else truncated(letter, limit)

    def _limit(self, topic: str) -> int:
        return self.max_bytes[topic] - RECORD_OVERHEAD_BYTES

    def close(self) -> None:
        self._fetches.shutdown(wait=False, cancel_futures=True)

    def _fetch_all(self, batch: list[Work]) -> list[Work]:
        # Only downloads go to the fetch threads: a hop per record would cost more than
        # parsing one, and tensor records have nothing to wait for.
        downloads = [
            i for i, w in enumerate(batch) if w.request is not None and w.request.url is not None
        ]

        def one(work: Work) -> Work:
            return isolated("fetch", work, lambda w: fetch(self.fetcher, w))

        if len(downloads) == 1:
            batch[downloads[0]] = one(batch[downloads[0]])
        elif downloads:
            for i, work in zip(
                downloads, self._fetches.map(one, [batch[i] for i in downloads]), strict=True
            ):
                batch[i] = work
        return batch

    def _predict(
        self, batch: list[Work], abandoned: threading.Event, attempt: int = 1
    ) -> list[Work]:
        """Predict a batch; a batch that fails unexpectedly is split, so only its culprit fails
        (a record the server refuses gets ``SERVER_ERROR_ATTEMPTS`` tries on its own)."""
        requests = [w.predict for w in batch]
        assert all(r is not None for r in requests)
        try:
            outcomes = self._until_served([r for r in requests if r is not None], abandoned)
        except (Abandoned, InfrastructureError):
            raise
        except Exception as exc:  # a bug, a hostile input or a refusing server: find its record
            if len(batch) > 1:
                middle = len(batch) // 2
                return self._predict(batch[:middle], abandoned) + self._predict(
                    batch[middle:], abandoned
                )
            if isinstance(exc, RequestFailed) and attempt < SERVER_ERROR_ATTEMPTS:
                if abandoned.wait(self.retry.delay(attempt, self._rng)):
                    raise Abandoned from exc
                return self._predict(batch, abandoned, attempt + 1)
            error: RecordError = (
                ServerError(str(exc))
                if isinstance(exc, RequestFailed)
                else InternalError("predict", exc)
            )
            return [dataclasses.replace(batch[0], error=error)]
        return [
            dataclasses.replace(w, error=o)
            if isinstance(o, RecordError)
            else dataclasses.replace(w, result=o)
            for w, o in zip(batch, outcomes, strict=True)
        ]

    def _until_served(
        self, batch: list[PredictRequest], abandoned: threading.Event
    ) -> list[PredictResult | RecordError]:
        """Infrastructure failures are retried until they pass; records never pay for them."""
        attempt = 0
        while True:
            attempt += 1
            try:
                started = time.perf_counter()
                outcomes = self.predictor.predict(batch)
                self.metrics.stage.labels("predict").observe(time.perf_counter() - started)
                self.metrics.batch_size.observe(len(batch))
                return outcomes
            except InfrastructureError as exc:
                self.metrics.retries.inc()
                delay = self.retry.delay(attempt, self._rng)
                if isinstance(exc, CircuitOpen):  # its health probe knows better than backoff
                    delay = min(delay, exc.retry_after_s)
                # While the breaker is open this repeats every probe interval: once a batch
                # is enough.
                quiet = isinstance(exc, CircuitOpen) and attempt > 1
                level = logging.DEBUG if quiet else logging.WARNING
                log.log(level, "prediction failed, retrying in %.1fs: %s", delay, exc)
            finally:
                self.metrics.circuit.set(self.predictor.circuit_state())
            if abandoned.wait(delay):
                raise Abandoned


def _attempt(step: str, work: Work, fn: Callable[[], T]) -> T | RecordError:
    try:
        return fn()
    except RecordError as exc:
        return exc
    except Exception as exc:  # isolation: this record's failure alone
        # One line per record (hostile input may come in floods); the traceback for debugging.
        log.warning("record %s: %s raised %s", _where(work), step, type(exc).__name__)
        log.debug("record %s: %s raised", _where(work), step, exc_info=True)
        return InternalError(step, exc)


def _where(work: Work) -> str:
    source = work.record.source
    return f"{source.topic}[{source.partition}]@{source.offset}"


def _describe(exc: BaseException) -> str:
    """An exception's message, bounded: some (RecursionError, huge ints) have vast ones."""
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "…"
