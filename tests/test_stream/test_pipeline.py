"""The record pipeline in process: a real embedded model and image fetcher, no Kafka (and
a real server for the remote predictors)."""

from __future__ import annotations

import gc
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaminfer.errors import InfrastructureError, RequestFailed
from streaminfer.handlers import load_handler
from streaminfer.images import FetchPolicy, ImageFetcher
from streaminfer.models.export.tiny import export_tiny_model, tiny_reference
from streaminfer.models.registry import ModelRegistry
from streaminfer.predictors import RemoteOptions, create_predictor
from streaminfer.predictors.base import Outcome, Predictor, PredictRequest, waited_s
from streaminfer.predictors.embedded import EmbeddedPredictor
from streaminfer.predictors.factory import REMOTE
from streaminfer.predictors.resilience import RetryPolicy
from streaminfer.stream.metrics import WorkerMetrics
from streaminfer.stream.outputs import TRUNCATED_HEADER, size
from streaminfer.stream.pipeline import Defaults, Pipeline, parse, route
from streaminfer.stream.records import (
    TRACE_HEADER,
    TRACE_IDS_AT_ONCE,
    Source,
    new_trace_id,
    trace_headers,
)
from streaminfer.stream.routing import Route
from streaminfer.stream.work import InputRecord, Work
from streaminfer.stream.worker import YOUNG_COLLECTION_OBJECTS, settle_collector
from streaminfer.types import Tensors
from tests.servers import ServerProcess

OUT, DLQ = "out", "out.dlq"
LIMITS = {OUT: 1_000_000, DLQ: 1_000_000}


@pytest.fixture(scope="module")
def tiny() -> Iterator[EmbeddedPredictor]:
    import tempfile

    with tempfile.TemporaryDirectory() as repo:
        export_tiny_model(Path(repo), version=1)
        registry = ModelRegistry(Path(repo))
        registry.reload()
        predictor = EmbeddedPredictor(registry, 1)
        yield predictor
        predictor.close()
        registry.close()


def record(value: bytes | None, offset: int = 0, key: bytes | None = None) -> InputRecord:
    return InputRecord(key, value, [], Source("in", 0, offset, None), consumed_at=0.0)


def tensor(rows: list[list[float]], **fields: object) -> bytes:
    return json.dumps({"model": "tiny", "inputs": {"x": rows}, **fields}).encode()


def pipeline(
    predictor: Predictor,
    limits: dict[str, int] = LIMITS,
    kind: type[Pipeline] = Pipeline,
    **defaults: object,
) -> Pipeline:
    settings = Defaults(model="tiny", **defaults)  # type: ignore[arg-type]
    fetcher = ImageFetcher(FetchPolicy())
    return kind(
        settings,
        predictor,
        fetcher,
        WorkerMetrics(),
        output_topic=OUT,
        dead_letter_topic=DLQ,
        max_bytes=limits,
        retry=RetryPolicy(max_attempts=None, initial_backoff_s=0.001, max_backoff_s=0.001),
    )


def run(p: Pipeline, *values: bytes | None) -> list[Work]:
    return p.process([record(v, i) for i, v in enumerate(values)], threading.Event())


def test_each_record_gets_its_own_answer(tiny: EmbeddedPredictor) -> None:
    rows = [[1.0, 2.0, 3.0, 4.0]], [[0.0, 0.0, 0.0, 1.0], [5.0, 5.0, 5.0, 5.0]]
    done = run(pipeline(tiny), *(tensor(r) for r in rows))
    for work, x in zip(done, rows, strict=True):
        assert work.error is None and work.result is not None and work.result.outputs
        np.testing.assert_allclose(work.result.outputs["y"], tiny_reference(np.array(x)), 1e-6)


