"""The kcat-like commands and the local broker, driven through the real CLI."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from streaminfer.kafka.broker import LocalBroker
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import consume, produce
from streaminfer.net import free_port
from streaminfer.processes import STREAMINFER, ManagedProcess
from tests.support import run_cli, wait_for


def test_round_trip_through_cli(bootstrap: str, tmp_path: Path) -> None:
    topic = f"cli-{free_port()}"
    created = run_cli("topics", "create", topic, "--partitions", "3", "-b", bootstrap)
    assert created.returncode == 0, created.stderr
    listed = run_cli("topics", "list", "-b", bootstrap)
    assert topic in listed.stdout.split()
    described = run_cli("topics", "describe", topic, "-b", bootstrap)
    assert "3 partitions" in described.stdout

    lines = tmp_path / "in.txt"
    lines.write_text("k1:first\nk2:second\nthird\n")
    produced = run_cli(
        "produce", topic, "--file", str(lines), "-K", ":", "-H", "src=test", "-b", bootstrap
    )
    assert produced.returncode == 0, produced.stderr
    produced = run_cli("produce", topic, "--value", "fourth", "--key", "k4", "-b", bootstrap)
    assert produced.returncode == 0, produced.stderr

    consumed = run_cli(
        "consume", topic, "--from-beginning", "--count", "4", "--format", "json", "-b", bootstrap
    )
    assert consumed.returncode == 0, consumed.stderr
    records = [json.loads(line) for line in consumed.stdout.splitlines()]
    by_value = {r["value"]: r for r in records}
    assert set(by_value) == {"first", "second", "third", "fourth"}
    assert by_value["first"]["key"] == "k1" and by_value["first"]["headers"] == {"src": "test"}
    assert by_value["third"]["key"] is None
    assert by_value["fourth"]["key"] == "k4"
    assert all(r["timestamp"] > 0 and r["offset"] >= 0 for r in records)

    stdin = run_cli("produce", topic, "-b", bootstrap, input=b"from-stdin\n")
    assert stdin.returncode == 0, stdin.stderr
    text = run_cli("consume", topic, "--from-beginning", "--count", "5", "-b", bootstrap)
    assert "from-stdin" in text.stdout

    deleted = run_cli("topics", "delete", topic, "-b", bootstrap)
    assert deleted.returncode == 0, deleted.stderr
    assert topic not in run_cli("topics", "list", "-b", bootstrap).stdout.split()


def test_consume_with_a_timeout_waits_for_a_topic_not_created_yet(
    bootstrap: str, tmp_path: Path
) -> None:
    """A worker creates its output topic when it starts; a reader started first still gets it."""
    topic = f"later-{free_port()}"
    args = ["consume", topic, "--from-beginning", "--count", "1", "--timeout", "60"]
    with ManagedProcess(
        "consume", [*STREAMINFER, *args, "-b", bootstrap], tmp_path / "c.log"
    ) as reader:
        wait_for(lambda: "waiting for topic" in reader.log() or not reader.alive(), what="the wait")
        assert reader.alive(), reader.log()
        assert run_cli("topics", "create", topic, "-b", bootstrap).returncode == 0
        produced = run_cli("produce", topic, "--value", "arrived", "-b", bootstrap)
        assert produced.returncode == 0, produced.stderr
        assert reader.wait(60) == 0, reader.log()
        assert "\tarrived" in reader.log()


def _one_line_error(result: object, needle: str) -> None:
    assert result.returncode != 0  # type: ignore[attr-defined]
    stderr = result.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    assert needle in stderr, stderr
    assert len(stderr.splitlines()) == 1, stderr


def test_bad_input_gives_one_line_errors(bootstrap: str) -> None:
    _one_line_error(run_cli("consume", "no-such-topic", "-b", bootstrap), "unknown topic")
    _one_line_error(
        run_cli("produce", "no-such-topic", "--value", "x", "-b", bootstrap), "unknown topic"
    )
    _one_line_error(
        run_cli("topics", "list", "-b", bootstrap, "-X", "nonsense"), "malformed property"
    )
    _one_line_error(
        run_cli("topics", "list", "-b", bootstrap, "-X", "no.such.property=1"),
        "No such configuration property",
    )
    dead = f"127.0.0.1:{free_port()}"
    _one_line_error(
        run_cli("topics", "list", "-b", dead, "-X", "socket.timeout.ms=2000"), "cannot reach Kafka"
    )


def test_missing_java_is_a_clear_error(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "JAVA_HOME": str(tmp_path / "nojava"), "HOME": str(tmp_path)}
    result = run_cli("kafka", "start", "--data-dir", str(tmp_path / "k"), env=env)
    _one_line_error(result, "Java 17+ is required")


def test_properties_file_and_config_precedence(bootstrap: str, tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text(f"# comment\nbootstrap.servers={bootstrap}\nclient.id=from-file\n")
    listed = run_cli("topics", "list", "-F", str(props))
    assert listed.returncode == 0, listed.stderr


def test_transactions_commit_and_abort(
    kafka_settings: KafkaSettings, topic_factory: Callable[..., str]
) -> None:
    from confluent_kafka import Producer

    topic = topic_factory("txn")
    producer = Producer(kafka_settings.client_config(**{"transactional.id": f"t-{topic}"}))
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"aborted")
    producer.flush()
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, b"committed")
    producer.commit_transaction(30)

    committed = [r.value for r in consume(kafka_settings, topic, True, timeout=3)]
    assert committed == [b"committed"]
    uncommitted = [
        r.value
        for r in consume(kafka_settings, topic, True, timeout=3, isolation="read_uncommitted")
    ]
    assert uncommitted == [b"aborted", b"committed"]


def test_stop_and_start_keep_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_HEAP_OPTS", "-Xms64m -Xmx384m")  # as Kafka's scripts read it
    broker = LocalBroker(tmp_path / "data")
    state = broker.start(port=free_port())
    try:
        flags = Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")
        assert b"-Xmx384m" in flags and b"-Xmx1g" not in flags
        # the default performance options stay
        assert b"-XX:TieredStopAtLevel=1" in flags and b"-XX:G1HeapRegionSize=4m" in flags
        settings = KafkaSettings(bootstrap_servers=state.bootstrap)
        run_cli("topics", "create", "kept", "-b", state.bootstrap)
        assert produce(settings, "kept", [b"one", b"two"]) == 2
        status = run_cli("kafka", "status", "--data-dir", str(broker.data_dir))
        assert status.returncode == 0 and "running" in status.stdout
        assert broker.stop()
        down = run_cli("kafka", "status", "--data-dir", str(broker.data_dir))
        assert down.returncode == 1 and "not running" in down.stdout
        again = broker.start()
        assert again.cluster_id == state.cluster_id and again.port == state.port
        values = [r.value for r in consume(settings, "kept", True, count=2, timeout=20)]
        assert values == [b"one", b"two"]
    finally:
        broker.stop()


def _time_wait_on(port: int) -> bool:
    """Whether a TCP connection in TIME_WAIT holds ``port`` as its local port (IPv4 or IPv6)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "06":
                return True
    return False


