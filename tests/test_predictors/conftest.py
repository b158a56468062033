"""Real parts for the predictor tests: a loaded registry, and real model server processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streaminfer.models.registry import ModelRegistry
from tests.servers import ServerProcess


@pytest.fixture(scope="session")
def registry(model_repo: Path) -> Iterator[ModelRegistry]:
    registry = ModelRegistry(model_repo)
    registry.reload()
    yield registry
    registry.close()


@pytest.fixture(scope="session")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the tests that only talk to it."""
    process = ServerProcess(model_repo, log=tmp_path_factory.mktemp("server") / "serve.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def own_server(model_repo: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server this test may stop and start again (on the same ports)."""
    process = ServerProcess(model_repo, log=tmp_path / "serve.log")
    process.start()
    yield process
    process.stop()
