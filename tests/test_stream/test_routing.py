"""A/B splits sticky per key, and shadow traffic that never touches the primary output."""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from streaminfer.errors import ConfigError
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import produce
from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.stream.routing import Route, Target
from tests.support import wait_for
from tests.workers import decoded, embedded_worker, outputs


def test_route_parsing() -> None:
    route = Route.parse("stable=90, canary=10")
    assert route.targets == ((Target(label="stable"), 90), (Target(label="canary"), 10))
    assert Route.parse("v1=1,2=3").targets == ((Target(version=1), 1), (Target(version=2), 3))
    for bad in ("stable", "stable=x", "a=0,b=0", "a=1,a=2", "=5", "a b=1"):
        with pytest.raises(ConfigError):
            Route.parse(bad)


def test_split_follows_the_weights_and_keys_stick() -> None:
    route = Route.parse("stable=90,canary=10")
    picks = Counter(route.choose(f"key-{i}".encode()).name for i in range(20_000))
    assert abs(picks["canary"] / 20_000 - 0.10) < 0.01
    assert all(
        route.choose(f"key-{i}".encode()) == route.choose(f"key-{i}".encode()) for i in range(1000)
    )
    # Changing the weights moves only the keys whose bucket changes side.
    wider = Route.parse("stable=80,canary=20")
    moved = [
        i
        for i in range(5000)
        if route.choose(f"key-{i}".encode()).name == "canary"
        and wider.choose(f"key-{i}".encode()).name != "canary"
    ]
    assert moved == []


@pytest.fixture
def two_versions(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    export_tiny_model(repo, 1)
    export_tiny_model(repo, 2)
    return repo


def _keyed(count: int, repeats: int) -> list[bytes]:
    doc = json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}})
    return [f"user-{i}\t{doc}".encode() for _ in range(repeats) for i in range(count)]


def test_worker_splits_90_10_and_a_key_keeps_its_version(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    two_versions: Path,
) -> None:
    inp, out = topic_factory("in", partitions=2), topic_factory("out", partitions=2)
    embedded_worker(start_worker, two_versions, inp, out, "--model", "tiny", "--route", "1=90,2=10")
    produce(kafka_settings, inp, _keyed(1500, 2), key_delimiter=b"\t")
    records = outputs(kafka_settings, out, 3000)
    versions_by_key: dict[bytes | None, set[int]] = defaultdict(set)
    for record, doc in zip(records, decoded(records), strict=True):
        versions_by_key[record.key].add(doc["model"]["version"])
        assert doc["route"] == f"v{doc['model']['version']}"
    assert all(len(v) == 1 for v in versions_by_key.values()), "a key changed version"
    canary = sum(1 for v in versions_by_key.values() if v == {2}) / len(versions_by_key)
    assert abs(canary - 0.10) < 0.03


def test_shadow_results_and_a_dead_shadow_leave_the_primary_alone(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    two_versions: Path,
    bootstrap: str,
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    shadow = topic_factory("shadow")
    worker = embedded_worker(
        start_worker, two_versions, inp, out, "--model", "tiny", "--version", "1",
        "--shadow", "2", "--shadow-topic", shadow,
    )  # fmt: skip
    produce(kafka_settings, inp, _keyed(50, 1), key_delimiter=b"\t")
    primary = decoded(outputs(kafka_settings, out, 50))
    assert {d["model"]["version"] for d in primary} == {1}
    mirrored = decoded(outputs(kafka_settings, shadow, 50))
    assert {d["shadow"]["model"]["version"] for d in mirrored} == {2}
    assert {d["primary"]["model"]["version"] for d in mirrored} == {1}
    assert mirrored[0]["shadow"]["outputs"] == mirrored[0]["primary"]["outputs"]

    shutil.rmtree(two_versions / "tiny" / "2")  # the shadow version disappears
    wait_for(lambda: "unloaded model tiny version 2" in worker.log(), 30, "version 2 unloaded")
    produce(kafka_settings, inp, _keyed(50, 1), key_delimiter=b"\t")
    primary = decoded(outputs(kafka_settings, out, 100))
    assert {d["model"]["version"] for d in primary} == {1}
    mirrored = decoded(outputs(kafka_settings, shadow, 100))
    assert all("shadow_error" in d for d in mirrored[50:])
    assert worker.alive()


def test_a_handlers_text_output_is_mirrored_too(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    two_versions: Path,
) -> None:
    """A ``--handler`` may write outputs that are not JSON: the shadow mirrors them as
    text.  Its thread read each as JSON and died at the first, so nothing was mirrored."""
    inp, out = topic_factory("in"), topic_factory("out")
    shadow = topic_factory("shadow")
    worker = embedded_worker(
        start_worker, two_versions, inp, out, "--model", "tiny", "--version", "1",
        "--shadow", "2", "--shadow-topic", shadow,
        "--handler", "tests.handler_examples:Relabel",
    )  # fmt: skip
    produce(kafka_settings, inp, _keyed(20, 1), key_delimiter=b"\t")
    primary = outputs(kafka_settings, out, 20)
    mirrored = decoded(outputs(kafka_settings, shadow, 20))
    assert [d["primary"] for d in mirrored] == [r.value.decode() for r in primary if r.value]
    assert {d["shadow"]["model"]["version"] for d in mirrored} == {2}
    assert worker.alive()