def test_kafka_stop_then_start_on_the_same_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stopped broker closes its clients' connections first: TIME_WAIT must not block it."""
    monkeypatch.setenv("KAFKA_HEAP_OPTS", "-Xms64m -Xmx384m")
    port, data = free_port(), ["--data-dir", str(tmp_path / "data")]
    started = run_cli("kafka", "start", "--port", str(port), *data, timeout=180)
    assert started.returncode == 0, started.stderr
    try:
        with socket.create_connection(("127.0.0.1", port)) as client:
            stopped = run_cli("kafka", "stop", *data, timeout=120)
            assert stopped.returncode == 0, stopped.stderr
            client.settimeout(30)
            assert client.recv(1) == b""  # the broker hung up: its side of the port is closing
        wait_for(lambda: _time_wait_on(port), what=f"a TIME_WAIT connection on port {port}")
        again = run_cli("kafka", "start", "--port", str(port), *data, timeout=180)
        assert again.returncode == 0, again.stderr
        assert run_cli("topics", "list", "-b", f"127.0.0.1:{port}").returncode == 0
    finally:
        run_cli("kafka", "stop", *data, timeout=120)


def test_a_start_waits_a_moment_for_its_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker killed a moment ago holds its listener a little after it has exited; a start
    then waits for the port rather than refusing it as in use."""
    monkeypatch.setenv("KAFKA_HEAP_OPTS", "-Xms64m -Xmx384m")
    port = free_port()
    held = socket.create_server(("127.0.0.1", port))
    release = threading.Timer(0.5, held.close)
    release.start()
    broker = LocalBroker(tmp_path / "data")
    try:
        state = broker.start(port=port)
        assert state.port == port
        assert run_cli("topics", "list", "-b", state.bootstrap).returncode == 0
    finally:
        release.cancel()
        held.close()
        broker.stop()
