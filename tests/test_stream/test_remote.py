"""The worker in remote modes, against a real `streaminfer serve` process that may die."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import consume, produce
from streaminfer.models.export.tiny import export_tiny_model, tiny_reference
from streaminfer.net import free_port
from streaminfer.processes import ManagedProcess
from tests.servers import ServerProcess, secure_server_args
from tests.support import wait_for
from tests.workers import assert_tiny_outputs, decoded, outputs, send_tiny_rows, tiny_record

CATS = {281, 282, 285}


@pytest.fixture
def server(stream_repo: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(stream_repo, log=tmp_path / "server.log") as server:
        yield server


def remote_worker(
    start: Callable[..., ManagedProcess],
    server: ServerProcess,
    mode: str,
    inp: str,
    out: str,
    *extra: str,
) -> ManagedProcess:
    return start(
        "--input",
        inp,
        "--output",
        out,
        "--mode",
        mode,
        "--server",
        server.target(mode),
        "--group-id",
        f"g-{inp}",
        "--allow-network",
        "127.0.0.0/8",
        *extra,
    )


@pytest.mark.parametrize("mode", ["tfserving-grpc", "tfserving-rest", "kserve-grpc", "kserve-http"])
def test_each_remote_mode_predicts(
    mode: str,
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    server: ServerProcess,
    image_host: str,
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    worker = remote_worker(start_worker, server, mode, inp, out)
    produce(
        kafka_settings,
        inp,
        [
            f"{image_host}/chelsea.jpg".encode(),
            f"{image_host}/coffee.jpg".encode(),
            json.dumps({"model": "tiny", "inputs": {"x": [[1, 0, 0, 0]]}}).encode(),
        ],
    )
    docs = decoded(outputs(kafka_settings, out, 3))
    assert [d["mode"] for d in docs] == [mode] * 3
    assert docs[0]["predictions"][0]["class_id"] in CATS
    assert docs[1]["predictions"][0]["label"] == "espresso"
    assert docs[1]["model"] == {"name": "efficientnet-lite0", "version": 1}
    assert docs[2]["outputs"]["y"][0] == pytest.approx([1.0, 1.1, 1.2, 1.3], rel=1e-6)
    assert "HTTP Request" not in worker.log()  # httpx's line per request, at INFO


@pytest.mark.parametrize("mode", ["tfserving-grpc", "kserve-http"])
def test_a_worker_reaches_a_server_over_tls_with_a_token(
    mode: str,
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
    tmp_path: Path,
) -> None:
    """``--server-ca-file`` (TLS) and ``--server-token-file``, as a server that asks for
    both (``--tls-cert`` and ``--auth-token-file``) is reached."""
    secure = secure_server_args(tmp_path)
    with ServerProcess(stream_repo, *secure, log=tmp_path / "server.log") as server:
        assert server.ca_cert is not None
        inp, out = topic_factory("in"), topic_factory("out")
        credentials = ["--server-ca-file", str(server.ca_cert)]
        credentials += ["--server-token-file", str(tmp_path / "token")]
        remote_worker(start_worker, server, mode, inp, out, *credentials)
        rows = send_tiny_rows(kafka_settings, inp, 3)
        assert_tiny_outputs(kafka_settings, out, rows)
        # Predicted by the server: a remote worker has no model of its own to fall back on.
        assert {d["mode"] for d in decoded(outputs(kafka_settings, out, 3))} == {mode}


def _tiny_records(count: int) -> list[bytes]:
    return [tiny_record(i) for i in range(count)]


def test_a_backlog_behind_a_slow_round_trip_goes_in_large_requests(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
    tmp_path: Path,
) -> None:
    """Each call to this server waits 25 ms for its last batch to fill, whatever it
    carries.  Chunks sized by time alone stayed at ``--batch-size`` (16), and 6,000 waiting
    records took 375 calls; a chunk must take as many records as the round trip is worth."""
    inp, out = topic_factory("in"), topic_factory("out")
    produce(kafka_settings, inp, _tiny_records(6000))  # waiting before the worker starts
    delayed = ("--max-batch-delay-ms", "25")
    with ServerProcess(stream_repo, *delayed, log=tmp_path / "server.log") as server:
        port = free_port()
        remote_worker(start_worker, server, "kserve-grpc", inp, out, "--metrics-port", str(port))
        docs = decoded(outputs(kafka_settings, out, 6000, timeout=120))
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert [d["id"] for d in docs] == [str(i) for i in range(6000)]
    assert docs[1]["outputs"]["y"][0] == pytest.approx([1.0, 1.1, 1.2, 1.3], rel=1e-6)
    (calls,) = re.findall(r"^streaminfer_batch_size_count (\S+)$", metrics, re.M)
    # Under half of what sizing by time alone took (375): one run after the Triton tests
    # made 100 calls (60 records each), over a bound of 6000 / 64.
    assert float(calls) <= 6000 / 32


def test_server_killed_and_restarted_loses_nothing(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    server: ServerProcess,
) -> None:
    inp, out, dlq = topic_factory("in"), topic_factory("out"), topic_factory("dlq")
    worker = remote_worker(start_worker, server, "tfserving-grpc", inp, out, "--dlq", dlq)
    produce(kafka_settings, inp, _tiny_records(100))
    outputs(kafka_settings, out, 100)
    server.kill()
    produce(kafka_settings, inp, _tiny_records(200)[100:])
    wait_for(lambda: "retrying" in worker.log(), 60, "the worker to notice the server is down")
    server.start()
    docs = decoded(outputs(kafka_settings, out, 200, timeout=90))
    assert sorted(int(d["id"]) for d in docs) == list(range(200))
    assert [d["source"]["offset"] for d in docs] == list(range(200))
    assert not list(consume(kafka_settings, dlq, from_beginning=True, timeout=2))
    assert worker.alive()


def test_fallback_serves_while_the_server_is_down(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    server: ServerProcess,
    stream_repo: Path,
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    remote_worker(
        start_worker,
        server,
        "kserve-grpc",
        inp,
        out,
        "--fallback",
        "embedded",
        "--repo",
        str(stream_repo),
    )
    produce(kafka_settings, inp, _tiny_records(50))
    assert {d["mode"] for d in decoded(outputs(kafka_settings, out, 50))} == {"kserve-grpc"}
    server.kill()
    produce(kafka_settings, inp, _tiny_records(150)[50:])
    docs = decoded(outputs(kafka_settings, out, 150))
    assert {d["mode"] for d in docs[50:]} == {"embedded-fallback"}
    assert sorted(int(d["id"]) for d in docs) == list(range(150))


def test_a_server_refusing_large_requests_unannounced_is_sent_fewer_rows(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    tmp_path: Path,
) -> None:
    """TF Serving's API has no way to state a row limit, and our server refuses more rows
    than model.json's ``max_batch_size`` (64) as an invalid request; the worker, sending
    up to 200, halves the refused requests, learns the limit from the halves it gets
    served, and loses nothing."""
    export_tiny_model(tmp_path / "repo", version=1)
    spec = tmp_path / "repo" / "tiny" / "1" / "model.json"
    spec.write_text(json.dumps({**json.loads(spec.read_text()), "max_batch_size": 64}))
    inp, out = topic_factory("in"), topic_factory("out")
    rows = send_tiny_rows(kafka_settings, inp, 600)
    with ServerProcess(tmp_path / "repo", log=tmp_path / "server.log") as server:
        worker = remote_worker(
            start_worker, server, "tfserving-grpc", inp, out, "--batch-size", "200"
        )
        assert_tiny_outputs(kafka_settings, out, rows)
    assert "tiny refused a larger request; sending it at most" in worker.log()


def test_a_worker_carries_on_across_connection_renewals(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    stream_repo: Path,
    tmp_path: Path,
) -> None:
    """The server renews each gRPC connection after about a second (GOAWAY, then the
    worker opens a new one): records sent in six parts, each once the last has its
    outputs, all come out once and in order, and no prediction failed on the way."""
    inp, out = topic_factory("in"), topic_factory("out")
    args = ("--grpc-connection-age", "1")
    with ServerProcess(stream_repo, *args, log=tmp_path / "server.log") as server:
        worker = remote_worker(start_worker, server, "tfserving-grpc", inp, out)
        for part in range(6):
            ids = range(part * 50, (part + 1) * 50)
            produce(kafka_settings, inp, [tiny_record(i) for i in ids])
            docs = decoded(outputs(kafka_settings, out, ids.stop))
        assert [d["id"] for d in docs] == [str(i) for i in range(300)]
        rows = np.array([[i, 0, 0, 0] for i in range(300)], np.float32)
        got = np.array([d["outputs"]["y"][0] for d in docs])
        np.testing.assert_allclose(got, tiny_reference(rows), rtol=1e-6)
    assert "prediction failed" not in worker.log()
