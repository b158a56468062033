"""``serve --control-topic``: a published version takes over while a client keeps sending."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np

from streaminfer.models.export.tiny import export_tiny_model
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
        ServerProcess(repo, *kafka) as server,
        ContinuousPredictions(server.grpc_target, MODEL, "x", value) as client,
    ):
        wait_for(lambda: len(client.versions) >= 3, what="the first answers")
        publish("2", archive)
        wait_for(lambda: client.versions[-1] == 2, what="answers from version 2")
    assert "installed model tiny version 2" in server.log
    assert client.versions[0] == 1
    client.assert_switched_cleanly(1, 2)
