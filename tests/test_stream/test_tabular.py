"""Tabular records end to end: a scikit-learn model trained here, imported, fed JSON flights.

The same records go through an embedded worker and a remote worker against our server;
both must give scikit-learn's labels, and malformed rows end in the DLQ naming the feature.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streaminfer.kafka.config import KafkaSettings
from streaminfer.models.imports import import_model
from streaminfer.processes import ManagedProcess
from tests.flights import FlightsModel, assert_labels_and_dead_letters, send_flights
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
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    embedded_worker(start_worker, delays, inp, out, "--model", "delays")
    send_flights(kafka_settings, inp)
    assert_labels_and_dead_letters(kafka_settings, inp, out, flights_model.labels)


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
