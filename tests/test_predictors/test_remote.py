"""Every remote client against a real ``streaminfer serve`` process on loopback ports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from streaminfer.errors import InfrastructureError, RecordError
from streaminfer.models.export.efficientnet import INPUT_NAME, OUTPUT_NAME
from streaminfer.models.export.tiny import export_tiny_model, tiny_reference
from streaminfer.models.metadata import METADATA_FILE
from streaminfer.models.registry import ModelRegistry
from streaminfer.predictors import (
    MODES,
    UNKNOWN_CLASS_ID,
    RemoteOptions,
    RemotePredictor,
    SeedStylePredictor,
    create_predictor,
)
from streaminfer.predictors.base import PredictRequest, PredictResult, waited_s
from streaminfer.predictors.factory import REMOTE
from tests.servers import ServerProcess
from tests.sums import assert_own_sums, export_column_sums
from tests.test_predictors.cases import (
    CAT_CLASSES,
    LABELS,
    MODEL,
    assert_classified,
    assert_mixed,
    image_batch,
    is_cat,
    is_espresso,
    mixed_batch,
    stacked_requests,
)


@pytest.fixture(params=list(REMOTE))
def client(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[RemotePredictor]:
    mode = request.param
    predictor = REMOTE[mode](server.target(mode), RemoteOptions(timeout_s=20.0))
    yield predictor
    predictor.close()


def test_classifies_a_micro_batch_in_one_request(
    client: RemotePredictor, server: ServerProcess, sample_jpegs: dict
) -> None:
    batch = image_batch(sample_jpegs)
    before, waited = server.requests_served(), waited_s()
    outcomes = client.predict(batch)
    # Two requests: the coffee asks for 3 classes, the cat for the model's default.
    assert server.requests_served() - before == 2
    assert_classified(outcomes, client.mode)
    calls = [o.timings_ms["inference"] for o in outcomes if isinstance(o, PredictResult)]
    assert waited_s() - waited >= sum(calls) / 1000 > 0  # the calls, counted for the lanes
    batch[0].top_k = 5
    before = server.requests_served()
    outcomes = client.predict([*batch, *batch])
    assert server.requests_served() - before == 1
    assert_classified(outcomes[:2], client.mode)
    assert_classified(outcomes[2:], client.mode)


def test_each_record_gets_its_own_top_k(client: RemotePredictor, sample_jpegs: dict) -> None:
    batch = [
        PredictRequest(model=MODEL, image=sample_jpegs[name], top_k=k)
        for name, k in (("chelsea", 2), ("coffee", 7), ("rocket", 1))
    ]
    outcomes = client.predict(batch)
    assert [len(o.predictions or []) for o in outcomes if isinstance(o, PredictResult)] == [2, 7, 1]


def test_bad_records_fail_alone(client: RemotePredictor, sample_jpegs: dict) -> None:
    outcomes = client.predict(mixed_batch(sample_jpegs))
    assert_mixed(outcomes)
    assert outcomes[1].reason == "rejected_by_server"  # type: ignore[union-attr]


def test_large_groups_are_split_and_a_bad_image_is_found(
    server: ServerProcess, sample_jpegs: dict
) -> None:
    options = RemoteOptions(timeout_s=20.0, max_batch_rows=3)
    predictor = REMOTE["kserve-grpc"](server.grpc_target, options)
    batch = [PredictRequest(model=MODEL, image=sample_jpegs["chelsea"]) for _ in range(7)]
    batch[4] = PredictRequest(model=MODEL, image=sample_jpegs["chelsea"][:200])  # truncated
    try:
        outcomes = predictor.predict(batch)
    finally:
        predictor.close()
    assert isinstance(outcomes[4], RecordError)
    good = [o for i, o in enumerate(outcomes) if i != 4]
    assert all(
        isinstance(o, PredictResult) and o.predictions and is_cat(o.predictions[0]) for o in good
    )


def test_tensor_requests(client: RemotePredictor) -> None:
    rng = np.random.default_rng(1)
    one, two = (rng.standard_normal((n, 3, 224, 224), dtype=np.float32) for n in (1, 2))
    batch = [
        PredictRequest(model=MODEL, tensors={INPUT_NAME: one}),
        PredictRequest(model=MODEL, tensors={INPUT_NAME: np.zeros((1, 3, 8, 8), np.float32)}),
        PredictRequest(model=MODEL, tensors={INPUT_NAME: two}),
    ]
    ok1, bad, ok2 = client.predict(batch)
    assert isinstance(bad, RecordError) and not isinstance(bad, InfrastructureError)
    assert isinstance(ok1, PredictResult) and ok1.outputs is not None
    assert isinstance(ok2, PredictResult) and ok2.outputs is not None
    assert ok1.outputs[OUTPUT_NAME].shape == (1, 1000)
    assert ok2.outputs[OUTPUT_NAME].shape == (2, 1000)
    assert ok1.version == 1
    (alone,) = client.predict([PredictRequest(model=MODEL, tensors={INPUT_NAME: two})])
    assert isinstance(alone, PredictResult) and alone.outputs is not None
    np.testing.assert_allclose(
        alone.outputs[OUTPUT_NAME], ok2.outputs[OUTPUT_NAME], rtol=1e-3, atol=1e-3
    )


@pytest.mark.parametrize("mode", list(REMOTE))
def test_a_stack_goes_in_chunks_of_whole_records_and_answers_as_alone(
    mode: str, server: ServerProcess
) -> None:
    rows = [1, 2, 1, 2, 1]
    stacked = {INPUT_NAME: np.random.default_rng(2).standard_normal((7, 3, 224, 224), np.float32)}
    batch = stacked_requests(MODEL, stacked, rows)
    options = RemoteOptions(timeout_s=20.0, max_batch_rows=3)
    predictor = create_predictor(mode, server=server.target(mode), options=options)
    try:
        before = server.requests_served()
        outcomes = predictor.predict_stacked(batch, stacked, rows)
        sent = server.requests_served() - before
        alone = [predictor.predict([request])[0] for request in batch]
    finally:
        predictor.close()
    assert sent == 3  # 1+2, 1+2, 1: a chunk never cuts a record
    for outcome, single, count in zip(outcomes, alone, rows, strict=True):
        assert isinstance(outcome, PredictResult) and outcome.outputs is not None
        assert isinstance(single, PredictResult) and single.outputs is not None
        assert outcome.outputs[OUTPUT_NAME].shape == (count, 1000)
        np.testing.assert_allclose(
            outcome.outputs[OUTPUT_NAME], single.outputs[OUTPUT_NAME], rtol=1e-3, atol=1e-3
        )


def test_a_stack_the_model_refuses_fails_each_record_alone(client: RemotePredictor) -> None:
    stacked = {INPUT_NAME: np.zeros((3, 3, 8, 8), np.float32)}
    batch = stacked_requests(MODEL, stacked, [1, 1, 1])
    outcomes = client.predict_stacked(batch, stacked, [1, 1, 1])
    assert len(outcomes) == 3
    for outcome in outcomes:
        assert isinstance(outcome, RecordError) and not isinstance(outcome, InfrastructureError)
        assert "shape" in str(outcome)


def _served_in_requests_of_five(mode: str, tmp_path: Path) -> tuple[float, float]:
    """Requests the server counted for two runs of a 40-row stack, through ``mode``, of a
    model that takes at most 5 rows a request; both runs' results checked."""
    export_tiny_model(tmp_path, version=1)
    metadata = tmp_path / "tiny" / "1" / METADATA_FILE
    metadata.write_text(json.dumps({**json.loads(metadata.read_text()), "max_batch_size": 5}))
    stacked = {"x": np.arange(160, dtype=np.float32).reshape(40, 4)}
    batch = stacked_requests("tiny", stacked, [1] * 40)
    counts = []
    with ServerProcess(tmp_path, log=tmp_path / "serve.log") as server:
        options = RemoteOptions(timeout_s=20.0, max_batch_rows=1024)  # the worker's default
        predictor = REMOTE[mode](server.target(mode), options)
        try:
            for _ in range(2):
                before = server.requests_served()
                outcomes = predictor.predict_stacked(batch, stacked, [1] * 40)
                counts.append(server.requests_served() - before)
                for outcome, x in zip(outcomes, stacked["x"], strict=True):
                    assert isinstance(outcome, PredictResult) and outcome.outputs is not None
                    np.testing.assert_allclose(outcome.outputs["y"], tiny_reference(x[None]), 1e-6)
        finally:
            predictor.close()
    return counts[0], counts[1]


