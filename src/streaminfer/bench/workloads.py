"""The workloads a benchmark drives: what the records are and which model serves them.

``images`` is the product's headline case (JPEG URLs on a web host, EfficientNet-Lite0),
where decoding and inference dominate.  ``tensor`` is a tiny tensor model, where the
per-record overhead of Kafka, the worker and the wire protocols dominates instead.
"""

from __future__ import annotations

import json
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from streaminfer.errors import ConfigError
from streaminfer.images import FetchPolicy, ImageFetcher
from streaminfer.images.samples import SAMPLE_IMAGES, sample_jpegs
from streaminfer.predictors.base import PredictRequest
from streaminfer.processes import ImageHostProcess

LOOPBACK = "127.0.0.0/8"


class Workload(ABC):
    name: str
    model: str
    title: str
    default_records: int  # for a full saturation run
    worker_args: tuple[str, ...] = ()

    @abstractmethod
    def export(self, repo: Path) -> None:
        """Put the workload's model into the repository as version 1."""

    @abstractmethod
    def record(self, index: int) -> bytes:
        """The value of input record number ``index``."""

    @abstractmethod
    def request(self, value: bytes) -> PredictRequest:
        """What the worker makes of a record before predicting (fetch, parse): the ceiling's
        pipeline does the same work without Kafka."""


class ImagesWorkload(Workload):
    """Bare image URLs, the original demo's record format, on a local HTTP host."""

    name = "images"
    model = "efficientnet-lite0"
    title = "EfficientNet-Lite0 on JPEG URLs fetched over HTTP"
    default_records = 1000
    worker_args = ("--allow-network", LOOPBACK)

    def __init__(self, host_url: str) -> None:
        self.host_url = host_url
        self._fetcher = ImageFetcher(FetchPolicy(allow_networks=[LOOPBACK]))

    def export(self, repo: Path) -> None:
        from streaminfer.models.export import export_efficientnet_lite0  # onnx: only here

        export_efficientnet_lite0(repo, version=1, model_name=self.model)

    def record(self, index: int) -> bytes:
        return f"{self.host_url}/{SAMPLE_IMAGES[index % len(SAMPLE_IMAGES)]}.jpg".encode()

    def request(self, value: bytes) -> PredictRequest:
        return PredictRequest(model=self.model, image=self._fetcher.fetch(value.decode()))

    def close(self) -> None:
        self._fetcher.close()


class TensorWorkload(Workload):
    """TF Serving REST-style tensor records for the tiny ``y = x @ W + b`` model."""

    name = "tensor"
    model = "tiny"
    title = "tiny tensor model (4 floats in, 4 out): per-record overhead"
    default_records = 20_000
    worker_args = ("--model", "tiny")

    def export(self, repo: Path) -> None:
        from streaminfer.models.export.tiny import export_tiny_model  # onnx: only here

        export_tiny_model(repo, version=1, model_name=self.model)

    def record(self, index: int) -> bytes:
        row = [index % 100, 1, 2, 3]
        return json.dumps({"model": self.model, "inputs": {"x": [row]}}).encode()

    def request(self, value: bytes) -> PredictRequest:
        doc = json.loads(value)
        tensors = {name: np.asarray(values) for name, values in doc["inputs"].items()}
        return PredictRequest(model=doc["model"], tensors=tensors)


_KINDS: dict[str, type[Workload]] = {"images": ImagesWorkload, "tensor": TensorWorkload}


WORKLOADS = tuple(_KINDS)


def default_records(workload: str) -> int:
    """Records per full saturation run: enough for several seconds of steady work."""
    return _KINDS[workload].default_records


@contextmanager
def open_workload(name: str, log_dir: Path) -> Iterator[Workload]:
    """The workload ready to run; for ``images`` that includes its web host."""
    if name == "tensor":
        yield TensorWorkload()
        return
    if name not in _KINDS:
        raise ConfigError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    with tempfile.TemporaryDirectory(prefix="streaminfer-images-") as folder:
        for image, jpeg in sample_jpegs().items():
            (Path(folder) / f"{image}.jpg").write_bytes(jpeg)
        probe = f"{SAMPLE_IMAGES[0]}.jpg"
        with ImageHostProcess(Path(folder), probe, log_dir / "image-host.log") as host:
            workload = ImagesWorkload(host.url)
            try:
                yield workload
            finally:
                workload.close()
