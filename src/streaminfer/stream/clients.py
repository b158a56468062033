"""The worker's Kafka clients: the user's librdkafka properties, plus what the worker requires.

Only what correctness needs is forced (manual offsets, read_committed, idempotence, a
transactional id under exactly-once); everything else is a default the user's ``-X``
properties override, so every Kafka user's knowledge still applies.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer

from streaminfer.errors import InfrastructureError
from streaminfer.kafka.admin import GroupInfo
from streaminfer.kafka.config import KafkaSettings
from streaminfer.stream.settings import WorkerSettings

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes
ASSIGNMENT = "partition.assignment.strategy"
INCREMENTAL = "cooperative-sticky"
EAGER = "range,roundrobin"  # librdkafka's default


def assignment_strategy(
    kafka: KafkaSettings,
    group_id: str,
    describe: Callable[[str], GroupInfo],
    settle_s: float = 30.0,
) -> str | None:
    """The partition assignment strategy a member joins its group with; None: the user's.

    Incremental rebalances revoke only the partitions that move, so a member that dies or
    joins holds up only those, where an eager one stops the whole group until the dead
    member's session ends. But a group's members must agree on one: a group without
    members is started incremental, and a member joining a running group takes what its
    members use (eager for one started by an older streaminfer).
    """
    if {ASSIGNMENT, "group.protocol"} & kafka.properties.keys():
        return None
    deadline = time.monotonic() + settle_s
    while True:
        try:
            found = describe(group_id)
        except InfrastructureError as exc:
            log.warning("%s: joining with librdkafka's default assignment (%s)", exc, EAGER)
            return EAGER
        if found.members == 0:
            chosen = INCREMENTAL
        elif found.incremental_protocol:
            log.info("group %s uses KIP-848's group protocol: librdkafka joins it", group_id)
            return None
        elif found.settled:
            chosen = INCREMENTAL if found.assignor == INCREMENTAL else EAGER
        elif time.monotonic() < deadline:
            time.sleep(0.2)  # its members are agreeing on an assignor: ask again
            continue
        else:
            log.warning("group %s still rebalancing after %.0f s", group_id, settle_s)
            chosen = EAGER
        log.info(
            "group %s: %d members%s; partition assignment %s",
            group_id,
            found.members,
            f" using {found.assignor}" if found.assignor else "",
            chosen,
        )
        return chosen


def consumer_config(
    settings: WorkerSettings, kafka: KafkaSettings, assignment: str | None = None
) -> dict[str, Any]:
    """``assignment``: the partition assignment strategy (:func:`assignment_strategy`)."""
    return kafka.client_config(
        {"auto.offset.reset": "earliest", **({ASSIGNMENT: assignment} if assignment else {})},
        **{
            "group.id": settings.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
        },
    )


def consumer(
    settings: WorkerSettings, kafka: KafkaSettings, assignment: str | None = None
) -> Consumer:
    return Consumer(consumer_config(settings, kafka, assignment))


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
