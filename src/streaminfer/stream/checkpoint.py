"""The checkpoint: outputs and consumed offsets, committed together or not at all.

One object owns the open transaction, the offsets to commit, the delivery reports and
the commit policy; the worker's loop only writes records into it and asks "due?" and
"commit".  Its promise: an offset is never committed unless the record's output (or
dead letter) was written in the same transaction (exactly-once) or acknowledged before
the commit (at-least-once).  When that cannot be kept, ``commit`` reports
``ABORTED``: the caller drops its uncommitted work and rewinds to the last commit, so
the records are redone rather than lost.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from streaminfer.kafka.access import refuse_denied
from streaminfer.kafka.records import produce_waiting
from streaminfer.stream.metrics import WorkerMetrics, observe_ages
from streaminfer.stream.records import Source
from streaminfer.stream.work import Produced

log = logging.getLogger(__name__)

_TIMEOUT_S = 30.0
# What the committed offsets' request meets while the group's coordinator is found, moves
# or loads (a broker restarting): asked again, where librdkafka's call gives up at once.
_COORDINATOR_MOVING = frozenset(
    {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
     KafkaError.COORDINATOR_NOT_AVAILABLE}
)  # fmt: skip
ANY_PARTITION = -1  # librdkafka's RD_KAFKA_PARTITION_UA: the partitioner picks
NOW = 0  # a produce timestamp of 0: the time of the call


@dataclass
class CommitPolicy:
    """When to commit: when the pipeline drains, but at most every ``drained_share`` of an
    interval; under load every ``interval_s``; while backlogged, every ``backlog_factor``
    intervals.

    A transaction costs the broker a fixed amount of work (about 6 ms of CPU each on a
    2-core machine, measured), however few records it holds.  Committing at every drain
    made 70-90 transactions a second at 3,000 records/s, and the broker spent more CPU at
    that load than at four times it; a quarter interval apart, a lone record is still
    visible at once, and one that follows it within the quarter waits the rest of it.

    Backlogged (more input waiting than the worker gets through in the stretched
    interval: ``BufferBudget.backlogged``), a transaction costs the worker and the
    broker CPU the backlog needs, and a record that queued that long gains nothing from
    becoming visible 400 ms sooner.  A short stall that leaves a few records waiting is
    no backlog.  Whether the worker is backlogged is decided once per interval, when it
    is up, and forgotten at the commit.
    """

    interval_s: float
    backlog_factor: int = 5
    drained_share: float = 0.25
    _backlogged: bool | None = None

    @property
    def stretched_s(self) -> float:
        """The interval while backlogged."""
        return self.interval_s * self.backlog_factor

    @property
    def drained_s(self) -> float:
        """The least time between commits when the pipeline drains."""
        return self.interval_s * self.drained_share

    def due(self, elapsed_s: float, backlogged: Callable[[], bool], drained: bool) -> bool:
        if drained and elapsed_s >= self.drained_s:
            return True
        if elapsed_s < self.interval_s:
            return False
        if self._backlogged is None:
            self._backlogged = backlogged()
        return not self._backlogged or elapsed_s >= self.stretched_s

    def committed(self) -> None:
        self._backlogged = None


class Commit(enum.Enum):
    NOTHING = "nothing"  # nothing written since the last commit
    COMMITTED = "committed"
    RETRY = "retry"  # a retriable error: the same checkpoint is committed later
    ABORTED = "aborted"  # the uncommitted work is lost: redo it from the last commit


class Checkpoint:
    """The outputs written and offsets consumed since the last commit."""

    def __init__(
        self,
        producer: Producer,
        consumer: Consumer,
        *,
        exactly_once: bool,
        policy: CommitPolicy,
        metrics: WorkerMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.producer = producer
        self.consumer = consumer
        self.exactly_once = exactly_once
        self.policy = policy
        self.metrics = metrics
        self._clock = clock
        self._offsets: dict[tuple[str, int], int] = {}  # next offset to commit, per partition
        self._written = 0  # records written since the last commit
        # Their sources, a list per write: their ages are read when they commit, on the
        # committing thread, so the loop pays one append per write, not one per record.
        self._sources: list[Sequence[Source]] = []
        self._in_transaction = False
        self._last_commit = clock()
        self.commit_duration_s = 0.0  # how long the last successful commit took
        self._failed_delivery: KafkaError | None = None  # set from librdkafka's delivery thread
        self._lock = threading.Lock()

    @property
    def written(self) -> int:
        return self._written

    @property
    def since_commit_s(self) -> float:
        return self._clock() - self._last_commit

    def write(self, records: Sequence[Produced], sources: Sequence[Source]) -> None:
        """Produce records into the checkpoint, in order, and mark their inputs done."""
        if self.exactly_once and not self._in_transaction:
            self.producer.begin_transaction()
            self._in_transaction = True
        # Under exactly-once a failed delivery fails the transaction's commit by itself: a
        # Python callback per record is only needed to know what at-least-once delivered.
        on_delivery = None if self.exactly_once else self._on_delivery
        produce, offsets = self.producer.produce, self._offsets
        for record, source in zip(records, sources, strict=True):
            try:  # produce itself: produce_waiting's call would cost 0.5 us a record
                # By position, as the binding lists them (topic, value, key, partition,
                # callback, on_delivery as its alias, timestamp, headers): keywords cost
                # the binding 0.6 us more a call.
                produce(
                    record.topic,
                    record.value,
                    record.key,
                    ANY_PARTITION,
                    on_delivery,
                    None,
                    NOW,
                    record.headers,
                )
            except BufferError:  # librdkafka's queue is full: wait for room
                produce_waiting(
                    self.producer,
                    record.topic,
                    record.value,
                    record.key,
                    record.headers,
                    on_delivery,
                )
            offsets[(source.topic, source.partition)] = source.offset + 1
        self._sources.append(sources)
        self._written += len(records)

    def due(self, backlogged: Callable[[], bool], drained: bool) -> bool:
        """Whether to commit now; ``drained``: no input waiting and nothing in flight."""
        return bool(self._offsets) and self.policy.due(self.since_commit_s, backlogged, drained)

    def drained_commit_in_s(self) -> float:
        """How long until a drained pipeline's commit is due (infinite: nothing to commit)."""
        if not self._offsets:
            return math.inf
        return max(0.0, self.policy.drained_s - self.since_commit_s)

    def commit(self, group_metadata: Any = None) -> Commit:
        """Commit what was written; ``ABORTED`` means redo everything since the last commit.

        Under exactly-once it may run on another thread than the consumer's poll loop, given
        the consumer's ``group_metadata`` taken on the loop's thread (librdkafka's call for
        it blocks while the consumer is being polled).  At-least-once commits through the
        consumer, so it runs on the loop's thread.
        """
        if not self._offsets:
            return Commit.NOTHING
        started = self._clock()
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._offsets.items()]
        try:
            if self.exactly_once:
                metadata = group_metadata or self.consumer.consumer_group_metadata()
                self.producer.send_offsets_to_transaction(offsets, metadata, _TIMEOUT_S)
                self.producer.commit_transaction(_TIMEOUT_S)
                self._in_transaction = False
            else:
                self._deliver_all()
                self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            return self._failed(exc.args[0])
        self.commit_duration_s = self._clock() - started
        self.metrics.commit_duration.observe(self.commit_duration_s)
        self.metrics.transactions.labels("committed").inc()
        self._observe_committed()
        self._offsets.clear()
        self._written = 0
        # The interval counts from this commit's start: after a slow one (a broker's GC
        # pause), the outputs that waited through it go out in the next commit at once,
        # not a whole interval later.
        self._last_commit = started
        self.policy.committed()
        return Commit.COMMITTED

    def abort(self) -> None:
        """Forget everything since the last commit (the caller redoes or drops that work)."""
        if self._in_transaction:
            self.producer.abort_transaction(_TIMEOUT_S)
            self._in_transaction = False
            self.metrics.transactions.labels("aborted").inc()
        self._offsets.clear()
        self._sources.clear()
        self._written = 0
        with self._lock:
            self._failed_delivery = None

    def _observe_committed(self) -> None:
        """Each committed record's age: from its timestamp to now, when its output is readable."""
        stamps = [t for batch in self._sources for s in batch if (t := s.timestamp) is not None]
        self._sources.clear()
        observe_ages(self.metrics.end_to_end_committed, stamps)

    def rewind(self, partitions: list[TopicPartition]) -> None:
        """Seek ``partitions`` back to their committed offsets."""
        if not partitions:
            return
        for tp in self._committed(partitions):
            if tp.error is not None:  # not "none committed": reading from the start would redo all
                refuse_denied(tp.error)
                raise KafkaException(tp.error)
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def _committed(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        deadline = time.monotonic() + _TIMEOUT_S
        while True:
            try:
                return self.consumer.committed(partitions, timeout=_TIMEOUT_S)
            except KafkaException as exc:
                if exc.args[0].code() not in _COORDINATOR_MOVING or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        if self._in_transaction:
            self.producer.abort_transaction(10)
            self._in_transaction = False
        self.producer.flush(10)

    def _deliver_all(self) -> None:
        """At-least-once: every output acknowledged before its offset is committed."""
        remaining = self.producer.flush(_TIMEOUT_S)
        with self._lock:
            failed, self._failed_delivery = self._failed_delivery, None
        if remaining or failed:
            code = failed.code() if failed else KafkaError._MSG_TIMED_OUT
            why = (
                failed.str()
                if failed
                else f"{remaining} outputs not acknowledged in {_TIMEOUT_S:.0f} s"
            )
            # Never retriable here: the failed outputs are gone, only a redo brings them back.
            raise KafkaException(KafkaError(code, why, retriable=False))

    def _failed(self, error: KafkaError) -> Commit:
        refuse_denied(error)  # a missing ACL: redoing the work would be denied again
        if self.exactly_once and error.txn_requires_abort():
            log.warning("transaction aborted, reprocessing from the last commit: %s", error.str())
        elif not self.exactly_once and not error.retriable():
            log.warning("outputs not delivered, reprocessing from the last commit: %s", error.str())
        elif error.retriable():
            log.warning("commit failed, will retry: %s", error.str())
            return Commit.RETRY
        else:
            raise KafkaException(error)  # fatal (e.g. fenced by a newer instance): stop, clearly
        self.abort()
        return Commit.ABORTED

    def _on_delivery(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            with self._lock:
                self._failed_delivery = self._failed_delivery or error