def test_a_download_and_a_model_run_count_as_waits(tiny: EmbeddedPredictor) -> None:
    """The worker runs chunks side by side only while they wait more than they hold the GIL."""
    waited = waited_s()
    (fetched,) = run(pipeline(tiny), b"data:;base64,aGVsbG8=")
    assert fetched.request is not None and fetched.request.image == b"hello"
    after_fetch = waited_s()
    assert after_fetch > waited
    (served,) = run(pipeline(tiny), tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert served.result is not None
    assert waited_s() - after_fetch >= served.result.timings_ms["inference"] / 1000 > 0


HOSTILE = {
    "deep JSON": b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "5000-digit int": b'{"model":"tiny","top_k":' + b"9" * 5000 + b',"inputs":{"x":[[1,2,3,4]]}}',
    "IDNA-refused host": ("http://" + "\u0130" * 70 + ".example/x.jpg").encode(),
    "lone surrogate in JSON": b'{"url":"http://\\ud800.example/"}',
    "not UTF-8": b"\xff\xfe\x00garbage",
    "empty": b"",
    "None": None,
    "ragged tensor": tensor([[1.0, 2.0], [1.0]]),
    "strings as floats": tensor([["a", "b", "c", "d"]]),
    "wrong width": tensor([[1.0, 2.0, 3.0]]),
}


def test_hostile_records_each_fail_alone(tiny: EmbeddedPredictor) -> None:
    good = tensor([[1.0, 1.0, 1.0, 1.0]])
    values = [good, *HOSTILE.values(), good]
    p = pipeline(tiny)
    done = run(p, *values)
    assert done[0].error is None and done[-1].error is None
    for name, work in zip(HOSTILE, done[1:-1], strict=True):
        assert work.error is not None, name
        (letter,) = p.produced([work])
        assert letter.topic == DLQ and letter.value == work.record.value, name
        headers = dict(letter.headers)
        assert headers["streaminfer.error.type"] == work.error.reason.encode(), name
    reasons = {name: w.error.reason for name, w in zip(HOSTILE, done[1:-1], strict=True) if w.error}
    assert reasons["deep JSON"] == "bad_json"
    assert reasons["wrong width"] != "internal_error"


class Counting(Predictor):
    """Our own predictor interface around the real model, counting how it is called."""

    mode = "counting"

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner
        self.calls: list[tuple[str, int]] = []

    def predict(self, batch: list[PredictRequest]) -> list[Outcome]:
        self.calls.append(("predict", len(batch)))
        return self.inner.predict(batch)

    def predict_stacked(
        self, batch: list[PredictRequest], stacked: Tensors, rows: list[int]
    ) -> list[Outcome]:
        self.calls.append(("stacked", len(batch)))
        return self.inner.predict_stacked(batch, stacked, rows)


def outcome(work: Work) -> tuple[object, ...]:
    if work.error is not None:
        return ("failed", work.error.reason, str(work.error))
    assert work.result is not None and work.result.outputs is not None
    return ("served", {name: a.tolist() for name, a in work.result.outputs.items()})


def test_plain_tensor_records_run_as_one_stack(tiny: EmbeddedPredictor) -> None:
    counting = Counting(tiny)
    rows = [[[float(i), 1, 2, 3]] * (1 + i % 3) for i in range(40)]
    ids = [{"id": f"r{i}"} if i % 2 else {} for i in range(40)]
    p = pipeline(counting)
    done = run(p, *(tensor(r, **i) for r, i in zip(rows, ids, strict=True)))
    assert counting.calls == [("stacked", 40)]
    assert [json.loads(r.value or b"")["id"] for r in p.produced(done[:3])] == [
        "in-0-0",
        "r1",
        "in-0-2",
    ]
    for work, x in zip(done, rows, strict=True):
        assert work.result is not None and work.result.outputs is not None
        np.testing.assert_allclose(work.result.outputs["y"], tiny_reference(np.array(x)), 1e-6)
        assert work.predict is not None and work.predict.tensors is not None
        assert work.predict.tensors["x"].tolist() == x  # the record's own rows: for a shadow


STACKED_WITH = {  # records that stack with plain ones, or are read beside them
    "ints": tensor([[1, 2, 3, 4]]),
    "two rows of floats": tensor([[0.5, 1, 1, 1], [2, 2, 2, 2]]),
    "bools": tensor([[True, False, True, False]]),
    "no model": json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}}).encode(),
    "null model": json.dumps({"model": None, "inputs": {"x": [[4, 3, 2, 1]]}}).encode(),
    "another model": json.dumps({"model": "nope", "inputs": {"x": [[1, 2, 3, 4]]}}).encode(),
    "an id": tensor([[1, 1, 1, 1]], id="mine"),
    "a top_k": tensor([[2, 2, 2, 2]], top_k=3),
    "a number for an id": tensor([[1, 1, 1, 1]], id=7),
    "ragged": tensor([[1, 2], [1]]),
    "strings": tensor([["a", "b", "c", "d"]]),
    "wrong width": tensor([[1, 2, 3]]),
    "one level deeper": tensor([[[1, 2, 3, 4]]]),
    "flat": tensor([1, 2, 3, 4]),  # type: ignore[list-item]
    "a null": tensor([[None, 1, 2, 3]]),  # type: ignore[list-item]
    "past int64": tensor([[2**70, 0, 0, 0]]),
    "both ends of int64": tensor([[-(2**63), 2**64 - 1, 0, 0]]),
    "an unknown input": json.dumps({"inputs": {"x": [[1, 2, 3, 4]], "z": [[1]]}}).encode(),
    "rows of two lengths": json.dumps({"inputs": {"x": [[1, 2, 3, 4]], "z": []}}).encode(),
    "no rows": json.dumps({"inputs": {"x": []}}).encode(),
    "an escaped key": b'{"\\u0069nputs": {"x": [[1, 2, 3, 4]]}}',
}


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("tiny-repo")
    export_tiny_model(repo, version=1)
    with ServerProcess(repo, log=repo / "serve.log") as server:
        yield server


