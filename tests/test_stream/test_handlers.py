"""``run --handler``: CSV records through a user's Python hooks, embedded and remote.

The handler (tests/handler_examples.py) parses ``id,x0,x1,x2,x3`` lines into the tiny
model's input and answers its own JSON; the records its hooks raise for end in the DLQ as
``handler_error`` naming the exception's type, and the others go through in order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import consume, produce
from streaminfer.models.export.tiny import export_tiny_model, tiny_reference
from streaminfer.processes import ManagedProcess
from tests.servers import ServerProcess
from tests.workers import decoded, embedded_worker, outputs

GOOD = [f"r{i},{i},{i + 1},{-i},0.5" for i in range(12)]
BAD = {
    2: "bad,1,two,3,4",  # raises in preprocess
    4: "exit,1,2,3,4",  # SystemExit in preprocess: it stopped the worker
    5: "boom,1,2,3,4",  # raises in postprocess
    6: "interrupt,1,2,3,4",  # KeyboardInterrupt in preprocess
    7: "halt,1,2,3,4",  # GeneratorExit in postprocess
    9: "worse,1,2,,4",
}


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("tiny-repo")
    export_tiny_model(repo, version=1)
    return repo


@pytest.fixture
def tiny_server(tiny_repo: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tiny_repo, log=tmp_path / "server.log") as server:
        yield server


def send(settings: KafkaSettings, topic: str) -> None:
    values = []
    for i, line in enumerate(GOOD):
        values.append(line.encode())
        if i in BAD:
            values.append(BAD[i].encode())
    produce(settings, topic, values)


def assert_custom_outputs_and_dead_letters(settings: KafkaSettings, inp: str, out: str) -> None:
    docs = decoded(outputs(settings, out, len(GOOD), timeout=90))
    assert [d["id"] for d in docs] == [line.split(",")[0] for line in GOOD]
    assert set(docs[0]) == {"id", "y", "offset"}  # the handler's JSON, nothing added
    for doc, line in zip(docs, GOOD, strict=True):
        x = np.array([[float(v) for v in line.split(",")[1:]]])
        np.testing.assert_allclose(doc["y"], tiny_reference(x)[0], rtol=1e-6, atol=1e-6)
    letters = list(consume(settings, f"{inp}.dlq", from_beginning=True, count=len(BAD), timeout=30))
    assert sorted(r.value or b"" for r in letters) == sorted(v.encode() for v in BAD.values())
    headers = [dict(r.headers) for r in letters]
    assert {h["streaminfer.error.type"] for h in headers} == {b"handler_error"}
    messages = b" ".join(h["streaminfer.error.message"] or b"" for h in headers)
    assert re.search(rb"preprocess(_batch)? raised ValueError: could not convert", messages)
    assert re.search(rb"postprocess(_batch)? raised KeyError: 'boom'", messages)
    for raised in (
        rb"preprocess(_batch)? raised SystemExit: 3",
        rb"preprocess(_batch)? raised KeyboardInterrupt",
        rb"postprocess(_batch)? raised GeneratorExit",
    ):
        assert re.search(raised, messages), messages


def test_a_handler_in_the_embedded_worker(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    tiny_repo: Path,
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    embedded_worker(
        start_worker, tiny_repo, inp, out,
        "--model", "tiny", "--handler", "tests.handler_examples:CsvHandler",
    )  # fmt: skip
    send(kafka_settings, inp)
    assert_custom_outputs_and_dead_letters(kafka_settings, inp, out)


def test_a_batch_handler_in_a_remote_worker(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    tiny_server: ServerProcess,
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    start_worker(
        "--input", inp, "--output", out, "--mode", "kserve-grpc",
        "--server", tiny_server.target("kserve-grpc"), "--model", "tiny", "--group-id", f"g-{inp}",
        "--batch-size", "8", "--handler", "tests.handler_examples:BatchCsvHandler",
    )  # fmt: skip
    send(kafka_settings, inp)
    assert_custom_outputs_and_dead_letters(kafka_settings, inp, out)


def test_a_postprocess_only_handler_keeps_the_usual_records(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable[..., ManagedProcess],
    tiny_repo: Path,
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    embedded_worker(
        start_worker, tiny_repo, inp, out,
        "--model", "tiny", "--handler", "tests.handler_examples:Relabel",
    )  # fmt: skip
    produce(kafka_settings, inp, [json.dumps({"inputs": {"x": [[1, 0, 0, 0]]}}).encode()])
    (record,) = outputs(kafka_settings, out, 1)
    want = tiny_reference(np.array([[1.0, 0, 0, 0]]))[0]
    assert record.value == ("y=" + ",".join(f"{v:g}" for v in want)).encode()
