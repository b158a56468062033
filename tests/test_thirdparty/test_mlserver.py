"""Workers against a real MLServer 1.7 (Seldon's V2 server; no binary tensor extension).

A scikit-learn classifier served by the official ``mlserver-sklearn`` runtime gets tensor
records cast to the FP32 its settings declare (a value FP32 cannot hold is dead-lettered);
EfficientNet-Lite0 served by a custom ONNX runtime (tests/thirdparty/mlserver_onnx.py)
gets images the worker preprocessed.  The flights pipeline, served by the same official
runtime (rows as a numpy array, or columns as a DataFrame), gets JSON flight records: the
worker's ``model.json`` (the imported one, its signature changed to MLServer's) turns them
into that input and asks for ``predict_proba``.
Over HTTP the worker must choose plain JSON by itself: MLServer lists no extensions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import produce
from streaminfer.models.imports import import_model
from streaminfer.models.metadata import ModelMetadata
from tests.fixtures.thirdparty import FLIGHTS_MODELS, IRIS_ROWS, flights_signature
from tests.flights import FlightsModel, assert_labels_and_dead_letters, send_flights
from tests.thirdparty.processes import MLServerProcess
from tests.workers import decoded, outputs


@pytest.fixture(scope="module")
def mlserver_flights_repo(
    flights_model: FlightsModel, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The worker's repository for the pipelines MLServer serves: ``models import`` of the
    same joblib (features, class names), with MLServer's signature in ``model.json``."""
    repo = tmp_path_factory.mktemp("mlserver-flights")
    for name in FLIGHTS_MODELS:
        version = import_model(flights_model.joblib, repo, name, trust_pickle=True)
        signature = flights_signature(name, len(flights_model.classes))
        changed = {"signature": signature, "probabilities_output": "predict_proba"}
        ModelMetadata.read(version).model_copy(update=changed).write(version)
    return repo


@pytest.mark.parametrize("mode", ["kserve-grpc", "kserve-http"])
def test_mlserver_runs_sklearn_on_tensors_and_onnx_on_images(
    mode: str,
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    mlserver: MLServerProcess,
    iris_classes: list[int],
    stream_repo: Path,
    image_host: str,
    expected_labels: dict[str, str],
) -> None:
    inp, out, dlq = topic_factory("in"), topic_factory("out"), topic_factory("dlq")
    start_worker("--input", inp, "--output", out, "--dlq", dlq, "--mode", mode,
                 "--server", mlserver.target(mode), "--repo", str(stream_repo),
                 "--group-id", f"g-{inp}", "--allow-network", "127.0.0.0/8")  # fmt: skip
    iris = [
        {"id": str(i), "model": "iris", "inputs": {"input-0": [row]}}
        for i, row in enumerate(IRIS_ROWS)
    ]
    huge = {"id": "huge", "model": "iris", "inputs": {"input-0": [[1e39, 0, 0, 0]]}}
    produce(
        kafka_settings,
        inp,
        [
            *[json.dumps(doc).encode() for doc in [*iris, huge]],
            f"{image_host}/chelsea.jpg".encode(),
            f"{image_host}/coffee.jpg".encode(),
        ],
    )
    docs = decoded(outputs(kafka_settings, out, 4, timeout=120))
    assert [d["mode"] for d in docs] == [mode] * 4
    assert [d["outputs"]["predict"][0][0] for d in docs[:2]] == iris_classes
    assert [d["predictions"][0]["label"] for d in docs[2:]] == [
        expected_labels["chelsea"],
        expected_labels["coffee"],
    ]
    (letter,) = outputs(kafka_settings, dlq, 1)
    headers = dict(letter.headers)
    assert headers["streaminfer.error.type"] == b"invalid_input"
    assert b"beyond float32's range" in headers["streaminfer.error.message"]


@pytest.mark.parametrize("model", list(FLIGHTS_MODELS))
@pytest.mark.parametrize("mode", ["kserve-http", "kserve-grpc"])
def test_mlserver_sklearn_runtime_classifies_json_flight_records(
    mode: str,
    model: str,
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    mlserver: MLServerProcess,
    flights_model: FlightsModel,
    mlserver_flights_repo: Path,
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    start_worker("--input", inp, "--output", out, "--mode", mode,
                 "--server", mlserver.target(mode), "--repo", str(mlserver_flights_repo),
                 "--model", model, "--group-id", f"g-{inp}")  # fmt: skip
    send_flights(kafka_settings, inp, model)
    docs = assert_labels_and_dead_letters(kafka_settings, inp, out, flights_model.labels, model)
    assert {d["mode"] for d in docs} == {mode}
    for doc, want in zip(docs, flights_model.probabilities, strict=True):
        scores = {p["label"]: p["score"] for p in doc["predictions"]}
        assert scores.keys() == set(flights_model.classes)
        got = [scores[name] for name in flights_model.classes]
        assert got == pytest.approx(want.tolist(), abs=1e-5)
