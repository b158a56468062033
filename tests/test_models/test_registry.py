"""The repository, version policies, labels, the watcher, the runtime and the batcher."""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pytest

from streaminfer.codecs.arrays import bytes_array
from streaminfer.models import runtime
from streaminfer.models.batcher import WORKER_BATCHING, BatchingConfig, DynamicBatcher, Overloaded
from streaminfer.models.errors import BadLabel, InvalidInput, ModelNotFound
from streaminfer.models.export.tiny import export_tiny_model, tiny_reference
from streaminfer.models.metadata import IMAGE_MAX_BATCH, ModelMetadata
from streaminfer.models.model_config import ModelConfig, VersionPolicy
from streaminfer.models.pipeline import classify, preprocess_images
from streaminfer.models.registry import ModelRegistry
from streaminfer.models.runtime import OnnxModel, RuntimeOptions
from streaminfer.models.status import VersionState
from tests.repository import MODEL
from tests.strings import STRINGS, TEXTS, export_string_identity
from tests.support import wait_for


def _tiny_repo(root: Path, versions: tuple[int, ...] = (1,)) -> Path:
    for version in versions:
        export_tiny_model(root, version)
    return root


def _copy_version(repo: Path, model: str, source: int, target: int) -> None:
    """Drop in a new version the way an exporter should: complete, then renamed."""
    staging = repo / model / f".tmp-{target}"
    shutil.copytree(repo / model / str(source), staging)
    staging.rename(repo / model / str(target))


def test_policies_pick_versions(tmp_path: Path) -> None:
    repo = _tiny_repo(tmp_path, (1, 2, 3))
    cases = {
        "latest": (VersionPolicy(), [3]),
        "latest-2": (VersionPolicy(num_versions=2), [2, 3]),
        "all": (VersionPolicy(kind="all"), [1, 2, 3]),
        "specific": (VersionPolicy(kind="specific", versions=[1, 3]), [1, 3]),
    }
    for policy, expected in cases.values():
        registry = ModelRegistry(repo, [ModelConfig(name="tiny", version_policy=policy)])
        registry.reload()
        assert registry.versions("tiny") == expected
        assert registry.resolve("tiny").version == max(expected)
        registry.close()


def test_labels_resolve_only_to_loaded_versions(tmp_path: Path) -> None:
    repo = _tiny_repo(tmp_path, (1, 2))
    config = ModelConfig(
        name="tiny",
        version_policy=VersionPolicy(kind="all"),
        labels={"stable": 1, "canary": 2, "gone": 7},
    )
    registry = ModelRegistry(repo, [config])
    registry.reload()
    assert registry.resolve("tiny", label="stable").version == 1
    assert registry.resolve("tiny", label="canary").version == 2
    assert registry.labels("tiny") == {"stable": 1, "canary": 2}
    with pytest.raises(BadLabel, match="points at no loaded version"):
        registry.resolve("tiny", label="gone")
    with pytest.raises(BadLabel):
        registry.resolve("tiny", label="nope")
    with pytest.raises(ModelNotFound, match="version 5"):
        registry.resolve("tiny", version=5)
    with pytest.raises(ModelNotFound, match="'other' is not served"):
        registry.resolve("other")
    registry.close()


