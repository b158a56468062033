"""Topic administration: thin wrappers over confluent-kafka's AdminClient with clear errors.

Every Kafka-facing command asks for metadata through here first, so this is where a bad
password or an untrusted certificate is found: within seconds, as a ``ConfigError``.
"""

from __future__ import annotations

import builtins
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    ConsumerGroupState,
    ConsumerGroupType,
    KafkaError,
    KafkaException,
    TopicCollection,
)
from confluent_kafka.admin import AclOperation, AdminClient, ConfigResource, NewTopic

from streaminfer.errors import ConfigError, InfrastructureError
from streaminfer.kafka.access import AccessErrors
from streaminfer.kafka.config import KafkaSettings

_SLICE_S = 0.5  # how late a refused login is noticed; the client keeps connecting meanwhile
_COORDINATOR_NOT_READY = (
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
)


@dataclass
class PartitionInfo:
    id: int
    leader: int
    replicas: list[int]
    isrs: list[int]


@dataclass
class TopicInfo:
    name: str
    partitions: list[PartitionInfo]
    config: dict[str, str]


@dataclass
class GroupInfo:
    members: int
    settled: bool  # no rebalance under way: ``assignor`` is the one its members agreed on
    assignor: str  # the members' partition assignment strategy; "" while they rebalance
    incremental_protocol: bool  # KIP-848's group protocol (group.protocol=consumer)


