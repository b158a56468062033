"""The stream worker: consume → fetch → predict → produce, exactly once, in order per partition.

How it keeps its promises:

* **Throughput without reordering.**  Polled records are cut into chunks of up to
  ``batch_size``; up to ``max_in_flight`` chunks are fetched and predicted at once on a
  thread pool, but results are emitted strictly in the order the chunks were consumed,
  so every partition's outputs keep their input order.
* **Exactly once.**  Outputs, dead-letter records and the consumed offsets go into one
  Kafka transaction, committed every ``commit_interval_ms`` (five times that while a
  backlog waits, when CPU matters more than visibility).  A record's offset is only
  ever committed together with its output, so a crash anywhere re-processes exactly the
  records whose outputs were never committed.
* **Nothing lost, nothing skipped.**  A bad record goes to the dead-letter topic with its
  reason; an infrastructure failure (the model server is down) is retried with backoff
  for as long as it lasts, while full buffers pause the partitions.
* **Rebalances.**  On revocation the finished outputs are committed with their offsets
  and everything still in flight is abandoned, to be redone by the partitions' next owner.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from streaminfer.errors import InfrastructureError, RecordError
from streaminfer.images import ImageFetcher
from streaminfer.kafka.config import KafkaSettings
from streaminfer.predictors.base import Predictor, PredictRequest, PredictResult
from streaminfer.stream.metrics import WorkerMetrics
from streaminfer.stream.records import (
    Request,
    Source,
    dead_letter_headers,
    output_document,
    parse_value,
    trace_headers,
)
from streaminfer.stream.routing import Route, ShadowJob, ShadowRunner, Target
from streaminfer.stream.settings import WorkerSettings
from streaminfer.types import Headers

log = logging.getLogger(__name__)

_BACKOFF_MAX_S = 5.0
_PAUSE_AFTER_S = 1.0  # a full buffer for this long pauses the partitions
# Backlogged (more input waiting than the worker got through in the last interval),
# commit at most every this many intervals: each transaction costs the worker and the
# broker CPU the backlog needs, and a record that queued that long gains nothing from
# becoming visible 400 ms sooner.  A short stall that leaves a few records waiting is
# no backlog.
_BACKLOG_COMMIT_FACTOR = 5


class Abandoned(Exception):
    """A chunk's partitions were revoked or its transaction aborted: drop its work."""


@dataclass
class _Done:
    """The outcome for one record: a result, or the record error that dead-letters it."""

    request: Request | None
    routing_key: bytes = b""
    predict: PredictRequest | None = None  # what it was run on
    result: PredictResult | None = None
    error: RecordError | None = None
    fetch_ms: float = 0.0


