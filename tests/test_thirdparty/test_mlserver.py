"""Workers against a real MLServer 1.7 (Seldon's V2 server; no binary tensor extension).

A scikit-learn classifier served by the official ``mlserver-sklearn`` runtime gets tensor
records cast to the FP32 its settings declare (a value FP32 cannot hold is dead-lettered);
EfficientNet-Lite0 served by a custom ONNX runtime (tests/thirdparty/mlserver_onnx.py)
gets images the worker preprocessed.
Over HTTP the worker must choose plain JSON by itself: MLServer lists no extensions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import produce
from tests.fixtures.thirdparty import IRIS_ROWS
from tests.thirdparty.processes import MLServerProcess
from tests.workers import decoded, outputs


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
