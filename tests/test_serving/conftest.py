"""One shared server over the exported model, in-process references, and gRPC stubs."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from streaminfer.models.pipeline import classify, preprocess_images
from streaminfer.models.registry import LoadedVersion, ModelRegistry
from tests.servers import ServerProcess

MODEL = "efficientnet-lite0"
EXPECTED = {"chelsea": {281, 282, 285}, "coffee": {967}}  # tabby/tiger/Egyptian cat, espresso


@pytest.fixture(scope="session")
def server(model_repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(model_repo) as process:
        yield process


@pytest.fixture(scope="session")
def embedded(model_repo: Path) -> Iterator[LoadedVersion]:
    """The same model run in-process: what every protocol must agree with."""
    registry = ModelRegistry(model_repo)
    registry.reload()
    yield registry.resolve(MODEL)
    registry.close()


@pytest.fixture(scope="session")
def float_input() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((1, 3, 224, 224), dtype=np.float32)


@pytest.fixture(scope="session")
def expected_labels(embedded: LoadedVersion, sample_jpegs: dict[str, bytes]) -> dict[str, str]:
    """Embedded top-1 label per sample image, checked against the known ImageNet classes."""
    labels = {}
    assert embedded.class_names is not None
    for name, classes in EXPECTED.items():
        batch = preprocess_images(embedded, [sample_jpegs[name]])
        best = classify(embedded, batch, 1)[0][0]
        assert best.class_id in classes
        labels[name] = best.label
    return labels


@pytest.fixture
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as chan:
        yield chan


def copy_repo(source: Path, target: Path) -> Path:
    """A repository of hard links to ``source``'s files, for a server that changes it."""
    shutil.copytree(source, target, copy_function=_link)
    return target


def _link(src: str, dst: str) -> None:
    Path(dst).hardlink_to(src)


def add_version(model_dir: Path, source: Path, version: int) -> Path:
    """Publish a copy of ``source`` as ``version`` atomically: temp folder, then rename."""
    staging = model_dir / f".tmp-{uuid.uuid4().hex}"
    shutil.copytree(source, staging)
    return staging.rename(model_dir / str(version))
