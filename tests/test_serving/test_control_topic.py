"""``serve --control-topic``: a published version takes over while a client keeps sending;
hostile or endless deployments neither keep the server from readiness nor from stopping."""

from __future__ import annotations

import shutil
import signal
import uuid
from pathlib import Path

import numpy as np

from streaminfer.kafka.config import KafkaSettings
from streaminfer.models.control import publish_state
from streaminfer.models.control_state import VersionSource, deploy_state
from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.processes import STREAMINFER, ManagedProcess
from tests.model_hosts import ArchiveHost
from tests.servers import ContinuousPredictions, ServerProcess
from tests.support import run_cli, wait_for

MODEL = "tiny"


def test_published_version_takes_over_with_zero_failed_requests(
    bootstrap: str, tmp_path: Path
) -> None:
    staging = export_tiny_model(tmp_path / "staging", 1).parent
    archive = shutil.make_archive(str(tmp_path / "v2"), "gztar", staging / "1")
    topic = f"models-{uuid.uuid4().hex[:10]}"
    kafka = ["-b", bootstrap, "--control-topic", topic]

    def publish(version: str, location: str) -> None:
        result = run_cli("models", "publish", "deploy", MODEL, version, "--from", location, *kafka)
        assert result.returncode == 0, result.stderr

    publish("1", str(staging / "1"))  # before the server starts: it applies it before ready
    repo = tmp_path / "repo"
    repo.mkdir()
    value = np.ones((1, 4), dtype=np.float32)
    with (
        ServerProcess(repo, *kafka, log=tmp_path / "serve.log") as server,
        ContinuousPredictions(server.grpc_target, MODEL, "x", value) as client,
    ):
        wait_for(lambda: len(client.versions) >= 3, what="the first answers")
        publish("2", archive)
        wait_for(lambda: client.versions[-1] == 2, what="answers from version 2")
    assert "installed model tiny version 2" in server.log
    assert client.versions[0] == 1
    client.assert_switched_cleanly(1, 2)


def test_a_device_file_deploy_blocks_neither_the_server_nor_its_restart(
    bootstrap: str, tmp_path: Path
) -> None:
    """``file:///dev/zero`` once made the follower hash forever, on every restart (compaction)."""
    staging = export_tiny_model(tmp_path / "staging", 2).parent
    topic = f"models-{uuid.uuid4().hex[:10]}"
    kafka = ["-b", bootstrap, "--control-topic", topic]
    hostile = VersionSource(location="file:///dev/zero", sha256="0" * 64)
    publish_state(KafkaSettings(bootstrap_servers=bootstrap), topic,
                  deploy_state(None, MODEL, 1, hostile))  # fmt: skip
    repo = tmp_path / "repo"
    repo.mkdir()

    def serves_version_2(server: ServerProcess) -> bool:
        with server.client() as client:
            return client.get(f"/v2/models/{MODEL}/versions/2/ready").status_code == 200

    # Ready: version 1 was rejected, not read.
    with ServerProcess(repo, *kafka, log=tmp_path / "serve-1.log") as server:
        published = run_cli(
            "models", "publish", "deploy", MODEL, "2", "--from", str(staging / "2"), *kafka
        )
        assert published.returncode == 0, published.stderr
        wait_for(lambda: serves_version_2(server), what="version 2 installed and served")
        assert "rejected model tiny version 1" in server.log
        assert server.stop() == 0  # SIGTERM
    # The hostile event is still on the topic; this server's deploy settings refuse any
    # local file, so version 1 is rejected for that, and version 2 is served as installed.
    no_files = {"STREAMINFER_DEPLOY_ALLOW_FILE": "false"}
    with ServerProcess(repo, *kafka, log=tmp_path / "serve-2.log", env=no_files) as server:
        assert serves_version_2(server)
        assert "file:///dev/zero: local files may not be deployed here" in server.log


def test_a_download_that_never_ends_delays_readiness_only_until_the_control_timeout(
    bootstrap: str, tmp_path: Path
) -> None:
    staging = export_tiny_model(tmp_path / "staging", 1)
    topic = f"models-{uuid.uuid4().hex[:10]}"
    kafka = ["-b", bootstrap, "--control-topic", topic]
    repo = tmp_path / "repo"
    repo.mkdir()

    def publish(model: str) -> None:
        result = run_cli("models", "publish", "deploy", model, "1", "--from", str(staging), *kafka)
        assert result.returncode == 0, result.stderr

    def ready(server: ServerProcess, model: str) -> bool:
        with server.client() as client:
            return client.get(f"/v2/models/{model}/versions/1/ready").status_code == 200

    with ArchiveHost() as host:
        trickle = VersionSource(location=host.url("/trickle"), sha256="0" * 64)
        publish_state(KafkaSettings(bootstrap_servers=bootstrap), topic,
                      deploy_state(None, "slow", 1, trickle))  # fmt: skip
        publish(MODEL)
        with ServerProcess(
            repo, *kafka, log=tmp_path / "serve.log", env={"STREAMINFER_CONTROL_TIMEOUT": "5"}
        ) as server:
            assert ready(server, MODEL)
            assert f"still installing after 5 s (each applies when its download ends): " \
                   f"model slow version 1 from {trickle.location}" in server.log  # fmt: skip
            publish("other")
            wait_for(lambda: ready(server, "other"), what="a later deployment applied")
            assert host.trickling, "the download goes on meanwhile"
            assert server.stop() == 0


def test_sigterm_stops_a_server_still_applying_the_control_topic(
    bootstrap: str, tmp_path: Path
) -> None:
    topic = f"models-{uuid.uuid4().hex[:10]}"
    repo = tmp_path / "repo"
    repo.mkdir()
    with ArchiveHost() as host:
        trickle = VersionSource(location=host.url("/trickle"), sha256="0" * 64)
        publish_state(KafkaSettings(bootstrap_servers=bootstrap), topic,
                      deploy_state(None, "slow", 1, trickle))  # fmt: skip
        command = [*STREAMINFER, "serve", "--repo", str(repo), "--grpc-port", "0",
                   "--rest-port", "0", "-b", bootstrap, "--control-topic", topic]  # fmt: skip
        log = tmp_path / "serve.log"
        env = {"STREAMINFER_CONTROL_TIMEOUT": "3600"}  # it would wait an hour for the download
        with ManagedProcess("model server", command, log, env) as server:
            wait_for(lambda: host.trickling, what="the server to start the download")
            server.send_signal(signal.SIGTERM)
            assert server.wait(60) == 0, server.log_tail()
    assert "stopped before it was ready" in server.log()
    assert "server ready" not in server.log()
