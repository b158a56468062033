"""The workloads a benchmark drives: what the records are and which model serves them.

``images`` is the product's headline case (JPEG URLs on a web host, EfficientNet-Lite0),
where decoding and inference dominate.  ``tensor`` is a tiny tensor model, where the
per-record overhead of Kafka, the worker and the wire protocols dominates instead.
``tabular`` is a scikit-learn classifier (scaler + gradient boosting) trained at bench
start on generated flights and imported as ONNX, fed JSON flight records: parsing and
feature handling weigh as much as the model.
"""

from __future__ import annotations

import json
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

from streaminfer.errors import ConfigError
from streaminfer.extras import require
from streaminfer.images import FetchPolicy, ImageFetcher
from streaminfer.images.samples import SAMPLE_IMAGES, sample_jpegs
from streaminfer.predictors.base import Outcome, Predictor, PredictRequest, PredictResult
from streaminfer.processes import ImageHostProcess
from streaminfer.stream.pipeline import stack
from streaminfer.stream.records import parse_value, plain_tensors
from streaminfer.stream.tabular import TabularModel, TabularModels

LOOPBACK = "127.0.0.0/8"


class Workload(ABC):
    name: str
    model: str
    title: str
    default_records: int  # for a full saturation run
    worker_args: tuple[str, ...] = ()
    # The ceiling's batch sizes: the worker's --batch-size, and for cheap records the
    # larger micro-batches the worker itself takes (up to 64 x --batch-size).
    ceiling_batches: tuple[int, ...] = (16, 64, 256)
    # Whether a record's request waits on the network: only then does the worker (and so
    # the ceiling) hand it to a fetch thread; a hop per record costs more than a parse.
    downloads: bool = False

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

    def predict(self, predictor: Predictor, values: list[bytes]) -> list[Outcome]:
        """The ceiling's prediction for records that need no download, as the worker's."""
        return predictor.predict([self.request(value) for value in values])

    def answer(self, result: PredictResult) -> PredictResult:
        """What the worker makes of a prediction before writing it (tabular: ranked classes)."""
        return result


class ImagesWorkload(Workload):
    """Bare image URLs, the original demo's record format, on a local HTTP host."""

    name = "images"
    model = "efficientnet-lite0"
    title = "EfficientNet-Lite0 on JPEG URLs fetched over HTTP"
    default_records = 1000
    worker_args = ("--allow-network", LOOPBACK)
    ceiling_batches = (16,)  # milliseconds a record: the worker keeps --batch-size
    downloads = True

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
    # Several seconds per run at 30-40k/s: a run inside one or two transactions has no
    # spread to time and no CPU to measure between its marks.
    default_records = 200_000
    worker_args = ("--model", "tiny")

    def export(self, repo: Path) -> None:
        from streaminfer.models.export.tiny import export_tiny_model  # onnx: only here

        export_tiny_model(repo, version=1, model_name=self.model)

    def record(self, index: int) -> bytes:
        row = [index % 100, 1, 2, 3]
        return json.dumps({"model": self.model, "inputs": {"x": [row]}}).encode()

    def request(self, value: bytes) -> PredictRequest:
        parsed = parse_value(value)  # the worker's own parse
        assert parsed.tensors is not None and parsed.model is not None
        return PredictRequest(model=parsed.model, tensors=parsed.tensors)

    def predict(self, predictor: Predictor, values: list[bytes]) -> list[Outcome]:
        """As the worker serves plain tensor records: stacked, one prediction a batch."""
        inputs = []
        for value in values:
            plain = plain_tensors(value)
            assert plain is not None
            inputs.append(plain[2])
        requests, stacked, rows = stack(PredictRequest(model=self.model), inputs)
        return predictor.predict_stacked(requests, stacked, rows)


class TabularWorkload(Workload):
    """JSON flight records, half ``{"model", "features": {...}}`` and half flat, for a
    scikit-learn pipeline trained here on :mod:`streaminfer.flights` (needs the ``sklearn``
    extra).  Its ``request`` and ``answer`` are the worker's own parse, features-to-row and
    ranking code."""

    name = "tabular"
    model = "flight-delays"
    title = "scikit-learn scaler + gradient boosting (ONNX) on JSON flight records"
    default_records = 60_000
    worker_args = ("--model", "flight-delays")
    TRAINING_ROWS = 3000
    FLIGHTS = 1000  # distinct records, cycled

    def __init__(self) -> None:
        self._models: TabularModels | None = None

    def export(self, repo: Path) -> None:
        """Train the pipeline and import it, converted to ONNX and verified, as version 1."""
        joblib = require("joblib", "sklearn")
        ensemble = require("sklearn.ensemble", "sklearn")
        pipeline = require("sklearn.pipeline", "sklearn")
        preprocessing = require("sklearn.preprocessing", "sklearn")
        from streaminfer.flights import FEATURES, flights
        from streaminfer.models.imports import import_model  # onnx, skl2onnx: only here

        frame = flights(self.TRAINING_ROWS)
        model = pipeline.make_pipeline(
            preprocessing.StandardScaler(),
            ensemble.GradientBoostingClassifier(n_estimators=40, random_state=0),
        ).fit(frame[FEATURES], frame["status"])
        with tempfile.TemporaryDirectory(prefix="streaminfer-tabular-") as folder:
            source = Path(folder) / f"{self.model}.joblib"
            joblib.dump(model, source)
            import_model(source, repo, self.model, version=1, trust_pickle=True)
        self._models = TabularModels(repo)

    @cached_property
    def _flights(self) -> list[dict[str, int]]:
        """Unseen flights (another seed than training's), as whole-number fields."""
        from streaminfer.flights import FEATURES, flights

        rows = flights(self.FLIGHTS, seed=1)[FEATURES].to_dict("records")
        return [{k: int(v) for k, v in row.items()} for row in rows]

    def record(self, index: int) -> bytes:
        features = self._flights[index % self.FLIGHTS]
        if index % 2:
            return json.dumps({"model": self.model, **features}).encode()
        return json.dumps({"model": self.model, "features": features}).encode()

    def request(self, value: bytes) -> PredictRequest:
        parsed = parse_value(value)
        assert parsed.features is not None and parsed.model is not None
        return self._tabular.request(parsed.features, PredictRequest(model=parsed.model))

    def answer(self, result: PredictResult) -> PredictResult:
        return self._tabular.result(result, top_k=None)

    @property
    def _tabular(self) -> TabularModel:
        assert self._models is not None, "export() first: the features are in model.json"
        return self._models.get(self.model, None)


_KINDS: dict[str, type[Workload]] = {
    "images": ImagesWorkload,
    "tensor": TensorWorkload,
    "tabular": TabularWorkload,
}


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
    if name == "tabular":
        yield TabularWorkload()
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