@dataclass
class _Chunk:
    messages: list[Message]
    consumed_at: float
    future: Future[list[_Done]]
    abandoned: threading.Event


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        kafka: KafkaSettings,
        predictor: Predictor,
        fetcher: ImageFetcher,
        metrics: WorkerMetrics | None = None,
        shadow_predictor: Predictor | None = None,
    ) -> None:
        self.settings = settings
        self.predictor = predictor
        self.fetcher = fetcher
        self.metrics = metrics or WorkerMetrics()
        self._stop = threading.Event()
        self._assigned: list[TopicPartition] = []
        self._paused = False
        self._full_since: float | None = None  # since when the buffer has been full
        self._emitted = 0  # records emitted since the last commit
        self._backlogged: bool | None = None  # decided once the interval is up
        self._pending: deque[_Chunk] = deque()
        self._pending_records = 0
        self._forming: list[Message] = []  # polled, waiting for a free chunk thread
        self._offsets: dict[tuple[str, int], int] = {}  # next offset to commit, per partition
        self._in_transaction = False
        self._last_commit = time.monotonic()
        self._last_lag = 0.0
        self._max_buffered = settings.batch_size * settings.max_in_flight * 2
        self._chunks = ThreadPoolExecutor(settings.max_in_flight, thread_name_prefix="chunk")
        self._fetches = ThreadPoolExecutor(settings.fetch_threads, thread_name_prefix="fetch")

        self.consumer = Consumer(
            kafka.client_config(
                {"auto.offset.reset": "earliest"},
                **{
                    "group.id": settings.group_id,
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "isolation.level": "read_committed",
                    "enable.partition.eof": False,
                },
            )
        )
        producer_defaults: dict[str, Any] = {"linger.ms": 5}
        producer_required: dict[str, Any] = {"enable.idempotence": True}
        if settings.exactly_once:
            producer_required["transactional.id"] = (
                f"streaminfer-{settings.group_id}-{uuid.uuid4().hex[:12]}"
            )
            producer_defaults |= {
                # A killed worker's open transaction blocks read_committed readers of the
                # output until it times out: keep that short, as Kafka Streams does.
                "transaction.timeout.ms": 10000,
                # The broker answers CONCURRENT_TRANSACTIONS until the previous commit's
                # markers are written; librdkafka's default 100 ms retry backoff made every
                # commit cost 100 ms, which capped the whole loop.
                "retry.backoff.ms": 5,
                "retry.backoff.max.ms": 50,
            }
        self.producer = Producer(kafka.client_config(producer_defaults, **producer_required))
        self.route = Route.parse(settings.route) if settings.route else None
        self.shadow = None
        if settings.shadow:
            self.shadow = ShadowRunner(
                shadow_predictor or predictor,
                Target.parse(settings.shadow),
                Producer(kafka.client_config(**{"enable.idempotence": True, "linger.ms": 20})),
                settings.shadow_output_topic,
                settings.shadow_sample,
                on_drop=self.metrics.shadow_dropped.inc,
            )

    # -- control -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish: safe from a signal handler or another thread."""
        self._stop.set()

    @property
    def ready(self) -> bool:
        return bool(self._assigned) and not self._stop.is_set()

    def run(self) -> None:
        """Process until ``stop()``; then finish in-flight work, commit, and close."""
        if self.settings.exactly_once:
            self.producer.init_transactions(30)
        self.consumer.subscribe(
            [self.settings.input],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while not self._stop.is_set():
                self._poll()
                self._emit_finished()
                self._maybe_commit()
                self._update_lag()
            self._drain(self.settings.shutdown_timeout_s)
        finally:
            self._close()

    # -- consuming ---------------------------------------------------------------------------
    def _poll(self) -> None:
        """Poll into the forming chunk; hand it to a chunk thread as soon as one is free.

        While every chunk thread is busy, records gather in the forming chunk (up to
        ``batch_size``), so batches grow with the load instead of queueing many tiny ones.
        """
        room = self._pending_records + len(self._forming) < self._max_buffered
        if not room or len(self._forming) >= self.settings.batch_size:
            self._submit_forming()
            self._wait_for_room()
            return
        self._full_since = None
        if self._paused:
            self.consumer.resume(self._assigned)
            self._paused = False
        first = self.consumer.poll(0.002 if self._pending or self._forming else 0.05)
        if first is not None:
            more = self.settings.batch_size - len(self._forming) - 1
            self._take([first, *self.consumer.consume(more, timeout=0)] if more else [first])
        self._submit_forming()

    def _running(self) -> list[Future[list[_Done]]]:
        return [c.future for c in self._pending if not c.future.done()]

    def _submit_forming(self) -> None:
        if self._forming and len(self._running()) < self.settings.max_in_flight:
            self._submit(self._forming)
            self._forming = []

    def _wait_for_room(self) -> None:
        """Backpressure: wait for a chunk to finish; pause the partitions if that takes long.

        A short wait needs no pause (pausing drops librdkafka's prefetched records and
        costs a fetch round trip on resume); a long one (the server is down) must keep
        polling, so the group's callbacks are served, and that needs the pause.
        """
        now = time.monotonic()
        self._full_since = self._full_since or now
        running = self._running()
        if running:
            wait(running, timeout=0.05, return_when=FIRST_COMPLETED)
        if not self._paused and self._assigned and now - self._full_since > _PAUSE_AFTER_S:
            self.consumer.pause(self._assigned)
            self._paused = True
        if self._paused:
            first = self.consumer.poll(0)  # a record of a newly assigned partition may come
            if first is not None:
                self._take([first])

    def _take(self, messages: list[Message]) -> None:
        self._forming.extend(m for m in messages if self._usable(m))

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer: %s", error.str())
        return False

    def _submit(self, messages: list[Message]) -> None:
        self.metrics.records_in.inc(len(messages))
        abandoned = threading.Event()
        future = self._chunks.submit(self._process, messages, abandoned)
        self._pending.append(_Chunk(messages, time.monotonic(), future, abandoned))
        self._pending_records += len(messages)
        self.metrics.in_flight.set(self._pending_records)

    # -- processing (on the chunk threads) ---------------------------------------------------
    def _process(self, messages: list[Message], abandoned: threading.Event) -> list[_Done]:
        done = [self._parse(m) for m in messages]
        # Only downloads go to the fetch threads: a hop per record would cost more than
        # parsing one, and tensor records have nothing to wait for.
        downloads = [d for d in done if d.request is not None and d.request.url is not None]
        if len(downloads) == 1:
            self._fetch(downloads[0])
        elif downloads:
            list(self._fetches.map(self._fetch, downloads))
        todo = [d for d in done if d.error is None]
        if todo:
            requests = [self._predict_request(d) for d in todo]
            for item, request in zip(todo, requests, strict=True):
                item.predict = request
            results = self._predict_until_served(requests, abandoned)
            for item, outcome in zip(todo, results, strict=True):
                if isinstance(outcome, RecordError):
                    item.error = outcome
                else:
                    item.result = outcome
        return done

    def _parse(self, message: Message) -> _Done:
        try:
            request = parse_value(message.value())
        except RecordError as exc:
            return _Done(None, error=exc)
        return _Done(request, routing_key=_routing_key(message))

    def _fetch(self, item: _Done) -> None:
        assert item.request is not None and item.request.url is not None
        started = time.perf_counter()
        try:
            item.request.image = self.fetcher.fetch(item.request.url)
        except RecordError as exc:
            item.error = exc
        item.fetch_ms = (time.perf_counter() - started) * 1000

    def _predict_request(self, item: _Done) -> PredictRequest:
        """What to run a record on: its own pin, else the route's pick by key, else the flags."""
        request = item.request
        assert request is not None
        version, label = self.settings.version, self.settings.label
        if request.version is not None or request.label is not None:
            version, label = request.version, request.label
        elif self.route is not None and request.model in (None, self.settings.model):
            target = self.route.choose(item.routing_key)
            version, label = target.version, target.label
        return PredictRequest(
            model=request.model or self.settings.model,
            version=version,
            label=label,
            image=request.image,
            tensors=request.tensors,
            top_k=request.top_k or self.settings.top_k,
        )

    def _route_name(self, item: _Done) -> str | None:
        """With a route set, the version or label that served the record."""
        predict = item.predict
        if self.route is None or predict is None:
            return None
        if predict.version is None and predict.label is None:
            return None  # a record of another model, outside the route
        return Target(predict.version, predict.label).name

    def _predict_until_served(
        self, batch: list[PredictRequest], abandoned: threading.Event
    ) -> list[PredictResult | RecordError]:
        """Infrastructure failures are retried, with capped exponential backoff, until they pass.

        Records are never dead-lettered for them; the buffers fill and the partitions pause.
        """
        delay = 0.1
        while True:
            try:
                started = time.perf_counter()
                results = self.predictor.predict(batch)
                self.metrics.stage.labels("predict").observe(time.perf_counter() - started)
                self.metrics.batch_size.observe(len(batch))
                self.metrics.circuit.set(0)
                return results
            except InfrastructureError as exc:
                self.metrics.retries.inc()
                self.metrics.circuit.set(1)
                log.warning("prediction failed, retrying in %.1fs: %s", delay, exc)
            if abandoned.wait(delay * random.uniform(0.5, 1.0)):
                raise Abandoned
            delay = min(delay * 2, _BACKOFF_MAX_S)

    # -- producing ---------------------------------------------------------------------------
    def _emit_finished(self) -> None:
        """Write the outputs of finished chunks, oldest first, stopping at the first unfinished."""
        while self._pending and self._pending[0].future.done():
            chunk = self._pending.popleft()
            self._pending_records -= len(chunk.messages)
            for message, item in zip(chunk.messages, chunk.future.result(), strict=True):
                self._emit(message, item, chunk.consumed_at)
            self.metrics.in_flight.set(self._pending_records)
        self.producer.poll(0)

    def _emit(self, message: Message, item: _Done, consumed_at: float) -> None:
        source = _source(message)
        headers = trace_headers(_headers(message))
        self._begin_transaction()
        if item.error is not None:
            self.metrics.dead_lettered.labels(item.error.reason).inc()
            self._produce(
                self.settings.dead_letter_topic,
                message.key(),
                message.value(),
                dead_letter_headers(headers, item.error, source),
            )
        else:
            result = item.result
            assert result is not None
            timings = {
                "fetch": item.fetch_ms,
                **result.timings_ms,
                "total": (time.monotonic() - consumed_at) * 1000,
            }
            route = self._route_name(item)
            document = output_document(item.request, source, result, timings, route)
            value = json.dumps(document, separators=(",", ":")).encode()
            self._produce(self.settings.output, message.key(), value, headers)
            self.metrics.records_out.labels(
                result.model, str(result.version), result.mode, route or ""
            ).inc()
            if self.shadow is not None and self.shadow.sampled(item.routing_key):
                assert item.predict is not None
                self.shadow.submit(ShadowJob(item.predict, document, message.key(), headers))
            if source.timestamp is not None:
                self.metrics.end_to_end.observe(max(0.0, time.time() - source.timestamp / 1000))
        self._offsets[(source.topic, source.partition)] = source.offset + 1
        self._emitted += 1

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
    ) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:  # the local queue is full: let deliveries drain
                self.producer.poll(0.05)

    # -- committing --------------------------------------------------------------------------
    def _begin_transaction(self) -> None:
        if self.settings.exactly_once and not self._in_transaction:
            self.producer.begin_transaction()
            self._in_transaction = True

    def _maybe_commit(self, force: bool = False) -> None:
        if not self._offsets or not (force or self._commit_due()):
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._offsets.items()]
        try:
            if self.settings.exactly_once:
                self.producer.send_offsets_to_transaction(
                    offsets, self.consumer.consumer_group_metadata(), 30
                )
                self.producer.commit_transaction(30)
                self._in_transaction = False
            else:
                self._flush_or_raise()
                self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self._recover_from_commit_failure(exc)
            return
        self.metrics.transactions.labels("committed").inc()
        self._offsets.clear()
        self._last_commit = time.monotonic()
        self._emitted, self._backlogged = 0, None

    def _commit_due(self) -> bool:
        interval = self.settings.commit_interval_ms / 1000
        elapsed = time.monotonic() - self._last_commit
        if elapsed < interval:
            return False
        if self._backlogged is None:
            waiting = sum(self._lags().values())
            self._backlogged = waiting > max(self._max_buffered, self._emitted)
        return not self._backlogged or elapsed >= interval * _BACKLOG_COMMIT_FACTOR

    def _flush_or_raise(self) -> None:
        if self.producer.flush(30) > 0:
            raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, "outputs not delivered"))

    def _recover_from_commit_failure(self, exc: KafkaException) -> None:
        error: KafkaError = exc.args[0]
        if self.settings.exactly_once and error.txn_requires_abort():
            log.warning("transaction aborted, reprocessing from the last commit: %s", error.str())
            self.producer.abort_transaction(30)
            self._in_transaction = False
            self.metrics.transactions.labels("aborted").inc()
            self._abandon_pending()
            self._rewind()
            return
        if error.retriable():
            log.warning("commit failed, will retry: %s", error.str())
            return
        raise exc  # fatal (e.g. fenced by a newer instance): stop with a clear error

    def _rewind(self) -> None:
        """Seek every assigned partition back to its committed offset."""
        if not self._assigned:
            return
        for tp in self.consumer.committed(self._assigned, timeout=30):
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def _abandon_pending(self) -> None:
        for chunk in self._pending:
            chunk.abandoned.set()
        self._pending.clear()
        self._pending_records = 0
        self._forming = []  # not yet submitted: redone from the committed offsets
        self._offsets.clear()
        self.metrics.in_flight.set(0)

    # -- rebalancing -------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", _names(partitions))
        self._assigned = list(partitions)
        self._paused = False

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoked %s", _names(partitions))
        self._emit_finished()
        self._maybe_commit(force=True)
        self._drop_partitions()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("lost %s: their uncommitted work will be redone", _names(partitions))
        self._drop_partitions()

    def _drop_partitions(self) -> None:
        """Forget the partitions and everything not committed for them."""
        self._abandon_pending()
        if self._in_transaction:  # nothing left in it once the pending work is dropped
            self.producer.abort_transaction(30)
            self._in_transaction = False
        self._assigned = []
        self._paused = False

    # -- shutdown ----------------------------------------------------------------------------
    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            self.consumer.poll(0.01)
            self._emit_finished()
        self._maybe_commit(force=True)

    def _close(self) -> None:
        for chunk in self._pending:
            chunk.abandoned.set()
        self._chunks.shutdown(wait=False, cancel_futures=True)
        self._fetches.shutdown(wait=False, cancel_futures=True)
        try:
            self.consumer.close()  # revokes: commits what was emitted
        finally:
            if self._in_transaction:
                self.producer.abort_transaction(10)
            self.producer.flush(10)
            if self.shadow is not None:
                self.shadow.close()

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < 5 or not self._assigned:
            return
        self._last_lag = now
        for (topic, partition), lag in self._lags().items():
            self.metrics.lag.labels(topic, str(partition)).set(lag)

    def _lags(self) -> dict[tuple[str, int], int]:
        """Records not yet consumed, per assigned partition, from the last fetched watermarks."""
        lags = {}
        for tp in self.consumer.position(self._assigned):
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset >= 0 and high >= 0:
                lags[(tp.topic, tp.partition)] = max(0, high - tp.offset)
        return lags


def _routing_key(message: Message) -> bytes:
    """The key a route hashes: the record key, else its place in the log."""
    return message.key() or f"{message.partition()}:{message.offset()}".encode()


def _source(message: Message) -> Source:
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None
    ts_type, ts = message.timestamp()
    return Source(topic, partition, offset, ts if ts_type else None)


def _headers(message: Message) -> Headers:
    headers = message.headers() or []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"
