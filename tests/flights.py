"""Tabular test helpers: the flights classifier every worker test serves, the records sent
to it, and what a worker must write for them.

The pipeline (scaler + gradient boosting, fitted on a DataFrame) is trained once per
session by the ``flights_model`` fixture; ``models import`` and MLServer's scikit-learn
runtime both take its joblib file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streaminfer.flights import FEATURES, flights, split
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import consume, produce
from tests.workers import decoded, outputs

TRAIN, HELD_OUT = split(flights(800))
ROWS = HELD_OUT[FEATURES].head(40)
# Malformed records, each with the feature its dead letter must name.
BAD = [
    ({"dep_delay": 3, "taxi_out": 9, "distance": 500, "dep_hour": 7, "day_of_week": 2}, "carrier"),
    ({**ROWS.iloc[0].to_dict(), "seat": 12}, "seat"),
    ({**ROWS.iloc[0].to_dict(), "distance": "far"}, "distance"),
]


@dataclass(frozen=True)
class FlightsModel:
    joblib: Path  # the fitted pipeline
    classes: list[str]  # in the order of predict_proba's columns
    labels: list[str]  # scikit-learn's predict on ROWS
    probabilities: np.ndarray  # scikit-learn's predict_proba on ROWS, [rows, classes]


def train_flights_model(folder: Path) -> FlightsModel:
    """The pipeline fitted on ``TRAIN`` and saved as ``folder/model.joblib``."""
    import joblib
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(
        StandardScaler(), GradientBoostingClassifier(n_estimators=30, random_state=0)
    ).fit(TRAIN[FEATURES], TRAIN["status"])
    path = folder / "model.joblib"
    joblib.dump(pipeline, path)
    return FlightsModel(
        joblib=path,
        classes=[str(c) for c in pipeline.classes_],
        labels=[str(label) for label in pipeline.predict(ROWS)],
        probabilities=pipeline.predict_proba(ROWS),
    )


def send_flights(settings: KafkaSettings, topic: str, model: str = "delays") -> None:
    """Good rows (both record forms, the flat ones with an id) with the bad ones in between."""
    values = []
    for i, row in enumerate(ROWS.to_dict("records")):
        document = {"features": row} if i % 2 else {**row, "id": f"flight-{i}"}
        values.append(json.dumps({"model": model, **document}).encode())
        if i < len(BAD):
            values.append(json.dumps({"model": model, "features": BAD[i][0]}).encode())
    produce(settings, topic, values)


def assert_labels_and_dead_letters(
    settings: KafkaSettings, inp: str, out: str, want: list[str], model: str = "delays"
) -> list[dict]:
    """The outputs carry ``want`` as top labels in order, the bad rows are dead-lettered
    naming their feature; returns the outputs."""
    docs = decoded(outputs(settings, out, len(want), timeout=90))
    assert [d["predictions"][0]["label"] for d in docs] == want
    assert docs[0]["id"] == "flight-0" and docs[0]["model"]["name"] == model
    assert set(docs[0]) >= {"source", "model", "timings_ms", "predictions"}
    letters = list(consume(settings, f"{inp}.dlq", from_beginning=True, count=len(BAD), timeout=30))
    messages = [dict(r.headers)["streaminfer.error.message"] or b"" for r in letters]
    for message, (_, feature) in zip(messages, BAD, strict=True):
        assert feature.encode() in message
    assert {dict(r.headers)["streaminfer.error.type"] for r in letters} == {b"bad_features"}
    return docs