def test_watcher_serves_new_versions_and_survives_broken_ones(tmp_path: Path) -> None:
    repo = _tiny_repo(tmp_path)
    registry = ModelRegistry(repo)
    events: list[tuple[str, int]] = []
    registry.add_listener(lambda event, _name, version, _detail: events.append((event, version)))
    registry.reload()
    registry.start_watching(interval=0.05)
    try:
        _copy_version(repo, "tiny", 1, 2)
        wait_for(lambda: registry.resolve("tiny").version == 2, 20, "version 2 to be served")
        assert ("loaded", 2) in events and ("unloaded", 1) in events

        broken = repo / "tiny" / ".tmp-3"
        shutil.copytree(repo / "tiny" / "2", broken)
        (broken / "model.onnx").write_bytes(b"this is not onnx")
        broken.rename(repo / "tiny" / "3")
        wait_for(lambda: ("failed", 3) in events, 20, "version 3 to fail to load")
        assert registry.resolve("tiny").version == 2, "the previous version keeps serving"
        assert registry.status("tiny")[-1].state == VersionState.END
        assert "cannot load" in registry.status("tiny")[-1].error

        shutil.rmtree(repo / "tiny" / "3")
        _copy_version(repo, "tiny", 2, 4)
        wait_for(lambda: registry.resolve("tiny").version == 4, 20, "version 4 to be served")
        x = np.ones((2, 4), dtype=np.float32)
        np.testing.assert_allclose(
            registry.resolve("tiny").infer({"x": x})["y"], tiny_reference(x), rtol=1e-6
        )
    finally:
        registry.close()


def test_replaced_version_is_reloaded(tmp_path: Path) -> None:
    repo = _tiny_repo(tmp_path)
    registry = ModelRegistry(repo)
    registry.reload()
    before = registry.resolve("tiny")
    (repo / "tiny" / "1" / "model.json").write_text(
        (repo / "tiny" / "1" / "model.json").read_text().replace('"top_k": 1', '"top_k": 3')
    )
    registry.reload()
    after = registry.resolve("tiny")
    assert after is not before and after.metadata.top_k == 3
    registry.close()


def test_runtime_validation_names_the_input(tmp_path: Path) -> None:
    registry = ModelRegistry(_tiny_repo(tmp_path))
    registry.reload()
    served = registry.resolve("tiny")
    with pytest.raises(InvalidInput, match=r"'x' has shape \[2, 3\], expected \[N, 4\]"):
        served.infer({"x": np.zeros((2, 3), dtype=np.float32)})
    with pytest.raises(InvalidInput, match="missing input 'x'"):
        served.infer({"z": np.zeros((1, 4), dtype=np.float32)})
    with pytest.raises(InvalidInput, match="'x' has <U1 values, the model takes float32"):
        served.infer({"x": np.array([["a", "b", "c", "d"]])})
    with pytest.raises(InvalidInput, match="'x' has values beyond float32's range"):
        served.infer({"x": np.array([[0, 1e39, 0, 0]])})  # not inf, as numpy's own cast
    ints = served.infer({"x": np.ones((1, 4), dtype=np.int64)})["y"]
    np.testing.assert_allclose(ints, tiny_reference(np.ones((1, 4))), rtol=1e-6)
    registry.close()


def test_string_inputs_reach_the_model_as_the_text_they_encode(tmp_path: Path) -> None:
    """ORT reads ``str``: bytes it would have made ``"b'abc'"``."""
    export_string_identity(tmp_path)
    registry = ModelRegistry(tmp_path)
    registry.reload()
    served = registry.resolve(STRINGS)
    given = bytes_array([text.encode() for text in TEXTS])
    assert served.infer({"s": given})["out"].tolist() == TEXTS
    assert served.infer({"s": np.array(TEXTS)})["out"].tolist() == TEXTS  # str as it is
    with pytest.raises(InvalidInput, match=r"'s': element 1 is not UTF-8 text"):
        served.infer({"s": bytes_array([b"ok", b"\xff\xfe"])})
    with pytest.raises(InvalidInput, match=r"'s': element 0 is not UTF-8 text"):
        served.infer({"s": np.array(["\ud800"], dtype=object)})  # a lone surrogate
    registry.close()


def test_a_merged_batch_holds_no_more_rows_than_one_request_may(
    model_repo: Path, tmp_path: Path
) -> None:
    for repo, model, most in (
        (model_repo, MODEL, IMAGE_MAX_BATCH),
        (_tiny_repo(tmp_path), "tiny", 4096),
    ):
        registry = ModelRegistry(repo, default_batching=BatchingConfig(max_batch_size=8192))
        registry.reload()
        batcher = registry.resolve(model).batcher
        assert batcher is not None and batcher.config.max_batch_size == most
        registry.close()


