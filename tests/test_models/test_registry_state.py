"""The registry's state under concurrency: statuses, listeners, labels moving while lookups run.

In-process, on real tiny ONNX models exported into ``tmp_path``.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from streaminfer.errors import RecordError
from streaminfer.models.errors import ModelNotFound
from streaminfer.models.export.tiny import export_tiny_model, tiny_reference
from streaminfer.models.model_config import ModelConfig, VersionPolicy
from streaminfer.models.registry import ModelRegistry
from streaminfer.models.status import VersionState

X = np.arange(8, dtype=np.float32).reshape(2, 4)


def _states(registry: ModelRegistry, name: str) -> dict[int, VersionState]:
    return {s.version: s.state for s in registry.status(name)}


def _break(version_dir: Path) -> None:
    (version_dir / "model.onnx").write_bytes(b"not an onnx model")


def test_status_follows_each_version_through_its_life(tmp_path: Path) -> None:
    export_tiny_model(tmp_path, 1)
    registry = ModelRegistry(tmp_path)
    with pytest.raises(ModelNotFound):
        registry.status("tiny")
    registry.reload()
    assert _states(registry, "tiny") == {1: VersionState.AVAILABLE}

    export_tiny_model(tmp_path, 2)
    registry.reload()
    assert _states(registry, "tiny") == {1: VersionState.END, 2: VersionState.AVAILABLE}

    _break(export_tiny_model(tmp_path, 3))
    registry.reload()
    failed = registry.status("tiny")[-1]
    assert (failed.version, failed.state) == (3, VersionState.END)
    assert "cannot load" in failed.error
    assert registry.resolve("tiny").version == 2

    registry.set_configs([ModelConfig(name="other")], only_configured=True)
    assert registry.models() == []
    assert _states(registry, "tiny")[2] == VersionState.END
    registry.close()


def test_a_failed_version_is_retried_only_once_its_files_change(tmp_path: Path) -> None:
    export_tiny_model(tmp_path, 1)
    broken = export_tiny_model(tmp_path, 2)
    good_model = (broken / "model.onnx").read_bytes()
    _break(broken)
    registry = ModelRegistry(tmp_path)
    events: list[tuple[str, int]] = []
    registry.add_listener(lambda event, _name, version, _detail: events.append((event, version)))
    registry.reload()
    registry.reload()
    assert events.count(("failed", 2)) == 1, "an unchanged broken version is not reloaded"
    assert registry.resolve("tiny").version == 1, "the policy falls back to what loaded"

    (broken / "model.onnx").write_bytes(good_model)
    registry.reload()
    assert ("loaded", 2) in events
    assert registry.resolve("tiny").version == 2
    assert _states(registry, "tiny")[2] == VersionState.AVAILABLE
    registry.close()


def test_listeners_run_outside_the_lock(tmp_path: Path) -> None:
    """A listener may look the registry up from another thread without deadlocking it."""
    export_tiny_model(tmp_path, 1, "a")
    export_tiny_model(tmp_path, 1, "b")
    registry = ModelRegistry(tmp_path)
    resolved: list[int] = []
    served: list[list[str]] = []

    def look_up(event: str, name: str, version: int, _detail: str) -> None:
        if (event, name) != ("loaded", "a"):
            return
        other = threading.Thread(
            target=lambda: (
                resolved.append(registry.resolve("a").version),
                served.append(registry.models()),
            )
        )
        other.start()
        other.join(10)
        assert not other.is_alive(), "the lookup waited for the registry's lock"

    registry.add_listener(look_up)
    registry.reload()
    assert resolved == [1]
    assert "a" in served[0]
    assert registry.models() == ["a", "b"]
    registry.close()


def test_a_replaced_version_still_answers_callers_that_hold_it(tmp_path: Path) -> None:
    version_dir = export_tiny_model(tmp_path, 1)
    registry = ModelRegistry(tmp_path)
    registry.reload()
    held = registry.resolve("tiny")
    metadata = version_dir / "model.json"
    metadata.write_text(metadata.read_text().replace('"top_k": 1', '"top_k": 2'))
    registry.reload()

    current = registry.resolve("tiny")
    assert current is not held and current.metadata.top_k == 2
    assert held.batcher is not None and held.batcher.closed
    np.testing.assert_allclose(held.infer({"x": X})["y"], tiny_reference(X), rtol=1e-6)
    np.testing.assert_allclose(current.infer({"x": X})["y"], tiny_reference(X), rtol=1e-6)
    registry.close()


def test_close_stops_the_watcher_and_unloads_everything(tmp_path: Path) -> None:
    export_tiny_model(tmp_path, 1)
    registry = ModelRegistry(tmp_path)
    registry.reload()
    held = registry.resolve("tiny")
    registry.start_watching(interval=0.01)
    registry.close()
    assert registry.models() == [] and list(registry) == []
    assert held.batcher is not None and held.batcher.closed
    assert not any(t.name == "model-watcher" and t.is_alive() for t in threading.enumerate())


def test_lookups_stay_consistent_while_versions_and_labels_move(tmp_path: Path) -> None:
    """Readers on several threads while one thread moves labels and another adds and
    removes versions: every lookup answers or raises a record error, and every version
    a reader got computes the right answer, even after it was unloaded."""
    for version in (1, 2):
        export_tiny_model(tmp_path, version)
    policy = VersionPolicy(kind="latest", num_versions=2)
    registry = ModelRegistry(tmp_path, [ModelConfig(name="tiny", version_policy=policy)])
    registry.reload()
    done = threading.Event()
    failures: list[BaseException] = []
    reads = [0, 0, 0]

    def read(slot: int) -> None:
        while not done.is_set():
            try:
                registry.models(), registry.versions("tiny"), registry.status("tiny")
                labels = registry.labels("tiny")
                served = [registry.resolve("tiny"), *list(registry)]
                if "stable" in labels:
                    served.append(registry.resolve("tiny", label="stable"))
                for version in served:
                    np.testing.assert_allclose(
                        version.infer({"x": X})["y"], tiny_reference(X), rtol=1e-6
                    )
            except RecordError:
                pass  # a label or version that moved between two calls
            except BaseException as exc:  # anything else is a broken invariant
                failures.append(exc)
                return
            reads[slot] += 1

    def move_labels() -> None:
        turn = 0
        while not done.is_set():
            versions = registry.versions("tiny")
            try:
                if versions:
                    registry.set_labels("tiny", {"stable": versions[turn % len(versions)]})
                    registry.reload()  # while the main thread deletes versions
            except BaseException as exc:  # a reload must survive versions deleted under it
                failures.append(exc)
                return
            turn += 1

    threads = [threading.Thread(target=read, args=(slot,)) for slot in range(len(reads))]
    threads.append(threading.Thread(target=move_labels))
    for thread in threads:
        thread.start()
    try:
        for version in range(3, 7):
            export_tiny_model(tmp_path, version)
            registry.reload()
            shutil.rmtree(tmp_path / "tiny" / str(version - 2))
            registry.reload()
    finally:
        done.set()
        for thread in threads:
            thread.join(30)
    assert failures == []
    assert all(count > 0 for count in reads), reads
    registry.set_labels("tiny", {})
    registry.reload()
    assert registry.versions("tiny") == [5, 6]
    assert _states(registry, "tiny")[4] == VersionState.END
    registry.close()
