"""The in-process predictor on the real exported model."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from streaminfer.codecs.arrays import bytes_array
from streaminfer.errors import RecordError
from streaminfer.models.batcher import WORKER_BATCHING
from streaminfer.models.export.efficientnet import INPUT_NAME, OUTPUT_NAME
from streaminfer.models.registry import ModelRegistry
from streaminfer.predictors.base import PredictRequest, PredictResult, waited_s
from streaminfer.predictors.embedded import EmbeddedPredictor
from tests.strings import STRINGS, TEXTS, export_string_identity
from tests.sums import assert_own_sums, export_column_sums
from tests.test_predictors.cases import (
    CAT_CLASSES,
    ESPRESSO,
    MODEL,
    assert_classified,
    assert_mixed,
    image_batch,
    mixed_batch,
    stacked_requests,
)


@pytest.fixture
def embedded(registry: ModelRegistry) -> Iterator[EmbeddedPredictor]:
    predictor = EmbeddedPredictor(registry, decode_workers=2)
    yield predictor
    predictor.close()


def test_classifies_a_micro_batch(embedded: EmbeddedPredictor, sample_jpegs: dict) -> None:
    waited = waited_s()
    outcomes = embedded.predict(image_batch(sample_jpegs))
    # The decodes and the model run needed no GIL on this thread: a worker's lanes count them.
    runs = [o.timings_ms["inference"] for o in outcomes if isinstance(o, PredictResult)]
    assert waited_s() - waited >= max(runs) / 1000 > 0
    assert_classified(outcomes, "embedded")
    cat, coffee = (
        o.predictions[0] for o in outcomes if isinstance(o, PredictResult) and o.predictions
    )
    assert cat.class_id in CAT_CLASSES and coffee.class_id == ESPRESSO  # ids, not only names
    assert all(o.timings_ms["preprocess"] > 0 for o in outcomes if isinstance(o, PredictResult))


def test_bad_records_fail_alone(embedded: EmbeddedPredictor, sample_jpegs: dict) -> None:
    outcomes = embedded.predict(mixed_batch(sample_jpegs))
    assert_mixed(outcomes)
    assert outcomes[1].reason == "not_an_image"  # type: ignore[union-attr]


def test_tensor_requests_are_validated_and_run(embedded: EmbeddedPredictor) -> None:
    rng = np.random.default_rng(0)
    one, two = (rng.standard_normal((n, 3, 224, 224), dtype=np.float32) for n in (1, 2))
    batch = [
        PredictRequest(model=MODEL, tensors={INPUT_NAME: one}),
        PredictRequest(model=MODEL, tensors={INPUT_NAME: np.zeros((1, 3, 8, 8), np.float32)}),
        PredictRequest(model=MODEL, tensors={INPUT_NAME: two}),
        PredictRequest(model=MODEL, tensors={"wrong": one}),
        PredictRequest(model=MODEL),
    ]
    ok1, bad_shape, ok2, bad_name, empty = embedded.predict(batch)
    for bad in (bad_shape, bad_name, empty):
        assert isinstance(bad, RecordError) and bad.reason == "invalid_input"
    assert isinstance(ok1, PredictResult) and isinstance(ok2, PredictResult)
    assert ok1.outputs and ok2.outputs
    assert ok1.outputs[OUTPUT_NAME].shape == (1, 1000)
    assert ok2.outputs[OUTPUT_NAME].shape == (2, 1000)
    (alone,) = embedded.predict([PredictRequest(model=MODEL, tensors={INPUT_NAME: two})])
    assert isinstance(alone, PredictResult) and alone.outputs
    np.testing.assert_allclose(
        alone.outputs[OUTPUT_NAME], ok2.outputs[OUTPUT_NAME], rtol=1e-4, atol=1e-4
    )


def test_one_model_run_per_version(model_repo: Path, sample_jpegs: dict) -> None:
    runs: list[tuple[str, int]] = []
    registry = ModelRegistry(model_repo, on_batch=lambda name, rows: runs.append((name, rows)))
    registry.reload()
    runs.clear()  # the warm-up is no concern here
    predictor = EmbeddedPredictor(registry, decode_workers=2)
    try:
        outcomes = predictor.predict([*mixed_batch(sample_jpegs), *image_batch(sample_jpegs)])
    finally:
        predictor.close()
        registry.close()
    assert sum(isinstance(o, PredictResult) for o in outcomes) == 5
    assert runs == [(MODEL, 5)]


def test_concurrent_callers(embedded: EmbeddedPredictor, sample_jpegs: dict) -> None:
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(embedded.predict, [image_batch(sample_jpegs)] * 8))
    for outcomes in answers:
        assert_classified(outcomes, "embedded")


def test_a_model_answering_a_batch_as_a_whole_runs_each_record_alone(tmp_path: Path) -> None:
    export_column_sums(tmp_path)
    registry = ModelRegistry(tmp_path, default_batching=WORKER_BATCHING)
    registry.reload()
    predictor = EmbeddedPredictor(registry, 1)
    rows = [1, 2, 1]
    stacked = {"x": np.arange(16, dtype=np.float32).reshape(4, 4)}
    batch = stacked_requests("sums", stacked, rows)
    try:
        answers = [predictor.predict(batch), predictor.predict_stacked(batch, stacked, rows)]
    finally:
        predictor.close()
        registry.close()
    for outcomes in answers:
        assert_own_sums(outcomes, batch)


def test_string_records_reach_the_model_as_text(tmp_path: Path) -> None:
    """Each record's text as the model saw it; a record of bytes that are no UTF-8 fails
    alone, with the reason."""
    export_string_identity(tmp_path)
    registry = ModelRegistry(tmp_path, default_batching=WORKER_BATCHING)
    registry.reload()
    predictor = EmbeddedPredictor(registry, 1)
    batch = [
        PredictRequest(model=STRINGS, tensors={"s": bytes_array([text.encode()])}) for text in TEXTS
    ]
    batch.append(PredictRequest(model=STRINGS, tensors={"s": bytes_array([b"\xff"])}))
    try:
        outcomes = predictor.predict(batch)
    finally:
        predictor.close()
        registry.close()
    answered = [o.outputs for o in outcomes[:-1] if isinstance(o, PredictResult) and o.outputs]
    assert [outputs["out"].tolist() for outputs in answered] == [[text] for text in TEXTS]
    assert isinstance(outcomes[-1], RecordError) and "not UTF-8" in str(outcomes[-1])
