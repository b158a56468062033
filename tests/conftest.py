"""Session-wide real parts: one Kafka broker on a free loopback port, fresh topics per test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streaminfer.bench.imagehost import serve_in_thread
from streaminfer.images import samples
from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.broker import LocalBroker
from streaminfer.kafka.config import KafkaSettings
from streaminfer.net import free_port


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


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding the exported EfficientNet-Lite0 as version 1 (exported once)."""
    from streaminfer.models.export import export_efficientnet_lite0

    repo = tmp_path_factory.mktemp("repo")
    export_efficientnet_lite0(repo, version=1)
    return repo


@pytest.fixture(scope="session")
def sample_jpegs() -> dict[str, bytes]:
    """JPEG bytes of the images scikit-image ships: a cat, an espresso, a rocket."""
    return samples.sample_jpegs(("chelsea", "coffee", "rocket"))


@pytest.fixture(scope="session")
def image_host(
    tmp_path_factory: pytest.TempPathFactory, sample_jpegs: dict[str, bytes]
) -> Iterator[str]:
    """A real HTTP server on loopback serving ``<name>.jpg``; yields its base URL."""
    root = tmp_path_factory.mktemp("images")
    for name, jpeg in sample_jpegs.items():
        (root / f"{name}.jpg").write_bytes(jpeg)
    (root / "page.html").write_text("<html>not an image</html>")

    server = serve_in_thread(str(root))
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
