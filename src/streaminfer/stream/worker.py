"""The stream worker: consume → pipeline → produce, exactly once, in order per partition.

This module is the loop that wires the parts, each with one job:

* ``intake``: polling, the forming batch, pausing when the buffer is full;
* ``pipeline``: parse → fetch → route → predict → output for a batch, each record isolated;
* ``checkpoint``: transactions, offsets and the commit policy;
* here: chunk scheduling, ordered emission, rebalances, drain and close.

How it keeps its promises:

* **Throughput without reordering.**  Polled records are cut into chunks of up to
  ``batch_size``, or more when records are cheap (``ChunkSizer``: about 10 ms of work
  per chunk, and enough records to be worth a remote round trip); up to
  ``max_in_flight`` chunks run through the pipeline at once on a thread pool (fewer
  while they hold the GIL more than they wait: ``ChunkLanes``), but their records are
  written strictly in the order they were consumed, so every partition's outputs keep
  their input order.  Records that queue while every lane is busy join one larger
  chunk, so a backlog is worked off in fewer round trips.  One lane of in-process work
  (an embedded model, no handler) runs on the loop's own thread: handed to a chunk
  thread, the same records cost about a quarter more CPU, the GIL and their data moving
  between the threads.
* **Exactly once.**  A record's offset is only committed together with its output or
  dead letter; when a commit cannot keep that, the uncommitted work is dropped and redone
  from the last commit.
* **Commits off the critical path.**  An exactly-once commit runs on its own thread
  while the loop keeps polling and the pipeline keeps predicting; the finished outputs
  wait and go into the next transaction as soon as the commit returns.  A commit is due
  every ``commit_interval_ms`` under load, and as soon as the pipeline drains (no input
  waiting, nothing in flight) below it, so a lone record is visible in one round trip.
* **A loop that keeps the GIL.**  Every call that lets go of the GIL costs the loop up to
  the switch interval (5 ms) to get it back while the pipeline threads run Python, and
  meanwhile finished chunks wait to be written.  So delivery reports are served every
  ``SERVE_DELIVERIES_S``, not on every pass (a commit serves them too).
* **Rebalances.**  On revocation the finished outputs are committed with their offsets
  and everything still in flight is abandoned, to be redone by the partitions' next owner.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from streaminfer.errors import InfrastructureError
from streaminfer.handlers import Handler
from streaminfer.images import ImageFetcher
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.tokens import token_provider
from streaminfer.predictors.base import Predictor, waited_s
from streaminfer.predictors.embedded import EmbeddedPredictor
from streaminfer.stream import clients
from streaminfer.stream.checkpoint import Checkpoint, Commit, CommitPolicy
from streaminfer.stream.intake import BufferBudget, ChunkLanes, ChunkSizer, Intake
from streaminfer.stream.metrics import WorkerMetrics, observe_ages
from streaminfer.stream.pipeline import Defaults, Pipeline
from streaminfer.stream.routing import Route, ShadowJob, ShadowRunner, Target
from streaminfer.stream.settings import WorkerSettings
from streaminfer.stream.tabular import TabularModels
from streaminfer.stream.work import InputRecord, Produced, Work

log = logging.getLogger(__name__)

YOUNG_COLLECTION_OBJECTS = 20_000  # new container objects between young collections
IDLE_POLL_S = 0.05  # the longest poll with nothing in flight: a stop request waits no longer
SERVE_DELIVERIES_S = 0.05  # how often the loop serves the producer's delivery reports
DRAIN_SHARE = 2 / 3  # of the shutdown timeout, for in-flight work; the last commit gets the rest


@dataclass
class _Finished:
    """A chunk's records through the pipeline, and what to write for each."""

    works: list[Work]
    produced: list[Produced]
    seconds: float  # how long the chunk took
    waited: float  # of which it waited on work that needs no GIL (waited_s)


@dataclass
class _Chunk:
    records: list[InputRecord]
    future: Future[_Finished]
    abandoned: threading.Event
    size: int  # bytes of input values


class CommitStuck(InfrastructureError):
    """An exactly-once commit outlived ``commit_stuck_s``: librdkafka's call has not
    returned, past its own timeouts.  It cannot be cut short, and the producer takes no
    outputs meanwhile, so the process must end (``os._exit``: Python's exit would wait
    for the thread inside the call) and be restarted."""


