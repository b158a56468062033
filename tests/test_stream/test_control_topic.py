"""Embedded workers follow model deployments published to the control topic, and stop at
once when told to while a deployment is still downloading."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import consume, produce
from streaminfer.models.control import publish_state, read_latest_state
from streaminfer.models.control_state import VersionSource, deploy_state
from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.processes import ManagedProcess
from tests.model_hosts import ArchiveHost
from tests.support import run_cli, wait_for
from tests.workers import decoded, embedded_worker, outputs

RECORD = json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}}).encode()


def test_worker_switches_versions_rejects_corrupt_ones_and_late_workers_catch_up(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    bootstrap: str,
    tmp_path: Path,
) -> None:
    staging = tmp_path / "staging"
    for version in (1, 2):
        export_tiny_model(staging, version)
    topic = f"models-{uuid.uuid4().hex[:8]}"
    control = ["-b", bootstrap, "--control-topic", topic]

    def publish(version: int) -> None:
        folder = str(staging / "tiny" / str(version))
        result = run_cli(
            "models", "publish", "deploy", "tiny", str(version), "--from", folder, *control
        )
        assert result.returncode == 0, result.stderr

    def worker(out: str, repo: Path) -> ManagedProcess:
        repo.mkdir()
        return embedded_worker(
            start_worker, repo, inp, out, "--model", "tiny", *control[2:], group=f"g-{out}"
        )

    inp, out, dlq = topic_factory("in"), topic_factory("out"), topic_factory("dlq")
    publish(1)
    first = worker(out, tmp_path / "repo-a")
    sent = 0

    def send(count: int) -> None:
        nonlocal sent
        produce(kafka_settings, inp, [RECORD] * count)
        sent += count

    send(50)
    assert {d["model"]["version"] for d in decoded(outputs(kafka_settings, out, 50))} == {1}

    publish(2)  # while records keep coming, the worker moves to version 2 between two records

    def switched() -> bool:
        send(20)
        docs = decoded(list(consume(kafka_settings, out, True, count=sent, timeout=30)))
        return len(docs) == sent and docs[-1]["model"]["version"] == 2

    wait_for(switched, 60, "outputs from version 2")
    docs = decoded(outputs(kafka_settings, out, sent))
    versions = [d["model"]["version"] for d in docs]
    assert versions == sorted(versions), "version 1 until the switch, version 2 after it"
    assert not list(consume(kafka_settings, dlq, True, timeout=1))

    # A version whose bytes don't match the published digest (the CLI would refuse to
    # publish it, so the event is written directly): rejected, version 2 keeps serving.
    bad = VersionSource(location=(staging / "tiny" / "2").as_uri(), sha256="0" * 64)
    state = read_latest_state(kafka_settings, topic, "tiny")
    publish_state(kafka_settings, topic, deploy_state(state, "tiny", 3, bad))
    wait_for(lambda: "rejected" in first.log(), 60, "the worker to reject version 3")
    send(10)
    assert {d["model"]["version"] for d in decoded(outputs(kafka_settings, out, sent))[-10:]} == {2}

    late_out = topic_factory("late")
    worker(late_out, tmp_path / "repo-b")  # starts later: applies the topic's state first
    late = decoded(outputs(kafka_settings, late_out, sent))
    assert late[0]["model"]["version"] == 2
    assert first.alive()


def test_sigterm_stops_a_worker_still_applying_the_control_topic(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    tmp_path: Path,
) -> None:
    topic = f"models-{uuid.uuid4().hex[:8]}"
    repo = tmp_path / "repo"
    repo.mkdir()
    with ArchiveHost() as host:
        trickle = VersionSource(location=host.url("/trickle"), sha256="0" * 64)
        publish_state(kafka_settings, topic, deploy_state(None, "tiny", 1, trickle))
        inp, out = topic_factory("in"), topic_factory("out")
        worker = embedded_worker(start_worker, repo, inp, out, "--model", "tiny",
                                 "--control-topic", topic)  # fmt: skip
        wait_for(lambda: host.trickling, what="the worker to start the download")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, worker.log_tail()  # not killed by the signal: it stopped
