"""Session-wide real parts: one Kafka broker on a free loopback port, fresh topics per test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.broker import LocalBroker, free_port
from streaminfer.kafka.config import KafkaSettings


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    broker = LocalBroker(tmp_path_factory.mktemp("kafka"))
    broker.start(port=free_port())
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def bootstrap(kafka_broker: LocalBroker) -> str:
    state = kafka_broker.state()
    assert state is not None
    return state.bootstrap


@pytest.fixture(scope="session")
def kafka_settings(bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=bootstrap)


@pytest.fixture
def topic_factory(kafka_settings: KafkaSettings) -> Callable[..., str]:
    """Create a topic with a name no other test uses; returns the name."""
    admin = TopicAdmin(kafka_settings)

    def create(prefix: str = "t", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        admin.create(name, partitions=partitions)
        return name

    return create
