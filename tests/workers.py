"""Worker test helpers: ``streaminfer run`` arguments, and reading what a worker wrote."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import Record, consume, produce
from streaminfer.models.export.tiny import tiny_reference
from streaminfer.processes import ManagedProcess

# Quick failure detection so a killed worker's partitions move on in seconds.
FAST_GROUP = [
    "-X",
    "session.timeout.ms=3000",
    "-X",
    "heartbeat.interval.ms=500",
    "-X",
    "transaction.timeout.ms=5000",
]


def outputs(settings: KafkaSettings, topic: str, count: int, timeout: float = 60) -> list[Record]:
    """Exactly ``count`` committed records of ``topic`` (fails if fewer arrive)."""
    records = list(consume(settings, topic, from_beginning=True, count=count, timeout=timeout))
    assert len(records) == count, f"{topic}: expected {count} records, got {len(records)}"
    return records


def tiny_record(i: int) -> bytes:
    """Tensor record ``i`` for the tiny model: its id is ``i``, its row ``[i, 0, 0, 0]``."""
    return json.dumps({"id": str(i), "model": "tiny", "inputs": {"x": [[i, 0, 0, 0]]}}).encode()


def produce_keyed(settings: KafkaSettings, topic: str, pairs: list[tuple[bytes, bytes]]) -> None:
    """Each (key, value) as one record, through one producer: an idempotent producer takes
    0.5-1 s to start (librdkafka retries its producer id on a 500 ms timer)."""
    produce(settings, topic, [key + b"\t" + value for key, value in pairs], key_delimiter=b"\t")


def decoded(records: list[Record]) -> list[dict]:
    return [json.loads(r.value or b"null") for r in records]


def send_tiny_rows(settings: KafkaSettings, topic: str, count: int) -> np.ndarray:
    """``count`` tiny-model records of one distinct row each, ids ``0..count-1``; their rows."""
    rows = np.arange(count * 4, dtype=np.float32).reshape(count, 4) / 100
    values = [
        json.dumps({"id": str(i), "model": "tiny", "inputs": {"x": [row.tolist()]}}).encode()
        for i, row in enumerate(rows)
    ]
    produce(settings, topic, values)
    return rows


def assert_tiny_outputs(settings: KafkaSettings, topic: str, rows: np.ndarray) -> None:
    """Every row's output once, in order, and the tiny model's answer to it."""
    docs = decoded(outputs(settings, topic, len(rows), timeout=120))
    assert [d["id"] for d in docs] == [str(i) for i in range(len(rows))]
    got = np.array([d["outputs"]["y"][0] for d in docs])
    np.testing.assert_allclose(got, tiny_reference(rows), rtol=1e-6)


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
    start: Callable[..., ManagedProcess],
    repo: Path,
    inp: str,
    out: str,
    *extra: str,
    group: str | None = None,
    prefix: Sequence[str] = (),
) -> ManagedProcess:
    """An embedded-mode worker from ``inp`` to ``out``; image hosts on loopback allowed;
    ``prefix``: a command that runs it (e.g. in a cgroup)."""
    return start("--input", inp, "--output", out, "--mode", "embedded", "--repo", str(repo),
                 "--group-id", group or f"g-{inp}", "--allow-network", "127.0.0.0/8",
                 *extra, prefix=prefix)  # fmt: skip