def test_warm_up_runs_are_cut_to_a_bounded_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _tiny_repo(tmp_path) / "tiny" / "1"
    model = OnnxModel(folder, ModelMetadata.read(folder), RuntimeOptions())
    rows: list[int] = []
    monkeypatch.setattr(model, "run", lambda inputs: rows.append(len(inputs["x"])))
    monkeypatch.setattr(runtime, "WARM_UP_BYTES", 100 * 16)  # 100 rows of 4 floats
    model.warm_up((1, 4096, 100))
    assert rows == [1, 64, 100]


def _part_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("onnx-part")]


def test_a_large_batch_runs_in_parts_at_once_with_the_same_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _tiny_repo(tmp_path) / "tiny" / "1"
    monkeypatch.setattr(runtime, "SPLIT_BYTES", 4 * 16)  # 4 rows of the tiny model
    options = RuntimeOptions(intra_op_threads=3, split_batches=True)
    model = OnnxModel(folder, ModelMetadata.read(folder), options)
    before = set(_part_threads())
    x = np.arange(28, dtype=np.float32).reshape(7, 4)
    for rows in (1, 3):  # a row a thread, or not enough input: run whole
        np.testing.assert_allclose(model.run({"x": x[:rows]})["y"], tiny_reference(x[:rows]))
    assert set(_part_threads()) == before
    answer = model.run({"x": x})["y"]  # 7 rows in parts of 3, 3 and 1
    np.testing.assert_allclose(answer, tiny_reference(x), rtol=1e-6)
    ours = set(_part_threads()) - before
    assert ours, "no part ran beside the caller"
    with pytest.raises(Exception, match="double"):  # every part refuses float64: it is raised
        model.run({"x": x.astype(np.float64)})
    np.testing.assert_allclose(model.run({"x": x})["y"], answer)  # and the next batch runs
    model.close()
    wait_for(lambda: not any(t.is_alive() for t in ours), what="the part threads gone")


@pytest.mark.parametrize(
    "options", [RuntimeOptions(intra_op_threads=2), RuntimeOptions(1, split_batches=True)]
)
def test_a_batch_runs_whole_by_default_or_on_one_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: RuntimeOptions
) -> None:
    folder = _tiny_repo(tmp_path) / "tiny" / "1"
    monkeypatch.setattr(runtime, "SPLIT_BYTES", 16)
    model = OnnxModel(folder, ModelMetadata.read(folder), options)
    before = set(_part_threads())
    x = np.arange(64, dtype=np.float32).reshape(16, 4)
    np.testing.assert_allclose(model.run({"x": x})["y"], tiny_reference(x), rtol=1e-6)
    assert set(_part_threads()) == before
    model.close()


def _held_run(
    calls: list[int], gate: threading.Event
) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """A model run that notes its rows in ``calls`` and doubles its input, each run held
    until ``gate`` is set so that the callers after the first queue up behind it."""

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        gate.wait(5)
        return {"y": inputs["x"] * 2}

    return run


def test_batcher_coalesces_concurrent_callers() -> None:
    calls: list[int] = []
    gate = threading.Event()
    run = _held_run(calls, gate)
    batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=8, max_batch_delay_ms=50))
    rows = [np.full((1, 4), i, dtype=np.float32) for i in range(17)]
    with ThreadPoolExecutor(17) as pool:
        futures = [pool.submit(batcher.infer, {"x": row}) for row in rows]
        wait_for(lambda: calls and batcher.queue_depth == 17 - calls[0], 10, "callers to queue")
        gate.set()
        results = [f.result(10) for f in futures]
    batcher.close()
    for row, result in zip(rows, results, strict=True):
        np.testing.assert_array_equal(result["y"], row * 2)
    assert sum(calls) == 17 and max(calls) == 8 and len(calls) < 17


