"""Tabular records end to end: a scikit-learn model trained here, imported, fed JSON flights.

The same records go through an embedded worker and a remote worker against our server;
both must give scikit-learn's labels, and malformed rows end in the DLQ naming the feature.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import joblib
import pytest
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from streaminfer.flights import FEATURES, flights, split
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import consume, produce
from streaminfer.models.imports import import_model
from streaminfer.processes import ManagedProcess
from tests.servers import ServerProcess
from tests.workers import decoded, embedded_worker, outputs

TRAIN, HELD_OUT = split(flights(800))
ROWS = HELD_OUT[FEATURES].head(40)
BAD = [
    ({"dep_delay": 3, "taxi_out": 9, "distance": 500, "dep_hour": 7, "day_of_week": 2}, "carrier"),
    ({**ROWS.iloc[0].to_dict(), "seat": 12}, "seat"),
    ({**ROWS.iloc[0].to_dict(), "distance": "far"}, "distance"),
]


@pytest.fixture(scope="module")
def delays(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A repository with the imported pipeline, and scikit-learn's labels for ``ROWS``."""
    pipeline = make_pipeline(
        StandardScaler(), GradientBoostingClassifier(n_estimators=30, random_state=0)
    ).fit(TRAIN[FEATURES], TRAIN["status"])
    folder = tmp_path_factory.mktemp("delays")
    joblib.dump(pipeline, folder / "pipeline.joblib")
    import_model(folder / "pipeline.joblib", folder / "repo", "delays", trust_pickle=True)
    return folder / "repo", [str(label) for label in pipeline.predict(ROWS)]


@pytest.fixture
def server(delays: tuple[Path, list[str]], tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(delays[0], log=tmp_path / "server.log") as server:
        yield server


def send_flights(settings: KafkaSettings, topic: str) -> None:
    """Good rows (both record forms) with the bad ones in between."""
    values = []
    for i, row in enumerate(ROWS.to_dict("records")):
        document = {"features": row} if i % 2 else {**row, "id": f"flight-{i}"}
        values.append(json.dumps({"model": "delays", **document}).encode())
        if i < len(BAD):
            values.append(json.dumps({"model": "delays", "features": BAD[i][0]}).encode())
    produce(settings, topic, values)


def assert_labels_and_dead_letters(
    settings: KafkaSettings, inp: str, out: str, want: list[str]
) -> None:
    docs = decoded(outputs(settings, out, len(want), timeout=90))
    assert [d["predictions"][0]["label"] for d in docs] == want
    assert docs[0]["id"] == "flight-0" and docs[0]["model"]["name"] == "delays"
    assert set(docs[0]) >= {"source", "model", "timings_ms", "predictions"}
    letters = list(consume(settings, f"{inp}.dlq", from_beginning=True, count=len(BAD), timeout=30))
    messages = [dict(r.headers)["streaminfer.error.message"] or b"" for r in letters]
    for message, (_, feature) in zip(messages, BAD, strict=True):
        assert feature.encode() in message
    assert {dict(r.headers)["streaminfer.error.type"] for r in letters} == {b"bad_features"}


def test_tabular_records_embedded(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    delays: tuple[Path, list[str]],
) -> None:
    repo, want = delays
    inp, out = topic_factory("in"), topic_factory("out")
    embedded_worker(start_worker, repo, inp, out, "--model", "delays")
    send_flights(kafka_settings, inp)
    assert_labels_and_dead_letters(kafka_settings, inp, out, want)


@pytest.mark.parametrize("mode", ["kserve-grpc", "tfserving-rest"])
def test_tabular_records_remote(
    mode: str,
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    delays: tuple[Path, list[str]],
    server: ServerProcess,
) -> None:
    repo, want = delays
    inp, out = topic_factory("in"), topic_factory("out")
    start_worker(
        "--input", inp, "--output", out, "--mode", mode, "--server", server.target(mode),
        "--repo", str(repo), "--model", "delays", "--group-id", f"g-{inp}",
    )  # fmt: skip
    send_flights(kafka_settings, inp)
    assert_labels_and_dead_letters(kafka_settings, inp, out, want)
