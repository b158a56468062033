"""Model deployments through a compacted Kafka topic: one event moves a whole fleet.

The control topic (default ``streaminfer.models``, ``cleanup.policy=compact``) is keyed by
model name, and each value is that model's *whole* desired state (:class:`ModelState`),
never a delta, so compaction keeps exactly what a newcomer needs.  ``streaminfer models
publish`` reads the latest state, applies one change and writes the next state; a
``ControlFollower`` (``streaminfer.models.follower``) in every worker and server installs
what the state asks for into its repository and lets its registry switch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from pydantic import ValidationError

from streaminfer.errors import ConfigError, InfrastructureError
from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import produce
from streaminfer.models.control_state import ModelState, first_problem

log = logging.getLogger(__name__)

_BATCH = 1000  # records read together (a follower applies them with one registry reload)
_NOT_READY = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART)


# -- the topic -----------------------------------------------------------------------------
def ensure_control_topic(kafka: KafkaSettings, topic: str) -> None:
    """Create the control topic, compacted, unless it exists."""
    admin = TopicAdmin(kafka)
    if not admin.exists(topic):  # also the clear "cannot reach Kafka" error
        config = {"cleanup.policy": "compact"}
        admin.create(topic, partitions=1, config=config, if_not_exists=True)


@dataclass
class Update:
    """One record of the control topic: a model's state, or why it has none."""

    model: str
    state: ModelState | None  # None: a tombstone, or an invalid value (``error`` says why)
    error: str = ""


def parse_update(key: bytes | None, value: bytes | None) -> Update:
    model = (key or b"").decode(errors="replace")
    if value is None:
        return Update(model, None)
    try:
        state = ModelState.model_validate_json(value)
    except ValidationError as exc:
        return Update(model, None, f"invalid state: {first_problem(exc)}")
    except ConfigError as exc:  # a name check
        return Update(model, None, f"invalid state: {exc}")
    if state.model != model:
        return Update(model, None, f"the record's key {model!r} is not its model {state.model!r}")
    return Update(model, state)


class ControlReader:
    """Reads every partition of the control topic from the beginning, without a group.

    ``current`` turns true once every partition was read up to the end it had when the
    reader started.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, timeout: float = 10.0) -> None:
        ensure_control_topic(kafka, topic)
        partitions = TopicAdmin(kafka).partitions(topic)
        self.topic = topic
        self._consumer = Consumer(
            kafka.client_config(
                **{
                    "group.id": "streaminfer-control",  # required by librdkafka; never committed
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                }
            )
        )
        try:
            self._ends = {p: self._end(TopicPartition(topic, p), timeout) for p in partitions}
        except BaseException:
            self._consumer.close()
            raise
        self._ends = {p: end for p, end in self._ends.items() if end > 0}
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])

    def _end(self, partition: TopicPartition, timeout: float) -> int:
        """The partition's end offset, 0 if it is empty; a new topic's leader may lag a moment."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                low, high = self._consumer.get_watermark_offsets(partition, timeout)
                return int(high) if high > low else 0
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() and error.code() not in _NOT_READY:
                    raise InfrastructureError(f"cannot read {self.topic!r}: {error.str()}") from exc
                if time.monotonic() > deadline:
                    raise InfrastructureError(f"cannot read {self.topic!r}: {error.str()}") from exc
                time.sleep(0.05)  # backoff while the new partition gets its leader

    @property
    def current(self) -> bool:
        return not self._ends

    def read(self, timeout: float) -> list[Update]:
        """The records that arrive within ``timeout`` seconds, oldest first."""
        updates = []
        messages = self._consumer.consume(1, timeout)
        if messages:  # then whatever else has arrived, without waiting
            messages += self._consumer.consume(_BATCH, 0)
        for msg in messages:
            error, partition, offset = msg.error(), msg.partition(), msg.offset()
            assert partition is not None and offset is not None  # set on every consumed message
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                self._ends.pop(partition, None)
            elif error is not None:
                if error.fatal():
                    raise InfrastructureError(f"reading {self.topic!r} failed: {error.str()}")
                log.warning("reading %s: %s", self.topic, error.str())
            else:
                if offset + 1 >= self._ends.get(partition, 0):
                    self._ends.pop(partition, None)
                updates.append(parse_update(msg.key(), msg.value()))
        return updates

    def close(self) -> None:
        self._consumer.close()


def read_latest_state(
    kafka: KafkaSettings, topic: str, model: str, timeout: float = 30.0
) -> ModelState | None:
    """The last valid state of ``model`` on the topic (None if it has none)."""
    reader = ControlReader(kafka, topic)
    deadline = time.monotonic() + timeout
    state = None
    try:
        while not reader.current:
            if time.monotonic() > deadline:
                raise InfrastructureError(f"could not read {topic!r} to its end in {timeout:.0f} s")
            for update in reader.read(0.5):
                if update.model == model and not update.error:  # invalid values are skipped
                    state = update.state  # None after a tombstone
    finally:
        reader.close()
    return state


def publish_state(kafka: KafkaSettings, topic: str, state: ModelState) -> None:
    """Write the state keyed by model and wait for the broker's acknowledgement."""
    ensure_control_topic(kafka, topic)
    produce(kafka, topic, [state.model_dump_json().encode()], key=state.model.encode())
