"""A new version replaces the old one while a client keeps sending: nothing fails."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from tests.repository import MODEL, add_version, copy_repo
from tests.servers import ContinuousPredictions, ServerProcess
from tests.support import wait_for


def test_new_version_takes_over_with_zero_failed_requests(
    model_repo: Path, tmp_path: Path, float_input: np.ndarray
) -> None:
    repo = copy_repo(model_repo, tmp_path / "repo")
    model_dir = repo / MODEL
    with (
        ServerProcess(repo, "--poll-interval", "0.2", log=tmp_path / "serve.log") as server,
        ContinuousPredictions(server.grpc_target, MODEL, "input", float_input) as client,
    ):
        wait_for(lambda: len(client.versions) >= 3, what="the first answers")
        add_version(model_dir, model_dir / "1", 2)
        wait_for(lambda: client.versions[-1] == 2, what="answers from version 2")
        shutil.rmtree(model_dir / "1")
        answered = len(client.versions)
        wait_for(lambda: len(client.versions) >= answered + 5, what="answers after removing 1")
    assert "unloaded model efficientnet-lite0 version 1" in server.log
    client.assert_switched_cleanly(1, 2)
