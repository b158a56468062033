"""The stream worker: consume → pipeline → produce, exactly once, in order per partition.

This module is the loop that wires the parts, each with one job:

* ``intake``: polling, the forming batch, pausing when the buffer is full;
* ``pipeline``: parse → fetch → route → predict → output for a batch, each record isolated;
* ``checkpoint``: transactions, offsets and the commit policy;
* here: chunk scheduling, ordered emission, rebalances, drain and close.

How it keeps its promises:

* **Throughput without reordering.**  Polled records are cut into chunks of up to
  ``batch_size``; up to ``max_in_flight`` chunks run through the pipeline at once on a
  thread pool, but their records are written strictly in the order they were consumed,
  so every partition's outputs keep their input order.
* **Exactly once.**  A record's offset is only committed together with its output or
  dead letter; when a commit cannot keep that, the uncommitted work is dropped and redone
  from the last commit.
* **Rebalances.**  On revocation the finished outputs are committed with their offsets
  and everything still in flight is abandoned, to be redone by the partitions' next owner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from confluent_kafka import Consumer, Producer, TopicPartition

from streaminfer.images import ImageFetcher
from streaminfer.kafka.config import KafkaSettings
from streaminfer.predictors.base import Predictor
from streaminfer.stream import clients
from streaminfer.stream.checkpoint import Checkpoint, Commit, CommitPolicy
from streaminfer.stream.intake import Intake
from streaminfer.stream.metrics import WorkerMetrics
from streaminfer.stream.pipeline import Defaults, InputRecord, Pipeline, Work
from streaminfer.stream.routing import Route, ShadowJob, ShadowRunner, Target
from streaminfer.stream.settings import WorkerSettings

log = logging.getLogger(__name__)


@dataclass
class _Chunk:
    records: list[InputRecord]
    future: Future[list[Work]]
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
        *,
        max_bytes: dict[str, int] | None = None,
        consumer: Consumer | None = None,
        producer: Producer | None = None,
    ) -> None:
        """``max_bytes``: the largest record each output topic accepts, as far as known."""
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self._stop = threading.Event()
        self._pending: deque[_Chunk] = deque()
        self._pending_records = 0
        self._max_buffered = settings.batch_size * settings.max_in_flight * 2
        self._last_lag = 0.0
        self._chunks = ThreadPoolExecutor(settings.max_in_flight, thread_name_prefix="chunk")

        producer_config = clients.producer_config(settings, kafka)
        self.consumer = consumer or clients.consumer(settings, kafka)
        self.producer = producer or Producer(producer_config)
        self.intake = Intake(self.consumer, settings.batch_size)
        self.checkpoint = Checkpoint(
            self.producer,
            self.consumer,
            exactly_once=settings.exactly_once,
            policy=CommitPolicy(settings.commit_interval_ms / 1000),
            metrics=self.metrics,
        )
        producer_limit = clients.max_message_bytes(producer_config)
        topics = (settings.output, settings.dead_letter_topic)
        limits = {t: min(producer_limit, (max_bytes or {}).get(t, producer_limit)) for t in topics}
        self.pipeline = Pipeline(
            Defaults(
                model=settings.model,
                version=settings.version,
                label=settings.label,
                top_k=settings.top_k,
                route=Route.parse(settings.route) if settings.route else None,
            ),
            predictor,
            fetcher,
            self.metrics,
            output_topic=settings.output,
            dead_letter_topic=settings.dead_letter_topic,
            fetch_threads=settings.fetch_threads,
            max_bytes=limits,
        )
        self.shadow = None
        if settings.shadow:
            self.shadow = ShadowRunner(
                shadow_predictor or predictor,
                Target.parse(settings.shadow),
                clients.shadow_producer(kafka),
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
        return bool(self.intake.assigned) and not self._stop.is_set()

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
                self._fill()
                self._emit_finished()
                self._maybe_commit()
                self._update_lag()
            self._drain(self.settings.shutdown_timeout_s)
        finally:
            self._close()

    # -- scheduling --------------------------------------------------------------------------
    def _fill(self) -> None:
        """Poll into the forming batch; hand it to a chunk thread as soon as one is free.

        While every chunk thread is busy, records gather in the forming batch (up to
        ``batch_size``), so batches grow with the load instead of queueing many tiny ones.
        """
        forming = len(self.intake.forming)
        room = self._pending_records + forming < self._max_buffered
        if not room or forming >= self.settings.batch_size:
            self._submit_forming()
            running = self._running()
            if running:
                wait(running, timeout=0.05, return_when=FIRST_COMPLETED)
            self.intake.hold()
            return
        self.intake.poll(0.002 if self._pending or forming else 0.05)
        self._submit_forming()

    def _running(self) -> list[Future[list[Work]]]:
        return [c.future for c in self._pending if not c.future.done()]

    def _submit_forming(self) -> None:
        if self.intake.forming and len(self._running()) < self.settings.max_in_flight:
            records = self.intake.take_batch()
            self.metrics.records_in.inc(len(records))
            abandoned = threading.Event()
            future = self._chunks.submit(self.pipeline.process, records, abandoned)
            self._pending.append(_Chunk(records, future, abandoned))
            self._pending_records += len(records)
            self.metrics.in_flight.set(self._pending_records)

    # -- emitting ----------------------------------------------------------------------------
    def _emit_finished(self) -> None:
        """Write the records of finished chunks, oldest first, stopping at the first unfinished."""
        while self._pending and self._pending[0].future.done():
            chunk = self._pending.popleft()
            self._pending_records -= len(chunk.records)
            for work in chunk.future.result():
                self._emit(work)
            self.metrics.in_flight.set(self._pending_records)
        self.producer.poll(0)

    def _emit(self, work: Work) -> None:
        produced = self.pipeline.produced(work)
        self.checkpoint.write(produced, work.record.source)
        if produced.error is not None:
            self.metrics.dead_lettered.labels(produced.error.reason).inc()
            return
        result = work.result
        assert result is not None and work.predict is not None and produced.value is not None
        self.metrics.records_out.labels(
            result.model, str(result.version), result.mode, work.route or ""
        ).inc()
        if self.shadow is not None and self.shadow.sampled(work.record.routing_key):
            self.shadow.submit(
                ShadowJob(work.predict, produced.value, produced.key, produced.headers)
            )
        timestamp = work.record.source.timestamp
        if timestamp is not None:
            self.metrics.end_to_end.observe(max(0.0, time.time() - timestamp / 1000))

    # -- committing --------------------------------------------------------------------------
    def _maybe_commit(self, force: bool = False) -> None:
        if not force and not self.checkpoint.due(self._backlogged):
            return
        if self.checkpoint.commit() is Commit.ABORTED:
            self._abandon_pending()
            self.checkpoint.rewind(self.intake.assigned)

    def _backlogged(self) -> bool:
        """More input waiting than the buffer holds and the last interval got through."""
        waiting = sum(self.intake.lags().values())
        return waiting > max(self._max_buffered, self.checkpoint.written)

    def _abandon_pending(self) -> None:
        for chunk in self._pending:
            chunk.abandoned.set()
        self._pending.clear()
        self._pending_records = 0
        self.intake.forming = []  # not yet submitted: redone from the committed offsets
        self.metrics.in_flight.set(0)

    # -- rebalancing -------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", _names(partitions))
        self.intake.assign(partitions)

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
        self.checkpoint.abort()
        self.intake.drop()

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
        self.pipeline.close()
        try:
            self.consumer.close()  # revokes: commits what was emitted
        finally:
            self.checkpoint.close()
            if self.shadow is not None:
                self.shadow.close()

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < 5 or not self.intake.assigned:
            return
        self._last_lag = now
        for (topic, partition), lag in self.intake.lags().items():
            self.metrics.lag.labels(topic, str(partition)).set(lag)


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"