@contextmanager
def tiny_predictor(request: pytest.FixtureRequest, tiny: EmbeddedPredictor) -> Iterator[Predictor]:
    """The embedded predictor, or a remote one (with its retries) against a real server."""
    mode = request.param
    if mode == "embedded":
        yield tiny
        return
    server: ServerProcess = request.getfixturevalue("tiny_server")
    options = RemoteOptions(timeout_s=20.0, max_batch_rows=2)  # a stack goes in chunks
    predictor = create_predictor(mode, server=server.target(mode), options=options)
    try:
        yield predictor
    finally:
        predictor.close()


@pytest.fixture(params=["embedded", *REMOTE])
def stacking(request: pytest.FixtureRequest, tiny: EmbeddedPredictor) -> Iterator[Predictor]:
    with tiny_predictor(request, tiny) as predictor:
        yield predictor


@pytest.mark.parametrize("name", list(STACKED_WITH))
def test_a_record_gets_in_a_stack_what_it_gets_alone(stacking: Predictor, name: str) -> None:
    """Whatever one record holds, stacking it with others changes nothing for it or them."""
    p = pipeline(stacking)
    others = [v for n, v in STACKED_WITH.items() if n != name]
    value = STACKED_WITH[name]
    together = run(p, others[0], value, *others[1:])
    alone = [run(p, v)[0] for v in (others[0], value, *others[1:])]
    assert [outcome(w) for w in together] == [outcome(w) for w in alone]
    everything = run(p, *STACKED_WITH.values())
    served = {n for n, w in zip(STACKED_WITH, everything, strict=True) if not w.error}
    numbers = {"ints", "two rows of floats", "bools", "no model", "null model", "an id", "a top_k"}
    as_floats = {"past int64", "both ends of int64"}  # JSON reads them as floats
    assert served == numbers | as_floats | {"an escaped key"}


