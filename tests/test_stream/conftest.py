"""Fixtures for worker tests: a repository with both demo models, worker processes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import Record, consume
from tests.support import CliProcess

# Quick failure detection so a killed worker's partitions move on in seconds.
FAST_GROUP = [
    "-X",
    "session.timeout.ms=6000",
    "-X",
    "heartbeat.interval.ms=500",
    "-X",
    "transaction.timeout.ms=5000",
]


@pytest.fixture(scope="session")
def stream_repo(tmp_path_factory: pytest.TempPathFactory, model_repo: Path) -> Path:
    """EfficientNet-Lite0 (linked from ``model_repo``) and the tiny tensor model."""
    from streaminfer.models.export.tiny import export_tiny_model

    repo = tmp_path_factory.mktemp("stream-repo")
    (repo / "efficientnet-lite0").symlink_to(model_repo / "efficientnet-lite0")
    export_tiny_model(repo, version=1)
    return repo


@pytest.fixture
def start_worker(bootstrap: str, tmp_path: Path) -> Iterator[Callable[..., CliProcess]]:
    """Start ``streaminfer run`` processes; all are stopped at the end of the test."""
    started: list[CliProcess] = []

    def start(*args: str) -> CliProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        worker = CliProcess("run", "-b", bootstrap, *FAST_GROUP, *args, log_path=log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def outputs(settings: KafkaSettings, topic: str, count: int, timeout: float = 60) -> list[Record]:
    """Exactly ``count`` committed records of ``topic`` (fails if fewer arrive)."""
    records = list(consume(settings, topic, from_beginning=True, count=count, timeout=timeout))
    assert len(records) == count, f"{topic}: expected {count} records, got {len(records)}"
    return records


def decoded(records: list[Record]) -> list[dict]:
    return [json.loads(r.value or b"null") for r in records]


def high_watermark(settings: KafkaSettings, topic: str, partitions: int) -> int:
    """Records (and transaction markers) written to ``topic`` so far, committed or not."""
    consumer = Consumer(settings.client_config(**{"group.id": "watermarks"}))
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        )
    finally:
        consumer.close()


def embedded_worker(
    start: Callable[..., CliProcess],
    repo: Path,
    inp: str,
    out: str,
    *extra: str,
    group: str | None = None,
) -> CliProcess:
    """An embedded-mode worker from ``inp`` to ``out``; image hosts on loopback allowed."""
    return start("--input", inp, "--output", out, "--mode", "embedded", "--repo", str(repo),
                 "--group-id", group or f"g-{inp}", "--allow-network", "127.0.0.0/8",
                 *extra)  # fmt: skip
