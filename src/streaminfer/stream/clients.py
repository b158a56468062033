"""The worker's Kafka clients: the user's librdkafka properties, plus what the worker requires.

Only what correctness needs is forced (manual offsets, read_committed, idempotence, a
transactional id under exactly-once); everything else is a default the user's ``-X``
properties override, so every Kafka user's knowledge still applies.
"""

from __future__ import annotations

import uuid
from typing import Any

from confluent_kafka import Consumer, Producer

from streaminfer.kafka.config import KafkaSettings
from streaminfer.stream.settings import WorkerSettings

DEFAULT_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes


def consumer_config(settings: WorkerSettings, kafka: KafkaSettings) -> dict[str, Any]:
    return kafka.client_config(
        {"auto.offset.reset": "earliest"},
        **{
            "group.id": settings.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
        },
    )


def consumer(settings: WorkerSettings, kafka: KafkaSettings) -> Consumer:
    return Consumer(consumer_config(settings, kafka))


def producer_config(settings: WorkerSettings, kafka: KafkaSettings) -> dict[str, Any]:
    defaults: dict[str, Any] = {"linger.ms": 5}
    required: dict[str, Any] = {"enable.idempotence": True}
    if settings.exactly_once:
        required["transactional.id"] = f"streaminfer-{settings.group_id}-{uuid.uuid4().hex[:12]}"
        defaults |= {
            # A killed worker's open transaction blocks read_committed readers of the
            # output until it times out: keep that short, as Kafka Streams does.
            "transaction.timeout.ms": 10000,
            # The broker answers CONCURRENT_TRANSACTIONS until the previous commit's
            # markers are written; librdkafka's default 100 ms retry backoff made every
            # commit cost 100 ms, which capped the whole loop.
            "retry.backoff.ms": 5,
            "retry.backoff.max.ms": 50,
        }
    return kafka.client_config(defaults, **required)


def producer(settings: WorkerSettings, kafka: KafkaSettings) -> Producer:
    return Producer(producer_config(settings, kafka))


def shadow_producer(kafka: KafkaSettings) -> Producer:
    """Shadow output is for comparison, not part of the exactly-once stream."""
    return Producer(kafka.client_config(**{"enable.idempotence": True, "linger.ms": 20}))


def max_message_bytes(config: dict[str, Any]) -> int:
    """The largest record this producer config lets through."""
    return int(config.get("message.max.bytes", DEFAULT_MAX_BYTES))
