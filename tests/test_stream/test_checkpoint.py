"""The checkpoint: its commit policy in process, its transactions against the real broker."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterator
from typing import cast

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import consume
from streaminfer.stream.checkpoint import Checkpoint, Commit, CommitPolicy
from streaminfer.stream.metrics import WorkerMetrics
from streaminfer.stream.records import Source
from streaminfer.stream.work import Produced

BOTH_GUARANTEES = pytest.mark.parametrize(
    "exactly_once", [True, False], ids=["exactly-once", "at-least-once"]
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_policy_commits_every_interval_when_not_backlogged() -> None:
    policy = CommitPolicy(interval_s=0.1)
    assert not policy.due(0.05, lambda: False, drained=False)
    assert policy.due(0.1, lambda: False, drained=False)


def test_a_drained_pipeline_commits_a_quarter_interval_after_the_last_commit() -> None:
    """A lone record commits at once; a drain soon after a commit waits out the quarter, so
    a steady trickle does not make a transaction of every few records."""
    policy = CommitPolicy(interval_s=0.1)
    assert policy.drained_s == pytest.approx(0.025)
    assert not policy.due(0.02, lambda: False, drained=True)
    assert policy.due(0.025, lambda: False, drained=True)
    assert policy.due(30.0, lambda: False, drained=True)
    assert not policy.due(0.05, lambda: False, drained=False)


def test_policy_stretches_the_interval_while_backlogged_and_decides_once() -> None:
    policy = CommitPolicy(interval_s=0.1, backlog_factor=5)
    asked = []

    def backlogged() -> bool:
        asked.append(1)
        return True

    assert not policy.due(0.1, backlogged, drained=False)
    assert not policy.due(0.3, backlogged, drained=False)
    assert policy.due(0.5, backlogged, drained=False)
    assert len(asked) == 1  # decided once per interval
    policy.committed()
    assert policy.due(0.1, lambda: False, drained=False)  # a new interval decides afresh


@pytest.fixture
def clients(
    kafka_settings: KafkaSettings,
) -> Iterator[Callable[..., tuple[Producer, Consumer]]]:
    made: list[tuple[Producer, Consumer]] = []

    def make(exactly_once: bool, **config: object) -> tuple[Producer, Consumer]:
        extra = {"transactional.id": f"t-{uuid.uuid4().hex}"} if exactly_once else {}
        producer = Producer(
            kafka_settings.client_config(**{"enable.idempotence": True, **extra, **config})
        )
        group = f"g-{uuid.uuid4().hex[:8]}"
        consumer = Consumer(kafka_settings.client_config(**{"group.id": group}))
        if exactly_once:
            producer.init_transactions(30)
        made.append((producer, consumer))
        return producer, consumer

    yield make
    for _, consumer in made:
        consumer.close()


def checkpoint(
    producer: Producer, consumer: Consumer, exactly_once: bool, clock: Clock | None = None
) -> Checkpoint:
    return Checkpoint(
        producer,
        consumer,
        exactly_once=exactly_once,
        policy=CommitPolicy(0.1),
        metrics=WorkerMetrics(),
        clock=clock or Clock(),
    )


def committed_offset(consumer: Consumer, topic: str) -> int:
    (tp,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
    return int(tp.offset)


def test_the_interval_counts_from_the_last_commits_start(
    topic_factory: Callable[..., str],
    clients: Callable[..., tuple[Producer, Consumer]],
) -> None:
    """Outputs that waited through a slow commit go out in the next one without waiting
    for another whole interval."""
    inp, out = topic_factory("in"), topic_factory("out")
    producer, consumer = clients(True)
    clock = Clock()
    slow = _SlowCommits(producer, clock, seconds=0.15)
    cp = checkpoint(cast(Producer, slow), consumer, True, clock)
    cp.write([Produced(out, None, b"v0", [])], [Source(inp, 0, 0, None)])
    clock.now = 0.1
    assert cp.commit() is Commit.COMMITTED  # from 0.1 to 0.25
    cp.write([Produced(out, None, b"v1", [])], [Source(inp, 0, 1, None)])
    assert cp.due(lambda: False, drained=False)  # 0.15 s since it started
    slow.seconds = 0.0
    assert cp.commit() is Commit.COMMITTED  # at 0.25, at once
    cp.write([Produced(out, None, b"v2", [])], [Source(inp, 0, 2, None)])
    clock.now += 0.05
    assert not cp.due(lambda: False, drained=False)
    clock.now += 0.06
    assert cp.due(lambda: False, drained=False)


def test_a_drained_commit_is_due_a_quarter_interval_after_the_last(
    topic_factory: Callable[..., str],
    clients: Callable[..., tuple[Producer, Consumer]],
) -> None:
    """The worker waits for input no longer than until its drained commit is due."""
    inp, out = topic_factory("in"), topic_factory("out")
    producer, consumer = clients(True)
    clock = Clock()
    cp = checkpoint(producer, consumer, True, clock)
    assert cp.drained_commit_in_s() == math.inf  # nothing to commit
    cp.write([Produced(out, None, b"v0", [])], [Source(inp, 0, 0, None)])
    clock.now = 0.01
    assert cp.drained_commit_in_s() == pytest.approx(0.015)
    assert not cp.due(lambda: False, drained=True)
    clock.now = 1.0
    assert cp.drained_commit_in_s() == 0.0
    assert cp.due(lambda: False, drained=True)
    assert cp.commit() is Commit.COMMITTED
    assert cp.drained_commit_in_s() == math.inf


def _sample(cp: Checkpoint, name: str, **labels: str) -> float | None:
    return cp.metrics.registry.get_sample_value(name, labels)


def test_a_commit_observes_how_long_it_took(
    topic_factory: Callable[..., str],
    clients: Callable[..., tuple[Producer, Consumer]],
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    producer, consumer = clients(True)
    clock = Clock()
    slow = _SlowCommits(producer, clock, seconds=0.15)
    cp = checkpoint(cast(Producer, slow), consumer, True, clock)
    cp.write([Produced(out, None, b"v0", [])], [Source(inp, 0, 0, None)])
    assert cp.commit() is Commit.COMMITTED
    assert cp.commit_duration_s == pytest.approx(0.15)  # what the worker sizes its buffer by
    assert _sample(cp, "streaminfer_commit_seconds_count") == 1
    assert _sample(cp, "streaminfer_commit_seconds_sum") == pytest.approx(0.15)
    assert _sample(cp, "streaminfer_commit_seconds_bucket", le="0.1") == 0
    assert _sample(cp, "streaminfer_commit_seconds_bucket", le="0.25") == 1


@BOTH_GUARANTEES
def test_a_commit_observes_the_age_of_each_record_it_commits(
    topic_factory: Callable[..., str],
    clients: Callable[..., tuple[Producer, Consumer]],
    exactly_once: bool,
) -> None:
    """From each input's timestamp to its commit; what an abort drops is not counted."""
    inp, out = topic_factory("in"), topic_factory("out")
    producer, consumer = clients(exactly_once)
    cp = checkpoint(producer, consumer, exactly_once)
    now_ms = round(time.time() * 1000)
    cp.write([Produced(out, None, b"dropped", [])], [Source(inp, 0, 0, now_ms - 600_000)])
    cp.abort()  # redone from the last commit: counted when that commits
    started = time.time()
    cp.write(
        [Produced(out, None, b"v%d" % i, []) for i in range(3)],
        [Source(inp, 0, 0, now_ms - 2_000), Source(inp, 0, 1, None), Source(inp, 0, 2, now_ms)],
    )
    assert cp.commit() is Commit.COMMITTED
    ended = time.time()
    name = "streaminfer_end_to_end_committed_seconds"
    assert _sample(cp, f"{name}_count") == 2  # an input without a timestamp has no age
    age_sum = _sample(cp, f"{name}_sum")  # two ages, observed between started and ended
    assert age_sum is not None
    assert 2 * (started - now_ms / 1000) + 2 <= age_sum <= 2 * (ended - now_ms / 1000) + 2
    assert cp.commit() is Commit.NOTHING
    assert _sample(cp, f"{name}_count") == 2