def test_batcher_merges_large_rows_up_to_its_bytes() -> None:
    calls: list[int] = []
    gate = threading.Event()
    run = _held_run(calls, gate)
    row_bytes = 4 * 1024  # a row of 1,024 floats: 8 rows fill the bytes
    config = BatchingConfig(max_batch_size=4096, max_batch_delay_ms=50, merge_bytes=8 * row_bytes)
    batcher = DynamicBatcher(run, config)
    requests = [np.full((3, 1024), i, dtype=np.float32) for i in range(9)]
    with ThreadPoolExecutor(9) as pool:
        futures = [pool.submit(batcher.infer, {"x": requests[0]})]
        wait_for(lambda: calls == [3], 10, "the first run")
        futures += [pool.submit(batcher.infer, {"x": x}) for x in requests[1:]]
        wait_for(lambda: batcher.queue_depth == 8, 10, "callers to queue")
        gate.set()
        results = [f.result(10) for f in futures]
    batcher.close()
    for x, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], x * 2)
    assert calls == [3, 6, 6, 6, 6]  # two requests of 3 rows fit 8 rows' bytes, three do not


def test_batcher_keeps_different_shapes_apart_and_reports_errors() -> None:
    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if inputs["x"].shape[1] == 3:
            raise ValueError("three is bad")
        return {"y": inputs["x"].sum(axis=1)}

    batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=4, max_batch_delay_ms=20))
    with ThreadPoolExecutor(4) as pool:
        good = pool.submit(batcher.infer, {"x": np.ones((2, 4), dtype=np.float32)})
        bad = pool.submit(batcher.infer, {"x": np.ones((1, 3), dtype=np.float32)})
        np.testing.assert_array_equal(good.result(5)["y"], [4, 4])
        with pytest.raises(ValueError, match="three is bad"):
            bad.result(5)
    batcher.close()


def test_batcher_runs_a_large_request_in_slices_of_max_batch_size() -> None:
    calls: list[int] = []

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"] + 1}

    batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=4, max_batch_delay_ms=0))
    rows = np.arange(22, dtype=np.float32).reshape(11, 2)
    np.testing.assert_array_equal(batcher.infer({"x": rows})["y"], rows + 1)
    batcher.close()
    assert sorted(calls) == [3, 4, 4]


def test_a_workers_batcher_slices_a_micro_batch_by_bytes_not_rows() -> None:
    calls: list[int] = []

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"] + 1}

    rows = np.arange(22, dtype=np.float32).reshape(11, 2)  # 8 bytes a row
    whole = WORKER_BATCHING.model_copy(update={"max_batch_size": 4, "max_batch_delay_ms": 0})
    by_bytes = whole.model_copy(update={"slice_bytes": 64})  # 8 rows a slice
    big_rows = whole.model_copy(update={"slice_bytes": 8})  # 1 row: max_batch_size rules
    for config in (whole, by_bytes, big_rows):
        batcher = DynamicBatcher(run, config)
        np.testing.assert_array_equal(batcher.infer({"x": rows})["y"], rows + 1)
        batcher.close()
    assert calls == [11, 8, 3, 4, 4, 3]


def test_batcher_queue_bound_counts_requests_not_their_slices() -> None:
    """A request cut into more slices than ``max_queue`` is served on an idle batcher, and
    waiting requests count once however many slices they were cut into: two of 5 slices
    each leave room for a third request (the slices were counted, so a few large
    requests refused everyone else's).  A full queue refuses the next request, whole."""
    gate = threading.Event()

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        gate.wait(5)
        return {"y": inputs["x"] * 2}

    batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=2, max_queue=3))
    big = np.arange(20, dtype=np.float32).reshape(10, 2)  # 5 slices, past max_queue
    gate.set()
    np.testing.assert_array_equal(batcher.infer({"x": big})["y"], big * 2)
    gate.clear()
    held = [batcher.submit({"x": big[:2]})]  # a full batch: it runs, held at the gate
    wait_for(lambda: batcher.queue_depth == 0, 10, "the runner to take it")
    held += [batcher.submit({"x": big}) for _ in range(2)]  # 10 slices wait: 2 requests
    assert batcher.queue_depth == 2
    held.append(batcher.submit({"x": big[:2]}))
    assert batcher.queue_depth == 3
    with pytest.raises(Overloaded, match="more than 3 requests waiting"):
        batcher.submit({"x": big})
    gate.set()
    answers = [np.concatenate([p.result(5)["y"] for p in parts]) for parts in held]
    for answer, sent in zip(answers, [big[:2], big, big, big[:2]], strict=True):
        np.testing.assert_array_equal(answer, sent * 2)
    wait_for(lambda: batcher.queue_depth == 0, 10, "every request to be taken")
    batcher.close()