# Records shaped like the ones the worker reads, with wrong types, ragged rows, numbers
# past every dtype, and bytes cut or replaced: whatever stacks or fails beside them.
_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
_numbers = (
    st.integers(-9, 9) | st.floats(-1e6, 1e6) | st.sampled_from([True, 1e308, 2**63, -(2**63) - 1])
)
_rows = st.lists(st.lists(_numbers, min_size=3, max_size=5), max_size=3) | _json
_routing = {
    "model": st.sampled_from(["tiny", "nope", "", None, 3]),
    "id": st.text(max_size=3) | st.integers() | st.none(),
}
_fields = {
    **_routing,
    "top_k": st.integers(-1, 5) | st.booleans() | st.none(),
    "version": st.integers(-1, 2) | st.none(),
    "label": st.text(max_size=2) | st.none(),
}
_inputs = st.fixed_dictionaries({"x": _rows}) | st.dictionaries(st.sampled_from(["x", "y"]), _rows)
_documents = (
    st.fixed_dictionaries({"inputs": _inputs}, optional=_routing)  # the ones that may stack
    | st.fixed_dictionaries({"inputs": _inputs | _json}, optional=_fields)
    | st.fixed_dictionaries(
        {"instances": st.lists(st.dictionaries(st.sampled_from(["x", "y"]), _rows), max_size=3)},
        optional=_fields,
    )
    | st.dictionaries(st.sampled_from([*_fields, "inputs", "instances", "url", "features"]), _json)
)


def _json_bytes(document: object) -> bytes:
    return json.dumps(document).encode()  # NaN and Infinity as Python writes them: not JSON


def _damaged(value: bytes, at: int, new: bytes) -> bytes:
    at %= len(value) or 1
    return value[:at] + new + value[at + 1 :]


_values = (
    _documents.map(_json_bytes)
    | st.builds(_damaged, _documents.map(_json_bytes), st.integers(0, 200), st.binary(max_size=2))
    | st.binary(max_size=40)
)


class Unstacked(Pipeline):
    """Every record through the steps, one by one: what a stack must give each of them."""

    def _serve_stacked(self, batch: list[Work], abandoned: threading.Event) -> list[Work]:
        return batch


@pytest.fixture(scope="module", params=["embedded", *REMOTE])
def tiny_pipelines(
    request: pytest.FixtureRequest, tiny: EmbeddedPredictor
) -> Iterator[tuple[Pipeline, Pipeline]]:
    """The pipeline, and one without stacks, embedded or against a real server; made once
    for all examples (a fetcher's TLS context takes 40 ms)."""
    with tiny_predictor(request, tiny) as predictor:
        stacking, unstacked = pipeline(predictor), pipeline(predictor, kind=Unstacked)
        yield stacking, unstacked
        stacking.close()
        unstacked.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(_values, min_size=1, max_size=6))
def test_any_records_stacked_each_end_as_alone_with_a_reason(
    tiny_pipelines: tuple[Pipeline, Pipeline], values: list[bytes]
) -> None:
    """Each record ends in the output or the DLQ with a reason no bug made, whatever
    stacks beside it, and just as it ends alone and through the steps one by one."""
    p, unstacked = tiny_pipelines
    together = run(p, *values)
    produced = p.produced(together)
    assert len(produced) == len(values)
    for work, written in zip(together, produced, strict=True):
        if work.error is None:
            assert written.topic == OUT and isinstance(json.loads(written.value or b""), dict)
        else:
            assert work.error.reason != "internal_error", (work.record.value, work.error)
            assert written.topic == DLQ and written.value == work.record.value
    alone = [repr(outcome(run(p, v)[0])) for v in values]
    assert [repr(outcome(w)) for w in together] == alone  # repr: a NaN output equals itself
    one_by_one = [repr(outcome(w)[:2]) for w in run(unstacked, *values)]
    assert [repr(outcome(w)[:2]) for w in together] == one_by_one  # reasons, not messages


class Flaky(Predictor):
    """Our own predictor interface around the real model: the way a bug looks to the worker."""

    mode = "flaky"

    def __init__(self, inner: Predictor, outages: int = 0) -> None:
        self.inner = inner
        self.outages = outages
        self.calls = 0

    def predict(self, batch: list[PredictRequest]) -> list[Outcome]:
        self.calls += 1
        if self.outages:
            self.outages -= 1
            raise InfrastructureError("server down")
        if any(r.tensors is not None and r.tensors["x"][0][0] == 666 for r in batch):
            raise ZeroDivisionError("a bug that only this record triggers")
        if any(r.tensors is not None and r.tensors["x"][0][0] == 777 for r in batch):
            raise RequestFailed("INTERNAL: the backend failed on this input")
        return self.inner.predict(batch)


