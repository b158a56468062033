"""Against a cluster of three local brokers: the topics streaminfer makes take the
cluster's replication, as ``kafka-topics.sh`` would give them, not one replica.
(``tests/test_bench/test_kill_soak.py`` restarts its nodes under a worker.)"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.cluster import LocalCluster
from streaminfer.kafka.config import KafkaSettings
from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.processes import ManagedProcess
from tests.support import run_cli
from tests.workers import decoded, embedded_worker, outputs, send_tiny_rows


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    nodes = LocalCluster(tmp_path_factory.mktemp("cluster"), nodes=3)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def bootstrap(cluster: LocalCluster) -> str:
    """The cluster in place of the session's broker, for ``start_worker``."""
    return cluster.bootstrap


def test_the_topics_streaminfer_makes_have_a_replica_on_every_broker(
    bootstrap: str, tmp_path: Path, start_worker: Callable[..., ManagedProcess]
) -> None:
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    inp, out = f"in-{uuid.uuid4().hex[:8]}", f"out-{uuid.uuid4().hex[:8]}"
    created = run_cli("topics", "create", inp, "--partitions", "2", "-b", bootstrap)
    assert created.returncode == 0, created.stderr
    one = f"one-{uuid.uuid4().hex[:8]}"
    asked = run_cli("topics", "create", one, "--replication-factor", "1", "-b", bootstrap)
    assert asked.returncode == 0, asked.stderr

    export_tiny_model(tmp_path / "repo", version=1)
    embedded_worker(start_worker, tmp_path / "repo", inp, out)  # makes out and its dead letters'
    send_tiny_rows(settings, inp, 20)
    assert sorted(int(d["id"]) for d in decoded(outputs(settings, out, 20))) == list(range(20))

    admin = TopicAdmin(settings)
    for topic in (inp, out, f"{inp}.dlq"):
        partitions = admin.describe(topic).partitions
        assert len(partitions) == 2, topic  # the input's, for the worker's outputs
        assert all(sorted(p.replicas) == [1, 2, 3] for p in partitions), (topic, partitions)
    assert [len(p.replicas) for p in admin.describe(one).partitions] == [1]