def _close_while_submitting(batcher: DynamicBatcher) -> list[Future[dict[str, np.ndarray]]]:
    """Three threads submit 200 requests each; the batcher closes once they are under way."""
    futures: list[Future[dict[str, np.ndarray]]] = []
    busy = threading.Event()

    def submit_many() -> None:
        for i in range(200):
            futures.extend(batcher.submit({"x": np.full((1, 2), i)}))
            if i == 20:
                busy.set()

    clients = [threading.Thread(target=submit_many) for _ in range(3)]
    for client in clients:
        client.start()
    busy.wait(10)
    batcher.close()
    for client in clients:
        client.join(10)
    return futures


def test_batcher_answers_every_request_submitted_while_it_closes() -> None:
    """A submit racing close() is either queued ahead of the stop or answered unbatched,
    never stranded behind it (as an unloading version's late callers would be)."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so the race shows up in a few trials
    try:
        for _ in range(30):
            config = BatchingConfig(max_batch_delay_ms=0, max_queue=10_000)
            futures = _close_while_submitting(DynamicBatcher(lambda inputs: inputs, config))
            stranded = wait(futures, timeout=10).not_done
            assert not stranded, f"{len(stranded)} of {len(futures)} requests never answered"
    finally:
        sys.setswitchinterval(previous)


def test_image_batches_equal_one_by_one(model_repo: Path, sample_jpegs: dict[str, bytes]) -> None:
    registry = ModelRegistry(model_repo)
    registry.reload()
    served = registry.resolve("efficientnet-lite0")
    images = list(sample_jpegs.values())
    together = classify(served, preprocess_images(served, images), 5)
    alone = [classify(served, preprocess_images(served, [image]), 5)[0] for image in images]
    for a, b in zip(together, alone, strict=True):
        assert [p.class_id for p in a] == [p.class_id for p in b]
        np.testing.assert_allclose([p.score for p in a], [p.score for p in b], atol=1e-5)
    assert together[0][0].class_id in {281, 282, 285}
    assert together[1][0].label == "espresso"
    assert {p.class_id for p in together[2][:3]} & {657, 744, 812}
    registry.close()


def test_a_version_failing_in_both_passes_leaves_the_last_one_serving(tmp_path: Path) -> None:
    """A version whose files change while it is written or deleted can fail in both of a
    reload's passes: the version already loaded must keep serving."""
    repo = _tiny_repo(tmp_path)
    registry = ModelRegistry(repo)
    registry.reload()
    broken = repo / "tiny" / "2"
    shutil.copytree(repo / "tiny" / "1", broken)
    (broken / "model.onnx").write_bytes(b"not onnx")
    failures: list[int] = []

    def still_changing(event: str, _name: str, version: int, _detail: str) -> None:
        if event == "failed" and version == 2:  # as if more of it were written meanwhile
            failures.append(version)
            (broken / "model.onnx").write_bytes(b"still not onnx" * len(failures))

    registry.add_listener(still_changing)
    try:
        registry.reload()
        assert len(failures) == 2  # it failed in both passes
        assert registry.resolve("tiny").version == 1
    finally:
        registry.close()