@pytest.mark.parametrize("mode", ["tfserving-grpc", "tfserving-rest"])
def test_a_server_that_refuses_large_requests_is_sent_smaller_ones(
    mode: str, tmp_path: Path
) -> None:
    """TF Serving's API states no limit on rows: the predictor learns it from refusals."""
    first, second = _served_in_requests_of_five(mode, tmp_path)
    assert first > 8  # refused requests of 40, 20 and 10 rows before those of 5
    assert second == 8  # 40 rows in requests of 5 (halves of 10, the last size refused)


@pytest.mark.parametrize("mode", ["kserve-grpc", "kserve-http"])
def test_a_stated_limit_on_rows_is_kept_from_the_first_request(mode: str, tmp_path: Path) -> None:
    """Our server states its model's max_batch_size in Triton's model configuration (gRPC
    ModelConfig, HTTP /config), so not one request is refused."""
    assert _served_in_requests_of_five(mode, tmp_path) == (8, 8)


@pytest.mark.parametrize("mode", ["kserve-grpc", "tfserving-rest"])
def test_outputs_not_a_row_per_input_row_are_asked_one_record_at_a_time(
    mode: str, tmp_path: Path
) -> None:
    export_column_sums(tmp_path)
    rows = [1, 2, 1]
    stacked = {"x": np.arange(16, dtype=np.float32).reshape(4, 4)}
    batch = stacked_requests("sums", stacked, rows)
    # A long batching delay: the server would merge concurrent requests if it batched them.
    args = ("--max-batch-delay-ms", "300")
    with ServerProcess(tmp_path, *args, log=tmp_path / "serve.log") as server:
        predictor = REMOTE[mode](server.target(mode), RemoteOptions(timeout_s=20.0))
        try:
            answers = [predictor.predict_stacked(batch, stacked, rows), predictor.predict(batch)]
            with ThreadPoolExecutor(len(batch)) as pool:
                alone = pool.map(lambda request: predictor.predict([request])[0], batch)
                answers.append(list(alone))
        finally:
            predictor.close()
    for outcomes in answers:
        assert_own_sums(outcomes, batch)