class _SlowCommits:
    """A real transactional producer whose commits take ``seconds`` on the test's clock."""

    def __init__(self, producer: Producer, clock: Clock, seconds: float) -> None:
        self._producer, self._clock, self.seconds = producer, clock, seconds

    def commit_transaction(self, timeout: float) -> None:
        self._producer.commit_transaction(timeout)
        self._clock.now += self.seconds

    def __getattr__(self, name: str) -> object:
        return getattr(self._producer, name)


@BOTH_GUARANTEES
def test_commit_makes_outputs_and_offsets_visible_together(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    clients: Callable[..., tuple[Producer, Consumer]],
    exactly_once: bool,
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    producer, consumer = clients(exactly_once)
    cp = checkpoint(producer, consumer, exactly_once)
    assert cp.commit() is Commit.NOTHING
    for offset in range(3):
        written = Produced(out, b"k%d" % offset, b"v%d" % offset, [("h", b"%d" % offset)])
        cp.write([written], [Source(inp, 0, offset, None)])
    assert cp.commit() is Commit.COMMITTED
    read = list(consume(kafka_settings, out, from_beginning=True, count=3, timeout=20))
    # produce takes its arguments by position: each must land where it belongs
    assert [(r.key, r.value, r.headers) for r in read] == [
        (b"k%d" % i, b"v%d" % i, [("h", b"%d" % i)]) for i in range(3)
    ]
    assert committed_offset(consumer, inp) == 3


def test_abort_leaves_neither_outputs_nor_offsets(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    clients: Callable[..., tuple[Producer, Consumer]],
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    producer, consumer = clients(True)
    cp = checkpoint(producer, consumer, True)
    cp.write([Produced(out, None, b"dropped", [])], [Source(inp, 0, 0, None)])
    cp.abort()
    cp.write([Produced(out, None, b"kept", [])], [Source(inp, 0, 0, None)])
    assert cp.commit() is Commit.COMMITTED
    values = [r.value for r in consume(kafka_settings, out, from_beginning=True, timeout=3)]
    assert values == [b"kept"]


@BOTH_GUARANTEES
def test_a_failed_delivery_never_lets_the_offset_move_past_it(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    clients: Callable[..., tuple[Producer, Consumer]],
    exactly_once: bool,
) -> None:
    inp = topic_factory("in")
    small = f"small-{uuid.uuid4().hex[:8]}"
    TopicAdmin(kafka_settings).create(small, config={"max.message.bytes": "1000"})
    producer, consumer = clients(exactly_once)
    cp = checkpoint(producer, consumer, exactly_once)
    cp.write([Produced(small, None, b"fits", [])], [Source(inp, 0, 0, None)])
    cp.write([Produced(small, None, b"x" * 5000, [])], [Source(inp, 0, 1, None)])
    cp.write([Produced(small, None, b"after", [])], [Source(inp, 0, 2, None)])
    assert cp.commit() is Commit.ABORTED
    assert committed_offset(consumer, inp) < 0  # nothing committed: all three are redone
    assert cp.written == 0 and cp.commit() is Commit.NOTHING


@BOTH_GUARANTEES
def test_a_write_larger_than_the_producer_queue_waits_for_room_and_loses_nothing(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    clients: Callable[..., tuple[Producer, Consumer]],
    exactly_once: bool,
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    producer, consumer = clients(exactly_once, **{"queue.buffering.max.messages": 10})
    cp = checkpoint(producer, consumer, exactly_once)
    count = 50  # five times what librdkafka's queue holds: produce raises BufferError
    cp.write(
        [Produced(out, None, f"v{i}".encode(), [("h", b"x")]) for i in range(count)],
        [Source(inp, 0, i, None) for i in range(count)],
    )
    assert cp.commit() is Commit.COMMITTED
    read = list(consume(kafka_settings, out, from_beginning=True, count=count, timeout=20))
    assert [r.value for r in read] == [f"v{i}".encode() for i in range(count)]
    assert all(r.headers == [("h", b"x")] for r in read)
    assert committed_offset(consumer, inp) == count