def test_an_unexpected_predict_failure_is_narrowed_to_its_record(tiny: EmbeddedPredictor) -> None:
    values = [tensor([[float(i), 0, 0, 0]]) for i in range(7)]
    values[4] = tensor([[666.0, 0, 0, 0]])
    done = run(pipeline(Flaky(tiny)), *values)
    assert [w.error is None for w in done] == [True] * 4 + [False] + [True] * 2
    failed = done[4].error
    assert failed is not None and failed.reason == "internal_error"
    assert "ZeroDivisionError" in str(failed)


def test_a_record_a_healthy_server_refuses_is_dead_lettered_alone(
    tiny: EmbeddedPredictor,
) -> None:
    values = [tensor([[float(i), 0, 0, 0]]) for i in range(6)]
    values[2] = tensor([[777.0, 0, 0, 0]])
    flaky = Flaky(tiny)
    done = run(pipeline(flaky), *values)
    assert [w.error is None for w in done] == [True, True, False, True, True, True]
    failed = done[2].error
    assert failed is not None and failed.reason == "server_error" and "INTERNAL" in str(failed)
    # 1 batch call, then a split search (log2 of 6 levels), then 3 tries of the culprit alone
    assert flaky.calls <= 1 + 2 * 3 + 3


def test_an_outage_is_retried_until_served(tiny: EmbeddedPredictor) -> None:
    flaky = Flaky(tiny, outages=3)
    done = run(pipeline(flaky), tensor([[1.0, 0, 0, 0]]))
    assert done[0].error is None and flaky.calls == 4


def test_an_output_too_large_for_its_topic_is_dead_lettered(tiny: EmbeddedPredictor) -> None:
    small, big = tensor([[1.0, 0, 0, 0]]), tensor([[1.0, 0, 0, 0]] * 200)
    p = pipeline(tiny, {OUT: 2_000, DLQ: 100_000})
    done = run(p, small, big)
    first, second = p.produced(done)
    assert first.topic == OUT and first.error is None
    assert second.topic == DLQ and second.error is not None
    assert second.error.reason == "too_large" and second.value == big


def test_a_dead_letter_too_large_is_cut_and_says_so(tiny: EmbeddedPredictor) -> None:
    big = tensor([[1.0, 0, 0, 0]] * 200)
    p = pipeline(tiny, {OUT: 2_000, DLQ: 1_500})
    (letter,) = p.produced(run(p, big))
    assert letter.topic == DLQ and size(letter) <= 1_500 - 512
    assert dict(letter.headers)[TRUNCATED_HEADER] == str(len(big)).encode()
    assert letter.value == big[: len(letter.value or b"")]


def parsed(value: bytes, key: bytes | None = None) -> Work:
    return parse(Work(record(value, key=key)))


def test_a_pin_beats_the_route_and_the_route_sticks_to_the_key() -> None:
    defaults = Defaults(model="tiny", route=Route.parse("stable=50,canary=50"))
    pinned = route(defaults, parsed(tensor([[1.0, 0, 0, 0]], version=3)))
    assert pinned.predict is not None and pinned.predict.version == 3 and pinned.route is None
    for key in (b"a", b"b", b"c"):
        chosen = {route(defaults, parsed(tensor([[1.0, 0, 0, 0]]), key)).route for _ in range(3)}
        assert len(chosen) == 1 and chosen <= {"stable", "canary"}
    other = route(defaults, parsed(json.dumps({"model": "m2", "inputs": {"x": [1]}}).encode()))
    assert other.predict is not None and other.predict.model == "m2" and other.route is None