class TopicAdmin:
    def __init__(self, settings: KafkaSettings, timeout: float = 10.0) -> None:
        self._refusals = AccessErrors()
        self._admin = AdminClient(settings.client_config(error_cb=self._refusals))
        self._bootstrap = settings.bootstrap_servers
        self._timeout = timeout

    def _metadata(self, topic: str | None = None) -> Any:
        """The cluster's metadata; asked for in short slices, with the client's error
        callback run between them: a refused login raises at once, not after the timeout."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                return self._admin.list_topics(topic=topic, timeout=_SLICE_S)
            except KafkaException as exc:
                self._admin.poll(0)  # runs the error callback
                self._refusals.check()
                if time.monotonic() >= deadline:
                    raise InfrastructureError(
                        f"cannot reach Kafka at {self._bootstrap}: {exc.args[0].str()}"
                    ) from exc

    def names(self, include_internal: bool = False) -> list[str]:
        topics = self._metadata().topics
        return sorted(t for t in topics if include_internal or not t.startswith("__"))

    def exists(self, name: str) -> bool:
        return name in self._metadata().topics

    def require_visible(self, name: str, what: str) -> None:
        """Fail unless topic ``name`` (``what``: "input topic") is there for this client.

        Kafka leaves out of a listing every topic the user lacks DESCRIBE on, so a missing
        topic may be one the user may not see; asked by name, the broker says which."""
        if self.exists(name):
            return
        [future] = self._admin.describe_topics(
            TopicCollection([name]), request_timeout=self._timeout
        ).values()
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise ConfigError(
                    f"{what} {name!r} is hidden from this client's user: grant it READ on "
                    "the topic (Kafka also answers so for a topic that does not exist)"
                ) from None
        raise ConfigError(f"{what} {name!r} does not exist on {self._bootstrap}")

    def create(
        self,
        name: str,
        partitions: int = 1,
        replication_factor: int | None = None,
        config: dict[str, str] | None = None,
        if_not_exists: bool = False,
    ) -> bool:
        """Create a topic and wait for it; returns False if it existed and ``if_not_exists``.

        ``replication_factor=None`` takes the cluster's ``default.replication.factor``, as
        ``kafka-topics.sh`` does: a worker's output topic on a three-broker cluster gets the
        replicas the operator chose, not one."""
        replicas = -1 if replication_factor is None else replication_factor  # -1: the default
        futures = self._admin.create_topics(
            [NewTopic(name, partitions, replicas, config=config or {})],
            operation_timeout=self._timeout,
        )
        try:
            futures[name].result(timeout=self._timeout)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS and if_not_exists:
                return False
            raise ConfigError(f"cannot create topic {name!r}: {error.str()}") from exc
        self._await_listed(name)
        return True

    def _await_listed(self, name: str) -> None:
        """Until the topic just created is in the metadata: in a cluster of several brokers,
        the one answering may learn of it some moments after the controller said done.  At
        most the admin's timeout: a user allowed to create a topic but not to describe it
        never sees it listed."""
        deadline = time.monotonic() + self._timeout
        while not self.exists(name) and time.monotonic() < deadline:
            time.sleep(0.05)

    def ensure(self, names: builtins.list[str], partitions: int = 1) -> None:
        """Create the topics that are missing; a user without CREATE may use existing ones."""
        existing = self._metadata().topics
        for name in names:
            if name not in existing:
                self.create(name, partitions=partitions, if_not_exists=True)

    def require_write(self, names: builtins.list[str]) -> None:
        """Fail if the cluster enforces ACLs and this client's user may not write to a topic."""
        if not names:
            return
        futures = self._admin.describe_topics(
            TopicCollection(names),
            include_authorized_operations=True,
            request_timeout=self._timeout,
        )
        for name, future in futures.items():
            try:
                allowed = future.result().authorized_operations
            except KafkaException as exc:
                raise InfrastructureError(
                    f"cannot describe topic {name!r}: {exc.args[0].str()}"
                ) from exc
            if allowed is not None and AclOperation.WRITE not in allowed:
                granted = ", ".join(sorted(op.name for op in allowed)) or "nothing"
                raise ConfigError(
                    f"this client's user may not write to topic {name!r} (its ACLs allow "
                    f"{granted}): grant it WRITE"
                )

    def check(self) -> None:
        """Fail now if the cluster is out of reach or refuses this client's login."""
        self._metadata()

    def delete(self, name: str) -> None:
        self._require(name)
        futures = self._admin.delete_topics([name], operation_timeout=self._timeout)
        try:
            futures[name].result(timeout=self._timeout)
        except KafkaException as exc:
            raise ConfigError(f"cannot delete topic {name!r}: {exc.args[0].str()}") from exc

    def describe(self, name: str) -> TopicInfo:
        self._require(name)
        topic = self._metadata(name).topics[name]
        partitions = [
            PartitionInfo(p.id, p.leader, list(p.replicas), list(p.isrs))
            for p in sorted(topic.partitions.values(), key=lambda p: p.id)
        ]
        entries = self._configs(name)
        config = {
            k: v.value for k, v in entries.items() if not v.is_default and v.value is not None
        }
        return TopicInfo(name, partitions, config)

    def _configs(self, name: str) -> dict[str, Any]:
        """The topic's config entries, asked again while the broker answering does not know
        the topic yet: in a cluster, a new topic reaches each broker some moments apart."""
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        deadline = time.monotonic() + self._timeout
        while True:
            future = self._admin.describe_configs([resource])[resource]
            try:
                return future.result(timeout=self._timeout)  # type: ignore[no-any-return]
            except KafkaException as exc:
                unknown = exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
                if not unknown or time.monotonic() >= deadline:
                    raise
            time.sleep(0.1)

    def max_message_bytes(self, name: str) -> int:
        """The largest record the topic accepts (its ``max.message.bytes``, default included)."""
        try:
            entries = self._configs(name)
        except KafkaException as exc:
            raise InfrastructureError(
                f"cannot read the config of topic {name!r}: {exc.args[0].str()}"
            ) from exc
        return int(entries["max.message.bytes"].value)

    def group(self, group_id: str) -> GroupInfo:
        """The consumer group as the broker describes it now (a group no one joined yet is
        reported without members). Asked again while its coordinator is still loading, as
        on a new cluster until the offsets topic is ready."""
        deadline = time.monotonic() + self._timeout
        while True:
            future = self._admin.describe_consumer_groups([group_id], request_timeout=self._timeout)
            try:
                found = future[group_id].result()
                break
            except KafkaException as exc:
                if exc.args[0].code() not in _COORDINATOR_NOT_READY or time.monotonic() >= deadline:
                    raise InfrastructureError(
                        f"cannot describe consumer group {group_id!r}: {exc.args[0].str()}"
                    ) from exc
            time.sleep(0.2)
        rebalancing = (
            ConsumerGroupState.PREPARING_REBALANCING,
            ConsumerGroupState.COMPLETING_REBALANCING,
        )
        return GroupInfo(
            members=len(found.members),
            settled=found.state not in rebalancing,
            assignor=found.partition_assignor or "",
            incremental_protocol=found.type == ConsumerGroupType.CONSUMER,
        )

    def partitions(self, name: str) -> builtins.list[int]:
        self._require(name)
        return sorted(self._metadata(name).topics[name].partitions)

    def _require(self, name: str) -> None:
        if not self.exists(name):
            raise ConfigError(f"unknown topic {name!r} on {self._bootstrap}")
