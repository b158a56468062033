"""Produce and consume plain records, as kcat does: the tools behind ``produce`` / ``consume``."""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)

from streaminfer.errors import ConfigError, InfrastructureError
from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.config import KafkaSettings

log = logging.getLogger(__name__)

UNREADABLE_HEADERS = "streaminfer.headers.unreadable"


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp_ms: int | None = None

    @classmethod
    def from_message(cls, msg: Any) -> Record:
        ts_type, ts = msg.timestamp()
        return cls(
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            key=msg.key(),
            value=msg.value(),
            headers=message_headers(msg),  # type: ignore[arg-type]
            timestamp_ms=ts if ts_type else None,
        )


Headers = list[tuple[str, str | bytes | None]]
DeliveryCallback = Callable[[KafkaError | None, Any], None]


_CALL_HEADERS = operator.methodcaller("headers")
"""``message.headers()``, called from C: for a header name that is not UTF-8 the client
returns a list *and* sets an error, which a C caller always checks, raising SystemError
there; a call the interpreter has specialized skips the check, and the error surfaced at
some later call instead."""


def message_headers(message: Any) -> Headers:
    """A consumed message's headers, as a list.  A header name that is not UTF-8 (other
    clients write any bytes) makes confluent-kafka's ``headers()`` raise, for all of the
    record's headers: one header of ours says so in their place, so that the record is
    served rather than stopping whoever reads it."""
    try:
        raw = _CALL_HEADERS(message)
    except SystemError:  # its cause: a UnicodeDecodeError
        return [(UNREADABLE_HEADERS, b"a header name is not UTF-8, so none could be read")]
    if not raw:
        return []
    return list(raw.items()) if isinstance(raw, dict) else list(raw)


def produce_waiting(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    headers: Headers | None = None,
    on_delivery: DeliveryCallback | None = None,
) -> None:
    """``producer.produce``, waiting for room while librdkafka's local queue is full."""
    while True:
        try:
            if on_delivery is None:
                producer.produce(topic, value, key, headers=headers)
            else:
                producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:  # the local queue is full: let deliveries drain, then retry
            producer.poll(0.05)


def split_key(line: bytes, delimiter: bytes | None) -> tuple[bytes | None, bytes]:
    """``key<delim>value`` → (key, value); a line without the delimiter has no key."""
    if delimiter is None or delimiter not in line:
        return None, line
    key, _, value = line.partition(delimiter)
    return key, value


def produce(
    settings: KafkaSettings,
    topic: str,
    values: Iterable[bytes],
    key: bytes | None = None,
    key_delimiter: bytes | None = None,
    headers: Headers | None = None,
) -> int:
    """Write each value as one record and wait until all are acknowledged; returns the count."""
    if not TopicAdmin(settings).exists(topic):
        raise ConfigError(f"unknown topic {topic!r} on {settings.bootstrap_servers}")
    producer = Producer(settings.client_config(**{"enable.idempotence": True}))
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failures.append(err.str())

    count = 0
    for value in values:
        record_key, record_value = split_key(value, key_delimiter)
        produce_waiting(
            producer,
            topic,
            record_value,
            record_key if record_key is not None else key,
            headers,
            on_delivery,
        )
        producer.poll(0)
        count += 1
    remaining = producer.flush(30)
    if failures or remaining:
        reason = failures[0] if failures else f"{remaining} records not acknowledged in 30 s"
        raise InfrastructureError(f"producing to {topic!r} failed: {reason}")
    return count


def _partitions_once_created(admin: TopicAdmin, topic: str, deadline: float | None) -> list[int]:
    waiting = False
    while True:
        try:
            return admin.partitions(topic)
        except ConfigError:
            if deadline is None or time.monotonic() >= deadline:
                raise
        if not waiting:
            log.info("waiting for topic %r to be created", topic)
            waiting = True
        time.sleep(0.2)


def consume(
    settings: KafkaSettings,
    topic: str | list[str],
    from_beginning: bool = False,
    count: int | None = None,
    timeout: float | None = None,
    isolation: str = "read_committed",
) -> Iterator[Record]:
    """Read every partition of ``topic`` (or of several topics) without a consumer group.

    Stops after ``count`` records, or when no record arrived for ``timeout`` seconds. With a
    timeout, a topic not created yet (a worker creates its output topic when it starts) is
    waited for that long; without one, it is an error at once.
    """
    topics = [topic] if isinstance(topic, str) else topic
    admin = TopicAdmin(settings)
    deadline = None if timeout is None else time.monotonic() + timeout
    partitions = {t: _partitions_once_created(admin, t, deadline) for t in topics}
    consumer = Consumer(
        settings.client_config(
            **{
                "group.id": "streaminfer-consume",  # required by librdkafka; never committed
                "enable.auto.commit": False,
                "isolation.level": isolation,
            }
        )
    )
    start = OFFSET_BEGINNING if from_beginning else OFFSET_END
    consumer.assign([TopicPartition(t, p, start) for t in topics for p in partitions[t]])
    seen = 0
    last_record = time.monotonic()
    try:
        while count is None or seen < count:
            msg = consumer.poll(0.2)
            if msg is None:
                if timeout is not None and time.monotonic() - last_record > timeout:
                    return
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise InfrastructureError(f"consuming {topics} failed: {error.str()}")
            last_record = time.monotonic()
            seen += 1
            yield Record.from_message(msg)
    finally:
        consumer.close()
