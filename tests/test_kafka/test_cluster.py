"""Against a cluster of three local brokers, started by ``streaminfer kafka start --nodes
3 --security sasl_ssl --authorizer``: the topics streaminfer makes take the cluster's
replication, as ``kafka-topics.sh`` would give them, not one replica; a node stopped and
started again by the command while the others serve, logins by password and by token
going on.  (``tests/test_bench/test_kill_soak.py`` restarts a plaintext cluster's nodes
under a worker.)"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.cluster import LocalCluster
from streaminfer.kafka.config import KafkaSettings, read_properties_file
from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.net import free_port
from streaminfer.processes import ManagedProcess, ended
from tests.support import run_cli, wait_for
from tests.workers import decoded, embedded_worker, outputs, send_tiny_rows


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    folder = tmp_path_factory.mktemp("cluster")
    try:
        started = run_cli("kafka", "start", "--nodes", "3", "--port", str(free_port(count=3)),
                          "--security", "sasl_ssl", "--authorizer", "--data-dir", str(folder),
                          timeout=300)  # fmt: skip
        assert started.returncode == 0, started.stderr
        nodes = LocalCluster(folder)
        assert started.stdout.splitlines()[-1] == nodes.bootstrap
        assert len(nodes.bootstrap.split(",")) == 3
        assert f"-F {nodes.brokers[0].secrets.client_properties}" in started.stdout
        yield nodes
    finally:
        stopped = run_cli("kafka", "stop", "--data-dir", str(folder), timeout=300)
        assert "3 of 3 nodes were running" in stopped.stdout, stopped.stdout + stopped.stderr


@pytest.fixture
def bootstrap(cluster: LocalCluster) -> str:
    """The cluster in place of the session's broker, for ``start_worker``."""
    return cluster.bootstrap


def _properties(cluster: LocalCluster, login: str = "password") -> Path:
    """The admin user's properties file (every node has node 1's secrets)."""
    secrets = cluster.brokers[0].secrets
    return secrets.client_properties if login == "password" else secrets.oauth_properties


def _settings(cluster: LocalCluster) -> KafkaSettings:
    properties = read_properties_file(_properties(cluster))
    return KafkaSettings(bootstrap_servers=cluster.bootstrap, properties=properties)


def _args(cluster: LocalCluster, login: str = "password") -> list[str]:
    return ["-b", cluster.bootstrap, "-F", str(_properties(cluster, login))]


def test_the_topics_streaminfer_makes_have_a_replica_on_every_broker(
    cluster: LocalCluster, tmp_path: Path, start_worker: Callable[..., ManagedProcess]
) -> None:
    settings = _settings(cluster)
    inp, out = f"in-{uuid.uuid4().hex[:8]}", f"out-{uuid.uuid4().hex[:8]}"
    created = run_cli("topics", "create", inp, "--partitions", "2", *_args(cluster))
    assert created.returncode == 0, created.stderr
    one = f"one-{uuid.uuid4().hex[:8]}"
    asked = run_cli("topics", "create", one, "--replication-factor", "1", *_args(cluster))
    assert asked.returncode == 0, asked.stderr

    export_tiny_model(tmp_path / "repo", version=1)
    token = ("-F", str(_properties(cluster, "token")))
    embedded_worker(start_worker, tmp_path / "repo", inp, out, *token)  # makes out and its DLQ
    send_tiny_rows(settings, inp, 20)
    assert sorted(int(d["id"]) for d in decoded(outputs(settings, out, 20))) == list(range(20))

    admin = TopicAdmin(settings)
    for topic in (inp, out, f"{inp}.dlq"):
        partitions = admin.describe(topic).partitions
        assert len(partitions) == 2, topic  # the input's, for the worker's outputs
        assert all(sorted(p.replicas) == [1, 2, 3] for p in partitions), (topic, partitions)
    assert [len(p.replicas) for p in admin.describe(one).partitions] == [1]


