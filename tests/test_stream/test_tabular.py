"""Tabular records end to end: a scikit-learn model trained here, imported, fed JSON flights.

The same records go through an embedded worker and a remote worker against our server;
both must give scikit-learn's labels, and malformed rows end in the DLQ naming the feature.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import consume, produce
from streaminfer.models.imports import import_model
from streaminfer.processes import ManagedProcess
from tests.flights import BAD, ROWS, FlightsModel, assert_labels_and_dead_letters, send_flights
from tests.servers import ServerProcess
from tests.workers import embedded_worker


@pytest.fixture(scope="module")
def delays(tmp_path_factory: pytest.TempPathFactory, flights_model: FlightsModel) -> Path:
    """A repository with the imported pipeline."""
    repo = tmp_path_factory.mktemp("delays")
    import_model(flights_model.joblib, repo, "delays", trust_pickle=True)
    return repo


@pytest.fixture
def server(delays: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(delays, log=tmp_path / "server.log") as server:
        yield server


def test_tabular_records_embedded(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    delays: Path,
    flights_model: FlightsModel,
    tmp_path: Path,
) -> None:
    """With records naming paths as their model after the flights: each is an unknown
    model, its path never looked at (a FIFO's model.json held the worker for good)."""
    inp, out = topic_factory("in"), topic_factory("out")
    outside = tmp_path / "outside"
    (outside / "fifo" / "1").mkdir(parents=True)
    os.mkfifo(outside / "fifo" / "1" / "model.json")
    paths = [str(outside / "fifo"), str(delays / "delays"), f"../{delays.name}/delays", "/proc"]
    embedded_worker(start_worker, delays, inp, out, "--model", "delays")
    send_flights(kafka_settings, inp)
    row = ROWS.iloc[0].to_dict()
    produce(kafka_settings, inp, [json.dumps({"model": p, **row}).encode() for p in paths])
    assert_labels_and_dead_letters(kafka_settings, inp, out, flights_model.labels)
    count = len(BAD) + len(paths)
    letters = list(consume(kafka_settings, f"{inp}.dlq", True, count=count, timeout=60))
    assert [dict(r.headers)["streaminfer.error.type"] for r in letters[len(BAD) :]] == [
        b"unknown_model"
    ] * len(paths)


@pytest.mark.parametrize("mode", ["kserve-grpc", "kserve-http", "tfserving-grpc", "tfserving-rest"])
def test_tabular_records_remote(
    mode: str,
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    delays: Path,
    flights_model: FlightsModel,
    server: ServerProcess,
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    start_worker(
        "--input", inp, "--output", out, "--mode", mode, "--server", server.target(mode),
        "--repo", str(delays), "--model", "delays", "--group-id", f"g-{inp}",
    )  # fmt: skip
    send_flights(kafka_settings, inp)
    assert_labels_and_dead_letters(kafka_settings, inp, out, flights_model.labels)