def test_a_handler_reads_records_and_writes_values_each_failing_alone(
    tiny: EmbeddedPredictor,
) -> None:
    p = pipeline(tiny)
    p.handler = load_handler("tests.handler_examples:BatchCsvHandler")
    done = run(p, b"a,1,2,3,4", b"b,1,x,3,4", b"boom,0,0,0,0", b"c,0,0,0,1")
    assert [w.error.reason if w.error else None for w in done] == [
        None, "handler_error", "handler_error", None
    ]  # fmt: skip
    assert "preprocess_batch raised ValueError" in str(done[1].error)
    assert "postprocess_batch raised KeyError" in str(done[2].error)
    value = json.loads(p.produced([done[3]])[0].value or b"")
    assert value["id"] == "c" and value["offset"] == 3
    np.testing.assert_allclose(value["y"], tiny_reference(np.array([[0.0, 0, 0, 1]]))[0])
    (letter,) = p.produced([done[1]])
    assert letter.topic == DLQ and letter.value == b"b,1,x,3,4"


def test_a_handlers_hooks_count_as_waits(tiny: EmbeddedPredictor) -> None:
    """Hooks may wait on another service: the worker keeps its lanes for them."""
    p = pipeline(tiny)
    p.handler = load_handler("tests.handler_examples:SlowLookupHandler")
    waited = waited_s()
    done = run(p, b"a,1,2,3,4")
    assert done[0].error is None
    assert waited_s() - waited >= 0.1  # both hooks' 50 ms


def test_an_output_keeps_its_input_headers_and_trace_id_or_gets_a_new_one() -> None:
    fresh = trace_headers([])
    assert [k for k, _ in fresh] == [TRACE_HEADER]
    assert re.fullmatch(rb"[0-9a-f]{32}", fresh[0][1] or b"")
    assert trace_headers(None)[0][1] != fresh[0][1]  # a new id per record
    traced = [("origin", b"a"), (TRACE_HEADER, b"given")]
    assert trace_headers(traced) == traced
    untraced = trace_headers([("origin", b"a")])
    assert untraced[0] == ("origin", b"a") and untraced[1][0] == TRACE_HEADER


def test_chunk_threads_never_get_the_same_trace_id() -> None:
    """Ids come from a shared pool made a few hundred at a time: threads drawing at once,
    across many refills, still get each id once."""
    drawn: list[list[bytes]] = [[] for _ in range(8)]
    start = threading.Barrier(len(drawn))

    def draw(own: list[bytes]) -> None:
        start.wait()
        own.extend(new_trace_id() for _ in range(10 * TRACE_IDS_AT_ONCE))

    threads = [threading.Thread(target=draw, args=(own,)) for own in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for own in drawn for i in own]
    assert len(set(ids)) == len(ids) == 80 * TRACE_IDS_AT_ONCE
    assert all(re.fullmatch(rb"[0-9a-f]{32}", i) for i in ids)


def test_a_dead_letter_is_freed_as_soon_as_it_is_written(tiny: EmbeddedPredictor) -> None:
    """A failed record's exception keeps no traceback: its frames would hold the record in a
    cycle that only the collector frees, and the worker runs the collector rarely."""
    p = pipeline(Flaky(tiny), limits={OUT: 600, DLQ: 1_000_000})
    values = [
        *HOSTILE.values(),  # parse, route and predict failures
        tensor([[1.0, 1.0, 1.0, 1.0]], id="x" * 1000),  # an output too large for its topic
        tensor([[666.0, 0, 0, 0]]),  # internal_error: a bug in the predictor
    ]
    gc.collect()
    gc.disable()
    try:
        works = run(p, *values)
        letters = p.produced(works)
        assert all(letter.topic == DLQ for letter in letters)
        del works, letters
        assert gc.collect() == 0  # nothing left that only the collector could free
    finally:
        gc.enable()


def test_the_worker_runs_the_young_collection_rarely_and_never_scans_start_up() -> None:
    before = gc.get_threshold()
    try:
        settle_collector()
        assert gc.get_threshold() == (YOUNG_COLLECTION_OBJECTS, *before[1:])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