def test_a_node_stopped_by_the_command_leaves_the_others_serving_and_starts_again(
    cluster: LocalCluster,
) -> None:
    """Node 1 made the secrets that the others were given copies of: without it, both
    logins go on, and so do the ACLs."""
    folder = str(cluster.brokers[0].data_dir.parent)
    topic = f"t-{uuid.uuid4().hex[:8]}"
    created = run_cli("topics", "create", topic, "--partitions", "3", *_args(cluster))
    assert created.returncode == 0, created.stderr

    stopped = run_cli("kafka", "stop", "--node", "1", "--data-dir", folder, timeout=180)
    assert stopped.stdout.strip() == "node 1 stopped", stopped.stderr
    status = run_cli("kafka", "status", "--data-dir", folder)
    assert status.returncode == 1
    lines = status.stdout.splitlines()
    assert lines[1].startswith("node 2: running") and lines[2].startswith("node 3: running")
    assert lines[0].startswith("node 1: not running")
    assert re.fullmatch(r"\d+ of \d+ partitions lack a leader or a replica in sync", lines[3])
    # node 1 held a replica of each of the topic's partitions: each lacks it, writes go on
    admin = TopicAdmin(_settings(cluster))
    in_sync = lambda: [sorted(p.isrs) for p in admin.describe(topic).partitions]  # noqa: E731
    wait_for(lambda: in_sync() == [[2, 3]] * 3, 30, "node 1 out of the in-sync replicas")
    assert cluster.lagging()[0] >= 3
    produced = run_cli("produce", topic, "--value", "a", "--value", "b", *_args(cluster, "token"))
    assert produced.returncode == 0, produced.stderr
    read = run_cli("consume", topic, "--from-beginning", "--count", "2", "--timeout", "30",
                   "--format", "text", *_args(cluster))  # fmt: skip
    assert sorted(line.rsplit("\t", 1)[1] for line in read.stdout.splitlines()) == ["a", "b"]
    key = cluster.brokers[0].secrets.token_signer
    stranger = ["-X", f"sasl.oauthbearer.config=key={key} subject=stranger"]
    refused = run_cli("produce", topic, "--value", "c", *_args(cluster, "token"), *stranger)
    # no ACL lets the stranger describe the topic, so it is hidden
    assert refused.returncode == 2 and f"unknown topic {topic!r}" in refused.stderr, refused.stderr

    started = run_cli("kafka", "start", "--data-dir", folder, timeout=300)
    assert started.returncode == 0, started.stderr
    status = run_cli("kafka", "status", "--data-dir", folder)
    assert status.returncode == 0, status.stdout
    assert status.stdout.splitlines()[3].startswith("0 of ")
    assert in_sync() == [[1, 2, 3]] * 3


def test_a_cluster_is_refused_what_it_cannot_be(cluster: LocalCluster, tmp_path: Path) -> None:
    """Checked before any node is made or stopped."""
    folder = str(cluster.brokers[0].data_dir.parent)
    for args, said in [
        (["start", "--nodes", "2", "--data-dir", folder], "has 3 nodes, not 2"),
        (["stop", "--node", "4", "--data-dir", folder], "no such cluster node"),
        (["start", "--port", "1", "--data-dir", folder], "listen from port"),
        (["start", "--security", "plaintext", "--data-dir", folder], "with --security sasl_ssl"),
        (["start", "--no-authorizer", "--data-dir", folder], "stop every node"),
        (["start", "--nodes", "3", "--foreground", "--data-dir", str(tmp_path / "f")],
         "runs in the background"),
    ]:  # fmt: skip
        refused = run_cli("kafka", *args)
        assert refused.returncode == 2 and said in refused.stderr, (args, refused.stderr)
    assert run_cli("kafka", "status", "--data-dir", folder).returncode == 0

    with socket.socket() as taken:  # the third node's port
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        refused = run_cli("kafka", "start", "--nodes", "3", "--port", str(port - 2),
                          "--data-dir", str(tmp_path / "new"))  # fmt: skip
    assert refused.returncode == 2 and f"{port} is in use" in refused.stderr, refused.stderr
    assert not (tmp_path / "new" / "node-1").exists()


def test_a_node_still_shutting_down_after_most_have_ended_is_killed(tmp_path: Path) -> None:
    """One node once held ``kafka stop`` a whole minute, unable to finish its shutdown
    with no quorum left.  Stand-ins for the nodes (their command lines name kafka.Kafka,
    as the stop checks): two end at SIGTERM, the third ignores it."""
    ignore = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    nodes = []
    for node in (1, 2, 3):
        code = (ignore if node == 3 else "pass") + "; print(flush=True); input()"
        process = subprocess.Popen([sys.executable, "-c", code, "kafka.Kafka"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   start_new_session=True)  # fmt: skip
        assert process.stdout is not None and process.stdout.readline() == b"\n"  # set up
        nodes.append(process)
        folder = tmp_path / f"node-{node}"
        folder.mkdir()
        state = {"cluster_id": "c", "port": 1, "controller_port": 2, "pid": process.pid}
        (folder / "broker.json").write_text(json.dumps(state))
    try:
        assert LocalCluster(tmp_path).stop(after_quorum_s=0.5) == [3]
        # The third ignores SIGTERM: only the kill ends it.  (The stop reaps them, so
        # their exit statuses are its, not these Popen objects'.)
        assert ended(*(process.pid for process in nodes), timeout=30)
    finally:
        for process in nodes:
            process.kill()