def test_seed_style_classifies_one_record_per_call(
    server: ServerProcess, sample_jpegs: dict
) -> None:
    predictor = SeedStylePredictor(server.grpc_target)
    cat, junk = predictor.predict(
        [
            PredictRequest(model=MODEL, image=sample_jpegs["chelsea"]),
            PredictRequest(model=MODEL, image=b"not an image"),
        ]
    )
    assert isinstance(cat, PredictResult) and cat.predictions
    # The legacy API answers class names only, so the id is unknown.
    assert cat.predictions[0].class_id == UNKNOWN_CLASS_ID
    assert cat.predictions[0].label in {LABELS[c] for c in CAT_CLASSES}
    assert cat.mode == "seed-style"
    assert isinstance(junk, RecordError)


def test_concurrent_callers_share_one_connection(
    client: RemotePredictor, sample_jpegs: dict
) -> None:
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(client.predict, [image_batch(sample_jpegs)] * 8))
    for outcomes in answers:
        assert_classified(outcomes, client.mode)


@pytest.mark.parametrize("mode", MODES)
def test_factory_builds_every_mode(
    mode: str, server: ServerProcess, registry: ModelRegistry, sample_jpegs: dict
) -> None:
    predictor = create_predictor(
        mode, registry=registry, server=server.target(mode), fallback=mode in REMOTE
    )
    try:
        (outcome,) = predictor.predict([PredictRequest(model=MODEL, image=sample_jpegs["chelsea"])])
    finally:
        predictor.close()
    assert isinstance(outcome, PredictResult) and outcome.predictions
    assert outcome.predictions[0].label in {LABELS[c] for c in CAT_CLASSES}
    assert outcome.mode == mode


def test_versions_and_labels(client: RemotePredictor, sample_jpegs: dict) -> None:
    coffee = sample_jpegs["coffee"]
    pinned, labelled = client.predict(
        [
            PredictRequest(model=MODEL, version=1, image=coffee),
            PredictRequest(model=MODEL, label="canary", image=coffee),  # no such label
        ]
    )
    assert isinstance(pinned, PredictResult) and pinned.predictions
    assert pinned.version == 1 and is_espresso(pinned.predictions[0])
    assert isinstance(labelled, RecordError) and not isinstance(labelled, InfrastructureError)


@pytest.mark.parametrize("mode", ["kserve-grpc", "kserve-http"])
def test_requests_too_large_for_the_server_are_split(
    mode: str, model_repo: Path, tmp_path: Path
) -> None:
    """A server that takes at most 1 MiB refuses 4 x 600 KB; halves of halves get through."""
    small = ServerProcess(
        model_repo, log=tmp_path / "serve.log", env={"STREAMINFER_MAX_REQUEST_MB": "1"}
    )
    small.start()
    options = RemoteOptions(timeout_s=20.0, max_request_bytes=64 * 1024 * 1024)
    predictor = REMOTE[mode](small.target(mode), options)
    tensor = np.zeros((1, 3, 224, 224), np.float32)
    stacked = {INPUT_NAME: np.zeros((4, 3, 224, 224), np.float32)}
    try:
        outcomes = predictor.predict(
            [PredictRequest(model=MODEL, tensors={INPUT_NAME: tensor})] * 4
        )
        from_a_stack = predictor.predict_stacked(
            [PredictRequest(model=MODEL, tensors={INPUT_NAME: tensor})] * 4, stacked, [1] * 4
        )
    finally:
        predictor.close()
        small.stop()
    assert all(isinstance(o, PredictResult) for o in outcomes), outcomes
    assert all(isinstance(o, PredictResult) for o in from_a_stack), from_a_stack