@dataclass(frozen=True)
class _Committed:
    outcome: Commit
    written: int  # records the commit covered
    interval_s: float  # since the commit before
    duration_s: float  # how long it took, when committed


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
        handler: Handler | None = None,
        assignment: str | None = None,
    ) -> None:
        """``max_bytes``: the largest record each output topic accepts, as far as known;
        ``handler``: the ``--handler`` class, loaded once for the process; ``assignment``:
        the partition assignment strategy (:func:`clients.assignment_strategy`)."""
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self._stop = threading.Event()
        self._pending: deque[_Chunk] = deque()
        self._pending_records = 0
        self._pending_bytes = 0
        self._sizer = ChunkSizer(settings.batch_size)
        self._lanes = ChunkLanes(settings.max_in_flight)
        self._budget = BufferBudget(self._sizer, chunks=settings.max_in_flight * 2)
        self._last_gauges = 0.0
        self._served_deliveries = 0.0
        self._chunks = ThreadPoolExecutor(settings.max_in_flight, thread_name_prefix="chunk")
        # Only work that cannot wait without end runs on the loop's thread: a model server's
        # outage is retried until it ends, and a handler's hooks may call anything.
        self._in_process = predictor.mode == EmbeddedPredictor.mode and handler is None
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="commit")
        self._commit: Future[_Committed] | None = None  # the commit in flight
        self._commit_started = 0.0  # time.monotonic() as it was submitted

        consumer_config = (
            clients.consumer_config(settings, kafka, assignment) if consumer is None else {}
        )
        producer_config = clients.producer_config(settings, kafka)
        # A client that logs in with a token waits for its first one in whole seconds
        # (confluent-kafka): made side by side, the worker's clients wait once.
        with ThreadPoolExecutor(3, thread_name_prefix="connect") as connecting:
            consumer_made = connecting.submit(
                lambda: Consumer(consumer_config) if consumer is None else consumer
            )
            producer_made = connecting.submit(
                lambda: Producer(producer_config) if producer is None else producer
            )
            shadow_made = connecting.submit(
                lambda: clients.shadow_producer(kafka) if settings.shadow else None
            )
        self.consumer, self.producer = consumer_made.result(), producer_made.result()
        # The providers of tokens its clients log in with (-X oauth_cb), if any.
        configs = (consumer_config, producer_config if producer is None else {})
        self._tokens = [p for p in map(token_provider, configs) if p is not None]
        self._token_failures = 0  # of those counted in the metrics so far
        self.intake = Intake(self.consumer)
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
            tabular=TabularModels(settings.repo),
            handler=handler,
        )
        self.shadow = None
        shadow_producer = shadow_made.result()
        if settings.shadow and shadow_producer is not None:
            self.shadow = ShadowRunner(
                shadow_predictor or predictor,
                Target.parse(settings.shadow),
                shadow_producer,
                settings.shadow_output_topic,
                settings.shadow_sample,
                on_drop=self.metrics.shadow_dropped.inc,
            )
        self._update_gauges()  # the token gauge has its value before the first scrape

    # -- control -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish: safe from a signal handler or another thread."""
        self._stop.set()

    @property
    def ready(self) -> bool:
        """Assigned partitions, not stopping, and no client whose token has run out."""
        tokens_valid = not any(provider.expired for provider in self._tokens)
        return bool(self.intake.assigned) and not self._stop.is_set() and tokens_valid

    def run(self) -> None:
        """Process until ``stop()``; then finish in-flight work, commit, and close."""
        if self.settings.exactly_once:
            self.producer.init_transactions(30)
        settle_collector()
        self.consumer.subscribe(
            [self.settings.input],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        stuck = False
        try:
            while not self._stop.is_set():
                self._fill()
                if self._commit is None:  # a committing producer takes no new outputs
                    self._emit_finished()
                self._advance_commit()
                self._update_gauges()
            self._drain(self.settings.shutdown_timeout_s * DRAIN_SHARE)
        except CommitStuck:
            stuck = True
            raise
        finally:
            if not stuck:  # closing would wait for the very call that is stuck
                self._close()

    # -- scheduling --------------------------------------------------------------------------
    def _fill(self) -> None:
        """Poll into the forming batch; hand it to a chunk thread as soon as one is free.

        While every chunk thread is busy, records gather in the forming batch (up to the
        sizer's ``queued_size``), so batches grow with the load instead of queueing many
        small ones.
        """
        forming = len(self.intake.forming)
        room = self._budget.has_room(self._pending_records + forming, self._pending_bytes)
        lane_free = len(self._running()) < self._lanes.limit
        most = self._sizer.size if lane_free else self._sizer.queued_size
        if not room or forming >= most:
            self._submit_forming()
            # Wait for what makes room: a chunk to finish, or else the commit that holds
            # the finished ones back (polling on would only spin: 21 µs a pass).
            busy: list[Future[Any]] = self._running()
            if not busy and self._commit is not None:
                busy = [self._commit]
            if busy:
                wait(busy, timeout=0.05, return_when=FIRST_COMPLETED)
            self.intake.hold()
            return
        self.intake.poll(0.002 if self._pending or forming else self._idle_poll_s(), most)
        self._submit_forming()

    def _idle_poll_s(self) -> float:
        """How long to wait for input with nothing in flight: until a drained commit is due."""
        if self._commit is not None:
            return IDLE_POLL_S
        return min(IDLE_POLL_S, self.checkpoint.drained_commit_in_s())

    def _running(self) -> list[Future[_Finished]]:
        return [c.future for c in self._pending if not c.future.done()]

    def _submit_forming(self) -> None:
        if self.intake.forming and len(self._running()) < self._lanes.limit:
            records = self.intake.take_batch()
            self.metrics.records_in.inc(len(records))
            abandoned = threading.Event()
            if self._in_process and self._lanes.limit == 1:
                future = _done_here(self._process, records, abandoned)
            else:
                future = self._chunks.submit(self._process, records, abandoned)
            chunk = _Chunk(records, future, abandoned, sum(len(r.value or b"") for r in records))
            self._pending.append(chunk)
            self._pending_records += len(records)
            self._pending_bytes += chunk.size
            self.metrics.in_flight.set(self._pending_records)

    def _process(self, records: list[InputRecord], abandoned: threading.Event) -> _Finished:
        """On a chunk thread: the records through the pipeline, and their outputs built."""
        started, waited = time.perf_counter(), waited_s()
        works = self.pipeline.process(records, abandoned)
        produced = self.pipeline.produced(works)
        return _Finished(works, produced, time.perf_counter() - started, waited_s() - waited)

    # -- emitting ----------------------------------------------------------------------------
    def _emit_finished(self) -> None:
        """Write the records of finished chunks, oldest first, stopping at the first unfinished."""
        while self._pending and self._pending[0].future.done():
            chunk = self._pending.popleft()
            self._pending_records -= len(chunk.records)
            self._pending_bytes -= chunk.size
            finished = chunk.future.result()
            self._sizer.observe(len(chunk.records), finished.seconds)
            self._lanes.observe(finished.seconds, finished.waited)
            self.checkpoint.write(finished.produced, [r.source for r in chunk.records])
            self._account(finished)
            self.metrics.in_flight.set(self._pending_records)
        now = time.monotonic()
        if now - self._served_deliveries >= SERVE_DELIVERIES_S:
            # Not every pass: poll lets go of the GIL, and a busy pipeline thread may keep it
            # for the switch interval (5 ms) before the loop gets it back.
            self._served_deliveries = now
            self.producer.poll(0)

    def _account(self, finished: _Finished) -> None:
        """Metrics (counted per chunk, not per record) and the shadow's sample."""
        served: Counter[tuple[str, int, str, str]] = Counter()
        failed: Counter[str] = Counter()
        shadow, timestamps = self.shadow, []
        for work, produced in zip(finished.works, finished.produced, strict=True):
            if produced.error is not None:
                failed[produced.error.reason] += 1
                continue
            result = work.result
            assert result is not None
            served[(result.model, result.version, result.mode, work.route or "")] += 1
            if shadow is not None and shadow.sampled(work.record.routing_key):
                assert work.predict is not None and produced.value is not None
                shadow.submit(
                    ShadowJob(work.predict, produced.value, produced.key, produced.headers)
                )
            timestamp = work.record.source.timestamp
            if timestamp is not None:
                timestamps.append(timestamp)
        observe_ages(self.metrics.end_to_end, timestamps)  # for the whole chunk at once
        for (model, version, mode, route), count in served.items():
            self.metrics.records_out.labels(model, str(version), mode, route).inc(count)
        for reason, count in failed.items():
            self.metrics.dead_lettered.labels(reason).inc(count)

    # -- committing --------------------------------------------------------------------------
    def _advance_commit(self) -> None:
        """Settle a finished commit; start the next one when it is due."""
        if self._commit is not None:
            if not self._commit.done():
                if self._commit_left_s() < 0:
                    raise self._stuck()
                return
            self._settle(self._commit.result())
        if not self._commit_due():
            return
        if self.settings.exactly_once:
            metadata = self.consumer.consumer_group_metadata()
            self._commit_started = time.monotonic()
            self._commit = self._committer.submit(self._run_commit, metadata)
        else:
            self._settle(self._run_commit())

    def _commit_result(self) -> _Committed:
        """The commit in flight's outcome, waited for until ``commit_stuck_s`` from its
        start; ``CommitStuck`` past that."""
        assert self._commit is not None
        try:
            return self._commit.result(timeout=max(0.0, self._commit_left_s()))
        except FutureTimeout:
            raise self._stuck() from None

    def _commit_left_s(self) -> float:
        """Seconds the commit in flight has left before it counts as stuck."""
        return self._commit_started + self.settings.commit_stuck_s - time.monotonic()

    def _stuck(self) -> CommitStuck:
        return CommitStuck(
            f"the transaction's commit has not returned in {self.settings.commit_stuck_s:g} s "
            "(commit_stuck_s), past librdkafka's own timeouts of 30 s a call: its client is "
            "stuck (as in confluentinc/librdkafka#5511, after the group's coordinator has "
            "left the cluster). Exiting, to be restarted: the open transaction is aborted "
            "and its records are redone."
        )

    def _commit_now(self) -> None:
        """Commit everything finished, and wait for it (rebalance, shutdown)."""
        if self._commit is not None:
            self._settle(self._commit_result())
        self._emit_finished()
        self._settle(self._run_commit())

    def _commit_due(self) -> bool:
        drained = not self._pending and not self.intake.forming and self.intake.idle
        return self.checkpoint.due(self._backlogged, drained)

    def _run_commit(self, group_metadata: Any = None) -> _Committed:
        written, since = self.checkpoint.written, self.checkpoint.since_commit_s
        outcome = self.checkpoint.commit(group_metadata)
        return _Committed(outcome, written, since, self.checkpoint.commit_duration_s)

    def _settle(self, done: _Committed) -> None:
        """On the loop's thread: act on a commit's outcome."""
        self._commit = None
        if done.outcome is Commit.COMMITTED:
            self._budget.observe(done.written, done.interval_s, done.duration_s)
        elif done.outcome is Commit.ABORTED:
            self._abandon_pending()
            self.checkpoint.rewind(self.intake.assigned)

    def _backlogged(self) -> bool:
        waiting = sum(self.intake.lags().values())
        return self._budget.backlogged(waiting, self.checkpoint.policy.stretched_s)

    def _abandon_pending(self) -> None:
        for chunk in self._pending:
            chunk.abandoned.set()
        self._pending.clear()
        self._pending_records = 0
        self._pending_bytes = 0
        self.intake.forget()  # not yet submitted: redone from the committed offsets
        self.metrics.in_flight.set(0)

    # -- rebalancing -------------------------------------------------------------------------
    # Under an eager protocol (librdkafka's default) every partition is revoked, then the
    # new set assigned; under an incremental one (cooperative-sticky, or KIP-848's
    # group.protocol=consumer) only the partitions that move are, and the rest stay.
    # The log names what a worker serves after each change: an incremental one may assign
    # "nothing" to a worker that keeps serving what it has.
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        serving = _merged(self.intake.assigned, partitions)
        log.info("assigned %s; serving %s", _names(partitions), _names(serving))
        self.intake.assign(serving)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        kept = _without(self.intake.assigned, partitions)
        log.info("revoked %s; serving %s", _names(partitions), _names(kept))
        self._commit_now()
        self._keep_only(kept)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        kept = _without(self.intake.assigned, partitions)
        log.warning(
            "lost %s: their uncommitted work will be redone; serving %s",
            _names(partitions),
            _names(kept),
        )
        if self._commit is not None:
            self._settle(self._commit_result())
        self._keep_only(kept)

    def _keep_only(self, kept: list[TopicPartition]) -> None:
        """Serve only ``kept`` and forget everything not committed: work in flight is shared
        by all partitions, so the partitions that stay are read again from their committed
        offsets (and resumed, should backpressure have paused them)."""
        self._abandon_pending()
        self.checkpoint.abort()
        self.intake.drop()
        if kept:
            self.consumer.resume(kept)
            self.checkpoint.rewind(kept)
            self.intake.assign(kept)

    # -- shutdown ----------------------------------------------------------------------------
    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            self.consumer.poll(0.01)
            if self._commit is None:
                self._emit_finished()
            self._advance_commit()
        self._commit_now()

    def _close(self) -> None:
        for chunk in self._pending:
            chunk.abandoned.set()
        self._chunks.shutdown(wait=False, cancel_futures=True)
        self._committer.shutdown(wait=True)  # a commit in flight ends before the clients close
        self.pipeline.close()
        try:
            self.consumer.close()  # revokes: commits what was emitted
        finally:
            self.checkpoint.close()
            if self.shadow is not None:
                self.shadow.close()

    def _update_gauges(self) -> None:
        """Every 5 s: the consumer's lag, and its clients' tokens."""
        now = time.monotonic()
        if now - self._last_gauges < 5:
            return
        self._last_gauges = now
        # Without tokens nothing expires: +Inf keeps an alert on the gauge quiet.
        self.metrics.token_expiry.set(min((p.expires_at for p in self._tokens), default=math.inf))
        failures = sum(p.failures for p in self._tokens)
        self.metrics.token_failures.inc(failures - self._token_failures)
        self._token_failures = failures
        if self.intake.assigned:
            for (topic, partition), lag in self.intake.lags().items():
                self.metrics.lag.labels(topic, str(partition)).set(lag)


def settle_collector() -> None:
    """Python's cycle collector, set for a process that turns records over for hours.

    What start-up made (modules, models, clients) lives as long as the process: frozen out
    of the collector's sight, a full collection scans only what records made since, instead
    of holding every thread for ~50 ms several times a second.  And records are freed by
    their reference counts (a dead letter's exception drops its tracebacks, which would
    hold it in a cycle), so the young collection that Python runs every 700 new objects
    only scanned the records in flight again and again: with one every
    ``YOUNG_COLLECTION_OBJECTS``, a tensor record costs 5 % fewer instructions
    (``benchmarks/record_instructions.py``).
    """
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_OBJECTS, *gc.get_threshold()[1:])


def _key(tp: TopicPartition) -> tuple[str, int]:
    return tp.topic, tp.partition


def _merged(held: list[TopicPartition], added: list[TopicPartition]) -> list[TopicPartition]:
    known = {_key(tp) for tp in held}
    return [*held, *(tp for tp in added if _key(tp) not in known)]


def _without(held: list[TopicPartition], gone: list[TopicPartition]) -> list[TopicPartition]:
    removed = {_key(tp) for tp in gone}
    return [tp for tp in held if _key(tp) not in removed]


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"


def _done_here(
    process: Callable[[list[InputRecord], threading.Event], _Finished],
    records: list[InputRecord],
    abandoned: threading.Event,
) -> Future[_Finished]:
    """A chunk run on the calling thread, as a finished future: what it returned or raised
    reaches ``_emit_finished`` as a chunk thread's would."""
    future: Future[_Finished] = Future()
    try:
        future.set_result(process(records, abandoned))
    except Exception as exc:  # kept for _emit_finished, which raises it where a thread's would
        future.set_exception(exc)
    return future
