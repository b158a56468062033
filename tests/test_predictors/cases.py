"""The requests every predictor must answer alike, and the checks on its answers."""

from __future__ import annotations

import itertools

import numpy as np

from streaminfer.errors import InfrastructureError, RecordError
from streaminfer.models.export.efficientnet import imagenet_labels
from streaminfer.models.postprocess import Prediction
from streaminfer.predictors.base import Outcome, PredictRequest, PredictResult
from streaminfer.types import Tensors

MODEL = "efficientnet-lite0"
CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967
LABELS = imagenet_labels()


class FakeClock:
    """A monotonic clock the test moves by hand, so cool-downs pass without waiting."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def is_cat(prediction: Prediction) -> bool:
    return prediction.class_id in CAT_CLASSES and prediction.label == LABELS[prediction.class_id]


def is_espresso(prediction: Prediction) -> bool:
    return prediction.label == LABELS[ESPRESSO] and prediction.class_id == ESPRESSO


def stacked_requests(model: str, stacked: Tensors, rows: list[int]) -> list[PredictRequest]:
    """A request per record whose tensors are its consecutive ``rows`` of ``stacked``."""
    starts = np.cumsum([0, *rows])
    return [
        PredictRequest(model=model, tensors={n: a[start:end] for n, a in stacked.items()})
        for start, end in itertools.pairwise(starts)
    ]


def image_batch(jpegs: dict[str, bytes]) -> list[PredictRequest]:
    return [
        PredictRequest(model=MODEL, image=jpegs["chelsea"]),
        PredictRequest(model=MODEL, image=jpegs["coffee"], top_k=3),
    ]


def assert_classified(outcomes: list[Outcome], mode: str) -> None:
    cat, coffee = outcomes
    assert isinstance(cat, PredictResult) and isinstance(coffee, PredictResult)
    assert cat.predictions and coffee.predictions
    assert is_cat(cat.predictions[0]), cat.predictions[0]
    assert is_espresso(coffee.predictions[0]), coffee.predictions[0]
    assert len(cat.predictions) == 5 and len(coffee.predictions) == 3
    assert cat.predictions[0].score >= cat.predictions[1].score
    assert 0.0 < coffee.predictions[0].score <= 1.0
    assert (cat.model, cat.version, cat.mode) == (MODEL, 1, mode)
    assert cat.timings_ms["inference"] > 0


def mixed_batch(jpegs: dict[str, bytes]) -> list[PredictRequest]:
    return [
        PredictRequest(model=MODEL, image=jpegs["chelsea"]),
        PredictRequest(model=MODEL, image=b"not an image"),
        PredictRequest(model="no-such-model", image=jpegs["coffee"]),
        PredictRequest(model=MODEL, image=jpegs["coffee"]),
        PredictRequest(model=MODEL, version=99, image=jpegs["coffee"]),
        PredictRequest(model=MODEL, image=jpegs["rocket"]),
    ]


def assert_mixed(outcomes: list[Outcome]) -> None:
    cat, junk, unknown, coffee, no_version, rocket = outcomes
    assert isinstance(cat, PredictResult) and cat.predictions
    assert is_cat(cat.predictions[0])
    assert isinstance(coffee, PredictResult) and coffee.predictions
    assert is_espresso(coffee.predictions[0])
    assert isinstance(rocket, PredictResult)
    for bad in (junk, unknown, no_version):
        assert isinstance(bad, RecordError), bad
        assert not isinstance(bad, InfrastructureError)
    assert unknown.reason == no_version.reason == "unknown_model"  # type: ignore[union-attr]
